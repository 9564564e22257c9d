"""Overlap S and atom pairs of any structure straight from OpenMX PAO files (no DFT; no aiida).

- :mod:`.pao`: reader of DFT_DATA19 ``.pao`` / ``.pao.xz`` files.
- :mod:`.twocenter`: two-centre overlaps (Bessel transforms + Gaunt coefficients, OpenMX grids).
- :mod:`.pairs`: the atom-pair rule of OpenMX (distance < rc_i + rc_j).
- :func:`compute_overlap`: structure -> :class:`~aiida_deeph.core.packed.PackedHamiltonian` (S only).
"""
from .compute import compute_overlap, read_structure, resolve_basis
from .pairs import find_pairs
from .pao import OverlapError, PaoFile, load_basis_functions, read_pao
from .twocenter import OPENMX_GRIDS, PairOverlap, TransformGrids

__all__ = [
    "OPENMX_GRIDS", "OverlapError", "PairOverlap", "PaoFile", "TransformGrids", "compute_overlap",
    "find_pairs", "load_basis_functions", "read_pao", "read_structure", "resolve_basis",
]
