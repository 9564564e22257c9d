"""Benchmark: the whole DFT-free DeepH path (S from PAO -> model -> bands) against OpenMX's SCF wall time.

    python benchmarks/bench_dft_free.py --model MODEL_DIR [--shared ../shared] [--threads 2] [--quick]
        [--supercells] [--json out.json]

Per corpus structure, timed in one process (model loaded once; PAO files read and transformed once per
element in the process, then cached, as in a batch):

1. ``overlap``: S and the OpenMX atom pairs from the PAO files (aiida_deeph.overlap.compute_overlap);
2. ``predict``: H from the DeepH-2 model on those pairs (CPU, float32);
3. ``bands``: Fermi level from the electron count on the protocol's SCF k-mesh (0.30 1/A, Fermi-Dirac
   300 K) + the seekpath band path (0.025 1/A spacing), dense generalized eigenproblem, threaded over k;

and compared with OpenMX's wall time for the full SCF of the same cell on one core (corpus meta.json;
the band path is not part of that time). With ``--supercells``: a few corpus cells tiled to 50-150 atoms
(no OpenMX time: the ratio is against the primitive cell's SCF, which underestimates it heavily).
Only timing: the accuracy of the model is not measured here (see ``aiida-deeph evaluate``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--supercells", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pymatgen.core import Structure

    from aiida_deeph.ml.predict import predict_hamiltonian
    from aiida_deeph.ml.train import load_model
    from aiida_deeph.overlap import compute_overlap
    from aiida_deeph.physics.bands import fermi_level, solve_bands
    from aiida_deeph.physics.kpath import auto_kpath

    corpus = Path(args.shared) / "openmx-corpus"
    pao_dir = Path(args.shared) / "openmx-data" / "PAO"
    model = load_model(args.model, device="cpu")
    ids = sorted(p.name for p in corpus.iterdir() if (p / "meta.json").is_file())
    if args.quick:
        ids = [i for i in ("mp-92", "mp-1700", "mp-2534", "mp-22862", "mp-28369") if i in ids]
    rows = []

    def run_path(cell, positions, species, label, wall, natoms):
        t0 = time.perf_counter()
        s = compute_overlap(cell, positions, species, pao_dir=pao_dir)
        t1 = time.perf_counter()
        h = predict_hamiltonian(model, s)
        t2 = time.perf_counter()
        fl = fermi_level(h, threads=args.threads)
        path = auto_kpath(cell, positions, species)
        res, solver = solve_bands(h, path["kpoints"], threads=args.threads, sigma=fl["fermi_energy_eV"])
        t3 = time.perf_counter()
        total = t3 - t0
        row = {"structure": label, "atoms": natoms, "orbitals": int(h.num_orbitals), "pairs": int(h.num_pairs),
               "overlap_s": t1 - t0, "predict_s": t2 - t1, "bands_s": t3 - t2, "total_s": total,
               "kpath_points": int(len(path["kpoints"])), "fermi_mesh_kpoints": fl["num_kpoints"],
               "solver": solver, "openmx_scf_s": wall, "speedup": (wall / total) if wall else None}
        rows.append(row)
        sp = f"{row['speedup']:9.0f}x" if wall else f"{'':>10s}"
        print(f"{label:22s} {natoms:4d} {row['orbitals']:5d} {row['overlap_s']:8.2f} {row['predict_s']:8.2f} "
              f"{row['bands_s']:8.2f} {total:8.2f} {wall or float('nan'):10.1f} {sp}", flush=True)

    print(f"{'structure':22s} {'N':>4s} {'orb':>5s} {'S s':>8s} {'model s':>8s} {'bands s':>8s} {'total s':>8s} "
          f"{'OpenMX s':>10s} {'speed-up':>10s}")
    for mp in ids:
        meta = json.loads((corpus / mp / "meta.json").read_text())
        st = Structure.from_dict(meta["structure"])
        species = [sp.symbol for sp in st.species]
        try:
            run_path(st.lattice.matrix, st.cart_coords, species, mp, meta.get("wall_s"), len(st))
        except ValueError as exc:          # an element the model was not trained on
            print(f"{mp:22s} skipped: {exc}")
    if args.supercells:
        for mp, rep in (("mp-2534", (3, 3, 3)), ("mp-1700", (3, 3, 3))):
            meta = json.loads((corpus / mp / "meta.json").read_text())
            st = Structure.from_dict(meta["structure"])
            st.make_supercell(rep)
            species = [sp.symbol for sp in st.species]
            run_path(st.lattice.matrix, st.cart_coords, species, f"{mp} x{rep[0]}{rep[1]}{rep[2]}", None, len(st))
    totals = [r["speedup"] for r in rows if r["speedup"]]
    if totals:
        print(f"speed-up vs OpenMX SCF: min {min(totals):.0f}x, median {float(np.median(totals)):.0f}x "
              f"over {len(totals)} structures")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
