"""Benchmark: overlap S (and atom pairs) from the PAO files vs OpenMX wall times.

    python benchmarks/bench_overlap.py [--shared ../shared] [--quick] [--json out.json]

For every corpus structure: time of ``compute_overlap`` cold (PAO files read and transformed in
this call) and warm (PAO transforms cached, as in a batch), max |S - S_OpenMX|, and OpenMX's wall
time for the full SCF on one core (corpus ``meta.json``: ``wall_s``). Then supercells of corpus
structures up to ~150 atoms, with atoms displaced randomly (0.05 A) so that no two bonds share a
length (the worst case for the calculation). Reference point for "S from OpenMX": a run stopped
after one SCF step took 73 s for AlN mp-1700 (2 atoms).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ONE_STEP_OPENMX_ALN_S = 73.0


def _clear_caches():
    from aiida_deeph.overlap import pao, twocenter

    pao._CACHE.clear()
    twocenter._TRANSFORM_CACHE.clear()
    twocenter._PAIR_CACHE.clear()
    twocenter.gaunt.cache_clear()


def _load(corpus: Path, mp: str):
    from aiida_deeph.io.openmx import scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout

    return scfout_to_packed(read_scfout(corpus / mp / "openmx.scfout.xz", load_density_matrix=False))


def _timed(fn, repeat=1):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def supercell(ham, reps, jitter=0.05, seed=0):
    reps = np.asarray(reps)
    cell = np.diag(reps) @ ham.cell
    shifts = np.array([[a, b, c] for a in range(reps[0]) for b in range(reps[1]) for c in range(reps[2])]) @ ham.cell
    pos = (ham.positions[None] + shifts[:, None]).reshape(-1, 3)
    pos = pos + np.random.default_rng(seed).normal(scale=jitter, size=pos.shape)
    return cell, pos, list(ham.species) * len(shifts)


def main(argv=None) -> int:
    from aiida_deeph.overlap import compute_overlap

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--quick", action="store_true", help="a few corpus structures and two supercells")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    corpus = Path(args.shared) / "openmx-corpus"
    pao_dir = Path(args.shared) / "openmx-data" / "PAO"
    ids = sorted(p.name for p in corpus.iterdir() if (p / "openmx.scfout.xz").is_file())
    if args.quick:
        ids = [i for i in ("mp-92", "mp-1700", "mp-7000", "mp-28369", "mp-4280") if i in ids]
    results = {"corpus": [], "supercells": []}

    print(f"{'structure':12s} {'formula':10s} {'N':>4s} {'pairs':>6s} {'cold s':>8s} {'warm s':>8s} "
          f"{'max|dS|':>9s} {'OpenMX SCF s':>12s} {'speed-up (cold)':>15s}")
    for mp in ids:
        ref = _load(corpus, mp)
        wall = json.loads((corpus / mp / "meta.json").read_text()).get("wall_s")
        _clear_caches()
        got, cold = _timed(lambda: compute_overlap(ref.cell, ref.positions, ref.species, pao_dir=pao_dir))
        _, warm = _timed(lambda: compute_overlap(ref.cell, ref.positions, ref.species, pao_dir=pao_dir), repeat=3)
        same = np.array_equal(got.atom_pairs, ref.atom_pairs)
        err = float(np.abs(got.overlap - ref.overlap).max()) if same else float("nan")
        row = {"id": mp, "formula": ref.formula, "atoms": ref.num_atoms, "pairs": ref.num_pairs, "cold_s": cold,
               "warm_s": warm, "max_abs_dS": err, "pairs_equal": same, "openmx_wall_s": wall}
        results["corpus"].append(row)
        print(f"{mp:12s} {ref.formula:10s} {ref.num_atoms:4d} {ref.num_pairs:6d} {cold:8.3f} {warm:8.4f} "
              f"{err:9.1e} {wall if wall is not None else float('nan'):12.1f} {(wall or np.nan) / cold:14.0f}x")
    rows = results["corpus"]
    if rows:
        speed = [r["openmx_wall_s"] / r["cold_s"] for r in rows if r["openmx_wall_s"]]
        print(f"corpus: max |dS| = {max(r['max_abs_dS'] for r in rows):.2e}; pair sets equal: "
              f"{all(r['pairs_equal'] for r in rows)}; speed-up vs full SCF (cold): min {min(speed):.0f}x, "
              f"median {np.median(speed):.0f}x")
        aln = [r for r in rows if r["id"] == "mp-1700"]
        if aln:
            r = aln[0]
            print(f"AlN mp-1700: {r['cold_s']:.3f} s cold / {r['warm_s']:.4f} s warm vs OpenMX one-step "
                  f"{ONE_STEP_OPENMX_ALN_S} s -> {ONE_STEP_OPENMX_ALN_S / r['cold_s']:.0f}x / "
                  f"{ONE_STEP_OPENMX_ALN_S / r['warm_s']:.0f}x")

    cases = [("mp-92", (4, 4, 4)), ("mp-2534", (4, 4, 4)), ("mp-7000", (2, 2, 4)), ("mp-28369", (2, 2, 3)),
             ("mp-4280", (3, 3, 4)), ("mp-1094437", (3, 3, 3)), ("mp-23193", (4, 4, 4))]
    if args.quick:
        cases = cases[:3:2]
    print(f"\n{'supercell':22s} {'N':>4s} {'pairs':>6s} {'orbitals':>8s} {'cold s':>8s} {'warm s':>8s} "
          f"{'prim. SCF s':>11s}")
    for mp, reps in cases:
        if mp not in ids and not (corpus / mp).is_dir():
            continue
        ref = _load(corpus, mp)
        cell, pos, species = supercell(ref, reps)
        _clear_caches()
        got, cold = _timed(lambda: compute_overlap(cell, pos, species, pao_dir=pao_dir))
        _, warm = _timed(lambda: compute_overlap(cell, pos, species, pao_dir=pao_dir), repeat=2)
        wall = json.loads((corpus / mp / "meta.json").read_text()).get("wall_s")
        label = f"{mp} {ref.formula} x{'x'.join(map(str, reps))}"
        results["supercells"].append({"id": mp, "reps": list(reps), "atoms": got.num_atoms, "pairs": got.num_pairs,
                                      "orbitals": got.num_orbitals, "cold_s": cold, "warm_s": warm,
                                      "openmx_primitive_wall_s": wall})
        print(f"{label:22s} {got.num_atoms:4d} {got.num_pairs:6d} {got.num_orbitals:8d} {cold:8.2f} {warm:8.2f} "
              f"{wall:11.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
