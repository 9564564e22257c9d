"""The atom pairs OpenMX keeps for H and S (pure numpy; no aiida).

Rule (checked against every run of the corpus): the pair (i, j, R) is stored, in both directions,
exactly when ``|r_j + R - r_i| < rc_i + rc_j`` with rc the PAO cutoff radii in Bohr (the number in
the basis name, e.g. 7.0 for ``Si7.0-s2p2d1``). This includes the on-site pairs (i, i, 0) and
periodic images of an atom itself (i, i, R != 0).
"""
from __future__ import annotations

import numpy as np

from ..core.constants import BOHR_TO_ANGSTROM
from ..core.lattice import reciprocal_cell
from .pao import OverlapError

MIN_DISTANCE_ANGSTROM = 0.5


def _image_range(cell: np.ndarray, frac: np.ndarray, rmax: float) -> list:
    """Integer ranges of lattice translations that can bring two atoms within rmax (Angstrom)."""
    bnorm = np.linalg.norm(reciprocal_cell(cell), axis=1) / (2.0 * np.pi)   # |b_a| without 2 pi
    span = frac.max(axis=0) - frac.min(axis=0) if len(frac) else np.zeros(3)
    out = []
    for a in range(3):
        reach = rmax * bnorm[a] + span[a]
        out.append(np.arange(int(np.floor(-reach)), int(np.ceil(reach)) + 1))
    return out


def find_pairs(cell, positions, cutoffs_bohr, min_distance: float = MIN_DISTANCE_ANGSTROM,
               species=None) -> tuple:
    """All pairs (i, j, R) with ``|r_j + R cell - r_i| < rc_i + rc_j`` (Bohr), sorted by (i, j, R).

    ``cell`` (3, 3) Angstrom rows, ``positions`` (N, 3) Cartesian Angstrom, ``cutoffs_bohr`` (N,).
    Returns ``(atom_pairs (P, 5) int64 [R1, R2, R3, i, j], vectors (P, 3) Angstrom r_j + R - r_i)``.
    Raises :class:`OverlapError` when two atoms (or an atom and its image) are closer than
    ``min_distance`` Angstrom.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    rc = np.asarray(cutoffs_bohr, dtype=np.float64).reshape(-1)
    n = pos.shape[0]
    if rc.shape[0] != n:
        raise OverlapError(f"{rc.shape[0]} cutoff radii for {n} atoms")
    if n == 0:
        return np.zeros((0, 5), dtype=np.int64), np.zeros((0, 3))
    if abs(np.linalg.det(cell)) < 1e-6:
        raise OverlapError("the cell is singular (lattice vectors are linearly dependent)")
    frac = pos @ np.linalg.inv(cell)
    rmax_bohr = 2.0 * rc.max()
    ranges = _image_range(cell, frac, rmax_bohr * BOHR_TO_ANGSTROM)
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    shifts = images.astype(np.float64) @ cell                    # (T, 3)
    cut = (rc[:, None] + rc[None, :])                            # (N, N) Bohr
    base = pos[None, :, :] - pos[:, None, :]                     # (N, N, 3): r_j - r_i
    found_i, found_j, found_t, found_v = [], [], [], []
    # Chunk the images so that one chunk holds at most ~4M distances.
    per = max(1, 4_000_000 // (n * n))
    close = None
    for s in range(0, len(images), per):
        sh = shifts[s:s + per]                                   # (t, 3)
        vec = base[None, :, :, :] + sh[:, None, None, :]         # (t, N, N, 3)
        d2 = np.einsum("tijk,tijk->tij", vec, vec)
        dist_bohr = np.sqrt(d2) / BOHR_TO_ANGSTROM
        t, i, j = np.nonzero(dist_bohr < cut[None, :, :])
        if t.size:
            dmin = np.sqrt(d2[t, i, j])
            selfpair = (i == j) & np.all(images[s + t] == 0, axis=1)
            bad = (~selfpair) & (dmin < min_distance)
            if bad.any() and close is None:
                b = np.nonzero(bad)[0][0]
                close = (int(i[b]), int(j[b]), images[s + t[b]].tolist(), float(dmin[b]))
            found_i.append(i)
            found_j.append(j)
            found_t.append(s + t)
            found_v.append(vec[t, i, j])
    if close is not None:
        i, j, R, d = close
        name = (lambda a: f"{species[a]}{a + 1}") if species is not None else (lambda a: f"atom {a + 1}")
        where = "" if R == [0, 0, 0] else f" (image {R})"
        raise OverlapError(
            f"atoms {name(i)} and {name(j)}{where} are {d:.3f} A apart, closer than {min_distance} A: "
            "overlapping atoms"
        )
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    R = images[np.concatenate(found_t)]
    vec = np.concatenate(found_v)
    pairs = np.column_stack([R, i, j]).astype(np.int64)
    order = np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0], pairs[:, 4], pairs[:, 3]))
    return pairs[order], vec[order]
