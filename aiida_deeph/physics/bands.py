"""Band energies from a packed Hamiltonian: H(k) c = e S(k) c (pure numpy/scipy, no aiida).

Dense generalized Hermitian eigenproblem per k-point, threaded over k (LAPACK releases the GIL).
An ill-conditioned S(k) (eigenvalues below ``s_threshold``) is handled by dropping the near-null
S eigenvectors (canonical orthogonalisation) instead of failing in Cholesky; the number dropped is
reported, and the missing highest bands are returned as NaN so every k has the same band count.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from aiida_deeph.io.packed import PackedHamiltonian


class BandsError(ValueError):
    """Input that cannot give band energies (NaN/Inf, missing H or S)."""


@dataclass
class BandResult:
    kpoints: np.ndarray        # (nk, 3) fractional
    eigenvalues: np.ndarray    # (nk, nbands) eV, ascending; NaN where S eigenvectors were dropped
    dropped: np.ndarray        # (nk,) number of S eigenvectors dropped at each k
    min_s_eigenvalue: float    # smallest S(k) eigenvalue seen


def check_finite(ham: PackedHamiltonian) -> None:
    for name in ("hamiltonian", "overlap"):
        data = getattr(ham, name)
        if data is None:
            raise BandsError(f"the Hamiltonian folder/node has no {name}: both H and S are needed for bands")
        bad = ~np.isfinite(data)
        if bad.any():
            p = int(np.searchsorted(ham.offsets, np.flatnonzero(bad)[0], side="right") - 1)
            raise BandsError(
                f"{name} holds {int(bad.sum())} NaN/Inf entries (first in the block of atom pair "
                f"{ham.atom_pairs[p].tolist()})"
            )


def _solve_one(hk: np.ndarray, sk: np.ndarray, s_threshold: float):
    s_eval, s_evec = np.linalg.eigh(sk)
    smin = float(s_eval[0])
    if smin > s_threshold:
        try:
            return sla.eigh(hk, sk, eigvals_only=True, driver="gvd"), 0, smin
        except np.linalg.LinAlgError:
            pass
    keep = s_eval > s_threshold
    x = s_evec[:, keep] / np.sqrt(s_eval[keep])
    e = np.linalg.eigvalsh(x.conj().T @ hk @ x)
    out = np.full(hk.shape[0], np.nan)
    out[: e.size] = e
    return out, int((~keep).sum()), smin


def band_energies(ham: PackedHamiltonian, kpoints, s_threshold: float = 1e-7, threads: int | None = None) -> BandResult:
    """Eigenvalues (eV) of H(k), S(k) at fractional ``kpoints`` (in the reciprocal basis of ``ham.cell``)."""
    check_finite(ham)
    kpoints = np.atleast_2d(np.asarray(kpoints, dtype=np.float64))
    cache: dict = {}
    ham.matrix_at_k(kpoints[0], "overlap", cache)  # fill the index cache once

    def work(k):
        hk = ham.matrix_at_k(k, "hamiltonian", cache)
        sk = ham.matrix_at_k(k, "overlap", cache)
        hk = 0.5 * (hk + hk.conj().T)
        sk = 0.5 * (sk + sk.conj().T)
        return _solve_one(hk, sk, s_threshold)

    threads = threads or min(len(kpoints), os.cpu_count() or 1)
    if threads > 1 and len(kpoints) > 1:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(work, kpoints))
    else:
        results = [work(k) for k in kpoints]
    return BandResult(
        kpoints=kpoints,
        eigenvalues=np.array([r[0] for r in results]),
        dropped=np.array([r[1] for r in results]),
        min_s_eigenvalue=min(r[2] for r in results),
    )
