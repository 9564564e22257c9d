"""Wigner-Eckart layer: Hamiltonian blocks <-> irreducible representations.

The (l1, l2) sub-block between two radial functions decomposes into the irreps
``l = |l1-l2| .. l1+l2`` with parity ``(-1)^(l1+l2)``:

    B_e3nn[m1, m2] = sum_l sqrt(2l+1) sum_m C^{l1 l2 l}[m1, m2, m] y_l[m]
    y_l[m]         = sqrt(2l+1) sum_{m1 m2} C^{l1 l2 l}[m1, m2, m] B_e3nn[m1, m2]

with ``C = e3nn.o3.wigner_3j`` (Frobenius norm 1), so the map is orthogonal: the irreps vector has
the norm of the block.  Blocks in OpenMX orbital order are ``U_l1 B_e3nn U_l2^T`` (harmonics.py).

For an element pair with orbital lists ``ls_a``, ``ls_b`` (e.g. s2p2d1 x s3p2d2),
:class:`PairBasis` is the full orthogonal matrix ``M`` with ``flat(block_openmx) = M @ y``.
"""
from __future__ import annotations

import functools

import numpy as np

from .harmonics import openmx_from_e3nn, orbital_count


@functools.cache
def _w3j(l1: int, l2: int, l: int) -> np.ndarray:
    import torch
    from e3nn import o3

    from .harmonics import float64_default

    with torch.no_grad(), float64_default():
        return o3.wigner_3j(l1, l2, l, dtype=torch.float64).numpy()


@functools.cache
def _sub_block_basis(l1: int, l2: int) -> np.ndarray:
    """Orthogonal ((2l1+1)(2l2+1))^2 matrix: flat OpenMX sub-block = Q @ concatenated irreps l=|l1-l2|..l1+l2."""
    U1, U2 = openmx_from_e3nn(l1), openmx_from_e3nn(l2)
    cols = []
    for l in range(abs(l1 - l2), l1 + l2 + 1):
        C = _w3j(l1, l2, l) * np.sqrt(2 * l + 1)           # (2l1+1, 2l2+1, 2l+1)
        Co = np.einsum("ai,bj,ijm->abm", U1, U2, C)         # OpenMX order
        cols.append(Co.reshape(-1, 2 * l + 1))
    Q = np.concatenate(cols, axis=1)
    if not np.allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12):
        raise RuntimeError(f"Wigner-Eckart basis for ({l1}, {l2}) is not orthogonal")
    Q.setflags(write=False)
    return Q


def block_irreps(l1: int, l2: int) -> list:
    """[(l, parity)] of the (l1, l2) block, parity = (-1)^(l1+l2)."""
    p = (-1) ** (l1 + l2)
    return [(l, p) for l in range(abs(l1 - l2), l1 + l2 + 1)]


def sub_block_to_irreps(block: np.ndarray, l1: int, l2: int) -> list:
    """OpenMX-order (2l1+1, 2l2+1) block -> list of irreps vectors y_l (l = |l1-l2|..l1+l2)."""
    Q = _sub_block_basis(l1, l2)
    y = Q.T @ np.asarray(block, dtype=np.float64).reshape(-1)
    out, k = [], 0
    for l in range(abs(l1 - l2), l1 + l2 + 1):
        out.append(y[k:k + 2 * l + 1])
        k += 2 * l + 1
    return out


def irreps_to_sub_block(ys, l1: int, l2: int) -> np.ndarray:
    Q = _sub_block_basis(l1, l2)
    return (Q @ np.concatenate([np.asarray(y, dtype=np.float64) for y in ys])).reshape(2 * l1 + 1, 2 * l2 + 1)


class PairBasis:
    """Full block of an element pair <-> flat irreps feature vector (exactly invertible).

    ``irreps`` lists, for every irrep in the order of the flat vector, a tuple
    ``(a, b, l, parity)``: radial function ``a`` of the first atom, ``b`` of the second, the irrep.
    """

    def __init__(self, ls_a, ls_b):
        self.ls_a = [int(l) for l in ls_a]
        self.ls_b = [int(l) for l in ls_b]
        na, nb = orbital_count(self.ls_a), orbital_count(self.ls_b)
        self.shape = (na, nb)
        start_a = np.concatenate([[0], np.cumsum([2 * l + 1 for l in self.ls_a])]).astype(int)
        start_b = np.concatenate([[0], np.cumsum([2 * l + 1 for l in self.ls_b])]).astype(int)
        M = np.zeros((na * nb, na * nb))
        irreps, col = [], 0
        for a, la in enumerate(self.ls_a):
            for b, lb in enumerate(self.ls_b):
                Q = _sub_block_basis(la, lb).reshape(2 * la + 1, 2 * lb + 1, -1)
                rows = (np.arange(start_a[a], start_a[a + 1])[:, None] * nb
                        + np.arange(start_b[b], start_b[b + 1])[None, :])
                k = 0
                for l, p in block_irreps(la, lb):
                    M[rows.reshape(-1), col:col + 2 * l + 1] = Q[:, :, k:k + 2 * l + 1].reshape(-1, 2 * l + 1)
                    irreps.append((a, b, l, p))
                    col += 2 * l + 1
                    k += 2 * l + 1
        self.matrix = M
        self.irreps = irreps

    @property
    def irreps_string(self) -> str:
        return "+".join(f"1x{l}{'e' if p > 0 else 'o'}" for _, _, l, p in self.irreps)

    def to_irreps(self, block):
        """(na, nb) OpenMX-order block (or (..., na, nb)) -> (..., na*nb) irreps vector."""
        block = np.asarray(block, dtype=np.float64)
        flat = block.reshape(block.shape[:-2] + (-1,))
        return flat @ self.matrix

    def to_block(self, y):
        y = np.asarray(y, dtype=np.float64)
        return (y @ self.matrix.T).reshape(y.shape[:-1] + self.shape)


@functools.cache
def pair_basis(ls_a: tuple, ls_b: tuple) -> PairBasis:
    return PairBasis(ls_a, ls_b)
