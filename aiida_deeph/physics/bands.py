"""Band energies from a packed Hamiltonian: H(k) c = e S(k) c (pure numpy/scipy, no aiida).

Dense generalized Hermitian eigenproblem per k-point, threaded over k (LAPACK releases the GIL).
An ill-conditioned S(k) (eigenvalues below ``s_threshold``) is handled by dropping the near-null
S eigenvectors (canonical orthogonalisation) instead of failing in Cholesky; the number dropped is
reported, and the missing highest bands are returned as NaN so every k has the same band count.
Also the windowed dense/sparse solvers (``solve_bands``), the Fermi level on an SCF mesh (``fermi_level``)
and the one band pipeline of the CLI, the work chains and the report (``band_structure``). Occupations and
gaps: :mod:`.fermi`; supercells: :mod:`.supercell`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from aiida_deeph.core.packed import PackedHamiltonian

from .fermi import BandsError, band_gap, fermi_from_eigenvalues, monkhorst_pack


# ---------------------------------------------------------------------- BLAS threads
class blas_threads:
    """Context manager limiting the BLAS threads of every BLAS in the process (threadpoolctl: numpy's and
    scipy's own OpenBLAS copies alike); ``None``: no limit.

    Small generalized eigenproblems run ~100x slower with contending BLAS threads, and threads over
    k-points already use the cores, so the band solvers run BLAS single-threaded for them.
    """

    def __init__(self, n: int | None):
        self.n = n
        self._ctl = None

    def __enter__(self):
        if self.n is not None:
            from threadpoolctl import threadpool_limits

            self._ctl = threadpool_limits(limits=int(self.n), user_api="blas")
        return self

    def __exit__(self, *exc):
        if self._ctl is not None:
            self._ctl.restore_original_limits()
            self._ctl = None


def _blas_limit(num_orbitals: int, threads: int) -> int | None:
    """BLAS threads for the per-k solves: 1 when threading over k or for small matrices."""
    return 1 if (threads > 1 or num_orbitals < 600) else None


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


def _dense_matrices(ham: PackedHamiltonian, k0):
    """``k -> (H(k), S(k))`` dense and Hermitian-symmetrized, sharing one index cache (filled at ``k0``)."""
    cache: dict = {}
    ham.matrix_at_k(k0, "overlap", cache)

    def matrices(k):
        hk = ham.matrix_at_k(k, "hamiltonian", cache)
        sk = ham.matrix_at_k(k, "overlap", cache)
        return 0.5 * (hk + hk.conj().T), 0.5 * (sk + sk.conj().T)

    return matrices


def _map_over_k(work, kpoints, threads: int | None, blas_limit) -> list:
    """``[work(k) for k in kpoints]``, threaded over k (``threads``, default all cores) with BLAS limited to
    ``blas_limit(number of k threads)`` threads inside."""
    threads = threads or min(len(kpoints), os.cpu_count() or 1)
    with blas_threads(blas_limit(threads if len(kpoints) > 1 else 1)):
        if threads > 1 and len(kpoints) > 1:
            with ThreadPoolExecutor(threads) as pool:
                return list(pool.map(work, kpoints))
        return [work(k) for k in kpoints]


BATCHED_MAX_ORBITALS = 64    # up to this, all k at once with stacked numpy LAPACK calls (no per-k Python)
_BATCH_BYTES = 64 * 2 ** 20


def _real_space_stack(ham: PackedHamiltonian):
    """Dense M(R) stacks (nR, n, n) of H and S, and the distinct lattice vectors R (nR, 3)."""
    from .kspace import real_space_stack

    rvec, (h_r, s_r) = real_space_stack(ham, ("hamiltonian", "overlap"))
    return rvec, h_r, s_r


def _band_energies_batched(ham: PackedHamiltonian, kpoints: np.ndarray, s_threshold: float):
    """All k at once: M(k) = sum_R e^{2 pi i k.R} M(R) by one matrix product, then stacked Hermitian
    eigensolvers (Loewdin orthogonalisation S^-1/2 H S^-1/2). k-points whose S(k) has an eigenvalue below
    ``s_threshold`` are redone by the per-k solver (which drops those directions)."""
    rvec, h_r, s_r = _real_space_stack(ham)
    n = ham.num_orbitals
    nk = len(kpoints)
    eig = np.empty((nk, n))
    dropped = np.zeros(nk, dtype=np.int64)
    smin_all = np.empty(nk)
    chunk = max(1, int(_BATCH_BYTES // (16 * 4 * n * n)))
    h_r2, s_r2 = h_r.reshape(len(rvec), -1), s_r.reshape(len(rvec), -1)
    for a in range(0, nk, chunk):
        k = kpoints[a:a + chunk]
        phase = np.exp(2j * np.pi * (k @ rvec.T))                    # (nk, nR)
        hk = (phase @ h_r2).reshape(-1, n, n)
        sk = (phase @ s_r2).reshape(-1, n, n)
        hk = 0.5 * (hk + np.conj(np.swapaxes(hk, 1, 2)))
        sk = 0.5 * (sk + np.conj(np.swapaxes(sk, 1, 2)))
        s_eval, s_evec = np.linalg.eigh(sk)
        smin = s_eval[:, 0]
        smin_all[a:a + len(k)] = smin
        good = smin > s_threshold
        if good.any():
            x = s_evec[good] / np.sqrt(s_eval[good])[:, None, :]
            eig[a:a + len(k)][good] = np.linalg.eigvalsh(np.conj(np.swapaxes(x, 1, 2)) @ hk[good] @ x)
        for i in np.flatnonzero(~good):
            e, nd, _ = _solve_one(hk[i], sk[i], s_threshold)
            eig[a + i], dropped[a + i] = e, nd
    return eig, dropped, float(smin_all.min())


def band_energies(ham: PackedHamiltonian, kpoints, s_threshold: float = 1e-7, threads: int | None = None) -> BandResult:
    """Eigenvalues (eV) of H(k), S(k) at fractional ``kpoints`` (in the reciprocal basis of ``ham.cell``).

    Small cells (``BATCHED_MAX_ORBITALS``) solve all k-points at once with stacked LAPACK calls; larger
    ones one k at a time, threaded over k (``threads``)."""
    check_finite(ham)
    kpoints = np.atleast_2d(np.asarray(kpoints, dtype=np.float64))
    if ham.num_orbitals <= BATCHED_MAX_ORBITALS and len(kpoints) > 2:
        with blas_threads(1):
            eig, dropped, smin = _band_energies_batched(ham, kpoints, s_threshold)
        return BandResult(kpoints=kpoints, eigenvalues=eig, dropped=dropped, min_s_eigenvalue=smin)
    matrices = _dense_matrices(ham, kpoints[0])
    results = _map_over_k(lambda k: _solve_one(*matrices(k), s_threshold), kpoints, threads,
                          lambda t: _blas_limit(ham.num_orbitals, t))
    return BandResult(
        kpoints=kpoints,
        eigenvalues=np.array([r[0] for r in results]),
        dropped=np.array([r[1] for r in results]),
        min_s_eigenvalue=min(r[2] for r in results),
    )


# ====================================================================== Fermi level, gaps
def fermi_level(ham: PackedHamiltonian, num_electrons: float | None = None, kmesh=None, spacing: float = 0.30,
                kmax: int | None = 8, temperature: float = 300.0, basis_table: str = "corpus",
                threads: int | None = None, s_threshold: float = 1e-7) -> dict:
    """Fermi level (eV) of ``ham`` from its electron count, as OpenMX finds it.

    - electrons: ``num_electrons``, else ``ham.num_electrons``, else the valence per element of the
      basis table (protocol) ``basis_table``;
    - k-mesh: ``kmesh`` (n1, n2, n3) or the protocol rule ``ceil(|b_i| / spacing)`` capped at ``kmax``
      (|b_i| in 1/Angstrom, 2 pi included; the rule of the OpenMX inputs), OpenMX's mesh convention
      (:func:`monkhorst_pack`), time-reversal halved;
    - Fermi-Dirac at ``temperature`` K, spin-degenerate (2 electrons per band): bisection, or the
      intrinsic mid-gap level for a gap wider than 20 kT (:func:`fermi_from_eigenvalues`).

    Returns ``fermi_energy_eV``, ``num_electrons``, ``electrons_source``, ``kmesh``, ``num_kpoints``,
    ``temperature``, ``vbm_eV``/``cbm_eV``/``gap_eV`` on the mesh (gap 0 for a metal),
    ``is_metal``, ``dropped_s_eigenvectors`` (max over the mesh).
    """
    if num_electrons is not None:
        source = "argument"
    elif ham.num_electrons is not None:
        num_electrons, source = float(ham.num_electrons), "hamiltonian"
    else:
        from aiida_deeph.core.basis import load_basis_table

        num_electrons = load_basis_table(basis_table).num_electrons(ham.species)
        source = f"basis table '{basis_table}' valence"
    if kmesh is None:
        from aiida_deeph.core.lattice import kpoint_grid

        kmesh = kpoint_grid(ham.cell, spacing, kmax)
    kmesh = [int(n) for n in kmesh]
    kpts, weights = monkhorst_pack(kmesh)
    res = band_energies(ham, kpts, s_threshold=s_threshold, threads=threads)
    mu = fermi_from_eigenvalues(res.eigenvalues, weights, float(num_electrons), temperature)
    gap = band_gap(res.eigenvalues, mu)
    return {
        "fermi_energy_eV": mu,
        "num_electrons": float(num_electrons),
        "electrons_source": source,
        "kmesh": kmesh,
        "num_kpoints": int(len(kpts)),
        "temperature": float(temperature),
        "vbm_eV": gap["vbm_eV"],
        "cbm_eV": gap["cbm_eV"],
        "gap_eV": gap["gap_eV"],
        "is_metal": gap["is_metal"],
        "dropped_s_eigenvectors": int(res.dropped.max()) if len(res.dropped) else 0,
    }


DENSE_MAX_ORBITALS = 3000


@dataclass
class WindowResult:
    """Bands in an energy window (or a number of bands around an energy) at each k.

    ``eigenvalues`` is a list (one array per k, ascending; lengths may differ in window mode);
    ``padded()`` gives an (nk, max) array with NaN.
    """
    kpoints: np.ndarray
    eigenvalues: list
    dropped: np.ndarray
    min_s_eigenvalue: float
    solver: str
    sigma: float

    def padded(self) -> np.ndarray:
        width = max((len(e) for e in self.eigenvalues), default=0)
        out = np.full((len(self.eigenvalues), width), np.nan)
        for n, e in enumerate(self.eigenvalues):
            out[n, :len(e)] = e
        return out


class SparseK:
    """H(k), S(k) as scipy CSR matrices built straight from the packed entries (never dense)."""

    def __init__(self, ham: PackedHamiltonian):
        rows, cols, pair_of_entry = ham.entry_rows_cols()
        n = ham.num_orbitals
        lin = rows * n + cols
        uniq, inverse = np.unique(lin, return_inverse=True)
        self.n = n
        self.ham = ham
        self.inverse = inverse
        self.pair_of_entry = pair_of_entry
        self.indices = (uniq % n).astype(np.int32 if n < 2**31 else np.int64)
        counts = np.bincount(uniq // n, minlength=n)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(self.indices.dtype)
        self.nnz = len(uniq)
        self.R = ham.atom_pairs[:, :3].astype(np.float64)

    def matrix(self, k, which: str):
        import scipy.sparse as sp

        data = getattr(self.ham, which)
        if data is None:
            raise BandsError(f"the Hamiltonian holds no {which}")
        phase = np.exp(2j * np.pi * (self.R @ np.asarray(k, dtype=np.float64)))[self.pair_of_entry]
        w = data * phase
        vals = np.bincount(self.inverse, weights=w.real, minlength=self.nnz) + 1j * np.bincount(
            self.inverse, weights=w.imag, minlength=self.nnz)
        m = sp.csr_matrix((vals, self.indices, self.indptr), shape=(self.n, self.n))
        return ((m + m.conj().T) * 0.5).tocsc()


def _select_around(e: np.ndarray, sigma: float, n_below: int, n_above: int):
    below = e[e <= sigma]
    above = e[e > sigma]
    if len(below) < n_below or len(above) < n_above:
        return None
    return np.concatenate([below[len(below) - n_below:], above[:n_above]])


def _window_dense(hk, sk, s_threshold, emin, emax, sigma, n_below, n_above):
    e, dropped, smin = _solve_one(hk, sk, s_threshold)
    e = e[np.isfinite(e)]
    if emin is not None:
        return e[(e >= emin) & (e <= emax)], dropped, smin
    sel = _select_around(e, sigma, n_below, n_above)
    if sel is None:  # fewer bands than asked on one side: give what there is
        below, above = e[e <= sigma], e[e > sigma]
        sel = np.concatenate([below[max(0, len(below) - n_below):], above[:n_above]])
    return sel, dropped, smin


def _window_sparse(sk_builder: SparseK, k, s_threshold, emin, emax, sigma, n_below, n_above, tol, check_s):
    import scipy.sparse.linalg as spla

    hk = sk_builder.matrix(k, "hamiltonian")
    skm = sk_builder.matrix(k, "overlap")
    n = sk_builder.n
    smin = np.nan
    if check_s:
        # Sylvester inertia of S(k) - t I (symmetric-mode LU, diagonal pivots): the number of S(k)
        # eigenvalues below the threshold t, without an eigensolver
        import scipy.sparse as sp

        n_small = -1
        try:
            lu = spla.splu((skm - s_threshold * sp.identity(n, format="csc")).tocsc(), permc_spec="MMD_AT_PLUS_A",
                           diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            n_small = int(np.sum(lu.U.diagonal().real < 0))
        except RuntimeError:  # exactly singular: certainly ill-conditioned
            n_small = -1
        if n_small != 0:
            if n > 20000:
                raise BandsError(f"S(k) at k={[float(x) for x in k]} has eigenvalues below {s_threshold:g} and the "
                                 "cell is too large for the dense fallback (canonical orthogonalisation)")
            return _window_dense(hk.toarray(), skm.toarray(), s_threshold, emin, emax, sigma, n_below, n_above)
    want = (n_below + n_above + 8) if emin is None else 32
    want = min(want, n - 2)
    while True:
        vals = spla.eigsh(hk, k=want, M=skm, sigma=sigma, which="LM", return_eigenvectors=False, tol=tol)
        e = np.sort(np.asarray(vals).real)
        if emin is None:
            sel = _select_around(e, sigma, n_below, n_above)
            if sel is not None or want >= n - 2:
                if sel is None:
                    below, above = e[e <= sigma], e[e > sigma]
                    sel = np.concatenate([below[max(0, len(below) - n_below):], above[:n_above]])
                return sel, 0, smin
        else:
            # all eigenvalues inside [emin, emax] found once the farthest one found lies outside it
            reach = np.max(np.abs(e - sigma))
            if reach > max(sigma - emin, emax - sigma) or want >= n - 2:
                return e[(e >= emin) & (e <= emax)], 0, smin
        want = min(2 * want, n - 2)


def band_energies_window(ham: PackedHamiltonian, kpoints, emin: float | None = None, emax: float | None = None,
                         num_bands: int | None = None, sigma: float | None = None, solver: str = "auto",
                         s_threshold: float = 1e-7, threads: int | None = None, tol: float = 0.0,
                         check_s: bool = True, dense_max_orbitals: int = DENSE_MAX_ORBITALS) -> WindowResult:
    """Bands in an energy window ``[emin, emax]`` (eV), or ``num_bands`` bands around ``sigma``.

    ``num_bands`` mode returns ``num_bands // 2`` bands at or below ``sigma`` and the rest above it
    (``sigma`` defaults to ``ham.fermi_energy_eV``), so band indices stay aligned to the Fermi level.
    ``solver``: ``'sparse'`` (scipy CSR H(k), S(k) from the packed entries; ARPACK shift-invert
    ``eigsh(H, M=S, sigma)``), ``'dense'`` (full spectrum, then selected) or ``'auto'`` (sparse above
    ``dense_max_orbitals`` orbitals). The sparse solver checks the smallest S(k) eigenvalue
    (``check_s``) and falls back to the dense canonical orthogonalisation where it is below
    ``s_threshold``.
    """
    check_finite(ham)
    kpoints = np.atleast_2d(np.asarray(kpoints, dtype=np.float64))
    if (emin is None) != (emax is None):
        raise BandsError("give both emin and emax for an energy window")
    if emin is None and num_bands is None:
        raise BandsError("give an energy window (emin, emax) or num_bands")
    if emin is not None and not emin < emax:
        raise BandsError(f"empty energy window [{emin}, {emax}]")
    if sigma is None:
        if emin is not None:
            sigma = 0.5 * (emin + emax)
        elif ham.fermi_energy_eV is not None:
            sigma = float(ham.fermi_energy_eV)
        else:
            raise BandsError("no sigma given and the Hamiltonian has no Fermi level")
    n_below = n_above = 0
    if emin is None:
        num_bands = int(num_bands)
        if num_bands < 1:
            raise BandsError(f"num_bands must be positive, got {num_bands}")
        n_below = num_bands // 2
        n_above = num_bands - n_below
    if solver == "auto":
        solver = "sparse" if ham.num_orbitals > dense_max_orbitals else "dense"
    if solver == "sparse" and ham.num_orbitals < 16:
        solver = "dense"  # ARPACK needs room for its Krylov space
    if solver not in ("dense", "sparse"):
        raise BandsError(f"unknown solver {solver!r} (auto, dense or sparse)")
    if solver == "sparse":
        builder = SparseK(ham)

        def work(k):
            return _window_sparse(builder, k, s_threshold, emin, emax, sigma, n_below, n_above, tol, check_s)
    else:
        matrices = _dense_matrices(ham, kpoints[0])

        def work(k):
            return _window_dense(*matrices(k), s_threshold, emin, emax, sigma, n_below, n_above)

    results = _map_over_k(work, kpoints, threads,
                          lambda t: 1 if solver == "sparse" else _blas_limit(ham.num_orbitals, t))
    smins = [r[2] for r in results if np.isfinite(r[2])]
    return WindowResult(kpoints=kpoints, eigenvalues=[np.asarray(r[0]) for r in results],
                        dropped=np.array([r[1] for r in results]),
                        min_s_eigenvalue=min(smins) if smins else float("nan"), solver=solver, sigma=float(sigma))


# ====================================================================== supercells
def solve_bands(ham: PackedHamiltonian, kpoints, solver: str = "auto", num_bands: int | None = None,
                emin: float | None = None, emax: float | None = None, sigma: float | None = None,
                s_threshold: float = 1e-7, threads: int | None = None,
                dense_max_orbitals: int = DENSE_MAX_ORBITALS):
    """All bands with the dense solver, or a window/number of bands (dense or sparse), chosen by size.

    ``solver='auto'``: dense (all bands) up to ``dense_max_orbitals`` orbitals unless a window or
    ``num_bands`` is asked; above it the sparse shift-invert solver with ``num_bands`` (default 32)
    around the Fermi level. Returns ``(WindowResult, solver_name)``.
    """
    norb = ham.num_orbitals
    windowed = num_bands is not None or emin is not None
    if solver == "auto":
        solver = "sparse" if norb > dense_max_orbitals else "dense"
    if solver == "dense" and not windowed:
        res = band_energies(ham, kpoints, s_threshold=s_threshold, threads=threads)
        return WindowResult(kpoints=res.kpoints, eigenvalues=list(res.eigenvalues), dropped=res.dropped,
                            min_s_eigenvalue=res.min_s_eigenvalue, solver="dense", sigma=float("nan")), "dense"
    if not windowed:
        num_bands = 32
    res = band_energies_window(ham, kpoints, emin=emin, emax=emax, num_bands=num_bands, sigma=sigma,
                               solver=solver, s_threshold=s_threshold, threads=threads)
    return res, res.solver


def band_structure(ham: PackedHamiltonian, kpoints, num_electrons: float, spacing: float = 0.30, kmax=8,
                   temperature: float = 300.0, s_threshold: float = 1e-7, num_bands: int | None = None,
                   fermi_energy: float | None = None, solver: str = "auto", window=None, threads: int | None = None,
                   mesh: bool | None = None) -> dict:
    """Bands along ``kpoints`` with the Fermi level of the electron count and the gap over path and mesh.

    The one band pipeline of ``compute_bands`` (the work chains), ``aiida-deeph bands`` and ``aiida-deeph
    report``: the Fermi level from ``num_electrons`` on the SCF k-mesh of ``spacing``/``kmax``
    (:func:`fermi_level`), unless ``fermi_energy`` is given; all bands along the path, or with ``window``
    (EMIN, EMAX relative to E_F) / ``num_bands`` a window of bands (``solver``: auto, dense, sparse); the gap
    over the union of the path and the mesh (``mesh=False`` with a given ``fermi_energy``: the path only, no
    mesh solve; ``mesh=None``: the same when the cell is in the sparse solver's range, where dense mesh solves
    would cost more than the bands). Returns ``result`` (WindowResult), ``eigenvalues`` (padded, eV), ``solver``, ``fermi`` (the
    :func:`fermi_level` dict or None), ``fermi_energy_eV``, ``path_gap``, ``gap`` (combined) and ``gap_over``.
    """
    from .compare import combine_gaps

    if mesh is None:
        mesh = ham.num_orbitals <= DENSE_MAX_ORBITALS
    fl = None
    if fermi_energy is None or mesh:
        fl = fermi_level(ham, num_electrons=num_electrons, spacing=spacing, kmax=kmax, temperature=temperature,
                         s_threshold=s_threshold, threads=threads)
    ef = float(fermi_energy) if fermi_energy is not None else float(fl["fermi_energy_eV"])
    emin, emax = (None, None) if window is None else (ef + float(window[0]), ef + float(window[1]))
    res, solver = solve_bands(ham, kpoints, solver=solver, num_bands=num_bands, emin=emin, emax=emax,
                              sigma=ef if window is None else None, s_threshold=s_threshold, threads=threads)
    eig = res.padded()
    path_gap = band_gap(eig, ef)
    if fl is None:
        return {"result": res, "eigenvalues": eig, "solver": solver, "fermi": None, "fermi_energy_eV": ef,
                "path_gap": path_gap, "gap": path_gap, "gap_over": "band path"}
    nel = float(num_electrons)
    mesh_gap = {"is_metal": fl["is_metal"], "vbm_eV": fl["vbm_eV"], "cbm_eV": fl["cbm_eV"],
                # an insulator's mesh holds N/2 occupied bands (spin-degenerate)
                "num_occupied_bands": (int(round(nel / 2)) if abs(nel / 2 - round(nel / 2)) < 1e-6 else None)}
    if solver != "dense":
        mesh_gap["num_occupied_bands"] = path_gap.get("num_occupied_bands")  # windowed: band counts are relative
    return {"result": res, "eigenvalues": eig, "solver": solver, "fermi": fl, "fermi_energy_eV": ef,
            "path_gap": path_gap, "gap": combine_gaps(path_gap, mesh_gap), "gap_over": "band path and Fermi-level k-mesh"}
