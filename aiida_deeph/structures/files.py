"""Structures from files: any format pymatgen reads, or JSON (a pymatgen dict, or a record such as a
recording's ``meta.json`` with ``structure`` and an optional ``material_id``). Pure (never imports aiida)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_structure_file"]

_META_KEYS = ("formula", "source_record", "generated_from")


def read_structure_file(path) -> tuple:
    """(name, pymatgen Structure, metadata dict) of one file; the name is ``material_id``, the folder of a
    ``meta.json``, else the file's stem. Raises ValueError with one line for an unreadable file."""
    from pymatgen.core import Structure

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no structure file {path}")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "structure" in data:
                name = data.get("material_id") or (path.parent.name if path.name == "meta.json" else path.stem)
                return str(name), Structure.from_dict(data["structure"]), {k: data[k] for k in _META_KEYS if k in data}
            return path.stem, Structure.from_dict(data), {}
        return path.stem, Structure.from_file(str(path)), {}
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds; the user gets one line
        raise ValueError(f"cannot read a structure from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
