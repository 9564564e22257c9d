"""Real-harmonic conventions: OpenMX real orbitals <-> e3nn real spherical harmonics.

OpenMX orders the orbitals of one radial function as
``p = (px, py, pz)`` and ``d = (d3z2-r2, dx2-y2, dxy, dxz, dyz)``.
e3nn 0.6 (``o3.spherical_harmonics``) uses ``l=1 = (x, y, z)`` and, for ``l >= 2``, **y** as the
polar axis.  The two bases of one ``l`` differ by an orthogonal matrix ``U_l`` (not only a
permutation), derived numerically here by evaluating both function sets at random points:

    openmx_functions(r) = U_l @ e3nn_functions(r)      (U_l orthogonal, (2l+1) x (2l+1))

A Hamiltonian block between orbitals of angular momenta ``l1`` and ``l2`` in OpenMX order is
therefore ``H_openmx = U_l1 @ H_e3nn @ U_l2.T`` and transforms under a rotation ``R`` as
``H -> D1 H D2^T`` with ``D_l = U_l @ o3.Irrep(l, p).D_from_matrix(R) @ U_l.T``.

Pure module: torch, e3nn, numpy only.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

MAX_ORBITAL_L = 2


def _openmx_functions(l: int, xyz: np.ndarray) -> np.ndarray:
    """The (unnormalised) OpenMX real orbitals of angular momentum ``l`` on unit vectors, (n, 2l+1)."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if l == 0:
        return np.ones((len(xyz), 1))
    if l == 1:
        return np.stack([x, y, z], axis=1)
    if l == 2:
        r2 = x * x + y * y + z * z
        return np.stack([3 * z * z - r2, x * x - y * y, x * y, x * z, y * z], axis=1)
    raise ValueError(f"OpenMX orbitals with l = {l} are not supported (l <= {MAX_ORBITAL_L})")


@functools.cache
def _openmx_from_e3nn_cached(l: int) -> np.ndarray:
    import torch
    from e3nn import o3

    rng = np.random.default_rng(1234 + l)
    pts = rng.normal(size=(200, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    with torch.no_grad(), float64_default():
        e3 = o3.spherical_harmonics(l, torch.tensor(pts, dtype=torch.float64), normalize=True,
                                    normalization="component").numpy()
    om = _openmx_functions(l, pts)
    # om = e3 @ X  ->  X = lstsq(e3, om); U = X.T so that om_row = U @ e3_row
    X, *_ = np.linalg.lstsq(e3, om, rcond=None)
    norms = np.linalg.norm(X, axis=0)
    U = (X / norms).T.copy()  # normalise the OpenMX functions
    # fix the sign convention: OpenMX functions keep their positive prefactors (normalisation > 0)
    if not np.allclose(U @ U.T, np.eye(2 * l + 1), atol=1e-10):
        raise RuntimeError(f"OpenMX/e3nn change of basis for l={l} is not orthogonal")
    resid = e3 @ U.T - om / norms
    if np.abs(resid).max() > 1e-10:
        raise RuntimeError(f"OpenMX orbitals of l={l} are not in the span of e3nn's harmonics")
    U = np.where(np.abs(U) < 1e-14, 0.0, U)
    U.setflags(write=False)
    return U


def openmx_from_e3nn(l: int) -> np.ndarray:
    """Orthogonal ``U_l`` with ``openmx = U_l @ e3nn`` (rows: OpenMX orbitals; columns: e3nn m index)."""
    if not 0 <= l <= MAX_ORBITAL_L:
        raise ValueError(f"orbital l = {l} not supported (0..{MAX_ORBITAL_L})")
    return _openmx_from_e3nn_cached(int(l)).copy()


@contextlib.contextmanager
def float64_default():
    """e3nn builds generators/constants in torch's default dtype: force float64 while it does."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def openmx_wigner_D(l: int, R):
    """Real Wigner-D of orbital ``l`` in OpenMX order for the (proper or improper) 3x3 matrix ``R``.

    Orbitals of ``l`` have parity (-1)^l; an improper ``R`` (det -1) multiplies D by (-1)^l.
    Returns a torch tensor of ``R``'s dtype.
    """
    import torch
    from e3nn import o3

    R = torch.as_tensor(R)
    dtype = R.dtype
    R = R.to(torch.float64)
    det = torch.det(R)
    Rp = R * det.sign()
    with float64_default():
        D = o3.Irrep(l, 1).D_from_matrix(Rp)
    if det < 0:
        D = D * (-1) ** l
    U = torch.as_tensor(openmx_from_e3nn(l), dtype=D.dtype)
    return (U @ D @ U.T).to(dtype)


def orbital_count(ls) -> int:
    return int(sum(2 * int(l) + 1 for l in ls))


def atom_wigner_D(ls, R):
    """Block-diagonal Wigner-D of all orbitals of one atom (OpenMX order) for a 3x3 matrix ``R``."""
    import torch

    blocks = [openmx_wigner_D(int(l), R) for l in ls]
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0)


def orbital_irreps(ls) -> str:
    """e3nn irreps string of an atom's orbitals, e.g. ``[0,0,1,1,2] -> '1x0e+1x0e+1x1o+1x1o+1x2e'``."""
    return "+".join(f"1x{int(l)}{'e' if int(l) % 2 == 0 else 'o'}" for l in ls)


def multiplicity(ls) -> tuple:
    """Radial functions per l, e.g. ``[0,0,1,1,2] -> (2, 2, 1)``."""
    counts = [0] * (max(ls) + 1 if len(ls) else 0)
    for l in ls:
        counts[int(l)] += 1
    return tuple(counts)


def ls_from_multiplicity(mult) -> list:
    return [l for l, n in enumerate(mult) for _ in range(int(n))]


def union_multiplicity(orbital_ls: dict) -> tuple:
    """Smallest basis (radial functions per l) containing the basis of every element."""
    out: list = []
    for ls in orbital_ls.values():
        m = multiplicity(ls)
        out += [0] * (len(m) - len(out))
        for l, n in enumerate(m):
            out[l] = max(out[l], n)
    return tuple(out)


def orbital_positions(ls, mult) -> np.ndarray:
    """Positions of an element's orbitals (OpenMX order) inside the super-basis ``mult`` (OpenMX order).

    Radial function number ``z`` of ``l`` in the element maps to radial function ``z`` of ``l`` in
    the super-basis, so e.g. the first s of Si and the first s of Ge share output channels.
    """
    start, offset = {}, 0
    for l, n in enumerate(mult):
        start[l] = offset
        offset += n * (2 * l + 1)
    seen: dict = {}
    pos = []
    for l in ls:
        l = int(l)
        z = seen.get(l, 0)
        seen[l] = z + 1
        if l >= len(mult) or z >= mult[l]:
            raise ValueError(f"basis {list(ls)} does not fit in the super-basis {tuple(mult)}")
        base = start[l] + z * (2 * l + 1)
        pos.extend(range(base, base + 2 * l + 1))
    return np.asarray(pos, dtype=np.int64)
