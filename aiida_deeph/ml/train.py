"""Training loop: gauge-invariant loss, AdamW, ReduceLROnPlateau, checkpoints, exact resume, DDP.

Model directory layout (no pickled classes anywhere):

* ``config.json``          model configuration (:class:`ModelConfig`)
* ``train_config.json``    training configuration (:class:`TrainConfig`)
* ``metadata.json``        elements, bases, cutoff radii, data sources, split sizes, parameter count
* ``split.json``           the 6:2:2 split (structure labels and keys)
* ``best.pt``              ``{"model": state_dict, ...}`` of the best validation MAE
* ``latest.pt``            model, optimizer, scheduler, RNG states, epoch (exact resume)
* ``metrics.jsonl``        one JSON line per epoch

Checkpoints hold only tensors and plain Python types and are loaded with ``weights_only=True``.
Data order of epoch ``e`` is a permutation seeded by ``(seed, e)``, so a resumed run repeats the
exact trajectory.  Under ``torchrun`` (``WORLD_SIZE > 1``) every rank takes its share of each
epoch's order, gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import StructureDataset, discover, make_loader, scan_metadata, split_items, write_split
from .loss import MetricAccumulator, gauge_loss
from .harmonics import union_multiplicity
from .model import BasisMap, DeepH2, ModelConfig, graph_to, grow_state_dict

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    lr: float = 4e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-3
    lr_factor: float = 0.5
    lr_patience: int = 20
    min_lr: float = 1e-5
    max_epochs: int = 100000
    max_minutes: float | None = None
    batch_size: int = 1
    seed: int = 0
    loss: str = "huber"            # huber | mse
    huber_delta: float = 0.01      # eV
    split: tuple = (0.6, 0.2, 0.2)
    num_workers: int = 0
    prefetch: int = 2
    amp: bool = False              # bf16 autocast on CUDA (loss and Wigner-Eckart stay fp32)
    device: str | None = None      # default: cuda if available
    dtype: str = "float32"
    grad_clip: float | None = 10.0
    val_every: int = 1
    cache_items: int = 0           # prepared structures kept in memory per process (0: stream every epoch)

    @classmethod
    def preset(cls, name: str, **kw) -> "TrainConfig":
        if name not in ("paper", "small", "tiny"):
            raise ValueError(f"unknown training preset {name!r}")
        base = {} if name == "paper" else dict(lr=2e-3 if name == "small" else 3e-3, lr_patience=10)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config key(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        for k in ("betas", "split"):
            if k in data and data[k] is not None:
                data[k] = tuple(data[k])
        return cls(**data)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(model_dir, device=None, which: str = "best") -> DeepH2:
    """Rebuild a model from ``config.json`` + ``<which>.pt`` (state_dict only, weights_only load)."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{model_dir}: not a model directory (no config.json)")
    cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    ckpt_path = model_dir / f"{which}.pt"
    if not ckpt_path.is_file():
        ckpt_path = model_dir / "latest.pt"
    if not ckpt_path.is_file():
        raise ValueError(f"{model_dir}: no checkpoint (best.pt / latest.pt)")
    ckpt = load_checkpoint(ckpt_path)
    model = DeepH2(cfg)
    model.load_state_dict(ckpt["model"])
    dtype = ckpt.get("dtype", "float32")
    model = model.to(dtype=getattr(torch, dtype))
    return model.to(device) if device else model


# ------------------------------------------------------------------------------------------------
# distributed helpers
# ------------------------------------------------------------------------------------------------
def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _all_reduce_np(vec: np.ndarray, world: int) -> np.ndarray:
    if world == 1:
        return vec
    import torch.distributed as dist

    t = torch.tensor(vec, dtype=torch.float64)
    dist.all_reduce(t)
    return t.numpy()


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_items(model: DeepH2, items: list, device=None, num_workers: int = 0, world: int = 1, rank: int = 0,
                   per_structure: bool = True, amp: bool = False, dataset=None) -> dict:
    """Gauge-corrected (and uncorrected) metrics of ``model`` on ``items`` (meV)."""
    acc = MetricAccumulator(model.cfg.elements)
    ds = dataset if dataset is not None else StructureDataset(items, model.basis)
    order = list(range(len(items)))[rank::world]
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    for names, g in make_loader(ds, order, 1, num_workers):
        g = graph_to(g, device=device)
        with _autocast(device, amp):
            pred = model(g)
        acc.add_batch(g, pred.to(torch.float64), names)
    model.train(was_training)
    if world > 1:
        acc.load_state(_all_reduce_np(acc.state(), world))
    out = acc.result(per_structure=per_structure)
    out["dtype"] = str(dtype).replace("torch.", "")
    return out


def _autocast(device, amp: bool):
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if amp and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def train(data_paths, output, model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          preset: str = "paper", parent: str | None = None, resume: bool = True, log=print) -> dict:
    """Train (or resume, or fine-tune from ``parent``) a DeepH-2 model; returns a summary dict."""
    tc = train_config or TrainConfig.preset(preset)
    world, rank, local = _dist_env()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = tc.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    is_main = rank == 0
    out = Path(output)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    items = discover(data_paths)
    if not items:
        raise ValueError("no structures found in the data paths")
    split = split_items(items, seed=tc.seed, fractions=tc.split)
    latest = out / "latest.pt"
    resuming = resume and latest.is_file()

    if resuming:
        model_cfg = ModelConfig.from_dict(json.loads((out / "config.json").read_text()))
        tc_saved = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
        tc_saved.max_minutes, tc_saved.max_epochs = tc.max_minutes, tc.max_epochs
        tc_saved.num_workers, tc_saved.device, tc_saved.cache_items = tc.num_workers, tc.device, tc.cache_items
        tc = tc_saved
        meta_scan = json.loads((out / "metadata.json").read_text())["data"]
    else:
        meta_scan = scan_metadata(split["train"] + split["val"] + split["test"])
        if parent:
            parent_cfg = ModelConfig.from_dict(json.loads((Path(parent) / "config.json").read_text()))
            model_cfg = parent_cfg.with_elements(meta_scan["orbital_ls"], meta_scan["cutoff_radius"])
            model_cfg.super_multiplicity = list(parent_cfg.multiplicity)
            try:
                BasisMap(model_cfg)
            except ValueError as exc:
                raise ValueError(f"fine-tuning: a new element's basis does not fit the parent's output basis "
                                 f"{tuple(parent_cfg.multiplicity)} ({exc})") from None
            model_cfg.max_pair_distance = max(parent_cfg.max_pair_distance, meta_scan["max_pair_distance"])
            if model_cfg.gaussian_range > parent_cfg.gaussian_range + 1e-9:
                model_cfg.max_pair_distance = parent_cfg.gaussian_range - 0.5   # keep the parent's smearing grid
                log(f"warning: fine-tuning data has pairs up to {meta_scan['max_pair_distance']:.2f} A; "
                    f"the parent's Gaussian range ({parent_cfg.gaussian_range:.2f} A) is kept")
        else:
            base = model_config or ModelConfig.preset(preset)
            model_cfg = base.with_elements(meta_scan["orbital_ls"], meta_scan["cutoff_radius"])
            if not model_cfg.super_multiplicity:
                # at least s3p2d2 (the largest basis of the corpus table): models stay fine-tunable
                mult = list(union_multiplicity(model_cfg.orbital_ls))
                mult += [0] * (3 - len(mult))
                model_cfg.super_multiplicity = [max(a, b) for a, b in zip(mult, (3, 2, 2))] + mult[3:]
            model_cfg.max_pair_distance = max(model_cfg.max_pair_distance, meta_scan["max_pair_distance"])
            if model_config is None or model_config.output_scale == 1.0:
                model_cfg.output_scale = float(meta_scan.get("h_rms", 1.0))

    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    random.seed(tc.seed)
    dtype = getattr(torch, tc.dtype)
    model = DeepH2(model_cfg)
    if parent and not resuming:
        pstate = load_checkpoint(Path(parent) / "best.pt")["model"]
        partial = grow_state_dict(model, pstate)
        if partial:
            log(f"fine-tuning: grew {len(partial)} parameter tables for new elements")
    model = model.to(device=device, dtype=dtype)
    nparams = model.num_parameters()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience)
    epoch, best = 0, math.inf
    history_len = 0
    if resuming:
        ck = load_checkpoint(latest)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        epoch, best = int(ck["epoch"]), float(ck["best_val_mae_meV"])
        log(f"resuming from epoch {epoch} (best val MAE {best:.3f} meV)") if is_main else None
    elif is_main:
        (out / "config.json").write_text(json.dumps(model_cfg.to_dict(), indent=1))
        (out / "train_config.json").write_text(json.dumps(tc.to_dict(), indent=1))
        write_split(out / "split.json", split)
        (out / "metadata.json").write_text(json.dumps({
            "format": "aiida-deeph-model", "format_version": CHECKPOINT_VERSION,
            "elements": model_cfg.elements, "orbital_ls": model_cfg.orbital_ls,
            "cutoff_radius_angstrom": model_cfg.cutoff_radius, "gaussian_range_angstrom": model_cfg.gaussian_range,
            "super_multiplicity": list(model_cfg.multiplicity), "orbital_order": "openmx", "energy_unit": "eV",
            "num_parameters": nparams, "parent": str(parent) if parent else None,
            "data_paths": [str(p) for p in data_paths],
            "split_sizes": {k: len(v) for k, v in split.items()}, "data": meta_scan,
        }, indent=1))

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if str(device).startswith("cuda") else None)
    train_ds = StructureDataset(split["train"], model.basis, cache_items=tc.cache_items)
    val_items = split["val"] or split["train"]
    val_ds = StructureDataset(val_items, model.basis, cache_items=tc.cache_items)
    if is_main:
        log(f"model: {nparams} parameters; structures train/val/test = "
            f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])}; device {device}; world {world}")

    def checkpoint_payload(ep, best_val):
        return {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(), "epoch": ep, "best_val_mae_meV": best_val,
                "config": json.dumps(model_cfg.to_dict()), "dtype": tc.dtype}

    stop_reason = None
    budget = tc.max_minutes * 60.0 if tc.max_minutes else None
    metrics_path = out / "metrics.jsonl"
    last_val = None
    while epoch < tc.max_epochs:
        if opt.param_groups[0]["lr"] < tc.min_lr * (1 - 1e-9):
            stop_reason = "lr"
            break
        t0 = time.monotonic()
        order = np.random.default_rng([tc.seed, epoch]).permutation(len(split["train"])).tolist()
        steps = math.ceil(len(order) / world / tc.batch_size) * tc.batch_size
        padded = (order * (world * steps // max(len(order), 1) + 1))[: world * steps]
        mine = padded[rank::world]
        net.train()
        tot_loss, nb, nstruct = 0.0, 0, 0
        out_of_time = False
        for names, g in make_loader(train_ds, mine, tc.batch_size, tc.num_workers, tc.prefetch):
            g = graph_to(g, device=device)
            with _autocast(device, tc.amp):
                pred = net(g)
            if pred.dtype in (torch.bfloat16, torch.float16):
                pred = pred.float()
            loss = gauge_loss(pred, g["H"].to(pred.dtype), g["S"].to(pred.dtype), g["entry_batch"], len(names),
                              kind=tc.loss, delta=tc.huber_delta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            tot_loss += float(loss.detach())
            nb += 1
            nstruct += len(names)
            if budget is not None and time.monotonic() - t_start > budget:
                out_of_time = True
                break
        if out_of_time:
            stop_reason = "time"
            if is_main and not (out / "best.pt").is_file():
                save_checkpoint(out / "best.pt", {"model": model.state_dict(), "epoch": epoch, "dtype": tc.dtype,
                                                  "best_val_mae_meV": math.nan, "partial_epoch": True})
            break
        train_time = time.monotonic() - t0
        epoch += 1
        rate = nstruct * world / max(train_time, 1e-9)
        record = {"epoch": epoch, "train_loss": tot_loss / max(nb, 1), "lr": opt.param_groups[0]["lr"],
                  "structures_per_s": rate, "epoch_time_s": train_time}
        improved = False
        near_end = epoch >= tc.max_epochs or (budget is not None and time.monotonic() - t_start > budget)
        if epoch % max(tc.val_every, 1) == 0 or near_end:
            val = evaluate_items(model, val_items, device=device, world=world, rank=rank, per_structure=False,
                                 amp=tc.amp, dataset=val_ds)
            last_val = float(val["mae_meV"])
            sched.step(last_val)
            improved = last_val < best
            if improved:
                best = last_val
            record.update(val_mae_meV=last_val, val_mae_uncorrected_meV=val["mae_uncorrected_meV"],
                          lr=opt.param_groups[0]["lr"])
        record["elapsed_s"] = time.monotonic() - t_start
        if is_main:
            if improved:
                save_checkpoint(out / "best.pt", {"model": model.state_dict(), "epoch": epoch, "dtype": tc.dtype,
                                                  "best_val_mae_meV": best})
            if "val_mae_meV" in record:
                save_checkpoint(latest, checkpoint_payload(epoch, best))
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            vtxt = f"val MAE {record['val_mae_meV']:8.3f} meV" if "val_mae_meV" in record else "val MAE        -    "
            log(f"epoch {epoch:5d}  loss {record['train_loss']:.3e}  {vtxt}  "
                f"lr {record['lr']:.2e}  {rate:6.2f} structures/s" + ("  *" if improved else ""))
        history_len += 1
        if budget is not None and time.monotonic() - t_start > budget:
            stop_reason = "time"
            break
    else:
        stop_reason = "epochs"
    if stop_reason is None:
        stop_reason = "lr"
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary = {"epochs": epoch, "best_val_mae_meV": best, "last_val_mae_meV": last_val, "stop_reason": stop_reason,
               "num_parameters": nparams, "elapsed_s": time.monotonic() - t_start, "output": str(out)}
    if is_main:
        log(f"stopped ({stop_reason}) after {epoch} epochs; best val MAE {best:.3f} meV; model in {out}")
    return summary
