"""The DFT-free path on a large cell: overlap -> predict -> bands --solver sparse, timed (issue 13, item 6).

    python benchmarks/bench_inference_large.py --out DIR [--repeats 5 5 5] [--model MODEL_DIR]
                                               [--num-bands 16] [--threads 2] [--pao-dir DIR]

The cell is the carbon set's 8-atom diamond cell C-dia8-r000 tiled ``repeats`` times (5x5x5: 1000 atoms,
13,000 orbitals with C6.0-s2p2d1). Each step is the user's command line in its own process, timed, with
its peak RSS (``ru_maxrss`` of the child):

1. ``aiida-deeph overlap --structure POSCAR --basis corpus``   (S from the PAO files)
2. ``aiida-deeph predict --model MODEL``                        (default: the shipped carbon-small model)
3. ``aiida-deeph bands --kpoints (Gamma) --solver sparse --num-bands N``  (bands around E_F)

The Fermi level of the predicted H comes from the predicted 8-atom cell (``bands`` on its own k-mesh): the
model's prediction for a supercell is its prediction for the primitive cell, tiled (a test), so the two
share E_F. ``bands`` would otherwise find it from the electron count with dense solves of the whole cell.

OpenMX's cost for the same cell is estimated, not run: the Gamma-point generalised eigenproblem of
OpenMX's conventional diagonalisation (the corpus setting) is timed with scipy at 2000-5000 orbitals on this
machine and extrapolated as n^3 to 13,000 orbitals, times the number of SCF iterations of the carbon set's
8-atom runs (from their openmx.out). That leaves out OpenMX's grid work (it grows as N) and its 6x6x6
k-mesh (the 8-atom runs used 216 k-points; a 1000-atom cell needs few), so it is a lower bound for one
Gamma-only SCF. Writes ``DIR/result.json``.
"""
from __future__ import annotations

import argparse
import json
import lzma
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list, env=None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # ru_maxrss of children is the largest child so far: a later, smaller child reports the same value
    return {"wall_s": wall, "peak_rss_gb": peak / 1024 ** 2, "peak_is_max_so_far": peak == before and before > 0}


def scf_iterations(run: Path) -> int:
    text = lzma.open(run / "openmx.out.xz", "rt").read()
    steps = [int(m) for m in re.findall(r"SCF=\s*(\d+)", text)]
    return max(steps) if steps else 0


def eigh_seconds(n: int, seed: int = 0) -> float:
    import scipy.linalg as sl

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    h = a + a.T
    b = rng.normal(size=(n, n)) / np.sqrt(n)
    s = b @ b.T + np.eye(n)
    t = time.perf_counter()
    sl.eigh(h, s, overwrite_a=True, overwrite_b=True, check_finite=False)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, nargs=3, default=[5, 5, 5])
    ap.add_argument("--model", default=str(ROOT / "aiida_deeph" / "resources" / "models" / "carbon-small"))
    ap.add_argument("--num-bands", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-estimate", action="store_true")
    ap.add_argument("--pao-dir", default=str(SHARED / "openmx-data" / "PAO"))
    args = ap.parse_args(argv)
    from pymatgen.core import Structure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = SHARED / "openmx-carbon" / "C-dia8-r000"
    st = Structure.from_file(str(run / "dock" / "POSCAR"))
    st.make_supercell(args.repeats)
    poscar = out / "POSCAR"
    st.to(filename=str(poscar), fmt="poscar")
    exe = [sys.executable, "-m", "aiida_deeph.cli.main"]
    res = {"atoms": len(st), "repeats": args.repeats, "threads": args.threads}
    import os

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    res["overlap"] = timed(exe + ["overlap", "--structure", str(poscar), "--basis", "corpus",
                                  "--pao-dir", args.pao_dir, "--output", str(out / "s"), "--quiet"], env)
    info = json.loads((out / "s" / "info.json").read_text())
    # the Fermi level of the DFT cell it was tiled from (a tiled cell has the same one)
    info["fermi_energy_eV"] = json.loads((run / "dock" / "info.json").read_text())["fermi_energy_eV"]
    (out / "s" / "info.json").write_text(json.dumps(info, indent=1))
    res["predict"] = timed(exe + ["predict", "--model", args.model, "--input", str(out / "s"),
                                  "--output", str(out / "pred")], env)
    # the Fermi level of the predicted H: the supercell's prediction is the primitive cell's, tiled
    # (tests/test_ml_equivariance.py), so E_F comes from the predicted 8-atom cell (dense, its own k-mesh)
    prim = out / "prim"
    res["fermi_primitive"] = timed(exe + ["overlap", "--structure", str(run / "dock" / "POSCAR"), "--basis", "corpus",
                                          "--pao-dir", args.pao_dir, "--output", str(prim / "s"), "--quiet"], env)
    timed(exe + ["predict", "--model", args.model, "--input", str(prim / "s"), "--output", str(prim / "pred")], env)
    timed(exe + ["bands", "--input", str(prim / "pred" / "s"), "--output", str(prim / "bands.json"), "--quiet",
                 "--threads", str(args.threads)], env)
    fermi = json.loads((prim / "bands.json").read_text())["fermi_energy_eV"]
    pinfo = json.loads((out / "pred" / "s" / "info.json").read_text())
    pinfo["fermi_energy_eV"] = fermi
    (out / "pred" / "s" / "info.json").write_text(json.dumps(pinfo, indent=1))
    res["fermi_energy_eV"] = fermi
    (out / "gamma.txt").write_text("0 0 0\n")
    res["bands"] = timed(exe + ["bands", "--input", str(out / "pred" / "s"), "--kpoints", str(out / "gamma.txt"),
                                "--solver", "sparse", "--num-bands", str(args.num_bands), "--output",
                                str(out / "bands.json"), "--threads", str(args.threads), "--quiet"], env)
    bands = json.loads((out / "bands.json").read_text())
    res["num_orbitals"] = bands.get("num_orbitals")
    res["band_gap_eV"] = bands.get("band_gap_eV")
    res["deeph_total_s"] = sum(res[k]["wall_s"] for k in ("overlap", "predict", "bands"))
    if not args.skip_estimate:
        sizes = [2000, 3000, 4000, 5000]
        ts = [eigh_seconds(n) for n in sizes]
        c = float(np.mean([t / n ** 3 for n, t in zip(sizes, ts)]))
        n_orb = int(res["num_orbitals"] or 13 * len(st))
        iters = [scf_iterations(SHARED / "openmx-carbon" / f"C-dia8-r00{i}") for i in range(3)]
        est = c * n_orb ** 3 * float(np.mean(iters))
        res["openmx_estimate"] = {"eigh_sizes": sizes, "eigh_seconds": ts, "seconds_per_n3": c,
                                  "scf_iterations_8atom_runs": iters, "gamma_only_scf_s_lower_bound": est}
        res["ratio_lower_bound"] = est / res["deeph_total_s"]
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
