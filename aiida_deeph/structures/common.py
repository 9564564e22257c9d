"""What every structure source shares: the paper's elements, the MP endpoint, the error type, MP id lists."""
from __future__ import annotations

#: The 24 elements of the paper's database (H-Br without transition metals except Cu, Zn; no noble gases).
ALLOWED_ELEMENTS: tuple[str, ...] = (
    "H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
    "K", "Ca", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
)

MP_DEFAULT_ENDPOINT = "https://api.materialsproject.org/"


class StructureSourceError(ValueError):
    """A structure source cannot be used (no API key, no network, bad snapshot file...)."""


def _normalise_ids(ids) -> list[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str):
        ids = ids.split(",")
    out = []
    for i in ids:
        s = str(i).strip()
        if not s:
            continue
        if s.isdigit():
            s = f"mp-{s}"
        if s not in out:
            out.append(s)
    return out
