"""Cell geometry shared by every layer: reciprocal cells, k-point coordinates and Monkhorst-Pack grids.

Convention: ``cell`` rows are the lattice vectors a_i (Angstrom); reciprocal vectors b_i are rows, in 1/Angstrom
with 2 pi included (a_i . b_j = 2 pi delta_ij); fractional k are coordinates in the b_i basis.
"""
from __future__ import annotations

import math

import numpy as np


class LatticeError(ValueError):
    """A k-point spacing or cell that cannot give a grid, with a one-line message."""


def reciprocal_cell(cell) -> np.ndarray:
    """Rows are the reciprocal vectors b_i (1/Angstrom, 2 pi included) of the rows a_i of ``cell``."""
    return 2.0 * np.pi * np.linalg.inv(np.asarray(cell, dtype=np.float64)).T


def cartesian_to_fractional(k_cart, cell) -> np.ndarray:
    """Cartesian k (1/Angstrom, 2 pi included) -> fractional in the reciprocal basis of ``cell``."""
    return np.asarray(k_cart, dtype=np.float64) @ np.asarray(cell, dtype=np.float64).T / (2.0 * np.pi)


def fractional_to_cartesian(k_frac, cell) -> np.ndarray:
    """Fractional k in the reciprocal basis of ``cell`` -> Cartesian (1/Angstrom, 2 pi included)."""
    return np.asarray(k_frac, dtype=np.float64) @ reciprocal_cell(cell)


def kpoint_grid(cell, spacing: float, kmax: int | None = 8) -> list:
    """Monkhorst-Pack grid ``ceil(|b_i| / spacing)`` (|b_i| in 1/Angstrom, 2*pi included), capped at ``kmax``."""
    if spacing is None or not spacing > 0:
        raise LatticeError(f"k-point spacing must be a positive number (1/Angstrom), got {spacing!r}")
    recip = reciprocal_cell(np.asarray(cell, dtype=float).reshape(3, 3))
    grid = []
    for b in recip:
        n = max(1, int(math.ceil(float(np.linalg.norm(b)) / float(spacing) - 1e-10)))
        if kmax is not None:
            n = min(n, int(kmax))
        grid.append(n)
    return grid
