"""Training loop: gauge-invariant loss, AdamW, ReduceLROnPlateau, checkpoints, exact resume, DDP.

Model directory layout (no pickled classes anywhere):

* ``config.json``          model configuration (:class:`ModelConfig`)
* ``train_config.json``    training configuration (:class:`TrainConfig`)
* ``metadata.json``        elements, bases, cutoff radii, data sources, split sizes, parameter count
* ``split.json``           the 6:2:2 split (structure labels and keys)
* ``best.pt``              ``{"model": state_dict, ...}`` of the best validation MAE (while a band term trains:
                           of the best validation band error, ``selected_by``)
* ``latest.pt``            model, optimizer, scheduler, RNG states, epoch (exact resume)
* ``metrics.jsonl``        one JSON line per epoch
* ``latest.json``          ``{"epoch": e}`` of ``latest.pt`` (written after it: its presence means a checkpoint)
* ``status.json``          how the last run ended: ``stop_reason`` (lr | epochs | time | nan | oom), ``completed``,
  ``epochs``, best/last validation and test MAE (meV), ``resumable``
* ``test_metrics.json``    the best model on the test split (gauge-corrected MAE, per element / pair)

Checkpoints hold only tensors and plain Python types and are loaded with ``weights_only=True``.
``latest.pt`` is written after every epoch, so a run killed at any moment (scheduler walltime)
resumes from its last completed epoch. Data order of epoch ``e`` is a permutation seeded by
``(seed, e)`` and a resumed run takes its split from ``split.json``, so it repeats the exact trajectory.
The split itself hashes structure labels (shard stem / name), not paths: the same data in another
folder (a new job's working directory) gets the same split. Under ``torchrun`` (``WORLD_SIZE > 1``)
every rank takes its share of each epoch's order, gradients are averaged by DistributedDataParallel
(gloo on CPU, nccl on GPU); stop decisions (NaN loss, time budget) are taken by all ranks together.
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

from aiida_deeph.core.files import atomic_path, write_json_atomic, write_text_atomic

from .config import ModelConfig
from .data import StructureDataset, discover, make_loader, scan_metadata, split_items, write_split
from .graph import BasisMap, graph_to
from .harmonics import union_multiplicity
from .init import grow_state_dict, init_onsite_reference
from .loss import MetricAccumulator, band_errors, band_loss, gauge_loss, onsite_entry_weights, projected_band_loss
from .model import DeepH2

# k-points of the validation band error (a Gamma-centred 2x2x2 mesh): it picks best.pt while a band term trains
VAL_BAND_KPOINTS = np.array([[a, b, c] for a in (0.0, 0.5) for b in (0.0, 0.5) for c in (0.0, 0.5)])

CHECKPOINT_VERSION = 1
STOP_REASONS = ("lr", "epochs", "time", "nan", "oom")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf (``status.json`` has ``stop_reason`` ``nan``)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or other device) out of memory."""
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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
    amp: bool = False              # bf16 autocast of the trunk (heads, Wigner-Eckart and loss stay fp32)
    device: str | None = None      # default: cuda if available
    dtype: str = "float32"
    grad_clip: float | None = 10.0
    val_every: int = 1
    cache_items: int = 0           # prepared structures kept in memory per process (0: stream every epoch)
    cache_mb: float = 1024.0       # ... or as many as fit in this many MB per process (0: none)
    onsite_reference: bool = True  # start on-site blocks at the data's per-element mean (init_onsite_reference)
    # learning-rate schedule: "plateau" (ReduceLROnPlateau on the validation MAE) or "cosine": from lr down
    # to lr * final_lr_ratio over the run's horizon, the time budget (max_minutes of the first run, training
    # seconds summed over resumed runs) or, without one, max_epochs
    schedule: str = "plateau"
    final_lr_ratio: float = 0.01
    # band loss (loss.band_loss): weight, random k-points per structure and step, window around E_F (eV)
    band_weight: float = 0.0
    # band stage: once the entry loss has converged (the plateau schedule would stop: lr below min_lr) or
    # when only band_stage_share of the time budget is left, training goes on with the band loss at
    # band_stage_weight, the learning rate restarting at band_stage_lr and decaying by cosine (to
    # x final_lr_ratio) over the rest of the budget, or over band_stage_epochs without one. best.pt is then
    # the best of the band stage (its entry MAE rises while the bands improve: RESULTS.md). 0: no stage.
    band_stage_weight: float = 0.0
    band_stage_lr: float = 5e-4
    band_stage_share: float = 0.34
    band_stage_epochs: int = 100
    band_kpoints: int = 2
    band_window_eV: float = 3.0
    # what the band term compares: "eigenvalues" (loss.band_loss), "projected" (loss.projected_band_loss:
    # the H error in the DFT eigenbasis) or "both" (their sum)
    band_loss_kind: str = "eigenvalues"
    # weight of the on-site entries in the entry loss (1: every entry counts the same; on-site blocks are ~1 %
    # of a carbon cell's entries but carry its largest errors: RESULTS.md)
    onsite_loss_weight: float = 1.0
    # recompute each transformer block's activations in the backward pass instead of keeping them: the same
    # gradients with less memory (a 150-atom cell at the paper preset: benchmarks/RESULTS.md)
    activation_checkpointing: bool = False

    def __post_init__(self):
        if self.band_loss_kind not in ("eigenvalues", "projected", "both"):
            raise ValueError(f"unknown band_loss_kind {self.band_loss_kind!r} (eigenvalues, projected, both)")

    @classmethod
    def preset(cls, name: str, **kw) -> TrainConfig:
        from .config import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown training preset {name!r} ({', '.join(PRESETS)})")
        base = {} if name in ("paper", "medium") else dict(lr=2e-3 if name == "small" else 3e-3, lr_patience=10)
        if name == "small":
            # small data: 8:1:1 leaves more structures to learn from than 6:2:2 (the cosine schedule measured
            # worse than ReduceLROnPlateau at 6 and 12 minutes on the carbon set: RESULTS.md)
            base.update(split=(0.8, 0.1, 0.1))
            # entry loss until the plateau schedule is done, then the band loss for the rest of the budget:
            # carbon set, 30 minutes: bands 2396 -> 78 meV, gaps 1613 -> 60 meV (RESULTS.md)
            base.update(band_stage_weight=0.03)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
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
# split and status
# ------------------------------------------------------------------------------------------------
def portable_split(items: list, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> dict:
    """:func:`split_items` on the items' labels (path-independent) when the labels are unique."""
    from .data import Item

    labels = [it.label for it in items]
    if len(set(labels)) != len(labels):
        return split_items(items, seed=seed, fractions=fractions)
    proxies = {Item(it.kind, "", it.label): it for it in items}
    split = split_items(list(proxies), seed=seed, fractions=fractions)
    return {k: [proxies[p] for p in v] for k, v in split.items()}


def saved_split(path, items: list, log=print):
    """The split of ``split.json`` mapped onto ``items`` (by key, else by label); None if it does not fit."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    by_key = {it.key: it for it in items}
    keys = saved.get("keys") or {}
    if keys and all(k in by_key for part in keys.values() for k in part):
        split = {part: [by_key[k] for k in keys.get(part, [])] for part in ("train", "val", "test")}
    else:
        by_label = {}
        for it in items:
            by_label.setdefault(it.label, []).append(it)
        wanted = [lab for part in ("train", "val", "test") for lab in saved.get(part, [])]
        if not wanted or any(len(by_label.get(lab, ())) != 1 for lab in wanted):
            return None
        split = {part: [by_label[lab][0] for lab in saved.get(part, [])] for part in ("train", "val", "test")}
    extra = len(items) - sum(len(v) for v in split.values())
    if extra > 0:
        log(f"warning: {extra} structure(s) of the data are not in the saved split and are not used")
    return split


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def write_status(output, stop_reason: str, epochs=None, best_val=None, last_val=None, test_mae=None,
                 message: str | None = None, **extra) -> dict:
    """Write ``status.json`` of a model directory (atomically) and return it."""
    out = Path(output)
    if epochs is None or best_val is None:
        rows = read_metrics(out / "metrics.jsonl")
        if epochs is None:
            epochs = _latest_epoch(out)
        vals = [r["val_mae_meV"] for r in rows if _finite(r.get("val_mae_meV")) is not None
                and r.get("epoch", 0) <= (epochs or 0)]
        if best_val is None and vals:
            best_val = min(vals)
        if last_val is None and vals:
            last_val = vals[-1]
    status = {
        "stop_reason": stop_reason,
        "completed": stop_reason in ("lr", "epochs"),
        "epochs": int(epochs or 0),
        "best_val_mae_meV": _finite(best_val),
        "last_val_mae_meV": _finite(last_val),
        "test_mae_meV": _finite(test_mae),
        "resumable": (out / "latest.pt").is_file(),
    }
    if message:
        status["message"] = message
    status.update(extra)
    if out.is_dir():
        write_json_atomic(out / "status.json", status, indent=1)
    return status


def read_metrics(path) -> list:
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _latest_epoch(out: Path) -> int:
    try:
        return int(json.loads((out / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop lines of epochs after ``epoch`` (written by a run killed before its checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line).get("epoch", 0)) > epoch:
                continue
        except (ValueError, TypeError, AttributeError):
            continue
        keep.append(line)
    if len(keep) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in keep))


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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(vec, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy()


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_items(model: DeepH2, items: list, device=None, num_workers: int = 0, world: int = 1, rank: int = 0,
                   per_structure: bool = True, amp: bool = False, dataset=None, band_kpoints=None) -> dict:
    """Gauge-corrected (and uncorrected) metrics of ``model`` on ``items`` (meV); with ``band_kpoints``
    (and a dataset prepared ``with_kspace``) also ``band_mae_meV``, the mean |band error| at those k-points
    within E_F +- 3 eV (:func:`loss.band_errors`)."""
    acc = MetricAccumulator(model.cfg.elements)
    ds = dataset if dataset is not None else StructureDataset(items, model.basis)
    order = list(range(len(items)))[rank::world]
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    band_acc = np.zeros(2)
    for names, g in make_loader(ds, order, 1, num_workers):
        g = graph_to(g, device=device)
        with _autocast(device, amp):
            pred = model(g)
        acc.add_batch(g, pred.to(torch.float64), names)
        if band_kpoints is not None:
            sums, counts = band_errors(pred, g, len(names), band_kpoints)
            band_acc += [sums.sum(), counts.sum()]
    model.train(was_training)
    if world > 1:
        acc.load_state(_all_reduce_np(acc.state(), world))
        band_acc = _all_reduce_np(band_acc, world)
    out = acc.result(per_structure=per_structure)
    if band_kpoints is not None:
        out["band_mae_meV"] = 1000.0 * float(band_acc[0] / band_acc[1]) if band_acc[1] else math.nan
    out["dtype"] = str(dtype).replace("torch.", "")
    return out


def _autocast(device, amp: bool):
    """bf16 autocast of the network trunk (the heads, Wigner-Eckart and the loss stay in float32)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if amp and dev.type in ("cuda", "cpu"):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def make_optimizer(model, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the per-element/pair output offsets of the heads (``head_*.bias``) are not weight-decayed:
    decay would pull them towards zero by ~lr*wd*|b| every step, whatever the data say."""
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias.weight") and n.startswith("head_")]
    ids = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:   # the fused kernel: one pass over all parameters (on CPU 3-6x faster than the per-tensor loop)
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):   # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)


def _new_model_config(meta_scan: dict, model_config, preset: str, parent, log) -> tuple:
    """(ModelConfig of a new run, the parent's config or None): the data's elements and pair range on the
    preset (or ``model_config``), or on the parent's config when fine-tuning (its output basis kept)."""
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
        return model_cfg, parent_cfg
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
    return model_cfg, None


def _start_from(model: DeepH2, tc: TrainConfig, split: dict, parent, parent_cfg, is_main: bool, log) -> None:
    """The starting weights of a new run: the parent's (grown for new elements) when fine-tuning, and the
    on-site reference blocks from the training data (rank 0; DDP broadcasts its buffers)."""
    if parent:
        pstate = load_checkpoint(Path(parent) / "best.pt")["model"]
        partial = grow_state_dict(model, pstate)
        if partial:
            log(f"fine-tuning: grew {len(partial)} parameter tables for new elements")
    if tc.onsite_reference and is_main:
        new_elements = None
        if parent:
            new_elements = [e for e in model.cfg.elements if e not in parent_cfg.elements]
        ref_ds = StructureDataset(split["train"], model.basis)
        used = init_onsite_reference(model, (ref_ds[k][1] for k in range(len(ref_ds))), elements=new_elements)
        if used:
            log("on-site reference from the training data (atoms used): "
                + ", ".join(f"{e} {n}" for e, n in used.items()))


def train(data_paths, output, model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          preset: str = "paper", parent: str | None = None, resume: bool = True, log=print,
          max_epochs_per_run: int | None = None, evaluate_test: bool = True) -> dict:
    """Train (or resume, or fine-tune from ``parent``) a DeepH-2 model; returns a summary dict.

    ``max_epochs_per_run``: stop cleanly (``stop_reason`` ``time``, resumable) after this many epochs of
    this invocation, a deterministic stand-in for a wall-time budget. A NaN/Inf loss stops the run with
    ``stop_reason`` ``nan`` (the last checkpoint stays that of the last good epoch). ``status.json`` is
    written at the end; ``test_metrics.json`` (the best model on the test split) after a completed or
    time-stopped run when ``evaluate_test``.
    """
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
        for stale in ("status.json", "test_metrics.json"):   # of an earlier job in this folder
            (out / stale).unlink(missing_ok=True)
    t_start = time.monotonic()

    items = discover(data_paths)
    if not items:
        raise ValueError("no structures found in the data paths")
    latest = out / "latest.pt"
    resuming = resume and latest.is_file()
    split = saved_split(out / "split.json", items, log=log) if resuming else None
    if split is None:
        if resuming:
            log("warning: split.json does not match the data; the split is recomputed")
        split = portable_split(items, seed=tc.seed, fractions=tc.split)

    if resuming:
        model_cfg = ModelConfig.from_dict(json.loads((out / "config.json").read_text()))
        tc_saved = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
        tc_saved.max_minutes, tc_saved.max_epochs = tc.max_minutes, tc.max_epochs
        tc_saved.num_workers, tc_saved.device, tc_saved.cache_items = tc.num_workers, tc.device, tc.cache_items
        tc_saved.cache_mb = tc.cache_mb
        tc = tc_saved
        meta_scan = json.loads((out / "metadata.json").read_text())["data"]
    else:
        meta_scan = scan_metadata(split["train"] + split["val"] + split["test"])
        model_cfg, parent_cfg = _new_model_config(meta_scan, model_config, preset, parent, log)

    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    random.seed(tc.seed)
    dtype = getattr(torch, tc.dtype)
    model = DeepH2(model_cfg)
    if not resuming:
        _start_from(model, tc, split, parent, parent_cfg, is_main, log)
    model = model.to(device=device, dtype=dtype)
    model.activation_checkpointing = bool(tc.activation_checkpointing)
    nparams = model.num_parameters()
    opt = make_optimizer(model, tc)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience)
    if tc.schedule not in ("plateau", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {tc.schedule!r} (plateau, cosine)")
    # best: the value best.pt was chosen by (the validation MAE; the validation band error while a band term
    # trains, VAL_BAND_KPOINTS); best_mae: the validation MAE of best.pt
    epoch, best, best_mae = 0, math.inf, math.inf
    history_len = 0
    stage = {"active": False, "start_seconds": None, "start_epoch": None}   # the band stage (TrainConfig)
    # cosine schedule: horizon (seconds of training, or epochs) and the training seconds of earlier runs
    horizon = {"seconds": tc.max_minutes * 60.0 if tc.max_minutes else None, "epochs": tc.max_epochs}
    prior_seconds = 0.0
    if resuming:
        ck = load_checkpoint(latest)
        model.load_state_dict(ck["model"])
        if len(ck["optimizer"]["param_groups"]) == 1:   # checkpoints before the no-decay group
            opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=tc.lr_factor,
                                                               patience=tc.lr_patience)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        epoch, best_mae = int(ck["epoch"]), float(ck["best_val_mae_meV"])
        best = float(ck.get("best_criterion", best_mae))
        horizon = ck.get("schedule_horizon", horizon)
        prior_seconds = float(ck.get("train_seconds", 0.0))
        stage.update(ck.get("band_stage") or {})
        if is_main:
            _truncate_metrics(out / "metrics.jsonl", epoch)
        log(f"resuming from epoch {epoch} (best val MAE {best_mae:.3f} meV)") if is_main else None
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
    bands_on = tc.band_weight > 0 or tc.band_stage_weight > 0
    train_ds = StructureDataset(split["train"], model.basis, cache_items=tc.cache_items, cache_mb=tc.cache_mb,
                                with_kspace=bands_on)
    val_items = split["val"] or split["train"]
    val_ds = StructureDataset(val_items, model.basis, cache_items=tc.cache_items, cache_mb=tc.cache_mb,
                              with_kspace=bands_on)
    if is_main:
        log(f"model: {nparams} parameters; structures train/val/test = "
            f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])}; device {device}; world {world}")

    def checkpoint_payload(ep, best_val):
        return {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(), "epoch": ep, "best_val_mae_meV": best_mae,
                "best_criterion": best_val,
                "config": json.dumps(model_cfg.to_dict()), "dtype": tc.dtype, "schedule_horizon": horizon,
                "train_seconds": train_seconds(), "band_stage": dict(stage)}

    def train_seconds() -> float:
        """Training seconds of this run and the earlier ones it resumes."""
        return prior_seconds + time.monotonic() - t_loop

    def lr_at_min() -> bool:
        """The plateau schedule is done: its learning rate fell below min_lr."""
        return opt.param_groups[0]["lr"] < tc.min_lr * (1 - 1e-9)

    def cosine_factor(p: float) -> float:
        """1 -> final_lr_ratio along a cosine at progress p (0..1); every rank takes the ranks' mean
        progress (their clocks differ), so the learning rate is the same on all of them."""
        if world > 1:
            p = float(_all_reduce_np(np.array([p]), world)[0]) / world
        p = min(max(p, 0.0), 1.0)
        r = tc.final_lr_ratio
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))

    def stage_lr(ep_fraction: float) -> float:
        """Learning rate in the band stage: cosine from band_stage_lr over the rest of the budget."""
        if horizon.get("seconds"):
            span = max(horizon["seconds"] - stage["start_seconds"], 1e-9)
            p = (train_seconds() - stage["start_seconds"]) / span
        else:
            p = (ep_fraction - stage["start_epoch"]) / max(tc.band_stage_epochs, 1)
        return tc.band_stage_lr * cosine_factor(p)

    def start_band_stage(why: str) -> None:
        nonlocal best, best_mae
        stage.update(active=True, start_seconds=train_seconds(), start_epoch=epoch)
        best = best_mae = math.inf          # best.pt: the best of the band stage, by its validation band error
        for group in opt.param_groups:
            group["lr"] = tc.band_stage_lr
        if is_main:
            log(f"band stage from epoch {epoch} ({why}): band loss weight {tc.band_stage_weight:g}, "
                f"lr {tc.band_stage_lr:.1e} -> x{tc.final_lr_ratio:g} (cosine)")

    def cosine_lr(ep_fraction: float) -> float:
        """lr factor of the cosine schedule at this point of the run (1 -> final_lr_ratio)."""
        if horizon.get("seconds"):
            p = train_seconds() / horizon["seconds"]
        else:
            p = ep_fraction / max(horizon.get("epochs") or 1, 1)
        return cosine_factor(p)

    stop_reason = None
    budget = tc.max_minutes * 60.0 if tc.max_minutes else None
    metrics_path = out / "metrics.jsonl"
    last_val = None
    first_epoch = epoch
    nan_message = None
    t_loop = time.monotonic()
    while epoch < tc.max_epochs:
        if tc.band_stage_weight > 0 and not stage["active"]:
            # the stage starts when the entry loss is done, or when only its share of the time budget is left
            # (the same decision on every rank: the lr is synchronised, the clock is reduced)
            converged = tc.schedule == "plateau" and lr_at_min()
            late = bool(horizon.get("seconds")) and train_seconds() > (1.0 - tc.band_stage_share) * horizon["seconds"]
            if world > 1:
                late = bool(_all_reduce_np(np.array([late], dtype=float), world)[0] > 0)
            if converged or late:
                start_band_stage("entry loss converged" if converged else
                                 f"{tc.band_stage_share:.0%} of the time budget left")
        if stage["active"]:
            if not horizon.get("seconds") and epoch - stage["start_epoch"] >= tc.band_stage_epochs:
                stop_reason = "lr"
                break
        elif tc.schedule == "plateau" and lr_at_min():
            stop_reason = "lr"
            break
        if max_epochs_per_run is not None and epoch - first_epoch >= max_epochs_per_run:
            stop_reason = "time"
            break
        t0 = time.monotonic()
        order = np.random.default_rng([tc.seed, epoch]).permutation(len(split["train"])).tolist()
        steps = math.ceil(len(order) / world / tc.batch_size) * tc.batch_size
        padded = (order * (world * steps // max(len(order), 1) + 1))[: world * steps]
        mine = padded[rank::world]
        net.train()
        tot_loss, nb, nstruct = 0.0, 0, 0
        out_of_time = False
        steps_per_epoch = max(len(mine) // tc.batch_size, 1)
        for names, g in make_loader(train_ds, mine, tc.batch_size, tc.num_workers, tc.prefetch):
            if stage["active"] or tc.schedule == "cosine":
                progress = epoch + nb / steps_per_epoch
                # every group starts at tc.lr (band stage: at band_stage_lr)
                lr = stage_lr(progress) if stage["active"] else tc.lr * cosine_lr(progress)
                for group in opt.param_groups:
                    group["lr"] = lr
            g = graph_to(g, device=device)
            with _autocast(device, tc.amp):
                pred = net(g)
            if pred.dtype in (torch.bfloat16, torch.float16):
                pred = pred.float()
            weights = onsite_entry_weights(g, tc.onsite_loss_weight, pred.dtype)
            loss = gauge_loss(pred, g["H"].to(pred.dtype), g["S"].to(pred.dtype), g["entry_batch"], len(names),
                              kind=tc.loss, delta=tc.huber_delta, weights=weights)
            band_w = tc.band_stage_weight if stage["active"] else tc.band_weight
            if band_w > 0:
                gen = torch.Generator().manual_seed(int(tc.seed) * 1_000_003 + epoch * 10_007 + nb + rank * 7919)
                kw = dict(num_k=tc.band_kpoints, window_eV=tc.band_window_eV, delta=tc.huber_delta, generator=gen)
                if tc.band_loss_kind in ("eigenvalues", "both"):
                    loss = loss + band_w * band_loss(pred, g, len(names), **kw)
                if tc.band_loss_kind in ("projected", "both"):
                    loss = loss + band_w * projected_band_loss(pred, g, len(names), **kw)
            bad = not bool(torch.isfinite(loss.detach()))
            over = budget is not None and time.monotonic() - t_start > budget
            if world > 1:   # every rank takes the same decision
                bad, over = (bool(x > 0) for x in _all_reduce_np(np.array([bad, over], dtype=float), world))
            if bad:
                nan_message = (f"NaN/Inf loss at epoch {epoch + 1}, step {nb + 1} (learning rate "
                               f"{opt.param_groups[0]['lr']:.2e}); try a lower learning rate")
                break
            if over:
                out_of_time = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            tot_loss += float(loss.detach())
            nb += 1
            nstruct += len(names)
        if nan_message is not None:
            stop_reason = "nan"
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
        if stage["active"]:
            record["stage"] = "band"
        improved = False
        # stop after this epoch when the next one would not fit in the budget. No extra validation for
        # budget stops (latest.pt is written every epoch): the resumed run repeats the uninterrupted one.
        out_of_budget = budget is not None and time.monotonic() - t_start + train_time > budget
        if world > 1 and budget is not None:
            out_of_budget = bool(_all_reduce_np(np.array([out_of_budget], dtype=float), world)[0] > 0)
        near_end = epoch >= tc.max_epochs
        if epoch % max(tc.val_every, 1) == 0 or near_end:
            by_bands = stage["active"] or tc.band_weight > 0
            val = evaluate_items(model, val_items, device=device, world=world, rank=rank, per_structure=False,
                                 amp=tc.amp, dataset=val_ds, band_kpoints=VAL_BAND_KPOINTS if by_bands else None)
            last_val = float(val["mae_meV"])
            val_band = val.get("band_mae_meV", math.nan)
            if not math.isfinite(last_val):
                nan_message = f"NaN/Inf validation MAE at epoch {epoch}; try a lower learning rate"
                stop_reason = "nan"
                epoch -= 1
                break
            if tc.schedule == "plateau" and not stage["active"]:
                sched.step(last_val)
            criterion = val_band if by_bands and math.isfinite(val_band) else last_val
            improved = criterion < best
            if improved:
                best, best_mae = criterion, last_val
            record.update(val_mae_meV=last_val, val_mae_uncorrected_meV=val["mae_uncorrected_meV"],
                          lr=opt.param_groups[0]["lr"])
            if by_bands:
                record["val_band_mae_meV"] = val_band
        record["elapsed_s"] = time.monotonic() - t_start
        if is_main:
            if improved:
                save_checkpoint(out / "best.pt", {"model": model.state_dict(), "epoch": epoch, "dtype": tc.dtype,
                                                  "best_val_mae_meV": best_mae, "best_criterion": best,
                                                  "selected_by": "val_band_mae_meV" if by_bands else "val_mae_meV"})
            # metrics first, then the checkpoint (a resume drops metrics lines past the checkpoint's epoch)
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            save_checkpoint(latest, checkpoint_payload(epoch, best))
            write_json_atomic(out / "latest.json", {"epoch": epoch, "best_val_mae_meV": _finite(best_mae)})
            vtxt = f"val MAE {record['val_mae_meV']:8.3f} meV" if "val_mae_meV" in record else "val MAE        -    "
            if "val_band_mae_meV" in record:
                vtxt += f"  bands {record['val_band_mae_meV']:7.1f} meV"
            log(f"epoch {epoch:5d}  loss {record['train_loss']:.3e}  {vtxt}  "
                f"lr {record['lr']:.2e}  {rate:6.2f} structures/s" + ("  *" if improved else ""))
        history_len += 1
        if out_of_budget:
            stop_reason = "time"
            break
    else:
        stop_reason = "epochs"
    if stop_reason is None:
        stop_reason = "lr"
    if stop_reason == "time" and epoch >= tc.max_epochs:
        stop_reason = "epochs"      # the budget ran out exactly with the schedule
    elif stop_reason == "time" and tc.schedule == "plateau" and not stage["active"] and lr_at_min():
        stop_reason = "lr"
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    test_mae = None
    if stop_reason in ("lr", "epochs", "time") and evaluate_test and split["test"] and (out / "best.pt").is_file():
        best_state = load_checkpoint(out / "best.pt")["model"]
        model.load_state_dict(best_state)
        test_ds = StructureDataset(split["test"], model.basis)
        res = evaluate_items(model, split["test"], device=device, world=world, rank=rank, per_structure=world == 1,
                             amp=tc.amp, dataset=test_ds)
        test_mae = res["mae_meV"]
        if is_main:
            res["split"] = "test"
            res["checkpoint"] = "best.pt"
            res["epochs"] = epoch
            write_json_atomic(out / "test_metrics.json", res, indent=1, default=float)
            log(f"test MAE of the best model: {test_mae:.3f} meV ({len(split['test'])} structures)")
    summary = {"epochs": epoch, "best_val_mae_meV": best_mae, "last_val_mae_meV": last_val, "stop_reason": stop_reason,
               "num_parameters": nparams, "elapsed_s": time.monotonic() - t_start, "output": str(out),
               "test_mae_meV": test_mae, "completed": stop_reason in ("lr", "epochs")}
    if nan_message:
        summary["message"] = nan_message
    if is_main:
        write_status(out, stop_reason, epochs=epoch, best_val=best_mae, last_val=last_val, test_mae=test_mae,
                     message=nan_message)
        log(f"stopped ({stop_reason}) after {epoch} epochs; best val MAE {best_mae:.3f} meV; model in {out}")
    return summary
