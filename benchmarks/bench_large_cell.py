"""Time and peak memory of one training step and one prediction on a large cell (issue 13, item 2).

    python benchmarks/bench_large_cell.py [--id mp-2534] [--repeats 3 5 5] [--preset paper] [--threads N]
                                          [--steps 2] [--mode both|train|predict] [--checkpointing]

The cell is a corpus run tiled onto a supercell with ``physics.supercell.supercell``: exact, so its H is a
real DFT target (GaAs mp-2534 x 3x5x5: 150 atoms). Each mode runs in a fresh subprocess, so its peak RSS
(``ru_maxrss``) is its own: ``train`` = graph preparation + forward + loss + backward + AdamW step (the first
step is a warm-up, then ``--steps`` timed), ``predict`` = graph preparation + forward under ``no_grad``.
Prints one line per mode and, with ``--json FILE``, writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "openmx-corpus"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2     # Linux: kB


def run_mode(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.graph import basis_metadata, collate_graphs, prepare_graph
    from aiida_deeph.ml.loss import gauge_loss
    from aiida_deeph.ml.model import DeepH2
    from aiida_deeph.ml.train import TrainConfig, make_optimizer
    from aiida_deeph.physics.supercell import supercell

    prim = scfout_to_packed(read_scfout(find_run_files(Path(args.corpus) / args.id)["scfout"]))
    ham = supercell(prim, args.repeats)
    ols, rc = basis_metadata(ham)
    cfg = ModelConfig.preset(args.preset).with_elements(ols, rc)
    model = DeepH2(cfg)
    model.activation_checkpointing = args.checkpointing
    rss0 = _rss_gb()
    t0 = time.perf_counter()
    g = collate_graphs([prepare_graph(ham, model.basis)])
    t_prep = time.perf_counter() - t0
    out = {"mode": args.mode, "id": args.id, "repeats": list(args.repeats), "preset": args.preset,
           "num_parameters": model.num_parameters(), "atoms": ham.num_atoms, "pairs": ham.num_pairs,
           "edges": int(g["num_edges"][0]), "entries": ham.num_entries, "orbitals": ham.num_orbitals,
           "threads": torch.get_num_threads(), "prepare_s": t_prep, "rss_before_gb": rss0,
           "activation_checkpointing": args.checkpointing}
    if args.mode == "train":
        opt = make_optimizer(model, TrainConfig())
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            pred = model(g)
            loss = gauge_loss(pred, g["H"].to(pred.dtype), g["S"].to(pred.dtype), g["entry_batch"], 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        out["step_s"] = min(times[1:]) if len(times) > 1 else times[0]
        out["first_step_s"] = times[0]
    else:
        model.eval()
        times = []
        with torch.no_grad():
            for _ in range(args.steps + 1):
                t = time.perf_counter()
                model(g)
                times.append(time.perf_counter() - t)
        out["forward_s"] = min(times[1:]) if len(times) > 1 else times[0]
    out["peak_rss_gb"] = _rss_gb()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--id", default="mp-2534")
    ap.add_argument("--repeats", type=int, nargs=3, default=[3, 5, 5])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mode", default="both", choices=["both", "train", "predict"])
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the blocks")
    args = ap.parse_args(argv)
    if args.mode != "both":
        print(json.dumps(run_mode(args)))
        return 0
    results = []
    for mode in ("predict", "train"):
        cmd = [sys.executable, __file__, "--mode", mode, "--id", args.id, "--repeats", *map(str, args.repeats),
               "--preset", args.preset, "--steps", str(args.steps), "--corpus", args.corpus]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.checkpointing:
            cmd += ["--checkpointing"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{mode}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        timing = f"step {r['step_s']:.1f} s" if mode == "train" else f"forward {r['forward_s']:.1f} s"
        print(f"{mode}: {r['atoms']} atoms, {r['pairs']} pairs, {r['edges']} edges, {r['orbitals']} orbitals, "
              f"preset {r['preset']} ({r['num_parameters']} parameters), {r['threads']} threads: "
              f"graph {r['prepare_s']:.1f} s, {timing}, peak RSS {r['peak_rss_gb']:.2f} GB"
              + (" (activation checkpointing)" if r["activation_checkpointing"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
