"""Figures of ``aiida-deeph report`` (matplotlib, Agg): the panels of the DeepH-2 paper's evaluation.

Each function takes plain numbers (the report.json content) and writes one PNG; axes carry units, elements
are in periodic-table order (atomic number), element pairs with few training blocks are greyed.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.elements import symbol_to_z, z_to_symbol
from aiida_deeph.physics.plots import _pyplot, save_figure


def table_position(z: int) -> tuple:
    """(period, group) of element ``z`` in the 18-column periodic table (lanthanides/actinides in group 3)."""
    if z <= 2:
        return 1, 1 if z == 1 else 18
    for period, start in ((2, 3), (3, 11)):
        if start <= z < start + 8:
            k = z - start
            return period, k + 1 if k < 2 else k + 11
    for period, start in ((4, 19), (5, 37)):
        if start <= z < start + 18:
            return period, z - start + 1
    if z < 87:
        if z < 57:
            return 6, z - 54
        return 6, 3 if z < 72 else z - 68
    return 7, min(max(z - 86, 1), 18)


def _norm(values, log_if_ratio: float = 10.0):
    import matplotlib.colors as mcolors

    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if not len(v):
        return mcolors.Normalize(0, 1)
    if v.max() / v.min() > log_if_ratio:
        return mcolors.LogNorm(v.min(), v.max())
    return mcolors.Normalize(v.min() if v.min() != v.max() else 0.0, v.max())


def periodic_table_mae(path, per_element: dict, title: str = "") -> None:
    """Fig. 2a: the MAE of each element's blocks on a periodic table (elements not in the data: blank)."""
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    norm = _norm(per_element.values())
    periods = [table_position(symbol_to_z(e))[0] for e in per_element] or [1]
    last = max(max(periods), 2)
    fig, ax = plt.subplots(figsize=(10.0, 0.56 * last + 0.9))

    for z in range(1, 119):
        try:
            symbol = z_to_symbol(z)
        except (KeyError, IndexError, ValueError):
            break
        period, group = table_position(z)
        if period > last:
            break
        x, y = group - 1, -(period - 1)
        mae = per_element.get(symbol)
        face = cmap(norm(mae)) if mae is not None else "white"
        ax.add_patch(plt.Rectangle((x, y), 0.95, 0.95, facecolor=face, edgecolor="0.6", lw=0.6))
        dark = mae is not None and np.mean(face[:3]) < 0.5
        ax.text(x + 0.475, y + 0.62, symbol, ha="center", va="center", fontsize=10, weight="bold",
                color=("white" if dark else "black") if mae is not None else "0.7")
        if mae is not None:
            ax.text(x + 0.475, y + 0.25, f"{mae:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xlim(-0.1, 18.05)
    ax.set_ylim(-(last - 1) - 0.1, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.025, pad=0.01, shrink=0.9, label="MAE of H (meV)")
    ax.set_title(title or "MAE of the Hamiltonian blocks per element", fontsize=11)
    save_figure(fig, path)


def structure_mae_distribution(path, maes, title: str = "") -> None:
    """Fig. 2b: the per-structure MAE as a histogram (density) and its cumulative distribution."""
    plt = _pyplot()
    v = np.sort(np.asarray(maes, dtype=float))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    log = len(v) > 1 and v[0] > 0 and v[-1] / v[0] > 20
    bins = np.geomspace(v[0], v[-1], 25) if log else min(25, max(5, len(v)))
    ax.hist(v, bins=bins, density=True, color="tab:blue", alpha=0.45, label="density")
    ax.set_xlabel("MAE of H per structure (meV)")
    ax.set_ylabel("density (1/meV)", color="tab:blue")
    if log:
        ax.set_xscale("log")
    ax2 = ax.twinx()
    ax2.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color="black", lw=1.5, label="cumulative")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("cumulative fraction of structures")
    med = float(np.median(v))
    ax2.axvline(med, color="0.5", ls=":", lw=1)
    ax.set_title(title or f"{len(v)} structures: median {med:.3g} meV, 90 % below {np.quantile(v, 0.9):.3g} meV",
                 fontsize=10)
    save_figure(fig, path)


def _pair_matrix(elements, values: dict):
    n = len(elements)
    m = np.full((n, n), np.nan)
    index = {e: i for i, e in enumerate(elements)}
    for key, val in values.items():
        a, b = key.split("-")
        if a in index and b in index and val is not None:
            m[index[a], index[b]] = m[index[b], index[a]] = val
    return m


def pair_heatmap(path, elements, values: dict, label: str, title: str, rare: dict | None = None,
                 rare_label: str = "") -> None:
    """Figs. 2c/2d: a symmetric element-pair heatmap (elements by atomic number); ``rare`` pairs ({key: True})
    are drawn grey and hatched; pairs without a value are white."""
    plt = _pyplot()
    m = _pair_matrix(elements, values)
    n = len(elements)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.42 * n + 2.4), max(3.8, 0.42 * n + 1.4)))
    norm = _norm(list(values.values()))
    shown = np.ma.masked_invalid(m)
    if rare:
        r = _pair_matrix(elements, {k: 1.0 for k, v in rare.items() if v})
        shown = np.ma.masked_where(np.isfinite(r) | ~np.isfinite(m), m)
    im = ax.imshow(shown, cmap="viridis", norm=norm, origin="upper")
    if rare:
        for i in range(n):
            for j in range(n):
                if np.isfinite(r[i, j]) and np.isfinite(m[i, j]):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.82", edgecolor="0.6",
                                               hatch="///", lw=0.3))
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(elements, fontsize=8)
    ax.set_yticklabels(elements, fontsize=8)
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.tick_params(which="minor", length=0)
    if n <= 14:                                   # the numbers, where they fit
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=6 if n > 8 else 8,
                            color="black" if (rare and np.isfinite(r[i, j])) or norm(m[i, j]) > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
    ax.set_title(title + (f"\n({rare_label})" if rare and rare_label else ""), fontsize=10)
    save_figure(fig, path)


def mae_vs_count(path, pairs: list, spearman: dict, rare_count: int) -> None:
    """Fig. 2e: MAE of each element pair against its number of training blocks, with Spearman's rho."""
    plt = _pyplot()
    rows = [p for p in pairs if p.get("train_count") is not None and p.get("mae_meV") is not None]
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    x = np.array([p["train_count"] for p in rows], dtype=float)
    y = np.array([p["mae_meV"] for p in rows], dtype=float)
    rare = np.array([p["train_count"] < rare_count for p in rows], dtype=bool)
    ax.scatter(x[~rare], y[~rare], s=22, color="tab:blue", label=f">= {rare_count} training blocks")
    if rare.any():
        ax.scatter(x[rare], y[rare], s=22, color="0.6", marker="s", label=f"< {rare_count} (rare)")
    if len(rows) <= 40:
        for p, xi, yi in zip(rows, x, y):
            ax.annotate(p["pair"], (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points", color="0.3")
    ax.set_xscale("symlog", linthresh=1.0)      # pairs never seen in training sit at 0
    ax.set_xlim(left=-0.5)
    if len(y) and y.min() > 0 and y.max() / y.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("H blocks of the element pair in the training set (0: unseen)")
    ax.set_ylabel("MAE of H (meV)")
    rho = spearman.get("rho")
    txt = "Spearman: n/a" if rho is None else f"Spearman $\\rho$ = {rho:.2f}, p = {spearman['p']:.2g} (n = {spearman['n']})"
    ax.set_title(f"MAE vs training data per element pair: {txt}", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, path)


def parity(path, reference, predicted, names, quantity: str, unit: str, title: str = "", from_zero: bool = True) -> None:
    """Figs. 4d/4e: DeepH against DFT for one scalar per structure, with the diagonal and the MAE."""
    plt = _pyplot()
    ref = np.asarray(reference, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    lo, hi = (float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))) if len(ref) else (0.0, 1.0)
    pad = 0.08 * max(hi - lo, 1e-3 if not from_zero else 0.1)
    lo, hi = (min(lo, 0.0) if from_zero else lo - pad), hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    ax.scatter(ref, pred, s=26, color="tab:red", edgecolor="black", lw=0.4, zorder=3)
    if len(names) <= 25:
        for n, a, b in zip(names, ref, pred):
            ax.annotate(n, (a, b), fontsize=6, xytext=(3, -6), textcoords="offset points", color="0.35")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"DFT {quantity} ({unit})" if unit else f"DFT {quantity}")
    ax.set_ylabel(f"DeepH {quantity} ({unit})" if unit else f"DeepH {quantity}")
    mae = float(np.mean(np.abs(pred - ref))) if len(ref) else float("nan")
    ax.set_title(title or f"{quantity}: MAE {mae:.3g}{(' ' + unit) if unit else ''} over {len(ref)} structures",
                 fontsize=10)
    save_figure(fig, path)


def learning_curve(path, points: list, title: str = "") -> None:
    """Fig. 4b: MAE on the same evaluation structures against the number of training (fine-tuning) structures."""
    plt = _pyplot()
    pts = sorted((p for p in points if p.get("num_train_structures")), key=lambda p: p["num_train_structures"])
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    x = [p["num_train_structures"] for p in pts]
    y = [p["mae_meV"] for p in pts]
    ax.plot(x, y, "o-", color="tab:blue")
    for p in pts:
        ax.annotate(p.get("label", ""), (p["num_train_structures"], p["mae_meV"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points", color="0.35")
    ax.set_xscale("log")
    if y and min(y) > 0 and max(y) / min(y) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("training structures")
    ax.set_ylabel("MAE of H on the evaluation set (meV)")
    ax.set_title(title or "Fine-tuning / learning curve", fontsize=10)
    save_figure(fig, path)
