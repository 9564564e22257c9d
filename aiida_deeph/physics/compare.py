"""Band-structure comparison (pure numpy, no aiida): DeepH vs DFT band errors and band-gap errors.

Convention (the one of DeepH papers and of ``DeepHBandsWorkChain``):

- each band set is aligned to its own Fermi level (``e - E_F``);
- bands are matched by index (band n of the prediction vs band n of the reference, at the same k);
- the error is taken over the eigenvalues whose *reference* value lies within ``E_F +- window``
  (``window`` = 3 eV by default), NaN entries (dropped S directions) ignored;
- MAE, RMSE and the largest error are in meV;
- gap error = predicted gap - reference gap (meV); ``None`` when either is missing.
"""
from __future__ import annotations

import numpy as np


def align(eigenvalues, fermi: float) -> np.ndarray:
    """Eigenvalues relative to ``fermi`` (same shape, eV)."""
    return np.asarray(eigenvalues, dtype=np.float64) - float(fermi)


def window_mask(reference_aligned, window_eV: float = 3.0) -> np.ndarray:
    """Boolean mask of aligned reference eigenvalues with ``|e| <= window_eV`` (NaN excluded)."""
    ref = np.asarray(reference_aligned, dtype=np.float64)
    return np.isfinite(ref) & (np.abs(ref) <= float(window_eV))


def band_errors(predicted, reference, predicted_fermi: float, reference_fermi: float, window_eV: float = 3.0,
                predicted_gap: float | None = None, reference_gap: float | None = None) -> dict:
    """Errors of ``predicted`` (nk, nb) against ``reference`` (nk, nb') band energies (eV) at the same k.

    Bands are matched by index up to ``min(nb, nb')``. Returns ``mae_meV``, ``rmse_meV``,
    ``max_abs_error_meV``, ``num_values`` (eigenvalues in the window), ``num_bands_compared``,
    ``num_kpoints``, ``window_eV``, ``mean_signed_error_meV``, and, with both gaps given,
    ``gap_error_meV`` (predicted - reference) and ``abs_gap_error_meV``.
    """
    pred = np.atleast_2d(np.asarray(predicted, dtype=np.float64))
    ref = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if pred.shape[0] != ref.shape[0]:
        raise ValueError(f"predicted bands have {pred.shape[0]} k-points, the reference {ref.shape[0]}")
    nb = min(pred.shape[1], ref.shape[1])
    p = align(pred[:, :nb], predicted_fermi)
    r = align(ref[:, :nb], reference_fermi)
    mask = window_mask(r, window_eV) & np.isfinite(p)
    out = {
        "window_eV": float(window_eV),
        "num_kpoints": int(pred.shape[0]),
        "num_bands_compared": int(nb),
        "num_values": int(mask.sum()),
        "alignment": "each set to its own Fermi level",
        "band_matching": "by index",
        "predicted_fermi_energy_eV": float(predicted_fermi),
        "reference_fermi_energy_eV": float(reference_fermi),
    }
    if mask.any():
        diff = (p - r)[mask]
        out.update({
            "mae_meV": float(np.mean(np.abs(diff)) * 1000.0),
            "rmse_meV": float(np.sqrt(np.mean(diff ** 2)) * 1000.0),
            "max_abs_error_meV": float(np.max(np.abs(diff)) * 1000.0),
            "mean_signed_error_meV": float(np.mean(diff) * 1000.0),
        })
    else:
        out.update({"mae_meV": None, "rmse_meV": None, "max_abs_error_meV": None, "mean_signed_error_meV": None})
    if predicted_gap is not None and reference_gap is not None:
        err = (float(predicted_gap) - float(reference_gap)) * 1000.0
        out.update({"predicted_gap_eV": float(predicted_gap), "reference_gap_eV": float(reference_gap),
                    "gap_error_meV": err, "abs_gap_error_meV": abs(err)})
    else:
        out.update({"gap_error_meV": None, "abs_gap_error_meV": None})
    return out


def combine_gaps(a: dict, b: dict) -> dict:
    """The band gap over the union of two k-point sets, from two :func:`~aiida_deeph.physics.fermi.band_gap`
    results at the same Fermi level (e.g. the band path and the SCF mesh).

    Metal if either is metallic or the number of occupied bands differs; otherwise
    ``vbm = max``, ``cbm = min``, ``gap = max(0, cbm - vbm)``.
    """
    if a.get("is_metal") or b.get("is_metal") or a.get("num_occupied_bands") != b.get("num_occupied_bands") \
            or a.get("vbm_eV") is None or b.get("vbm_eV") is None:
        return {"gap_eV": 0.0, "is_metal": True, "vbm_eV": None, "cbm_eV": None}
    vbm = max(float(a["vbm_eV"]), float(b["vbm_eV"]))
    cbm = min(float(a["cbm_eV"]), float(b["cbm_eV"]))
    gap = cbm - vbm
    return {"gap_eV": max(0.0, gap), "is_metal": gap <= 0.0, "vbm_eV": vbm, "cbm_eV": cbm}


def path_distances(kpoints_cartesian, labels=None) -> tuple:
    """x coordinates along a band path and merged tick labels.

    ``labels``: list of ``(index, label)``. Two consecutive k-points that both carry a label are a
    discontinuity of the path (``X|U``): they get the same x and a merged label.
    Returns ``(x (nk,), ticks [(x, label)])``.
    """
    k = np.asarray(kpoints_cartesian, dtype=np.float64)
    lab = dict(labels or [])
    x = np.zeros(len(k))
    for i in range(1, len(k)):
        jump = (i in lab) and (i - 1 in lab)
        x[i] = x[i - 1] + (0.0 if jump else float(np.linalg.norm(k[i] - k[i - 1])))
    ticks: list = []
    for i in sorted(lab):
        name = "Γ" if lab[i] in ("G", "GAMMA", "Gamma") else str(lab[i])
        if ticks and abs(ticks[-1][0] - x[i]) < 1e-12:
            if ticks[-1][1] != name:
                ticks[-1] = (ticks[-1][0], f"{ticks[-1][1]}|{name}")
        else:
            ticks.append((float(x[i]), name))
    return x, ticks


def plot_comparison(path, x, ticks, predicted_aligned, reference_aligned, title: str = "", window_eV: float = 3.0,
                    ylim=None, labels=("DFT (OpenMX)", "DeepH")) -> None:
    """PNG of reference (black) vs predicted (red dashed) bands, both relative to their own Fermi level."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ref = np.asarray(reference_aligned, dtype=np.float64)
    pred = np.asarray(predicted_aligned, dtype=np.float64)
    if ylim is None:
        ylim = (-window_eV - 2.0, window_eV + 2.0)
    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=120)
    ax.axhspan(-window_eV, window_eV, color="0.93", zorder=0, lw=0)
    for n in range(ref.shape[1]):
        ax.plot(x, ref[:, n], color="black", lw=1.4, label=labels[0] if n == 0 else None, zorder=2)
    for n in range(pred.shape[1]):
        ax.plot(x, pred[:, n], color="tab:red", lw=1.1, ls="--", label=labels[1] if n == 0 else None, zorder=3)
    for xt, _ in ticks:
        ax.axvline(xt, color="0.6", lw=0.6, zorder=1)
    ax.axhline(0.0, color="0.4", lw=0.6, ls=":", zorder=1)
    ax.set_xticks([t[0] for t in ticks])
    ax.set_xticklabels([t[1] for t in ticks])
    ax.set_xlim(float(x[0]), float(x[-1]) if len(x) > 1 and x[-1] > x[0] else float(x[0]) + 1.0)
    ax.set_ylim(*ylim)
    ax.set_ylabel(r"$E - E_F$ (eV)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
