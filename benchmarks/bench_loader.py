"""The training data loader at scale: a synthetic set of tiled structures streamed from packed shards (issue 13, item 5).

    python benchmarks/bench_loader.py --out DIR [--num 10000] [--shard-size 500] [--compression gzip|none]
                                      [--workers 0 2] [--checkpoints 1000 5000 10000] [--json FILE]

1. Generation (skipped when ``DIR/shards`` already holds the set): ``--num`` cell sizes drawn from the MP
   snapshot's atoms-per-cell distribution (``bench_train.size_mix``), each a corpus cell tiled onto a
   supercell (``physics.supercell.supercell``: exact DFT targets), written ``--shard-size`` per packed file with
   the one shard writer (``core.packed.write_packed``, streamed: one structure in memory at a time).
2. Reading, as training reads: ``ml.data.discover`` on the shard folder, ``StructureDataset`` (no cache, so every
   structure comes from disk) and ``make_loader`` with each ``--workers`` count, in the training order (a
   permutation, so shards are hit at random). At each checkpoint (structures read so far) it records the
   structures/s and MB/s since the start and the peak RSS of the process tree (this process + the workers:
   ``ru_maxrss`` of self and of the reaped children, and the current RSS of live workers from /proc).
   Memory must stay flat with the number of structures.

What it is compared against: the model's consumption, measured by bench_train.py (structures/s of a training
step at each preset). Prints one line per checkpoint; ``--json`` writes all numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import MIX_IDS, SHARED, size_mix, tiled_structures  # noqa: E402


def _children_rss_gb() -> float:
    """Current RSS (GB) of live child processes (DataLoader workers)."""
    total = 0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:          # ppid
                continue
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024 ** 3


def _self_rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


def generate(shards: Path, num: int, shard_size: int, compression, log=print) -> dict:
    from aiida_deeph.core.packed import write_packed
    from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout

    shards.mkdir(parents=True, exist_ok=True)
    hams = [scfout_to_packed(read_scfout(find_run_files(SHARED / "openmx-corpus" / m)["scfout"],
                                         load_density_matrix=False)) for m in MIX_IDS]
    sizes = size_mix(num, seed=0)
    t0 = time.perf_counter()
    atoms = 0
    for s in range(0, num, shard_size):
        chunk = sizes[s:s + shard_size]

        def stream(chunk=chunk, s=s):
            nonlocal atoms
            for k, n in enumerate(chunk):
                ham = tiled_structures(hams, [n], seed=s + k)[0]
                atoms += ham.num_atoms
                yield f"s{s + k:06d}", ham

        write_packed(shards / f"shard-{s // shard_size:04d}.h5", stream(),
                     compression=None if compression == "none" else compression)
        done = min(s + shard_size, num)
        log(f"  generated {done}/{num} structures ({atoms} atoms), "
            f"{sum(f.stat().st_size for f in shards.glob('*.h5')) / 1e9:.2f} GB, {time.perf_counter() - t0:.0f} s")
    return {"num": num, "atoms": atoms, "seconds": time.perf_counter() - t0}


def read(shards: Path, workers: int, checkpoints, log=print) -> list:
    from aiida_deeph.core.basis import load_basis_table
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.data import StructureDataset, discover, make_loader
    from aiida_deeph.ml.graph import BasisMap

    items = discover([shards])
    # a config over the corpus table's elements (only its basis map is used: no network is built)
    table = load_basis_table("corpus")
    cfg = ModelConfig.preset("small").with_elements({el: table.orbital_ls(el) for el in table.elements},
                                                    {el: 8.0 for el in table.elements})
    ds = StructureDataset(items, BasisMap(cfg), with_targets=True)
    order = np.random.default_rng(1).permutation(len(items)).tolist()
    sizes = {}
    for f in shards.glob("*.h5"):
        sizes[str(f.resolve())] = f.stat().st_size
    bytes_per_structure = sum(sizes.values()) / len(items)
    rows = []
    t0 = time.perf_counter()
    peak_children = 0.0
    peak_self = 0.0
    wanted = sorted(c for c in checkpoints if c <= len(items)) or [len(items)]
    n = 0
    entries = 0
    for _names, g in make_loader(ds, order, 1, workers):
        n += 1
        entries += int(g["H"].numel())
        if n % 50 == 0 or n in wanted:
            peak_children = max(peak_children, _children_rss_gb())
            peak_self = max(peak_self, _self_rss_gb())
        if n in wanted:
            dt = time.perf_counter() - t0
            row = {"workers": workers, "structures": n, "seconds": dt, "structures_per_s": n / dt,
                   "mb_per_s": n * bytes_per_structure / dt / 1e6, "entries_per_s": entries / dt,
                   "rss_self_gb": peak_self, "rss_workers_gb": peak_children,
                   "maxrss_self_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}
            rows.append(row)
            log(f"  workers {workers}: {n} structures in {dt:.0f} s: {row['structures_per_s']:.1f} structures/s, "
                f"{row['mb_per_s']:.1f} MB/s; RSS main {peak_self:.2f} GB (max {row['maxrss_self_gb']:.2f}), "
                f"workers {peak_children:.2f} GB")
            if n == wanted[-1]:
                break
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--compression", default="gzip", choices=("gzip", "none"))
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    shards = Path(args.out) / "shards"
    result = {"num": args.num, "shard_size": args.shard_size, "compression": args.compression}
    have = sorted(shards.glob("shard-*.h5")) if shards.is_dir() else []
    if len(have) < -(-args.num // args.shard_size):
        print(f"generating {args.num} tiled structures into {shards} ...")
        result["generation"] = generate(shards, args.num, args.shard_size, args.compression)
    result["disk_gb"] = sum(f.stat().st_size for f in shards.glob("*.h5")) / 1e9
    print(f"set: {result['disk_gb']:.2f} GB on disk")
    result["reads"] = []
    for w in args.workers:
        result["reads"] += read(shards, w, args.checkpoints)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
