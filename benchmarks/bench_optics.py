"""Properties from DFT Hamiltonians (issue 14): eps_inf convergence with the k-mesh, time per property.

1. Runs the real OpenMX 3.9 (scripts/install-openmx.sh; the corpus's 'moderate' protocol: PBE, 200 Ry,
   s2p2d1 bases) on diamond Si, zincblende SiC and diamond C at their experimental lattice constants, and
   converts each run with its position matrix (as ``aiida-deeph convert openmx --position-matrix``).
2. eps_inf = 1 + tr chi(0)/3 (independent particles, no local fields) on Gamma-centred meshes n^3.
3. Time of the DOS (Gaussian and tetrahedron) and of chi(omega) for corpus cells and a 54-atom Si
   supercell (3x3x3 of the 2-atom cell; its DFT H tiled, which is exact).

    python benchmarks/bench_optics.py --out /tmp/bench-optics [--meshes 4 6 8 10 12 14] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

CRYSTALS = {  # experimental lattice constants (Angstrom), fcc primitive cell, two-atom basis
    "Si": (5.431, ("Si", "Si")),
    "SiC": (4.3596, ("Si", "C")),
    "C": (3.567, ("C", "C")),
}


def run_openmx(name: str, out: Path, threads: int = 2) -> Path:
    from aiida_deeph.io.openmx_input import write_input_from_protocol
    from aiida_deeph.io.openmx_install import locate_openmx

    install, why = locate_openmx()
    if install is None:
        raise SystemExit(f"no OpenMX: {why} (bash scripts/install-openmx.sh)")
    a, species = CRYSTALS[name]
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    positions = np.array([[0, 0, 0], [0.25 * a] * 3])
    run = out / f"dft-{name}"
    if (run / "openmx.scfout").is_file():
        return run
    run.mkdir(parents=True, exist_ok=True)
    text = write_input_from_protocol(cell, list(species), positions, "moderate", data_path=install.data_path)
    (run / "openmx.dat").write_text(text)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(run / "openmx.std", "w") as std:
        subprocess.run([install.executable, "openmx.dat", "-nt", str(threads)], cwd=run, stdout=std,
                       stderr=subprocess.STDOUT, env=env, check=True)
    print(f"OpenMX {name}: {time.perf_counter() - t0:.1f} s")
    return run


def main(argv=None) -> int:
    from aiida_deeph.io.openmx import load_openmx_run
    from aiida_deeph.physics.dos import density_of_states
    from aiida_deeph.physics.optics import susceptibility
    from aiida_deeph.physics.supercell import supercell

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--meshes", type=int, nargs="+", default=[4, 6, 8, 10, 12, 14])
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "openmx-corpus"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"eps_inf": {}, "timings": []}
    hams = {}
    for name in CRYSTALS:
        hams[name] = load_openmx_run(run_openmx(name, out), load_position_matrix=True)
        rows = []
        for n in args.meshes:
            t0 = time.perf_counter()
            res = susceptibility(hams[name], (n, n, n), num_omega=2)
            rows.append({"mesh": n, "eps_inf": res["eps_inf"], "gap_on_mesh_eV": res["gap_on_mesh_eV"],
                         "seconds": time.perf_counter() - t0})
            print(f"{name:4s} mesh {n:2d}^3: eps_inf {res['eps_inf']:7.3f}  ({rows[-1]['seconds']:.1f} s)")
        record["eps_inf"][name] = rows

    def timed(label, ham, fn):
        t0 = time.perf_counter()
        fn(ham)
        row = {"case": label, "atoms": ham.num_atoms, "orbitals": ham.num_orbitals, "seconds": time.perf_counter() - t0}
        record["timings"].append(row)
        print(f"{label:48s} {ham.num_atoms:3d} atoms {ham.num_orbitals:4d} orbitals {row['seconds']:8.2f} s")

    cases = [("AlP mp-1550", load_openmx_run(Path(args.corpus) / "mp-1550", load_position_matrix=True), 12),
             ("NaCl mp-22862", load_openmx_run(Path(args.corpus) / "mp-22862", load_position_matrix=True), 12),
             ("Si 3x3x3 supercell", supercell(hams["Si"], (3, 3, 3)), 4)]
    for label, ham, n in cases:
        timed(f"{label}: DOS gaussian {n}^3", ham, lambda h: density_of_states(h, mesh=(n, n, n), sigma=0.1))
        timed(f"{label}: DOS tetrahedron {n}^3", ham,
              lambda h: density_of_states(h, mesh=(n, n, n), method="tetrahedron"))
        timed(f"{label}: chi(omega) {n}^3, 501 omega", ham, lambda h: susceptibility(h, (n, n, n), num_omega=501))
    # the supercell at 4^3 samples the primitive cell's 12^3 mesh: the same eps_inf
    sup = susceptibility(cases[2][1], (4, 4, 4), num_omega=2)["eps_inf"]
    prim = next(r["eps_inf"] for r in record["eps_inf"]["Si"] if r["mesh"] == 12) if 12 in args.meshes else None
    record["supercell_check"] = {"supercell_4_eps_inf": sup, "primitive_12_eps_inf": prim}
    print(f"Si 3x3x3 supercell at 4^3: eps_inf {sup:.4f} (primitive cell at 12^3: {prim})")
    (out / "bench_optics.json").write_text(json.dumps(record, indent=1))
    if args.json:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
