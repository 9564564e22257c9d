"""Bloch sums, k-derivatives and eigenvectors of a packed Hamiltonian on k-meshes (pure numpy, no aiida).

The convention is the packed format's: ``M(k) = sum_R exp(+2 pi i k.R) M(R)`` with k fractional and R
the integer cell offset of the ket atom (no atomic-position phase). With Cartesian k (1/Angstrom) and
R (Angstrom) the phase is ``exp(i k.R)``, so ``d M(k) / d k_a = sum_R i R_a exp(i k.R) M(R)`` (Angstrom).

Used by the density of states (:mod:`aiida_deeph.physics.dos`) and the optical response
(:mod:`aiida_deeph.physics.optics`); the band-energy solver (:mod:`aiida_deeph.physics.bands`) shares
:func:`real_space_stack`.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.packed import PackedHamiltonian

_BATCH_BYTES = 64 * 2 ** 20


class KSpaceError(ValueError):
    """A k-space request that cannot be served (missing arrays, broken overlap, bad mesh)."""


def electron_count(ham: PackedHamiltonian, num_electrons: float | None = None, basis_table: str = "corpus") -> float:
    """``num_electrons`` if given, else the count stored with ``ham``, else the valence of the basis table."""
    if num_electrons is not None:
        return float(num_electrons)
    if ham.num_electrons is not None:
        return float(ham.num_electrons)
    from aiida_deeph.core.basis import load_basis_table

    return float(load_basis_table(basis_table).num_electrons(ham.species))


def valence_electrons(ham: PackedHamiltonian, basis_table: str = "corpus") -> tuple:
    """(electron count, where it came from): the valence of the basis table (the basis the DFT ran with),
    else the count stored with ``ham``; the basis table's error when neither has one."""
    from aiida_deeph.core.basis import load_basis_table

    try:
        return float(load_basis_table(basis_table).num_electrons(ham.species)), f"basis table '{basis_table}' valence"
    except (ValueError, OSError, KeyError):
        if ham.num_electrons is None:
            raise
        return float(ham.num_electrons), "hamiltonian node"


def gamma_mesh(grid) -> np.ndarray:
    """Gamma-centred mesh ``k = (m1/n1, m2/n2, m3/n3)``, m_i = 0..n_i-1, as DeepH-dock's (and libtetrabz's)
    order: the first axis slowest. Returns (n1 n2 n3, 3) fractional k-points (all weights 1/nk)."""
    grid = [int(n) for n in grid]
    if len(grid) != 3 or min(grid) < 1:
        raise KSpaceError(f"a k-mesh is three positive integers, got {grid!r}")
    axes = [np.arange(n) / n for n in grid]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def real_space_stack(ham: PackedHamiltonian, names=("hamiltonian", "overlap")):
    """Distinct lattice vectors R (nR, 3) and dense stacks M(R) (nR, n, n), one per name.

    ``names`` are packed arrays; ``"position_x"``/``"_y"``/``"_z"`` are the components of
    ``position_matrix``."""
    rows, cols, pair_of_entry = ham.entry_rows_cols()
    rvec, r_of_pair = np.unique(ham.atom_pairs[:, :3], axis=0, return_inverse=True)
    r_of_pair = r_of_pair.reshape(-1)
    n = ham.num_orbitals
    flat = (r_of_pair[pair_of_entry] * n + rows) * n + cols
    out = []
    for name in names:
        if name.startswith("position_"):
            if ham.position_matrix is None:
                raise KSpaceError(
                    "this Hamiltonian has no position matrix: convert the OpenMX run with "
                    "'aiida-deeph convert openmx RUN DIR --position-matrix' (or compute it from the PAOs)")
            data = ham.position_matrix[:, "xyz".index(name[-1])]
        else:
            data = getattr(ham, name)
            if data is None:
                raise KSpaceError(f"this Hamiltonian holds no {name}")
        m = np.zeros(len(rvec) * n * n)
        m[flat] = data                     # (i, j, R) pairs are unique in the packed format
        out.append(m.reshape(len(rvec), n, n))
    return rvec.astype(np.float64), out


def _hermitian(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + np.conj(np.swapaxes(m, -1, -2)))


def solve(hk: np.ndarray, sk: np.ndarray, s_threshold: float):
    """Stacked generalised eigenproblems by Loewdin orthogonalisation: S = U s U^H, X = U s^-1/2 on the
    directions with s > ``s_threshold``, then eigh(X^H H X). Returns (energies, vectors, dropped, smin)."""
    s_eval, s_evec = np.linalg.eigh(sk)
    smin = s_eval[:, 0]
    if np.any(smin < -1e-6 * np.abs(s_eval[:, -1])):
        worst = int(np.argmin(smin))
        raise KSpaceError(
            f"S(k) is not positive definite (smallest eigenvalue {smin[worst]:.3e} at k-point {worst}): "
            "the overlap matrix is broken (not an overlap of real orbitals)")
    nk, n = smin.shape[0], hk.shape[-1]
    energies = np.full((nk, n), np.nan)
    vectors = np.zeros((nk, n, n), dtype=np.complex128)
    dropped = np.sum(s_eval <= s_threshold, axis=1)
    for nd in np.unique(dropped):
        sel = np.flatnonzero(dropped == nd)
        x = s_evec[sel][:, :, nd:] / np.sqrt(s_eval[sel][:, None, nd:])
        e, u = np.linalg.eigh(np.conj(np.swapaxes(x, 1, 2)) @ hk[sel] @ x)
        energies[sel, : n - nd] = e
        vectors[sel, :, : n - nd] = x @ u
    return energies, vectors, dropped, float(smin.min())


class BlochBuilder:
    """M(k) and dM/dk_a for batches of fractional k-points from dense real-space stacks.

    ``names``: packed arrays (``hamiltonian``, ``overlap``, ``position_x|y|z``)."""

    def __init__(self, ham: PackedHamiltonian, names=("hamiltonian", "overlap")):
        self.names = tuple(names)
        self.n = ham.num_orbitals
        self.rvec, stacks = real_space_stack(ham, self.names)
        self.rcart = self.rvec @ ham.cell                             # (nR, 3) Angstrom
        self.stacks = {name: s.reshape(len(self.rvec), -1) for name, s in zip(self.names, stacks)}

    def batch_size(self, arrays_per_k: int) -> int:
        return max(1, int(_BATCH_BYTES // (16 * max(arrays_per_k, 1) * self.n * self.n)))

    def phases(self, kpoints: np.ndarray) -> np.ndarray:
        return np.exp(2j * np.pi * (np.asarray(kpoints, dtype=np.float64) @ self.rvec.T))   # (nk, nR)

    def at(self, phase: np.ndarray, name: str, derivative: int | None = None) -> np.ndarray:
        """(nk, n, n) M(k), or its derivative along Cartesian axis ``derivative`` (0, 1, 2)."""
        p = phase if derivative is None else phase * (1j * self.rcart[:, derivative])[None, :]
        m = (p @ self.stacks[name]).reshape(-1, self.n, self.n)
        return _hermitian(m) if derivative is None and not name.startswith("position_") else m


def orbital_labels(ham: PackedHamiltonian) -> tuple:
    """Per orbital (in the packed/OpenMX order): element symbol and angular momentum l."""
    elements, ls = [], []
    for symbol in ham.species:
        for l in ham.orbital_ls[symbol]:
            elements += [symbol] * (2 * l + 1)
            ls += [l] * (2 * l + 1)
    return np.array(elements), np.array(ls, dtype=np.int64)
