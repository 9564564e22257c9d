"""Electric susceptibility chi(omega) of an insulator from H, S and the position matrix (no aiida).

Independent-particle interband Kubo (Ehrenreich-Cohen) form at T = 0 with Lorentzian broadening eta,
SI units (dimensionless chi = eps_r - 1), spin factor 2 (non-spin-polarised H):

    chi_ab(w) = 2 e^2 / (eps0 V N_k) sum_k sum_{n,m} (f_n - f_m) r^a_nm r^b_mn / (E_m - E_n - hbar w - i eta)

with the interband position elements in the non-orthogonal basis (V^H S V = 1; Wang et al., New J. Phys.
21, 093001 (2019)):

    r^a_nm = i [V^H (d_a H - E_m d_a S) V]_nm / (E_m - E_n) + [V^H A^a V]_nm,
    A^a(k) = sum_R e^{i k.R} (P^a(R) - R_a S(R)) = P^a(k) + i d_a S(k),   d_a X(k) = sum_R i R_a e^{i k.R} X(R).

Only occupied (v) -> empty (c) pairs contribute at T = 0; with r_cv = conj(r_vc):

    chi_ab(w) = C sum_k sum_{v,c} [ r^a_vc conj(r^b_vc) / (D - w - i eta) + conj(r^a_vc) r^b_vc / (D + w + i eta) ],

D = E_c - E_v, C = 2 e^2 / (eps0 V N_k). The static limit (w = 0, eta = 0) is
``chi_ab(0) = C sum 2 Re(r^a_vc conj(r^b_vc)) / D`` and ``eps_inf = 1 + tr chi(0) / 3`` (no local
fields, no excitons: the independent-particle value). A metal has no finite chi(0) (the intraband Drude
term diverges) and is refused with a message.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.packed import PackedHamiltonian

from .bands import check_finite
from .kspace import BlochBuilder, KSpaceError, electron_count, gamma_mesh, solve

E2_OVER_EPS0_EV_ANGSTROM = 4.0 * np.pi * 14.399645478425668   # e^2 / eps0 in eV * Angstrom
_PAIR_BYTES = 128 * 2 ** 20


class OpticsError(KSpaceError):
    """A chi(omega) request that cannot be computed (metal, no position matrix, bad mesh)."""


def interband_positions(builder: BlochBuilder, kpoints: np.ndarray, nocc: int, s_threshold: float):
    """(D (nk, nv, nc) eV, r (3, nk, nv, nc) Angstrom, band energies (nk, n)) on a batch of k-points."""
    phase = builder.phases(kpoints)
    energies, vectors, _, _ = solve(builder.at(phase, "hamiltonian"), builder.at(phase, "overlap"), s_threshold)
    vo = vectors[:, :, :nocc]
    vu = vectors[:, :, nocc:]
    vo_h = np.conj(np.swapaxes(vo, 1, 2))
    ev, ec = energies[:, :nocc], energies[:, nocc:]
    kept = np.isfinite(ec)                                              # dropped S directions: zero columns
    ec_safe = np.where(kept, ec, ev.max() + 1e6)
    gap = ec_safe[:, None, :] - ev[:, :, None]                          # (nk, nv, nc)
    r = np.empty((3,) + gap.shape, dtype=np.complex128)
    for a in range(3):
        dh = builder.at(phase, "hamiltonian", a)
        ds = builder.at(phase, "overlap", a)
        pa = builder.at(phase, "position_" + "xyz"[a]) + 1j * ds       # A^a(k)
        m_dh = vo_h @ dh @ vu
        m_ds = vo_h @ ds @ vu
        r[a] = 1j * (m_dh - m_ds * ec_safe[:, None, :]) / gap + vo_h @ pa @ vu
    r *= kept[None, :, None, :]
    return gap, r, energies


def susceptibility(ham: PackedHamiltonian, mesh, eta: float = 0.1, omega_max: float = 10.0, num_omega: int = 1001,
                   num_electrons: float | None = None, s_threshold: float = 1e-7, basis_table: str = "corpus") -> dict:
    """chi_ab(omega) (3x3 complex per omega), chi(0) and eps_inf of an insulator; the chi.json dictionary."""
    check_finite(ham)
    if ham.position_matrix is None:
        raise OpticsError(
            "the Hamiltonian has no position matrix: convert the OpenMX run with 'aiida-deeph convert openmx "
            "RUN_DIR OUT_DIR --position-matrix' (the .scfout holds OpenMX's <i|r|j>), or compute it from the PAO "
            "files ('aiida-deeph overlap --position-matrix', compute_overlap_node(position_matrix=True))")
    if not eta > 0:
        raise OpticsError(f"the broadening eta must be positive, got {eta}")
    if not omega_max > 0 or int(num_omega) < 2:
        raise OpticsError(f"the frequency grid needs omega_max > 0 and at least 2 points, got {omega_max}, {num_omega}")
    mesh = [int(n) for n in mesh]
    num_electrons = electron_count(ham, num_electrons, basis_table)
    half = float(num_electrons) / 2.0
    nocc = int(round(half))
    if abs(half - nocc) > 1e-6:
        raise OpticsError(f"{ham.formula}: {num_electrons} electrons fill no whole number of bands: a metal, "
                          "whose chi(0) diverges (intraband Drude term); chi(omega) here is for insulators")
    kpts = gamma_mesh(mesh)
    builder = BlochBuilder(ham, names=("hamiltonian", "overlap", "position_x", "position_y", "position_z"))
    omega = np.linspace(0.0, float(omega_max), int(num_omega))
    n = ham.num_orbitals
    if not 0 < nocc < n:
        raise OpticsError(f"{nocc} occupied bands in a basis of {n} orbitals: nothing to excite")
    pairs_per_k = nocc * (n - nocc)
    step = max(1, min(builder.batch_size(12), int(_PAIR_BYTES // (16 * pairs_per_k * len(omega)))))
    volume = abs(float(np.linalg.det(ham.cell)))
    pref = 2.0 * E2_OVER_EPS0_EV_ANGSTROM / (volume * len(kpts))
    chi = np.zeros((len(omega), 3, 3), dtype=np.complex128)
    chi0 = np.zeros((3, 3))
    vbm, cbm = -np.inf, np.inf
    for a in range(0, len(kpts), step):
        gap, r, energies = interband_positions(builder, kpts[a:a + step], nocc, s_threshold)
        vbm = max(vbm, float(np.nanmax(energies[:, nocc - 1])))
        cbm = min(cbm, float(np.nanmin(energies[:, nocc])))
        if not cbm > vbm:
            raise OpticsError(
                f"{ham.formula} is a metal on the {'x'.join(map(str, mesh))} mesh (band {nocc} and {nocc + 1} "
                "overlap): chi(0) diverges (intraband Drude term); chi(omega) here is for insulators")
        d = gap.reshape(-1)
        rr = r.reshape(3, -1)
        prod = rr[:, None, :] * np.conj(rr[None, :, :])                # r^a conj(r^b), (3, 3, pairs)
        chi0 += 2.0 * np.real(prod @ (1.0 / d)) * pref
        res = 1.0 / (d[None, :] - omega[:, None] - 1j * eta)           # (n_omega, pairs)
        ares = 1.0 / (d[None, :] + omega[:, None] + 1j * eta)
        flat = prod.reshape(9, -1).T                                      # (pairs, 9)
        chi += pref * (res @ flat + ares @ np.conj(flat)).reshape(-1, 3, 3)
    chi0 = 0.5 * (chi0 + chi0.T)
    return {
        "omega_eV": omega.tolist(),
        "chi": {"real": chi.real.tolist(), "imag": chi.imag.tolist()},
        "chi0": chi0.tolist(),
        "eps_inf": float(1.0 + np.trace(chi0) / 3.0),
        "eps_inf_diagonal": (1.0 + np.diag(chi0)).tolist(),
        "eta_eV": float(eta),
        "mesh": mesh,
        "mesh_kind": "Gamma-centred, k = m/n",
        "num_kpoints": len(kpts),
        "num_electrons": float(num_electrons),
        "num_occupied_bands": nocc,
        "gap_on_mesh_eV": cbm - vbm,
        "volume_A3": volume,
        "formula": ham.formula,
        "approximation": "independent-particle interband Kubo (Ehrenreich-Cohen), T = 0, no local fields",
        "units": {"omega": "eV (hbar omega)", "chi": "SI, dimensionless (eps_r - 1)"},
    }
