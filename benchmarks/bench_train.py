"""Training throughput (structures/s) of the paper-size DeepH-2 model on corpus structures.

    python benchmarks/bench_train.py [--preset paper] [--model JSON] [--steps 3] [--threads N] [--device cpu|cuda] [mp-ids...]

``--model '{"mmax": 2}'`` overrides preset keys. The optimiser is the training loop's (``make_optimizer``). To
compare two checkouts side by side, run this file with ``PYTHONPATH`` pointing at each, alternately.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("ids", nargs="*", default=["mp-134", "mp-92", "mp-1550"])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "openmx-corpus"))
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--model", default="{}", help="JSON dict of ModelConfig keys over the preset")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout
    from aiida_deeph.ml.loss import gauge_loss
    from aiida_deeph.ml.model import (DeepH2, ModelConfig, basis_metadata, collate_graphs, graph_to,
                                      prepare_graph)

    hams = [scfout_to_packed(read_scfout(find_run_files(Path(args.corpus) / i)["scfout"])) for i in args.ids]
    ols, rc = {}, {}
    for h in hams:
        a, b = basis_metadata(h)
        ols.update(a)
        rc.update(b)
    import json

    cfg = ModelConfig.preset(args.preset, **json.loads(args.model)).with_elements(ols, rc)
    cfg.super_multiplicity = [3, 2, 2]
    cfg.max_pair_distance = 10.6
    dev = torch.device(args.device)
    model = DeepH2(cfg).to(dev)
    from aiida_deeph.ml.train import TrainConfig, make_optimizer

    opt = make_optimizer(model, TrainConfig(lr=4e-4, weight_decay=1e-3))
    graphs = [graph_to(collate_graphs([prepare_graph(h, model.basis)]), device=dev, dtype=torch.float32) for h in hams]
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def step(g):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and dev.type == "cuda"):
            pred = model(g)
        loss = gauge_loss(pred.float(), g["H"].float(), g["S"].float(), g["entry_batch"], 1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(graphs[0])
    sync()
    n, t = 0, time.perf_counter()
    for k in range(args.steps):
        for g in graphs:
            step(g)
            n += 1
    sync()
    dt = time.perf_counter() - t
    edges = sum(int(g["num_edges"][0]) for g in graphs) / len(graphs)
    print(f"preset {args.preset}: {model.num_parameters()} parameters; device {dev}; threads {torch.get_num_threads()}")
    print(f"{n} training steps on {', '.join(args.ids)} (mean {edges:.0f} edges): {n / dt:.3f} structures/s "
          f"({dt / n:.2f} s/structure)")


if __name__ == "__main__":
    main()
