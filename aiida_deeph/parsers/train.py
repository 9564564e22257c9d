"""``DeepHTrainParser``: status.json / metrics / best.pt of ``aiida-deeph train`` -> model, metrics, curve, split."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.parsers import Parser

from aiida_deeph.data.model import MODEL_FILES, DeepHModelData

#: Messages of ``aiida-deeph train`` (``aiida_deeph.ml.data.discover`` and friends) for unusable data.
DATA_ERRORS = ("no structures found", "does not exist", "is not an aiida-deeph packed", "no deeph-dock folders",
               "packed format version", "unable to open file", "appears with two bases", "truncated file")
SCHEDULER_WALLTIME = 120


class DeepHTrainParser(Parser):
    """Parse a ``DeepHTrainCalculation``.

    ``status.json`` (written at every clean stop) says how the run ended; without it the job was
    killed: the scheduler's verdict (exit status 120 for the walltime, set on the node before the
    parser runs) and ``latest.json`` (written after each checkpoint) decide between 400/401/402.
    Outputs are attached whenever ``best.pt`` exists, also for a run that must be continued.
    """

    def parse(self, retrieved_temporary_folder=None, **kwargs):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except Exception:  # noqa: BLE001
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(detail="no retrieved folder")
        files = set(retrieved.base.repository.list_object_names())
        temp = Path(retrieved_temporary_folder) if retrieved_temporary_folder else None

        def text(name):
            return retrieved.base.repository.get_object_content(name, mode="r") if name in files else ""

        def load_json(name):
            try:
                return json.loads(text(name)) if name in files else None
            except ValueError:
                return None

        status = load_json("status.json")
        latest = load_json("latest.json")
        stderr = text(calc._STDERR)
        error_line = _last_error_line(stderr)
        scheduler_status = self.node.exit_status  # set by the scheduler output parser (e.g. 120), else None

        self._attach_outputs(files, temp, status, latest)

        if status is not None:
            reason = status.get("stop_reason")
            if reason in ("lr", "epochs"):
                return None
            if reason == "time":
                if status.get("resumable", latest is not None):
                    return self.exit_codes.ERROR_OUT_OF_WALLTIME_WITH_CHECKPOINT.format(
                        detail="time budget of the job", epochs=status.get("epochs"))
                return self.exit_codes.ERROR_OUT_OF_WALLTIME_NO_CHECKPOINT.format(detail="time budget of the job")
            if reason == "nan":
                return self.exit_codes.ERROR_NAN_LOSS.format(
                    detail=status.get("message") or "NaN/Inf loss; try a lower learning rate")
            if reason == "oom":
                return self.exit_codes.ERROR_CUDA_OUT_OF_MEMORY.format(detail=status.get("message") or error_line)
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(detail=f"unknown stop_reason {reason!r}")

        # no status.json: the process was killed, or failed before/outside the training loop
        if scheduler_status == SCHEDULER_WALLTIME:
            if latest is not None:
                return self.exit_codes.ERROR_OUT_OF_WALLTIME_WITH_CHECKPOINT.format(
                    detail="killed by the scheduler", epochs=latest.get("epoch"))
            return self.exit_codes.ERROR_OUT_OF_WALLTIME_NO_CHECKPOINT.format(detail="killed by the scheduler")
        low = stderr.lower()
        if "out of memory" in low:
            return self.exit_codes.ERROR_CUDA_OUT_OF_MEMORY.format(detail=error_line)
        if any(msg in low for msg in DATA_ERRORS):
            return self.exit_codes.ERROR_MISSING_DATA.format(detail=error_line)
        if scheduler_status:   # another scheduler verdict (node failure, out of memory): keep it
            return None
        if latest is not None:
            return self.exit_codes.ERROR_INTERRUPTED_WITH_CHECKPOINT.format(
                detail=error_line or "no status.json", epochs=latest.get("epoch"))
        return self.exit_codes.ERROR_OUTPUT_MISSING.format(detail=error_line or "no status.json")

    # ------------------------------------------------------------------------------------------
    def _attach_outputs(self, files: set, temp: Path | None, status: dict | None, latest: dict | None) -> None:
        retrieved = self.retrieved
        rows = []
        if "metrics.jsonl" in files:
            for line in retrieved.base.repository.get_object_content("metrics.jsonl", mode="r").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        if status is None and latest is not None:   # killed: epochs after the last checkpoint do not count
            rows = [r for r in rows if int(r.get("epoch", 0)) <= int(latest.get("epoch", 0))]
        if rows:
            self.out("learning_curve", _learning_curve(rows))
        split = None
        if "split.json" in files:
            try:
                split = json.loads(retrieved.base.repository.get_object_content("split.json", mode="r"))
            except ValueError:
                split = None
        if split is not None:
            self.out("split", orm.Dict(split))

        best = temp / "best.pt" if temp is not None else None
        model = None
        tmpdir = Path(tempfile.mkdtemp(prefix="deeph-model-"))
        try:
            for name in files:
                if name in MODEL_FILES or name in ("status.json", "test_metrics.json"):
                    with retrieved.base.repository.open(name, "rb") as src, open(tmpdir / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            if best is not None and best.is_file():
                shutil.copyfile(best, tmpdir / "best.pt")
            if all((tmpdir / f).is_file() for f in MODEL_FILES):
                model = DeepHModelData(tmpdir)
                basis = self._basis()
                if basis:
                    model.base.attributes.set("basis", basis)
                self.out("model", model)
            latest_pt = temp / "latest.pt" if temp is not None else None
            if latest_pt is not None and latest_pt.is_file():
                checkpoints = orm.FolderData()
                checkpoints.base.repository.put_object_from_file(str(latest_pt), "latest.pt")
                if (tmpdir / "best.pt").is_file():
                    checkpoints.base.repository.put_object_from_file(str(tmpdir / "best.pt"), "best.pt")
                self.out("checkpoints", checkpoints)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

        metrics = self._metrics(files, status, rows, model, latest)
        if metrics:
            self.out("metrics", orm.Dict(metrics))

    def _metrics(self, files, status, rows, model, latest) -> dict:
        retrieved = self.retrieved
        out = {}
        if status is not None:
            out.update(status)
        else:
            vals = [r["val_mae_meV"] for r in rows if _finite(r.get("val_mae_meV")) is not None]
            epochs = int(latest.get("epoch", 0)) if latest else 0
            out.update(stop_reason="killed", completed=False, epochs=epochs, resumable=latest is not None,
                       best_val_mae_meV=min(vals) if vals else None, last_val_mae_meV=vals[-1] if vals else None,
                       test_mae_meV=None)
        if "test_metrics.json" in files:
            try:
                test = json.loads(retrieved.base.repository.get_object_content("test_metrics.json", mode="r"))
            except ValueError:
                test = {}
            for key in ("mae_uncorrected_meV", "num_structures", "num_entries", "per_element_meV",
                        "per_element_pair_meV"):
                if key in test:
                    out[f"test_{key}"] = test[key]
        if rows:
            out["learning_curve_epochs"] = len(rows)
            out["elapsed_s_last_job"] = rows[-1].get("elapsed_s")
            rates = [r.get("structures_per_s") for r in rows if _finite(r.get("structures_per_s")) is not None]
            if rates:
                out["structures_per_s"] = rates[-1]
        if model is not None:
            out["num_parameters"] = model.base.attributes.get("num_parameters")
            out["elements"] = model.elements
        out["job_exit_status"] = self.node.exit_status
        return _clean(out)

    def _basis(self) -> dict:
        basis = {}
        hams = self.node.inputs.hamiltonians if "hamiltonians" in self.node.inputs else {}
        for node in dict(hams).values():
            basis.update(node.base.attributes.get("basis", {}) or {})
        dataset = self.node.inputs.dataset if "dataset" in self.node.inputs else None
        if dataset is not None:
            basis.update(dataset.base.extras.get("basis", {}) or {})
        return basis


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _clean(value):
    """JSON-safe: NaN/Inf -> None (AiiDA Dicts are stored as JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _learning_curve(rows: list) -> orm.ArrayData:
    def column(key, dtype=float):
        return np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], dtype=dtype)

    curve = orm.ArrayData()
    curve.set_array("epoch", np.array([int(r.get("epoch", i + 1)) for i, r in enumerate(rows)], dtype=np.int64))
    for key in ("train_loss", "val_mae_meV", "val_mae_uncorrected_meV", "lr", "epoch_time_s", "structures_per_s"):
        curve.set_array(key, column(key))
    curve.base.attributes.set("units", {"train_loss": "eV (loss)", "val_mae_meV": "meV", "lr": "1",
                                        "epoch_time_s": "s"})
    return curve


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line[:500]
    return lines[-1][:500] if lines else ""
