"""Training throughput of DeepH-2 (structures/s, edges/s, peak memory, FLOP/s and model FLOP utilisation).

    python benchmarks/bench_train.py [--preset paper] [--device cpu|cuda] [--dtype fp32|tf32|bf16]
                                     [--mix N | mp-ids...] [--steps 3] [--threads N] [--model JSON]
                                     [--peak-tflops X] [--json FILE]

Structures: the corpus runs given by id (default mp-134 mp-92 mp-1550), or with ``--mix N`` a realistic size
mix: N cell sizes drawn from the atoms-per-cell distribution of the MP snapshot (``../shared/mp``, 1003
structures, 1-102 atoms), each built by tiling a corpus cell onto a supercell (``physics.supercell.supercell``:
exact, so each is a real DFT target). One step = forward + gauge loss + backward + AdamW (the training loop's
``make_optimizer``); the first pass over the structures is a warm-up, then ``--steps`` passes are timed.

``--dtype``: ``fp32``; ``tf32`` (CUDA matmuls in TF32); ``bf16`` (the training loop's ``--amp``: autocast of the
trunk, the heads, Wigner-Eckart and the loss stay fp32). FLOPs are counted once per structure with
``torch.utils.flop_counter.FlopCounterMode`` (matmul-class operations, forward and backward; element-wise
work is not counted, so the utilisation is a lower bound). MFU = achieved FLOP/s / the device's peak for
that dtype: from ``--peak-tflops``, else from a table of dense peaks for known GPUs, else not reported.
To compare two checkouts side by side, run this file with ``PYTHONPATH`` pointing at each, alternately.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
# corpus cells the size mix is tiled from (1-10 atoms each)
MIX_IDS = ["mp-134", "mp-92", "mp-1550", "mp-2534", "mp-22862", "mp-1986", "mp-10182", "mp-2741", "mp-8039", "mp-1943",
           "mp-7000", "mp-28369"]
# dense peak TFLOP/s by (device-name fragment, dtype): vendor data sheets (no sparsity)
PEAK_TFLOPS = {("H200", "bf16"): 989.0, ("H200", "tf32"): 494.7, ("H200", "fp32"): 66.9,
               ("H100", "bf16"): 989.0, ("H100", "tf32"): 494.7, ("H100", "fp32"): 66.9,
               ("A100", "bf16"): 312.0, ("A100", "tf32"): 156.0, ("A100", "fp32"): 19.5}


def size_mix(n: int, seed: int = 0, index=SHARED / "mp" / "mp_light_elements_snapshot_index.csv") -> list:
    """``n`` atoms-per-cell values drawn from the MP snapshot's distribution."""
    sizes = [int(r["nsites"]) for r in csv.DictReader(open(index))]
    return np.random.default_rng(seed).choice(sizes, size=n).tolist()


def balanced_repeats(k: int) -> tuple:
    """(a, b, c) with a*b*c = k, as close to a cube as possible."""
    best = (k, 1, 1)
    for a in range(1, k + 1):
        if k % a:
            continue
        for b in range(1, k // a + 1):
            if (k // a) % b:
                continue
            c = k // a // b
            if max(a, b, c) < max(best):
                best = (a, b, c)
    return best


def tiled_structures(hams: list, sizes: list, seed: int = 0) -> list:
    """For each target size, a corpus cell tiled to about that many atoms (never more than needed)."""
    from aiida_deeph.physics.supercell import supercell

    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        fits = [h for h in hams if h.num_atoms <= n] or [min(hams, key=lambda h: h.num_atoms)]
        h = fits[int(rng.integers(len(fits)))]
        k = max(1, int(round(n / h.num_atoms)))
        reps = balanced_repeats(k)
        out.append(supercell(h, reps) if k > 1 else h)
    return out


def count_flops(step, g) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(g)
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, dtype: str, given: float | None) -> float | None:
    if given:
        return float(given)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (frag, dt), value in PEAK_TFLOPS.items():
        if frag in name and dt == dtype:
            return value
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", default=None)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--amp", action="store_true", help="same as --dtype bf16")
    ap.add_argument("--mix", type=int, default=0, help="N structures of the MP snapshot's size distribution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default=str(SHARED / "openmx-corpus"))
    ap.add_argument("--model", default="{}", help="JSON dict of ModelConfig keys over the preset")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for --dtype (MFU)")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    dtype = "bf16" if args.amp else args.dtype
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.graph import basis_metadata, collate_graphs, graph_to, prepare_graph
    from aiida_deeph.ml.loss import gauge_loss
    from aiida_deeph.ml.model import DeepH2
    from aiida_deeph.ml.train import TrainConfig, _autocast, make_optimizer

    ids = args.ids or (MIX_IDS if args.mix else ["mp-134", "mp-92", "mp-1550"])
    hams = [scfout_to_packed(read_scfout(find_run_files(Path(args.corpus) / i)["scfout"])) for i in ids]
    if args.mix:
        hams = tiled_structures(hams, size_mix(args.mix, args.seed), args.seed)
    ols, rc = {}, {}
    for h in hams:
        a, b = basis_metadata(h)
        ols.update(a)
        rc.update(b)
    cfg = ModelConfig.preset(args.preset, **json.loads(args.model)).with_elements(ols, rc)
    model = DeepH2(cfg).to(dev)
    opt = make_optimizer(model, TrainConfig(lr=4e-4, weight_decay=1e-3))
    graphs = [graph_to(collate_graphs([prepare_graph(h, model.basis)]), device=dev, dtype=torch.float32) for h in hams]
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def step(g):
        with _autocast(dev, dtype == "bf16"):
            pred = model(g)
        loss = gauge_loss(pred.float(), g["H"].float(), g["S"].float(), g["entry_batch"], 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = [count_flops(step, g) for g in graphs]        # also the warm-up pass
    for g in graphs:
        step(g)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    n, t = 0, time.perf_counter()
    for _ in range(args.steps):
        for g in graphs:
            step(g)
            n += 1
    sync()
    dt = time.perf_counter() - t
    edges = [int(g["num_edges"][0]) for g in graphs]
    atoms = [h.num_atoms for h in hams]
    achieved = args.steps * sum(flops) / dt
    peak = peak_tflops(dev, dtype, args.peak_tflops)
    res = {
        "preset": args.preset, "num_parameters": model.num_parameters(), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": dtype, "structures": len(graphs),
        "atoms_mean": float(np.mean(atoms)), "atoms_max": int(max(atoms)), "edges_mean": float(np.mean(edges)),
        "steps": n, "seconds": dt, "structures_per_s": n / dt, "edges_per_s": args.steps * sum(edges) / dt,
        "flop_per_structure_mean": float(np.mean(flops)), "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak, "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_memory_gb": (torch.cuda.max_memory_allocated(dev) / 1024 ** 3 if dev.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2),
        "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS",
    }
    print(f"preset {args.preset}: {res['num_parameters']} parameters; device {res['device_name']}; "
          f"threads {res['threads']}; dtype {dtype}")
    print(f"{n} training steps on {len(graphs)} structures ({res['atoms_mean']:.1f} atoms, "
          f"{res['edges_mean']:.0f} edges on average, largest {res['atoms_max']} atoms): "
          f"{res['structures_per_s']:.3f} structures/s, {res['edges_per_s']:.0f} edges/s, "
          f"{res['achieved_tflops'] * 1e3:.1f} GFLOP/s counted"
          + (f", MFU {100 * res['mfu']:.2f} % of {peak:g} TFLOP/s" if peak else "")
          + f", peak memory {res['peak_memory_gb']:.2f} GB ({res['peak_memory_kind']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
