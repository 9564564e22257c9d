"""Occupations, Fermi levels and band gaps from eigenvalues (numpy only; the solvers are in :mod:`.bands`).

OpenMX's Monkhorst-Pack convention (:func:`monkhorst_pack`), Fermi-Dirac occupations with the intrinsic
mid-gap level for wide gaps (:func:`fermi_from_eigenvalues`) and the gap of a set of eigenvalues at a given
Fermi level (:func:`band_gap`). :func:`aiida_deeph.physics.bands.fermi_level` solves the bands on a mesh
and uses these.
"""
from __future__ import annotations

import numpy as np


class BandsError(ValueError):
    """Input that cannot give band energies (NaN/Inf, missing H or S)."""


BOLTZMANN_EV_PER_K = 8.617333262e-5


OPENMX_SHIFT_K_POINT = 1.0e-6  # OpenMX's ``Shift_K_Point`` (openmx_common.h), added as (+1, -1, +2) x shift


def monkhorst_pack(grid, time_reversal: bool = True, openmx_shift: bool = True) -> tuple:
    """OpenMX's k-mesh: ``k_i = -1/2 + (2 m + 1) / (2 n_i)``, m = 0..n_i-1 (0 for n_i = 1).

    This is the mesh OpenMX 3.9 prints in its ``.out`` (``kloop``; an 8-grid starts at -0.4375, a
    7-grid at -0.42857): symmetric about Gamma, shifted by half a step for even n, Gamma-centred for odd
    n. OpenMX also adds ``Shift_K_Point`` = 1e-6 times (+1, -1, +2) to axes with n > 1 (a 7-grid point
    -0.2857143 prints as -0.28572 on the second axis); ``openmx_shift`` reproduces that. With
    ``time_reversal`` (real H(R), no spin-orbit: E(k) = E(-k)) k and -k are merged and the weight
    doubled, as OpenMX does. Returns ``(kpoints (nk, 3), weights (nk,) summing to 1)``.
    """
    grid = [max(1, int(n)) for n in grid]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), axis=-1).reshape(-1, 3)
    n_arr = np.array(grid)
    lab = 2 * index + 1 - n_arr  # integer label of -1/2 + (2m+1)/(2n), times 2n: -k has label -lab
    lab[:, n_arr == 1] = 0
    mesh = lab / (2.0 * n_arr)
    if openmx_shift:
        mesh = mesh + np.where(n_arr > 1, OPENMX_SHIFT_K_POINT * np.array([1.0, -1.0, 2.0]), 0.0)
    weights = np.full(len(mesh), 1.0 / len(mesh))
    if not time_reversal:
        return mesh, weights
    keep, w = [], []
    seen: dict = {}
    for idx, (row, neg) in enumerate(zip(map(tuple, lab.tolist()), map(tuple, (-lab).tolist()))):
        key = min(row, neg)
        if key in seen:
            w[seen[key]] += weights[idx]
        else:
            seen[key] = len(keep)
            keep.append(idx)
            w.append(weights[idx])
    return mesh[keep], np.array(w)


def _occupation(x: np.ndarray) -> np.ndarray:
    """Fermi-Dirac occupation 1 / (1 + exp(x)), overflow-safe."""
    from scipy.special import expit

    return expit(-x)


def intrinsic_fermi_level(eigenvalues, weights, num_electrons: float, temperature: float = 300.0,
                          spin_degeneracy: float = 2.0, min_gap_kT: float = 20.0):
    """Fermi level (eV) of a GAPPED spectrum at ``temperature``, or None when there is no clear gap.

    Inside a gap wider than ~1.8 eV the Fermi-Dirac electron count is flat to machine precision, so a
    plain bisection stops wherever rounding sends it (near the VBM or near the CBM). Here the root of
    holes = electrons is solved in log space with Boltzmann tails (exact to ~exp(-gap/kT)):
    ``mu = kT/2 [ln sum_v w exp(e_v/kT) - ln sum_c w exp(-e_c/kT)]`` (mid-gap plus the
    density-of-states correction). ``eigenvalues`` (nk, nb) eV (NaN ignored), ``weights`` (nk,).
    None when the electron count is not a whole number of bands or the gap is below
    ``min_gap_kT`` kT (there the ordinary bisection is well conditioned).
    """
    from scipy.special import logsumexp

    e = np.atleast_2d(np.asarray(eigenvalues, dtype=np.float64))
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64).reshape(-1, 1), e.shape)
    nocc = float(num_electrons) / spin_degeneracy
    n = int(round(nocc))
    if abs(nocc - n) > 1e-6 or n < 1 or n >= e.shape[1]:
        return None
    srt = np.sort(np.where(np.isfinite(e), e, np.inf), axis=1)
    vb, cb = srt[:, :n], srt[:, n:]
    if not np.all(np.isfinite(vb)):
        return None
    kt = BOLTZMANN_EV_PER_K * float(temperature)
    vbm, cbm = float(vb.max()), float(np.min(cb))
    if not cbm - vbm > min_gap_kT * kt:
        return None
    wv = np.broadcast_to(w[:, :1], vb.shape)
    good = np.isfinite(cb)
    ln_a = logsumexp((vb - vbm) / kt, b=wv) + vbm / kt
    ln_b = logsumexp(-(cb[good] - cbm) / kt, b=np.broadcast_to(w[:, :1], cb.shape)[good]) - cbm / kt
    return float(0.5 * kt * (ln_a - ln_b))


def fermi_from_eigenvalues(eigenvalues, weights, num_electrons: float, temperature: float = 300.0,
                           spin_degeneracy: float = 2.0, tol: float = 1e-12) -> float:
    """Chemical potential (eV) with ``sum_k w_k g sum_n f(e_nk)`` = ``num_electrons``.

    NaN eigenvalues (dropped S directions) are ignored. For a spectrum with a gap wider than 20 kT
    at a whole number of filled bands the count is flat to machine precision inside the gap, so a
    bisection would stop wherever rounding sends it (near the VBM or the CBM): there the intrinsic
    level (holes = electrons, :func:`intrinsic_fermi_level`) is returned. Otherwise: bisection.
    """
    e = np.asarray(eigenvalues, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1) * spin_degeneracy
    w = np.broadcast_to(w, e.shape)
    good = np.isfinite(e)
    e, w = e[good], w[good]
    capacity = float(w.sum())
    if not 0.0 < num_electrons < capacity - 1e-9:
        raise BandsError(f"{num_electrons} electrons do not fit in the {capacity:.1f} states of the basis")
    kt = BOLTZMANN_EV_PER_K * float(temperature)
    if kt <= 0:
        raise BandsError(f"temperature must be positive, got {temperature}")
    mu = intrinsic_fermi_level(eigenvalues, weights, num_electrons, temperature, spin_degeneracy)
    if mu is not None:
        return mu

    def count(mu):
        return float(np.dot(w, _occupation((e - mu) / kt)))

    lo, hi = float(e.min()) - 50.0 * kt - 1.0, float(e.max()) + 50.0 * kt + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if count(mid) < num_electrons:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    return 0.5 * (lo + hi)


def band_gap(eigenvalues, fermi: float) -> dict:
    """Band gap of band energies ``eigenvalues`` (nk, nbands) eV (NaN ignored) around ``fermi`` (eV).

    Metal (the number of states below ``fermi`` changes between k-points, or a state sits at it):
    ``gap_eV`` 0 and ``is_metal`` True. Otherwise the fundamental gap ``cbm - vbm`` with the k indices
    of the band edges, ``direct`` (edges at the same k, within 1e-6 eV), and the smallest direct gap.
    """
    e = np.atleast_2d(np.asarray(eigenvalues, dtype=np.float64))
    nocc = np.sum(np.isfinite(e) & (e <= fermi), axis=1)
    out = {"gap_eV": 0.0, "is_metal": True, "direct": None, "vbm_eV": None, "cbm_eV": None,
           "vbm_k_index": None, "cbm_k_index": None, "direct_gap_eV": None, "num_occupied_bands": None,
           "fermi_energy_eV": float(fermi)}
    if e.size == 0 or nocc.min() != nocc.max():
        return out
    n = int(nocc[0])
    srt = np.sort(np.where(np.isfinite(e), e, np.inf), axis=1)
    if n == 0 or n >= e.shape[1] or not np.any(np.isfinite(srt[:, n])):
        # everything empty / everything full: no gap to speak of around fermi
        out["num_occupied_bands"] = n
        return out
    vb, cb = srt[:, n - 1], srt[:, n]
    kv, kc = int(np.argmax(vb)), int(np.argmin(cb))
    gap = float(cb[kc] - vb[kv])
    direct_each = cb - vb
    kd = int(np.argmin(direct_each))
    out.update({
        "gap_eV": gap, "is_metal": gap <= 0.0, "vbm_eV": float(vb[kv]), "cbm_eV": float(cb[kc]),
        "vbm_k_index": kv, "cbm_k_index": kc, "direct_gap_eV": float(direct_each[kd]),
        "direct": bool(kv == kc or direct_each[kd] - gap < 1e-6), "num_occupied_bands": n,
    })
    if gap <= 0.0:
        out["gap_eV"] = 0.0
    return out


# ====================================================================== sparse shift-invert
