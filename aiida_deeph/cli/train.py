"""``aiida-deeph train``: train a DeepH-2 model (no aiida needed).

Exit codes: 0 the run stopped cleanly (schedule ended, or the time / epoch budget of this run: see
``MODEL_DIR/status.json``, ``completed`` and ``resumable``), 1 bad input (missing or empty data, bad
config), 3 NaN/Inf loss (``stop_reason`` ``nan``), 4 out of (GPU) memory (``stop_reason`` ``oom``).
``--nproc-per-node N`` (N > 1) re-launches the command under ``python -m torch.distributed.run
--standalone --nproc_per_node N`` (one process per GPU, DistributedDataParallel). ``--nnodes M`` (M > 1,
inside a Slurm allocation) launches M torchrun agents with ``srun`` (one per Slurm task, normally one per
node), which meet at a c10d rendezvous on the allocation's first host; each starts N processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXIT_NAN = 3
EXIT_OOM = 4


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a DeepH-2 model on Hamiltonian data",
                              description="Train (or resume, or fine-tune) a DeepH-2 model. PATH: DeepH-dock "
                                          "folders, folders holding them, packed HDF5 files or OpenMX run folders.")
    p.add_argument("--config", help="JSON file: {\"model\": {...ModelConfig}, \"train\": {...TrainConfig}}")
    p.add_argument("--preset", choices=("paper", "medium", "small", "tiny"), default="paper",
                   help="model and schedule preset (default: paper)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; stops cleanly, best kept")
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (default: the preset's)")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="training data: packed .h5 files, DeepH-dock folders, OpenMX run folders, or folders of them")
    p.add_argument("--output", required=True, metavar="MODEL_DIR",
                   help="the model folder (created; an existing one is resumed)")
    p.add_argument("--parent", metavar="MODEL_DIR", help="fine-tune from this model (new elements allowed)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing MODEL_DIR")
    p.add_argument("--seed", type=int, default=None, help="random seed of the split, initialisation and order")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the network trunk (the output heads, Wigner-Eckart layer and loss stay float32); "
                        "meant for CUDA, works on CPU")
    p.add_argument("--max-epochs-per-run", type=int, default=None, metavar="K",
                   help="stop cleanly (resumable, like a time budget) after K epochs of this invocation")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="N > 1: run N processes (one per GPU) under torch.distributed.run --standalone")
    p.add_argument("--nnodes", type=int, default=1, metavar="M",
                   help="M > 1: M torchrun agents across the Slurm allocation (srun, c10d rendezvous), "
                        "N = --nproc-per-node processes each")
    p.add_argument("--no-test", action="store_true", help="skip the test-split evaluation at the end")
    p.set_defaults(func=run)


def _launch_distributed(args) -> int:
    """Re-run this command under ``torch.distributed.run`` with ``args.nproc_per_node`` processes."""
    argv = ["train", "--preset", args.preset, "--data", *map(str, args.data), "--output", str(args.output)]
    for flag, value in (("--config", args.config), ("--max-minutes", args.max_minutes),
                        ("--max-epochs", args.max_epochs), ("--parent", args.parent), ("--seed", args.seed),
                        ("--device", args.device), ("--workers", args.workers),
                        ("--max-epochs-per-run", args.max_epochs_per_run)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [flag for flag, on in (("--no-resume", args.no_resume), ("--amp", args.amp), ("--no-test", args.no_test))
             if on]
    if getattr(args, "traceback", False):
        argv.insert(0, "--traceback")
    if args.nnodes > 1:
        cmd = _srun_prefix(args.nnodes) + [sys.executable, "-m", "torch.distributed.run", *_rendezvous(args.nnodes),
                                           "--nproc_per_node", str(args.nproc_per_node), "-m",
                                           "aiida_deeph.cli.main"] + argv
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(args.nproc_per_node), "-m", "aiida_deeph.cli.main"] + argv
    print("launching: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False)
    status = _read_status(Path(args.output))
    code = {"nan": EXIT_NAN, "oom": EXIT_OOM}.get(status.get("stop_reason"))
    return code if code is not None and proc.returncode != 0 else proc.returncode


def _slurm_hosts() -> list:
    """The host names of the Slurm allocation (``scontrol show hostnames $SLURM_JOB_NODELIST``)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist:
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    import socket

    return [os.environ.get("SLURMD_NODENAME") or socket.gethostname()]


def _srun_prefix(nnodes: int) -> list:
    """``srun`` starting one torchrun agent per task: ``nnodes`` tasks spread over the allocation's nodes."""
    from aiida_deeph.cli.main import CliError

    if not os.environ.get("SLURM_JOB_ID"):
        raise CliError(f"--nnodes {nnodes} needs a Slurm allocation (run it inside sbatch/salloc; the "
                       "DeepHTrainCalculation does this with num_machines > 1)")
    nodes = max(1, int(os.environ.get("SLURM_JOB_NUM_NODES", "1") or 1))
    per_node = -(-nnodes // nodes)
    return ["srun", "--ntasks", str(nnodes), "--ntasks-per-node", str(per_node), "--kill-on-bad-exit=1"]


def _rendezvous(nnodes: int) -> list:
    """torchrun's c10d rendezvous on the allocation's first host, keyed by the Slurm job."""
    job = os.environ.get("SLURM_JOB_ID", "0")
    port = 29400 + int(job) % 500 if job.isdigit() else 29400
    return ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{_slurm_hosts()[0]}:{port}",
            "--rdzv_id", f"aiida-deeph-{job}"]


def _read_status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def run(args) -> int:
    if (args.nproc_per_node > 1 or args.nnodes > 1) and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _launch_distributed(args)
    from aiida_deeph.cli.main import CliError
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.train import TrainConfig, is_out_of_memory, train, write_status

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
    try:
        summary = train(args.data, out, model_config=mc, train_config=tc, preset=args.preset, parent=args.parent,
                        resume=not args.no_resume, log=lambda m: print(m, flush=True),
                        max_epochs_per_run=args.max_epochs_per_run, evaluate_test=not args.no_test)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"out of memory: {first} (try a smaller model, batch size or structures per batch, or --amp)"
        try:
            write_status(out, "oom", message=message)
        except OSError:
            pass
        raise CliError(message, code=EXIT_OOM) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
                          for k, v in summary.items()}))
    if summary["stop_reason"] == "nan":
        raise CliError(summary.get("message") or "NaN/Inf loss; try a lower learning rate", code=EXIT_NAN)
    return 0
