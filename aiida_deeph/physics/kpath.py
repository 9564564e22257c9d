"""Band-structure k-paths (seekpath) and k-point files, in the INPUT cell's reciprocal basis (no aiida).

seekpath builds its path on a standardized primitive cell that may be rotated and re-based with
respect to the input cell. The Hamiltonian's H(R) is indexed by lattice vectors of the input cell,
so every k-point is converted back: ``k_cart_std = k_frac_std @ B_std`` (rows of ``B_std`` are the
standardized reciprocal vectors, 2 pi included), ``k_cart_input = k_cart_std @ Rot`` (seekpath's
``rotation_matrix`` takes input Cartesian vectors to standardized ones, ``x_std = Rot x_input``),
and ``k_frac_input = k_cart_input @ inv(B_input) = k_cart_input @ A_input.T / (2 pi)``.
If the input cell is a supercell of the primitive one, the points are the primitive path expressed
in the supercell's reciprocal basis (components may exceed 1/2; bands come out folded).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from aiida_deeph.core.lattice import cartesian_to_fractional


class KpathError(ValueError):
    """A k-path that cannot be built, or a k-point file that cannot be read."""


def _seekpath_input(cell, positions, species):
    from aiida_deeph.core.elements import symbol_to_z

    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    frac = positions @ np.linalg.inv(cell)
    numbers = [symbol_to_z(s) if isinstance(s, str) else int(s) for s in species]
    return cell, frac, numbers


def auto_kpath(cell, positions, species, reference_distance: float = 0.025, symprec: float = 1e-5,
               with_time_reversal: bool = True) -> dict:
    """The HPKOT (seekpath) band path of a structure, in the input cell's reciprocal basis.

    ``cell`` (3, 3) Angstrom rows; ``positions`` (N, 3) Cartesian Angstrom; ``species`` symbols (or
    atomic numbers); ``reference_distance`` the target spacing of neighbouring k-points (1/Angstrom,
    2 pi included; seekpath's parameter: about 1/reference_distance points per 1/Angstrom).

    Returns a dict: ``kpoints`` (nk, 3) fractional in the reciprocal basis of ``cell``;
    ``kpoints_cartesian`` (nk, 3) 1/Angstrom in the input frame; ``labels`` [(index, label)];
    ``segments`` [(start, stop, label_start, label_end)] with ``kpoints[start:stop]`` one straight
    segment; ``path`` seekpath's [(label, label)]; ``bravais_lattice``, ``spacegroup_number``,
    ``is_supercell``; and the seekpath cell data used (``primitive_lattice``, ``rotation_matrix``,
    ``kpoints_standardized`` fractional in the standardized primitive reciprocal basis).
    """
    try:
        import seekpath
    except ImportError as exc:  # pragma: no cover - seekpath is a dependency
        raise KpathError("the automatic k-path needs seekpath (pip install seekpath)") from exc
    cell, frac, numbers = _seekpath_input(cell, positions, species)
    if abs(np.linalg.det(cell)) < 1e-8:
        raise KpathError("the cell is singular: no k-path")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # supercell / edge-case warnings: reported in the result
        try:
            res = seekpath.get_explicit_k_path((cell, frac, numbers), reference_distance=reference_distance,
                                               symprec=symprec, with_time_reversal=with_time_reversal)
        except Exception as exc:
            raise KpathError(f"seekpath could not build a k-path: {exc}") from None
    rot = np.asarray(res["rotation_matrix"], dtype=np.float64)
    k_std_cart = np.asarray(res["explicit_kpoints_abs"], dtype=np.float64)
    k_cart = k_std_cart @ rot
    kpoints = cartesian_to_fractional(k_cart, cell)
    kpoints[np.abs(kpoints) < 1e-12] = 0.0
    labels = [(int(i), str(lab)) for i, lab in enumerate(res["explicit_kpoints_labels"]) if lab]
    label_at = dict(labels)
    segments = [(int(a), int(b), label_at.get(int(a), ""), label_at.get(int(b) - 1, ""))
                for a, b in res["explicit_segments"]]
    volume_prim = abs(np.linalg.det(np.asarray(res["primitive_lattice"])))
    return {
        "kpoints": kpoints,
        "kpoints_cartesian": k_cart,
        "labels": labels,
        "segments": segments,
        "path": [tuple(p) for p in res["path"]],
        "bravais_lattice": res.get("bravais_lattice_extended", res.get("bravais_lattice")),
        "spacegroup_number": int(res["spacegroup_number"]),
        "is_supercell": bool(abs(abs(np.linalg.det(cell)) / volume_prim - 1.0) > 0.1),
        "primitive_lattice": np.asarray(res["primitive_lattice"], dtype=np.float64),
        "rotation_matrix": rot,
        "kpoints_standardized": np.asarray(res["explicit_kpoints_rel"], dtype=np.float64),
        "reference_distance": float(reference_distance),
    }


def read_kpoints_file(path) -> np.ndarray:
    """Fractional k-points (nk, 3) from a text file: lines ``k1 k2 k3`` (extra columns such as a
    weight or a label are ignored), ``#`` starts a comment, blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise KpathError(f"k-point file {path} not found")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        tok = text.split()
        try:
            if len(tok) < 3:
                raise ValueError
            rows.append([float(x) for x in tok[:3]])
        except ValueError:
            raise KpathError(f"{path}:{lineno}: expected 'k1 k2 k3' (fractional), got {line.strip()!r}") from None
    if not rows:
        raise KpathError(f"{path}: no k-points")
    k = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(k)):
        raise KpathError(f"{path}: k-points must be finite numbers")
    return k


def write_kpoints_file(path, kpoints, comment: str | None = None) -> None:
    """Write fractional k-points one per line (the format :func:`read_kpoints_file` reads)."""
    lines = [f"# {comment}"] if comment else []
    lines += [" ".join(f"{x: .12f}" for x in k) for k in np.atleast_2d(kpoints)]
    Path(path).write_text("\n".join(lines) + "\n")
