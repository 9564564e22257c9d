"""Benchmark of the band solvers on supercells (not a test).

Corpus cells (OpenMX H and S from ``../shared/openmx-corpus``) are tiled exactly into supercells of
50-150 atoms (:func:`aiida_deeph.physics.supercell.supercell`), then timed per k-point:

- ``dense``: all bands, the generalized Hermitian eigenproblem per k (LAPACK zhegvd), threaded over
  k-points (BLAS single-threaded inside each thread);
- ``dense-1t``: the same on one thread (one k at a time, BLAS with its default threads);
- ``sparse``: ``--num-bands`` bands around E_F by ARPACK shift-invert on scipy CSR H(k), S(k)
  built straight from the packed entries (one SuperLU factorisation of H - sigma S per k, plus the
  inertia check of S - t I).

Also printed: the fraction of non-zero entries of H(k) (these cells are small enough that H(k) is
dense: every orbital sphere reaches across the supercell) and the largest difference between the
sparse and dense eigenvalues in the window.

    python benchmarks/bench_bands.py                 # default set (a few minutes on 2 cores)
    python benchmarks/bench_bands.py --quick         # two small cases
    python benchmarks/bench_bands.py --case mp-1700:4x4x4 --nk 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CASES = ["mp-10683:4x4x4", "mp-1700:3x3x3", "mp-7000:2x2x2", "mp-1700:4x4x4", "mp-2534:4x4x4", "mp-7000:2x2x4"]
QUICK_CASES = ["mp-10683:3x3x3", "mp-1700:3x3x3"]


def corpus_dir() -> Path:
    env = os.environ.get("AIIDA_DEEPH_SHARED")
    return (Path(env) if env else ROOT.parent / "shared") / "openmx-corpus"


def run_case(spec: str, nk: int, num_bands: int, threads: int) -> dict:
    from aiida_deeph.io.openmx import load_openmx_run
    from aiida_deeph.physics.bands import SparseK, band_energies, band_energies_window, blas_threads
    from aiida_deeph.physics.supercell import supercell

    mp_id, rep = spec.split(":")
    reps = tuple(int(x) for x in rep.lower().split("x"))
    cell_ham = load_openmx_run(corpus_dir() / mp_id)
    t = time.perf_counter()
    big = supercell(cell_ham, reps)
    t_tile = time.perf_counter() - t
    rng = np.random.default_rng(0)
    kpts = rng.uniform(-0.5, 0.5, size=(nk, 3))
    ef = float(cell_ham.fermi_energy_eV)

    t = time.perf_counter()
    builder = SparseK(big)
    t_csr = time.perf_counter() - t
    density = builder.nnz / float(builder.n) ** 2

    t = time.perf_counter()
    dense = band_energies(big, kpts, threads=threads)
    t_dense = (time.perf_counter() - t) / nk

    t = time.perf_counter()
    with blas_threads(None):
        band_energies(big, kpts[:1], threads=1)
    t_dense1 = time.perf_counter() - t

    t = time.perf_counter()
    sparse = band_energies_window(big, kpts, num_bands=num_bands, sigma=ef, solver="sparse", threads=threads)
    t_sparse = (time.perf_counter() - t) / nk

    err = 0.0
    for e_all, e_win in zip(dense.eigenvalues, sparse.eigenvalues):
        i = int(np.searchsorted(e_all, ef, side="right"))
        ref = e_all[i - num_bands // 2:i - num_bands // 2 + num_bands]
        err = max(err, float(np.abs(ref - e_win).max()))
    return {
        "case": f"{cell_ham.formula} {mp_id} {rep}", "atoms": big.num_atoms, "orbitals": big.num_orbitals,
        "pairs": big.num_pairs, "density": density, "tile_s": t_tile, "csr_s": t_csr, "dense_s_per_k": t_dense,
        "dense1_s_per_k": t_dense1, "sparse_s_per_k": t_sparse, "max_diff_eV": err,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="mp-id:n1xn2xn3 (repeatable)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nk", type=int, default=2, help="k-points per case (default 2)")
    parser.add_argument("--num-bands", type=int, default=20, help="bands around E_F for the sparse solver")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    cases = args.case or (QUICK_CASES if args.quick else DEFAULT_CASES)
    print(f"# {os.cpu_count()} cores, {args.threads} threads over k, {args.nk} k-points per case, "
          f"sparse: {args.num_bands} bands around E_F")
    header = (f"{'case':28s} {'atoms':>5s} {'orbs':>5s} {'nnz/n^2':>7s} {'dense s/k':>10s} {'dense-1t':>9s} "
              f"{'sparse s/k':>10s} {'max|dE| eV':>10s}")
    print(header)
    print("-" * len(header))
    for spec in cases:
        r = run_case(spec, args.nk, args.num_bands, args.threads)
        print(f"{r['case']:28s} {r['atoms']:5d} {r['orbitals']:5d} {r['density']:7.3f} {r['dense_s_per_k']:10.3f} "
              f"{r['dense1_s_per_k']:9.3f} {r['sparse_s_per_k']:10.3f} {r['max_diff_eV']:10.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
