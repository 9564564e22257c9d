"""Figures of the property pipeline (matplotlib, Agg; no aiida): DOS and chi(omega), alone or DFT vs DeepH.

One implementation each, used by the CLI (``dos --plot``, ``optics --plot``), the properties work chain
and ``aiida-deeph report``. ``result`` arguments are the dos.json / chi.json dictionaries.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a 150 dpi PNG (parent folders made) and close it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _mesh_text(result: dict) -> str:
    return "x".join(map(str, result["mesh"]))


def plot_dos(result: dict, path, title: str = "", reference: dict | None = None,
             labels=("DFT (OpenMX)", "DeepH")) -> Path:
    """Total and projected DOS against E - E_F; with ``reference``: reference total (black) vs ``result``'s
    total (red dashed), each relative to its own Fermi level, and the projections of ``result`` only."""
    plt = _pyplot()
    e = np.asarray(result["energy_eV"]) - result["fermi_energy_eV"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if reference is not None:
        er = np.asarray(reference["energy_eV"]) - reference["fermi_energy_eV"]
        ax.plot(er, reference["total"], color="black", lw=1.4, label=f"{labels[0]} total")
        ax.plot(e, result["total"], color="tab:red", lw=1.2, ls="--", label=f"{labels[1]} total")
    else:
        ax.plot(e, result["total"], color="black", lw=1.4, label="total")
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        c = 0
        for el, by_l in result["projected"].items():
            for l, values in by_l.items():
                ax.plot(e, values, lw=1.0, color=colors[c % len(colors)], label=f"{el} {l}")
                c += 1
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(e[0], e[-1])
    ax.set_ylim(0, None)
    ax.set_xlabel(r"$E - E_\mathrm{F}$ (eV)")
    ax.set_ylabel("DOS (states / eV / cell)")
    method = result["method"] + (f", $\\sigma$ = {result['sigma_eV']:g} eV" if result.get("sigma_eV") else "")
    ax.set_title(f"{title or result['formula']}: {_mesh_text(result)} mesh, {method}", fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=2)
    return save_figure(fig, path)


def plot_chi(result: dict, path, title: str = "", reference: dict | None = None,
             labels=("DFT (OpenMX)", "DeepH")) -> Path:
    """Re and Im chi_aa(omega); with ``reference``: the trace/3 of the reference (black) vs ``result`` (red)."""
    plt = _pyplot()
    w = np.asarray(result["omega_eV"])
    re = np.asarray(result["chi"]["real"])
    im = np.asarray(result["chi"]["imag"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if reference is not None:
        wr = np.asarray(reference["omega_eV"])
        rre = np.trace(np.asarray(reference["chi"]["real"]), axis1=1, axis2=2) / 3
        rim = np.trace(np.asarray(reference["chi"]["imag"]), axis1=1, axis2=2) / 3
        ax.plot(wr, rre, color="black", lw=1.4, label=rf"{labels[0]} Re $\chi$")
        ax.plot(wr, rim, color="0.45", lw=1.4, label=rf"{labels[0]} Im $\chi$")
        ax.plot(w, np.trace(re, axis1=1, axis2=2) / 3, color="tab:red", lw=1.2, ls="--", label=rf"{labels[1]} Re $\chi$")
        ax.plot(w, np.trace(im, axis1=1, axis2=2) / 3, color="tab:orange", lw=1.2, ls="--",
                label=rf"{labels[1]} Im $\chi$")
        ax.set_ylabel(r"$\frac{1}{3}\mathrm{tr}\,\chi(\omega)$ (SI, $\varepsilon_r - 1$)")
        heading = (f"$\\varepsilon_\\infty$: {labels[0]} {reference['eps_inf']:.2f}, {labels[1]} "
                   f"{result['eps_inf']:.2f}")
    else:
        for a, name in enumerate("xyz"):
            style = dict(lw=1.2, alpha=0.9 if a == 0 else 0.6)
            ax.plot(w, re[:, a, a], color="C0", ls=("-", "--", ":")[a], label=rf"Re $\chi_{{{name}{name}}}$", **style)
            ax.plot(w, im[:, a, a], color="C3", ls=("-", "--", ":")[a], label=rf"Im $\chi_{{{name}{name}}}$", **style)
        ax.set_ylabel(r"$\chi(\omega)$ (SI, $\varepsilon_r - 1$)")
        heading = f"$\\varepsilon_\\infty$ = {result['eps_inf']:.2f}"
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlim(w[0], w[-1])
    ax.set_xlabel(r"$\hbar\omega$ (eV)")
    ax.set_title(f"{title or result['formula']}: {heading} ({_mesh_text(result)} mesh, $\\eta$ = {result['eta_eV']:g} eV)",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=2 if reference is not None else 3)
    return save_figure(fig, path)
