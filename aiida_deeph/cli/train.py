"""``aiida-deeph train``: train a DeepH-2 model (no aiida needed)."""
from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a DeepH-2 model on Hamiltonian data",
                              description="Train (or resume, or fine-tune) a DeepH-2 model. PATH: DeepH-dock "
                                          "folders, folders holding them, packed HDF5 files or OpenMX run folders.")
    p.add_argument("--config", help="JSON file: {\"model\": {...ModelConfig}, \"train\": {...TrainConfig}}")
    p.add_argument("--preset", choices=("paper", "small", "tiny"), default="paper",
                   help="model and schedule preset (default: paper)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; stops cleanly, best kept")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--data", nargs="+", required=True, metavar="PATH")
    p.add_argument("--output", required=True, metavar="MODEL_DIR")
    p.add_argument("--parent", metavar="MODEL_DIR", help="fine-tune from this model (new elements allowed)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing MODEL_DIR")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.set_defaults(func=run)


def run(args) -> int:
    from aiida_deeph.cli.main import CliError
    from aiida_deeph.ml.model import ModelConfig
    from aiida_deeph.ml.train import TrainConfig, train

    model_kw, train_kw = {}, {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"cannot read config {args.config}: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"model", "train"}:
            raise CliError("config must be a JSON object with keys 'model' and/or 'train'")
        model_kw, train_kw = dict(data.get("model", {})), dict(data.get("train", {}))
    for k, v in (("max_minutes", args.max_minutes), ("max_epochs", args.max_epochs), ("seed", args.seed),
                 ("device", args.device), ("num_workers", args.workers)):
        if v is not None:
            train_kw[k] = v
    if args.amp:
        train_kw["amp"] = True
    try:
        mc = ModelConfig.preset(args.preset, **model_kw)
        tc = TrainConfig.preset(args.preset, **train_kw)
    except TypeError as exc:
        raise CliError(f"bad config: {exc}") from None
    out = Path(args.output)
    if args.no_resume and (out / "latest.pt").exists():
        raise CliError(f"{out} already holds a training run (drop --no-resume to continue it)")
    summary = train(args.data, out, model_config=mc, train_config=tc, preset=args.preset, parent=args.parent,
                    resume=not args.no_resume, log=lambda m: print(m, flush=True))
    print(json.dumps({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
                      for k, v in summary.items()}))
    return 0
