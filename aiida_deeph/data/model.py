"""``DeepHModelData``: a trained DeepH-2 model in the provenance graph (never a pickled class).

The repository holds the model directory written by ``aiida-deeph train``: ``config.json``,
``train_config.json``, ``metadata.json``, ``split.json``, ``metrics.jsonl`` and ``best.pt`` (a
state_dict; optionally ``latest.pt`` for exact resume). ``export(folder)`` writes them back so that
``aiida-deeph predict --model folder`` works outside AiiDA.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from aiida.orm import Data

MODEL_FILES = ("config.json", "train_config.json", "metadata.json", "split.json", "metrics.jsonl", "best.pt")
OPTIONAL_FILES = ("latest.pt", "status.json", "test_metrics.json")


class DeepHModelData(Data):
    """A DeepH-2 model: state_dict + JSON config + element/basis metadata + metrics.

    Attributes: ``architecture``, ``format_version``, ``num_parameters``, ``elements``, ``orbital_ls``,
    ``basis`` (element -> OpenMX basis string, when known), ``model_config``, ``best_val_mae_meV``,
    ``test_mae_meV``, ``epochs``, ``stop_reason``, ``has_latest``.
    """

    def __init__(self, model_dir=None, include_latest: bool = False, **kwargs):
        super().__init__(**kwargs)
        if model_dir is not None:
            self.set_model_dir(model_dir, include_latest=include_latest)

    def set_model_dir(self, model_dir, include_latest: bool = False) -> None:
        model_dir = Path(model_dir)
        missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
        if missing:
            raise ValueError(f"{model_dir} is not a DeepH model folder: missing {', '.join(missing)}")
        for name in MODEL_FILES + OPTIONAL_FILES:
            if name == "latest.pt" and not include_latest:
                continue
            if (model_dir / name).is_file():
                self.base.repository.put_object_from_file(str(model_dir / name), name)
        config = json.loads((model_dir / "config.json").read_text())
        meta = json.loads((model_dir / "metadata.json").read_text())
        status = {}
        if (model_dir / "status.json").is_file():
            status = json.loads((model_dir / "status.json").read_text())
        test = {}
        if (model_dir / "test_metrics.json").is_file():
            test = json.loads((model_dir / "test_metrics.json").read_text())
        best = _last_best(model_dir / "metrics.jsonl")

        def finite(x):
            return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None

        attrs = {
            "architecture": "DeepH-2 (equivariant local-coordinate transformer, SO(2) convolutions)",
            "format_version": meta.get("format_version", 1),
            "num_parameters": meta.get("num_parameters"),
            "elements": sorted(meta.get("elements", config.get("elements", []))),
            "orbital_ls": meta.get("orbital_ls", config.get("orbital_ls", {})),
            "basis": meta.get("basis", {}),
            "model_config": config,
            "best_val_mae_meV": finite(status.get("best_val_mae_meV", best)),
            "test_mae_meV": finite(test.get("mae_meV", test.get("corrected", {}).get("mae_meV")
                                            if isinstance(test.get("corrected"), dict) else None)),
            "epochs": status.get("epochs"),
            "stop_reason": status.get("stop_reason"),
            "has_latest": include_latest and (model_dir / "latest.pt").is_file(),
        }
        for key, value in attrs.items():
            self.base.attributes.set(key, value)

    def export(self, folder) -> Path:
        """Write the model folder (usable by ``aiida-deeph predict --model``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.base.repository.list_object_names():
            with self.base.repository.open(name, "rb") as src, open(folder / name, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        return folder

    @property
    def elements(self) -> list:
        return self.base.attributes.get("elements", [])

    @property
    def orbital_ls(self) -> dict:
        return self.base.attributes.get("orbital_ls", {})


def _last_best(path: Path):
    best = None
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = row.get("best_val_mae_meV", row.get("val_mae_meV"))
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = value if best is None else min(best, value)
    return best
