"""Evaluation of a trained model on data paths: gauge-corrected metrics as a dict (meV)."""
from __future__ import annotations

from .data import discover
from .train import evaluate_items, load_model


def evaluate(model_dir, data_paths, device=None, num_workers: int = 0, per_structure: bool = True) -> dict:
    model = load_model(model_dir, device=device)
    items = discover(data_paths)
    if not items:
        raise ValueError("no structures found in the data paths")
    result = evaluate_items(model, items, device=device, num_workers=num_workers, per_structure=per_structure)
    result["model"] = str(model_dir)
    result["num_parameters"] = model.num_parameters()
    return result
