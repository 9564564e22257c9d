"""Evaluation of a trained model on data paths: gauge-corrected metrics as a dict (meV)."""
from __future__ import annotations

from pathlib import Path

from .data import discover
from .train import evaluate_items, load_model, saved_split


def evaluate(model_dir, data_paths, device=None, num_workers: int = 0, per_structure: bool = True,
             split: str | None = None) -> dict:
    """Metrics of the model in ``model_dir`` on the structures of ``data_paths``.

    ``split``: ``train``/``val``/``test`` keeps only that part of the model's own ``split.json``
    (``data_paths`` must hold the training data, as for ``aiida-deeph train``).
    """
    model = load_model(model_dir, device=device)
    items = discover(data_paths)
    if not items:
        raise ValueError("no structures found in the data paths")
    if split is not None:
        parts = saved_split(Path(model_dir) / "split.json", items, log=lambda *_: None)
        if parts is None:
            raise ValueError(f"{model_dir}/split.json is missing or does not match the structures of the data paths")
        items = parts[split]
        if not items:
            raise ValueError(f"the {split} split of {model_dir} is empty")
    result = evaluate_items(model, items, device=device, num_workers=num_workers, per_structure=per_structure)
    result["model"] = str(model_dir)
    result["split"] = split or "all"
    result["num_parameters"] = model.num_parameters()
    return result
