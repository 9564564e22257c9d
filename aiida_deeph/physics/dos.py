"""Density of states, total and projected (per element and l), of any packed H and S (no aiida).

- k-mesh: Gamma-centred ``k = m / n`` (:func:`aiida_deeph.physics.kspace.gamma_mesh`), as DeepH-dock's;
- eigenpairs of H(k) v = E S(k) v with the full basis (S directions below ``s_threshold`` = 1e-7 are
  dropped; none are for a DFT overlap, so an exact result is unchanged);
- projections: Mulliken, ``w_{nk,mu} = Re[conj(v_mu) (S v)_mu]`` (they sum to 1 over mu);
- ``gaussian``: ``DOS(E) = (2 / N_k) sum_{nk} g_sigma(E - E_nk)`` with a normalised Gaussian of standard
  deviation ``sigma``; ``tetrahedron``: libtetrabz's linear tetrahedron weights (Kawamura et al.,
  PRB 89, 094515), times 2 for spin;
- Fermi level: the level where the same broadening holds the electron count (Gaussian occupations
  ``Phi((mu - E) / sigma)``, or libtetrabz's ``fermieng``), mid-gap (intrinsic) for an insulator, so
  that the integrated DOS up to E_F is the electron count.

Units: energies eV (the same zero as H), DOS in states / eV / cell, spin included.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.packed import PackedHamiltonian

from ..core.lattice import reciprocal_cell
from .bands import check_finite
from .kspace import BlochBuilder, KSpaceError, electron_count, gamma_mesh, orbital_labels, solve

L_NAMES = "spdf"
METHODS = ("gaussian", "tetrahedron")
TETRAHEDRON_MIN_POINTS = 3   # per axis; fewer gives a meaningless tetrahedron mesh
_WEIGHT_BYTES = 256 * 2 ** 20
DROPPED_ENERGY = 1e6         # eV: where dropped S directions go for the weights (far above any grid)


class DosError(KSpaceError):
    """A DOS request that cannot be computed (bad mesh, grid, broadening, electron count)."""


def mesh_eigen(ham: PackedHamiltonian, mesh, s_threshold: float = 1e-7, projections: bool = True) -> dict:
    """Eigenvalues (nk, n) and Mulliken projections (nk, n, n_orb) on the Gamma-centred ``mesh``."""
    check_finite(ham)
    kpts = gamma_mesh(mesh)
    builder = BlochBuilder(ham)
    n = ham.num_orbitals
    energies = np.empty((len(kpts), n))
    proj = np.empty((len(kpts), n, n)) if projections else None
    dropped, smin = 0, np.inf
    step = builder.batch_size(6)
    for a in range(0, len(kpts), step):
        phase = builder.phases(kpts[a:a + step])
        sk = builder.at(phase, "overlap")
        e, v, d, s0 = solve(builder.at(phase, "hamiltonian"), sk, s_threshold)
        energies[a:a + step] = e
        dropped, smin = max(dropped, int(d.max())), min(smin, s0)
        if projections:
            sv = sk @ v                                                    # (nk, n_orb, n_band)
            proj[a:a + step] = np.real(np.conj(v) * sv).transpose(0, 2, 1)  # (nk, band, orbital)
    return {"kpoints": kpts, "energies": energies, "projections": proj, "dropped": dropped,
            "min_s_eigenvalue": float(smin)}


def _gauss_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


def fermi_gaussian(energies: np.ndarray, num_electrons: float, sigma: float) -> float:
    """mu with ``(2 / N_k) sum Phi((mu - E) / sigma) = N``; mid-gap where a gap of > 12 sigma holds N."""
    e = np.sort(energies[np.isfinite(energies)])
    nk = energies.shape[0]
    nocc = num_electrons / 2.0 * nk                                   # states (per spin) below E_F
    if not 0 < num_electrons < 2.0 * e.size / nk:
        raise DosError(f"{num_electrons} electrons do not fit in the {2.0 * e.size / nk:.1f} states of the basis")
    i = int(round(nocc))
    if abs(nocc - i) < 1e-6 and 0 < i < e.size and e[i] - e[i - 1] > 12 * sigma:
        return 0.5 * (e[i - 1] + e[i])

    def count(mu):
        return 2.0 / nk * float(_gauss_cdf((mu - e) / sigma).sum())

    lo, hi = e[0] - 10 * sigma - 1.0, e[-1] + 10 * sigma + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) < num_electrons else (lo, mid)
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def _energy_grid(grid, window, fermi: float, sigma: float | None) -> np.ndarray:
    if grid is not None:
        emin, emax, num = float(grid[0]), float(grid[1]), int(grid[2])
        if not emax > emin or num < 2:
            raise DosError(f"--grid needs EMIN < EMAX and N >= 2, got {grid}")
        return np.linspace(emin, emax, num)
    lo, hi = window
    if not hi > lo:
        raise DosError(f"the energy window needs EMIN < EMAX, got {window}")
    step = min(0.01, sigma / 4) if sigma else 0.01
    return np.linspace(fermi + lo, fermi + hi, int(round((hi - lo) / step)) + 1)


def _gaussian_weights(e: np.ndarray, egrid: np.ndarray, sigma: float):
    """Yield (k slice, band indices, weights (nk_chunk * n_band, n_e)) of g_sigma(E - E_nk) / N_k for the
    bands that come within 9 sigma of the grid (``e``: energies with dropped directions at DROPPED_ENERGY)."""
    nk = e.shape[0]
    active = np.flatnonzero((e.max(axis=0) > egrid[0] - 9 * sigma) & (e.min(axis=0) < egrid[-1] + 9 * sigma))
    step = max(1, int(_WEIGHT_BYTES // (8 * max(len(active), 1) * len(egrid))))
    norm = 1.0 / (np.sqrt(2 * np.pi) * sigma * nk)
    for a in range(0, nk, step):
        x = (egrid[None, :] - e[a:a + step, active].reshape(-1, 1)) / sigma
        yield slice(a, a + step), active, np.exp(-0.5 * x * x) * norm


def _tetrahedron_weights(e: np.ndarray, mesh, egrid: np.ndarray, bvec: np.ndarray):
    """Yield (all k, band indices, weights (nk * n_band_chunk, n_e)) from libtetrabz.dos (per spin,
    sum_k = 1/band), as :func:`_gaussian_weights` does."""
    import libtetrabz

    nk = e.shape[0]
    active = np.flatnonzero((e.max(axis=0) > egrid[0] - 1.0) & (e.min(axis=0) < egrid[-1] + 1.0))
    step = max(1, int(_WEIGHT_BYTES // (8 * nk * len(egrid))))
    for a in range(0, len(active), step):
        bands = active[a:a + step]
        eig = e[:, bands].reshape(*mesh, len(bands))
        w = libtetrabz.dos(bvec, eig, egrid)                      # (n1, n2, n3, nb_chunk, ne)
        yield slice(None), bands, w.reshape(nk * len(bands), len(egrid))


def _checked_mesh(ham: PackedHamiltonian, mesh, spacing, method: str, sigma: float) -> list:
    """The k-mesh of a DOS (``mesh``, else from ``spacing``, default 0.1), refusing what the method cannot use."""
    if method not in METHODS:
        raise DosError(f"unknown DOS method {method!r} (gaussian or tetrahedron)")
    if method == "gaussian" and not sigma > 0:
        raise DosError(f"the Gaussian broadening sigma must be positive, got {sigma}")
    if mesh is None:
        from aiida_deeph.core.lattice import kpoint_grid

        mesh = kpoint_grid(ham.cell, 0.1 if spacing is None else spacing, kmax=None)
    mesh = [int(n) for n in mesh]
    if method == "tetrahedron" and min(mesh) < TETRAHEDRON_MIN_POINTS:
        raise DosError(
            f"a {'x'.join(map(str, mesh))} mesh is too coarse for the tetrahedron method (at least "
            f"{TETRAHEDRON_MIN_POINTS} k-points per axis); use a finer --mesh or --method gaussian")
    return mesh


def density_of_states(ham: PackedHamiltonian, mesh=None, spacing: float | None = None, sigma: float = 0.1,
                      method: str = "gaussian", grid=None, window=(-10.0, 10.0), num_electrons: float | None = None,
                      projected: bool = True, s_threshold: float = 1e-7, basis_table: str = "corpus") -> dict:
    """Total and projected DOS of ``ham``; returns the dos.json dictionary (see the module docstring).

    ``mesh`` (n1, n2, n3) Gamma-centred, or ``spacing`` (1/Angstrom, 2 pi included: ceil(|b_i|/spacing),
    DeepH-dock's ``--kp-density``), default spacing 0.1. ``grid`` (EMIN, EMAX, N) absolute eV, else
    ``window`` relative to E_F with a 0.01 eV step.
    """
    mesh = _checked_mesh(ham, mesh, spacing, method, sigma)
    num_electrons = electron_count(ham, num_electrons, basis_table)
    sol = mesh_eigen(ham, mesh, s_threshold=s_threshold, projections=projected)
    energies = sol["energies"]
    filled = np.where(np.isfinite(energies), energies, DROPPED_ENERGY)
    nk = len(energies)
    bvec = reciprocal_cell(ham.cell)
    if method == "gaussian":
        fermi = fermi_gaussian(energies, float(num_electrons), sigma)
        egrid = _energy_grid(grid, window, fermi, sigma)
        weights = _gaussian_weights(filled, egrid, sigma)
        below = 2.0 / nk * float(_gauss_cdf((egrid[0] - energies[np.isfinite(energies)]) / sigma).sum())
    else:
        import libtetrabz

        eig = filled.reshape(*mesh, -1)
        fermi = float(libtetrabz.fermieng(bvec, eig, float(num_electrons) / 2.0)[0])
        egrid = _energy_grid(grid, window, fermi, None)
        weights = _tetrahedron_weights(filled, mesh, egrid, bvec)
        below = 2.0 * float(libtetrabz.intdos(bvec, eig, np.array([egrid[0]])).sum())

    total = np.zeros(len(egrid))
    elements, ls = orbital_labels(ham)
    groups = [(el, l) for el in dict.fromkeys(ham.species) for l in sorted(set(ham.orbital_ls[el]))]
    member = np.array([(elements == el) & (ls == l) for el, l in groups], dtype=np.float64).T  # (n_orb, n_group)
    weight = None if not projected else sol["projections"] @ member                       # (nk, n_band, n_group)
    pdos = np.zeros((len(groups), len(egrid)))
    for ks, bands, w in weights:
        total += 2.0 * w.sum(axis=0)
        if projected:
            pdos += 2.0 * weight[ks][:, bands].reshape(-1, len(groups)).T @ w
    projected_out = {}
    if projected:
        for (el, l), values in zip(groups, pdos):
            projected_out.setdefault(el, {})[L_NAMES[l]] = values.tolist()
    return {
        "energy_eV": egrid.tolist(),
        "fermi_energy_eV": float(fermi),
        "total": total.tolist(),
        "projected": projected_out,
        "method": method,
        "sigma_eV": float(sigma) if method == "gaussian" else None,
        "mesh": mesh,
        "mesh_kind": "Gamma-centred, k = m/n",
        "num_kpoints": int(nk),
        "num_electrons": float(num_electrons),
        "num_orbitals": ham.num_orbitals,
        "formula": ham.formula,
        "dropped_s_eigenvectors": int(sol["dropped"]),
        "min_s_eigenvalue": sol["min_s_eigenvalue"],
        "s_threshold": float(s_threshold),
        "lowest_eigenvalue_eV": float(np.nanmin(energies)),
        "states_below_grid": below,
        "units": {"energy": "eV", "dos": "states/eV/cell (spin included)"},
        "projection": "Mulliken (Re[conj(c) S c]) per element and l",
    }


def integrated(dos: dict, upto: float | None = None) -> float:
    """States in the DOS on the grid up to ``upto`` (default E_F), trapezoid (``states_below_grid`` are the
    states below the grid's first energy: the two add up to the electron count at E_F)."""
    e = np.asarray(dos["energy_eV"])
    d = np.asarray(dos["total"])
    upto = dos["fermi_energy_eV"] if upto is None else upto
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(e))])
    k = int(np.clip(np.searchsorted(e, upto) - 1, 0, len(e) - 2))
    if upto <= e[0]:
        return 0.0
    if upto >= e[-1]:
        return float(cumulative[-1])
    # the last partial interval with the DOS interpolated linearly
    t = (upto - e[k]) / (e[k + 1] - e[k])
    d_up = d[k] + t * (d[k + 1] - d[k])
    return float(cumulative[k] + 0.5 * (d[k] + d_up) * (upto - e[k]))
