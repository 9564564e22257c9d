"""``aiida-deeph evaluate``: gauge-corrected metrics of a model on data, as JSON (no aiida needed)."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="metrics (meV) of a trained DeepH-2 model on data, as JSON")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a trained model folder")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="DFT data: packed .h5 files, DeepH-dock folders, OpenMX run folders, or folders of them")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="only this part of the model's own split.json (default: every structure of --data)")
    p.add_argument("--no-per-structure", action="store_true", help="leave out the per-structure table")
    p.set_defaults(func=run)


def run(args) -> int:
    from aiida_deeph.ml.evaluate import evaluate

    result = evaluate(args.model, args.data, device=args.device, num_workers=args.workers,
                      per_structure=not args.no_per_structure, split=args.split)
    print(json.dumps(result, indent=1, default=float))
    return 0
