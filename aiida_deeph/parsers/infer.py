"""``DeepHInferParser``: ``outputs/<name>/`` of ``aiida-deeph predict`` -> HamiltonianData per input overlap."""
from __future__ import annotations

import re
from pathlib import Path

from aiida.parsers import Parser

from aiida_deeph.data.hamiltonian import HamiltonianData

_INCOMPATIBLE = (
    re.compile(r"is not known to this model"),
    re.compile(r"the model was trained with"),
)


def classify_stderr(text: str):
    """(kind, detail) from ``aiida-deeph predict``'s stderr: kind in incompatible, non_finite, cuda_oom,
    failed or None (no error line)."""
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    error = next((l for l in reversed(lines) if "error:" in l or "Error" in l), None)
    if error is None:
        return None, ""
    detail = error.split("error:", 1)[-1].strip() if "error:" in error else error
    if any(p.search(error) for p in _INCOMPATIBLE):
        return "incompatible", detail
    if "non-finite" in error:
        return "non_finite", detail
    if "out of memory" in error.lower():
        return "cuda_oom", detail
    return "failed", detail


class DeepHInferParser(Parser):
    """Parse a ``DeepHInferCalculation``."""

    def parse(self, **kwargs):
        from aiida_deeph.calculations.infer import OUTPUT_FOLDER, STDERR
        from aiida_deeph.io.dock import DockFormatError, read_dock

        try:
            retrieved = self.retrieved
        except Exception:  # noqa: BLE001
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
        files = set(retrieved.base.repository.list_object_names())
        stderr = retrieved.base.repository.get_object_content(STDERR, mode="r") if STDERR in files else ""
        kind, detail = classify_stderr(stderr)
        if kind == "incompatible":
            return self.exit_codes.ERROR_INCOMPATIBLE_MODEL.format(detail=detail)
        if kind == "non_finite":
            return self.exit_codes.ERROR_NON_FINITE_PREDICTION.format(detail=detail)
        if kind == "cuda_oom":
            return self.exit_codes.ERROR_CUDA_OUT_OF_MEMORY.format(detail=detail)

        temp = kwargs.get("retrieved_temporary_folder")
        out_root = Path(temp) / OUTPUT_FOLDER if temp else None
        names = sorted(self.node.inputs.overlaps)
        missing = [n for n in names if out_root is None or not (out_root / n / "hamiltonian.h5").is_file()]
        if missing:
            if kind == "failed":
                return self.exit_codes.ERROR_PREDICT_FAILED.format(detail=detail)
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(names=", ".join(missing))

        model = self.node.inputs.model
        outputs = {}
        for name in names:
            try:
                packed = read_dock(out_root / name, load=("hamiltonian", "overlap"), restore_order=True)
            except (DockFormatError, OSError, ValueError) as exc:
                return self.exit_codes.ERROR_READING_OUTPUT.format(detail=f"{name}: {exc}")
            source = self.node.inputs.overlaps[name]
            meta = {k: v for k, v in packed.meta.items() if k in ("mp_id", "structure_uuid", "basis", "supercell")}
            src_attrs = source.base.attributes
            for key in ("mp_id", "structure_uuid"):
                if meta.get(key) is None and src_attrs.get(key) is not None:
                    meta[key] = src_attrs.get(key)
            if not meta.get("basis") and src_attrs.get("basis"):
                meta["basis"] = dict(src_attrs.get("basis"))
            meta.update({"source": "model", "model_uuid": model.uuid, "overlap_uuid": source.uuid,
                         "model_test_mae_meV": model.base.attributes.get("test_mae_meV")})
            packed.meta = meta
            packed.fermi_energy_eV = None
            if src_attrs.get("has_position_matrix"):
                # r does not depend on H: the input's position matrix (from the PAO files) goes with it
                packed.position_matrix = _aligned_position_matrix(source.get_packed(load=("overlap", "position_matrix")),
                                                                  packed)
            if packed.num_electrons is None and src_attrs.get("num_electrons") is not None:
                packed.num_electrons = float(src_attrs.get("num_electrons"))
            try:
                outputs[name] = HamiltonianData(packed)
            except ValueError as exc:
                return self.exit_codes.ERROR_READING_OUTPUT.format(detail=f"{name}: {exc}")
        for name, node in outputs.items():
            node.base.attributes.set("model_uuid", model.uuid)
            self.out(f"hamiltonians.{name}", node)
        if kind == "failed":
            self.logger.warning(f"aiida-deeph predict wrote an error line although all outputs exist: {detail}")
        return None


def _aligned_position_matrix(source, packed):
    """``source.position_matrix`` in the pair order of ``packed`` (the same atom pairs)."""
    from aiida_deeph.core.packed import pairs_gather_index

    return source.position_matrix[pairs_gather_index(source.atom_pairs, source.offsets, packed.atom_pairs)]
