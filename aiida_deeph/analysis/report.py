"""``aiida-deeph report``: the DeepH-2 paper's evaluation of a model on data (pure; torch only to predict).

:func:`make_report` predicts H for every evaluation structure (streamed one at a time, written to
``predictions.h5``, a packed file that anyone can recompute the numbers from), accumulates the errors of
:mod:`aiida_deeph.analysis.errors`, and for a chosen set of structures computes DFT and DeepH bands, gaps
and chi(omega) with the one pipeline of the property work chain (physics.bands.band_structure,
physics.optics.susceptibility). Outputs (``OUTPUT/``):

- ``report.json``: ``mae_meV``, ``per_element_mae_meV``, ``per_pair`` ([{pair, mae_meV, train_count,
  entries, rare}]), ``spearman`` ({rho, p, n}: MAE vs training count over the pairs), ``per_structure``,
  ``cumulative``, ``properties`` (per structure: DFT/DeepH gap, eps_inf, band MAE), ``gap_mae_meV``,
  ``eps_inf_mae``, ``learning_curve``, ``figures``, ``definitions``;
- PNGs: ``fig2a_per_element.png``, ``fig2b_structure_mae.png``, ``fig2c_pair_mae.png``,
  ``fig2d_pair_counts.png``, ``fig2e_mae_vs_count.png``, ``fig3_bands_<rank>_<name>.png``,
  ``fig3_chi_<rank>_<name>.png``, ``fig4d_gap_parity.png``, ``fig4e_chi_parity.png``,
  ``fig4b_learning_curve.png`` (with ``curve_models``);
- ``predictions.h5``: the predicted Hamiltonians (packed, the evaluation structures' names).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import figures
from .errors import ErrorTable, by_atomic_number, cumulative, spearman, training_pair_counts


class ReportError(ValueError):
    """Bad input of a report, with a one-line message."""


@dataclass
class ReportConfig:
    split: str | None = None                 # None: the model's test split when split.json fits, else all
    ranks: tuple = (0.1, 0.5, 0.9)           # MAE quantiles of the structures shown in Fig. 3
    max_properties: int = 12                 # structures with bands, gap and chi (the ranks included)
    rare_count: int = 100                    # element pairs with fewer training blocks are greyed
    kpath_spacing: float = 0.05              # 1/Angstrom between band-path points
    optics: bool = True
    optics_mesh: tuple | None = None         # default: spacing 0.25 1/A (2 pi included)
    optics_eta: float = 0.1
    pao_dir: str | None = None               # position matrix from the PAO files where the data hold none
    basis_table: str = "corpus"
    window_eV: float = 3.0
    device: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = list(self.ranks)
        return d


def _items(paths, what: str):
    from aiida_deeph.ml.data import discover

    try:
        items = discover(paths)
    except ValueError as exc:
        raise ReportError(f"{what}: {exc}") from None
    if not items:
        raise ReportError(f"{what}: no structures found in {', '.join(map(str, paths))}")
    return items


def _split_of(model_dir: Path, items):
    from aiida_deeph.ml.train import saved_split

    return saved_split(model_dir / "split.json", items, log=lambda *_: None)


def _train_size(model_dir: Path):
    try:
        saved = json.loads((Path(model_dir) / "split.json").read_text())
    except (OSError, ValueError):
        return None
    keys = saved.get("keys") or {}
    return len(keys.get("train") or saved.get("train") or []) or None


def storage_names(items) -> list:
    """Unique names of ``items``: the structure or folder name, with as many parent folders as it takes
    (``C-dia2-r000_dock`` for ``.../C-dia2-r000/dock``) when names repeat."""
    def candidate(item, depth):
        if item.kind == "packed":
            return item.name if depth == 1 else f"{Path(item.path).stem}_{item.name}"
        parts = Path(item.path).parts
        return "_".join(parts[-depth:])

    for depth in range(1, 32):
        names = [candidate(it, depth) for it in items]
        if len(set(names)) == len(names):
            return [n.replace("/", "_") for n in names]
    return [f"{k}_{it.name}" for k, it in enumerate(items)]


def _load(model_dir: Path, device):
    from aiida_deeph.ml.train import load_model

    try:
        model = load_model(model_dir, device=device)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    model.eval()
    return model


def _predict_all(model, items, reader, out_path: Path, table: ErrorTable, log, device=None) -> list:
    """Predict, score and write every item (one at a time); returns the storage names in order."""
    from aiida_deeph.core.packed import write_packed
    from aiida_deeph.ml.predict import predict_hamiltonian

    names: list = []
    unique = storage_names(items)

    def stream():
        for k, item in enumerate(items):
            ref = reader.read(item, load=("hamiltonian", "overlap"))
            if ref.hamiltonian is None or ref.overlap is None:
                raise ReportError(f"{item.label}: the evaluation data need the DFT H and S")
            try:
                pred = predict_hamiltonian(model, ref, device=device)
            except ValueError as exc:
                raise ReportError(f"{item.label}: {exc}") from None
            name = unique[k]
            row = table.add(name, pred, ref)
            row["source"] = item.label
            names.append(name)
            if k < 3 or (k + 1) % 25 == 0 or k + 1 == len(items):
                log(f"  [{k + 1}/{len(items)}] {unique[k]} ({ref.formula}, {ref.num_atoms} atoms): "
                    f"MAE {row['mae_meV']:.3f} meV")
            pred.hamiltonian = pred.hamiltonian.astype(np.float64)
            yield name, pred

    write_packed(out_path, stream())
    return names


def _property_picks(rows: list, ranks, max_properties: int) -> tuple:
    """(indices of the structures with properties, {index: rank label}) over ``rows`` sorted by MAE."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["mae_meV"])
    n = len(order)
    rank_of = {}
    for q in ranks:
        i = order[min(n - 1, max(0, int(round(float(q) * (n - 1)))))]
        rank_of.setdefault(i, f"q{int(round(100 * float(q))):02d}")
    picks = list(rank_of)
    rest = max(0, int(max_properties) - len(picks))
    if rest:
        spaced = [order[int(round(j))] for j in np.linspace(0, n - 1, min(n, rest + len(picks)))]
        picks += [i for i in spaced if i not in picks][:rest]
    return picks, rank_of


def _num_electrons(ham, basis_table: str) -> float:
    from aiida_deeph.physics.kspace import valence_electrons

    try:
        return valence_electrons(ham, basis_table)[0]
    except (ValueError, OSError, KeyError):
        raise ReportError(f"{ham.formula}: no electron count (basis table {basis_table!r} lacks an element "
                          "and the data carry none)") from None


def _position_matrix(ref, cfg: ReportConfig):
    """The structure's position matrix: the DFT data's, else from the PAO files, else None (and why)."""
    if ref.position_matrix is not None:
        return ref.position_matrix, "the data (OpenMX's <i|r|j>)"
    if not cfg.pao_dir:
        return None, ("no position matrix in the data: convert with --position-matrix or give --pao-dir for "
                      "the two-centre integrals")
    from aiida_deeph.core.basis import load_basis_table
    from aiida_deeph.overlap import compute_overlap

    pao = compute_overlap(ref.cell, ref.positions, list(ref.species), basis_table=load_basis_table(cfg.basis_table),
                          pao_dir=cfg.pao_dir, position_matrix=True)
    if np.array_equal(pao.atom_pairs, ref.atom_pairs):
        return pao.position_matrix, "the PAO files"
    from aiida_deeph.core.packed import pairs_gather_index

    try:
        return pao.position_matrix[pairs_gather_index(pao.atom_pairs, pao.offsets, ref.atom_pairs)], "the PAO files"
    except KeyError:
        return None, "the PAO pair set differs from the data's (another basis or cutoff)"


def _structure_properties(ref, pred, cfg: ReportConfig, out_dir: Path, label: str | None, name: str, mae: float):
    """DFT and DeepH bands (path + mesh gap), band errors and chi(omega) of one structure; figures for ranks."""
    from aiida_deeph.core.lattice import fractional_to_cartesian
    from aiida_deeph.physics.bands import band_structure
    from aiida_deeph.physics.compare import band_errors, path_distances, plot_comparison
    from aiida_deeph.physics.kpath import auto_kpath

    t0 = time.perf_counter()
    nel = _num_electrons(ref, cfg.basis_table)
    path = auto_kpath(ref.cell, ref.positions, list(ref.species), reference_distance=cfg.kpath_spacing)
    k = np.asarray(path["kpoints"], dtype=float)
    b_ref = band_structure(ref, k, nel)
    b_pred = band_structure(pred, k, nel)
    err = band_errors(b_pred["eigenvalues"], b_ref["eigenvalues"], b_pred["fermi_energy_eV"],
                      b_ref["fermi_energy_eV"], window_eV=cfg.window_eV, predicted_gap=b_pred["gap"]["gap_eV"],
                      reference_gap=b_ref["gap"]["gap_eV"])
    row = {"name": name, "formula": ref.formula, "num_atoms": int(ref.num_atoms), "mae_meV": mae,
           "num_electrons": nel, "num_kpoints_path": int(len(k)),
           "dft_gap_eV": float(b_ref["gap"]["gap_eV"]), "deeph_gap_eV": float(b_pred["gap"]["gap_eV"]),
           "dft_is_metal": bool(b_ref["gap"]["is_metal"]), "deeph_is_metal": bool(b_pred["gap"]["is_metal"]),
           "band_mae_meV": err.get("mae_meV"), "gap_error_meV": err.get("gap_error_meV")}
    if label:
        kcart = fractional_to_cartesian(k, ref.cell)
        x, ticks = path_distances(kcart, path.get("labels"))
        png = out_dir / f"fig3_bands_{label}_{name}.png"
        plot_comparison(png, x, ticks, b_pred["eigenvalues"] - b_pred["fermi_energy_eV"],
                        b_ref["eigenvalues"] - b_ref["fermi_energy_eV"], window_eV=cfg.window_eV,
                        title=f"{ref.formula} ({name}): H MAE {mae:.2f} meV, band MAE "
                              f"{err.get('mae_meV') or float('nan'):.1f} meV")
        row["bands_figure"] = png.name
    row["optics"] = "not asked for"
    if cfg.optics:
        row.update(_optics(ref, pred, cfg, out_dir, label, name, b_ref, nel))
    row["seconds"] = time.perf_counter() - t0
    return row


def _optics(ref, pred, cfg, out_dir, label, name, b_ref, nel: float) -> dict:
    from aiida_deeph.core.lattice import kpoint_grid
    from aiida_deeph.physics.optics import OpticsError, susceptibility
    from aiida_deeph.physics.plots import plot_chi

    if b_ref["gap"]["is_metal"]:
        return {"optics": "skipped: DFT metal (chi(0) diverges)"}
    p, source = _position_matrix(ref, cfg)
    if p is None:
        return {"optics": f"skipped: {source}"}
    mesh = list(cfg.optics_mesh) if cfg.optics_mesh else [int(n) for n in kpoint_grid(ref.cell, 0.25, kmax=None)]
    out = {"optics_mesh": mesh, "position_matrix_from": source}
    results = {}
    for who, ham in (("dft", ref), ("deeph", pred)):
        h = copy.copy(ham)             # shares H and S; only the position matrix is set on the copy
        h.position_matrix = p
        try:
            results[who] = susceptibility(h, mesh, eta=cfg.optics_eta, num_omega=501, num_electrons=nel)
        except OpticsError as exc:
            out[f"{who}_eps_inf"] = None
            out["optics"] = f"{who}: {exc}"
            return out
        out[f"{who}_eps_inf"] = results[who]["eps_inf"]
    out["optics"] = "computed"
    if label:
        png = out_dir / f"fig3_chi_{label}_{name}.png"
        plot_chi(results["deeph"], png, title=f"{ref.formula} ({name})", reference=results["dft"])
        out["chi_figure"] = png.name
    return out


DEFINITIONS = {
    "mae": "mean |H_pred - (H_dft + dmu S)| over matrix entries (meV), dmu per structure = "
           "sum (H_pred - H_dft) S / sum S^2 (the energy-zero shift); uncorrected: without dmu",
    "per_element": "entries of the blocks whose two atoms include the element (A-A blocks once)",
    "per_pair": "entries of the blocks between an A and a B atom; train_count: H blocks (directed atom "
                "pairs (i, j, R), on-site included) of that pair in the training structures",
    "spearman": "scipy.stats.spearmanr(train_count, mae_meV) over the element pairs",
    "band_mae": "physics.compare.band_errors: each set relative to its own E_F, |E| <= window of DFT",
    "gap": "over the seekpath band path and the SCF k-mesh (physics.bands.band_structure)",
}


def _select(model_dir: Path, data_paths, train_data, which):
    """(evaluation items, split name, training items or None, where the training items come from)."""
    items = _items(data_paths, "--data")
    split = _split_of(model_dir, items)
    if which is None:
        which = "test" if split is not None and split["test"] else "all"
    eval_items = items
    if which != "all":
        if split is None:
            raise ReportError(f"--split {which}: {model_dir}/split.json does not match the structures of --data")
        eval_items = split[which]
        if not eval_items:
            raise ReportError(f"the {which} split of {model_dir} is empty")
    if train_data:
        return eval_items, which, _items(train_data, "--train-data"), "--train-data"
    if split is not None:
        return eval_items, which, split["train"], f"the train split of {model_dir.name}/split.json"
    return eval_items, which, None, None


def _pairs(metrics: dict, counts: dict | None, rare_count: int) -> tuple:
    """(per_pair rows, Spearman of MAE against training count)."""
    pairs = []
    for key, mae in metrics["per_pair_mae_meV"].items():
        count = None if counts is None else int(counts.get(key, 0))
        pairs.append({"pair": key, "mae_meV": mae, "train_count": count,
                      "entries": metrics["per_pair_entries"][key],
                      "rare": None if count is None else bool(count < rare_count)})
    if counts is None:
        return pairs, {"rho": None, "p": None, "n": 0, "note": "no training data known: give --train-data"}
    return pairs, spearman([p["train_count"] for p in pairs], [p["mae_meV"] for p in pairs])


def _properties(rows, names, by_name, reader, cfg: ReportConfig, out_dir: Path, log) -> list:
    """Bands, gaps and chi of the structures picked by MAE rank (Figs. 3, 4d, 4e)."""
    from aiida_deeph.core.packed import PackedFile

    picks, rank_of = _property_picks(rows, cfg.ranks, cfg.max_properties) if rows else ([], {})
    props = []
    with PackedFile(out_dir / "predictions.h5") as pf:
        for i in picks:
            name = names[i]
            ref = reader.read(by_name[name], load=("hamiltonian", "overlap", "position_matrix"))
            pred = pf.read(name, load=("hamiltonian", "overlap"))
            try:
                row = _structure_properties(ref, pred, cfg, out_dir, rank_of.get(i), name, rows[i]["mae_meV"])
            except (ValueError, np.linalg.LinAlgError) as exc:
                row = {"name": name, "formula": ref.formula, "error": str(exc).splitlines()[0]}
            if i in rank_of:
                row["rank"] = rank_of[i]
            props.append(row)
            log(f"  properties of {name} ({ref.formula}): gap DFT {row.get('dft_gap_eV', float('nan')):.3f} / DeepH "
                f"{row.get('deeph_gap_eV', float('nan')):.3f} eV, band MAE {row.get('band_mae_meV') or float('nan'):.1f} "
                f"meV, optics {row.get('optics', '-')}")
    return props


def _property_errors(props: list) -> tuple:
    """(rows with both gaps, gap MAE meV, rows with both eps_inf, eps_inf MAE)."""
    gap_rows = [r for r in props if "dft_gap_eV" in r]
    gap_mae = (1000.0 * float(np.mean([abs(r["deeph_gap_eV"] - r["dft_gap_eV"]) for r in gap_rows]))
               if gap_rows else None)
    chi_rows = [r for r in props if r.get("dft_eps_inf") is not None and r.get("deeph_eps_inf") is not None]
    eps_mae = float(np.mean([abs(r["deeph_eps_inf"] - r["dft_eps_inf"]) for r in chi_rows])) if chi_rows else None
    return gap_rows, gap_mae, chi_rows, eps_mae


def _learning_curve(model_dir: Path, curve_models, names, by_name, reader, cfg: ReportConfig, mae: float,
                    log) -> list:
    """MAE of each ``curve_models`` folder on the same structures, with its number of training structures."""
    from aiida_deeph.ml.predict import predict_hamiltonian

    curve = []
    for extra in map(Path, curve_models):
        model = _load(extra, cfg.device)
        table = ErrorTable()
        for name in names:
            ref = reader.read(by_name[name], load=("hamiltonian", "overlap"))
            table.add(name, predict_hamiltonian(model, ref, device=cfg.device), ref)
        curve.append({"model": str(extra.resolve()), "label": extra.name, "num_train_structures": _train_size(extra),
                      "mae_meV": table.result()["mae_meV"]})
        log(f"  learning curve: {extra.name}: {curve[-1]['num_train_structures']} training structures, "
            f"MAE {curve[-1]['mae_meV']:.3f} meV")
    if curve_models:
        curve.append({"model": str(model_dir.resolve()), "label": model_dir.name,
                      "num_train_structures": _train_size(model_dir), "mae_meV": mae})
    return curve


def _figures(report: dict, counts: dict | None, cfg: ReportConfig, out_dir: Path, model_name: str) -> dict:
    """Write the figures of ``report`` into ``out_dir``; returns {panel: file name(s)}."""
    figs = {}
    rows, pairs, rho = report["per_structure"], report["per_pair"], report["spearman"]
    if report["per_element_mae_meV"]:
        figures.periodic_table_mae(out_dir / "fig2a_per_element.png", report["per_element_mae_meV"],
                                   title=f"{model_name}: MAE of H per element ({len(rows)} structures, "
                                         f"{report['split']})")
        figs["2a"] = "fig2a_per_element.png"
    if rows:
        figures.structure_mae_distribution(out_dir / "fig2b_structure_mae.png", [r["mae_meV"] for r in rows])
        figs["2b"] = "fig2b_structure_mae.png"
    elements = by_atomic_number([e for p in pairs for e in p["pair"].split("-")] +
                                ([e for k in counts for e in k.split("-")] if counts else []))
    rare = {p["pair"]: bool(p["rare"]) for p in pairs} if counts is not None else None
    if pairs:
        figures.pair_heatmap(out_dir / "fig2c_pair_mae.png", elements, {p["pair"]: p["mae_meV"] for p in pairs},
                             "MAE of H (meV)", f"{model_name}: MAE per element pair", rare=rare,
                             rare_label=f"hatched: < {cfg.rare_count} training blocks" if rare else "")
        figs["2c"] = "fig2c_pair_mae.png"
    if counts:
        figures.pair_heatmap(out_dir / "fig2d_pair_counts.png", elements, {k: float(v) for k, v in counts.items()},
                             "H blocks in the training set",
                             f"Training data per element pair ({report['training_counts_from']})")
        figs["2d"] = "fig2d_pair_counts.png"
        figures.mae_vs_count(out_dir / "fig2e_mae_vs_count.png", pairs, rho, cfg.rare_count)
        figs["2e"] = "fig2e_mae_vs_count.png"
    figs["3"] = [r[k] for r in report["properties"] for k in ("bands_figure", "chi_figure") if r.get(k)]
    gap_rows, gap_mae, chi_rows, eps_mae = _property_errors(report["properties"])
    if gap_rows:
        figures.parity(out_dir / "fig4d_gap_parity.png", [r["dft_gap_eV"] for r in gap_rows],
                       [r["deeph_gap_eV"] for r in gap_rows], [r["name"] for r in gap_rows], "band gap", "eV",
                       title=f"Band gap: MAE {gap_mae:.0f} meV over {len(gap_rows)} structures")
        figs["4d"] = "fig4d_gap_parity.png"
    if chi_rows:
        figures.parity(out_dir / "fig4e_chi_parity.png", [r["dft_eps_inf"] - 1 for r in chi_rows],
                       [r["deeph_eps_inf"] - 1 for r in chi_rows], [r["name"] for r in chi_rows],
                       r"static $\chi(0) = \varepsilon_\infty - 1$", "",
                       title=f"Static susceptibility: MAE {eps_mae:.3g} over {len(chi_rows)} insulators",
                       from_zero=False)
        figs["4e"] = "fig4e_chi_parity.png"
    if len(report["learning_curve"]) >= 2:
        figures.learning_curve(out_dir / "fig4b_learning_curve.png", report["learning_curve"])
        figs["4b"] = "fig4b_learning_curve.png"
    return figs


def make_report(model_dir, data_paths, output, train_data=None, curve_models=(), config: ReportConfig | None = None,
                log=print) -> dict:
    """Evaluate the model in ``model_dir`` on ``data_paths`` and write the report into ``output``."""
    from aiida_deeph.ml.data import Reader

    cfg = config or ReportConfig()
    log = log or (lambda *_: None)
    t_start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_items, which, train_items, train_source = _select(model_dir, data_paths, train_data, cfg.split)
    reader = Reader()
    counts = None if train_items is None else training_pair_counts(reader.read(it, load=()) for it in train_items)
    log(f"report: {len(eval_items)} evaluation structures ({which}); training counts from "
        f"{train_source or 'nowhere (give --train-data)'}")
    table = ErrorTable()
    names = _predict_all(_load(model_dir, cfg.device), eval_items, reader, out_dir / "predictions.h5", table, log,
                         cfg.device)
    metrics = table.result()
    pairs, rho = _pairs(metrics, counts, cfg.rare_count)
    rows = table.structures
    report = {
        "model": str(model_dir.resolve()), "data": [str(Path(p).resolve()) for p in data_paths], "split": which,
        "num_structures": len(rows), "mae_meV": metrics["mae_meV"],
        "mae_uncorrected_meV": metrics["mae_uncorrected_meV"], "num_entries": metrics["num_entries"],
        "per_element_mae_meV": metrics["per_element_mae_meV"],
        "per_element_uncorrected_meV": metrics["per_element_uncorrected_meV"],
        "per_pair": pairs, "spearman": rho, "training_counts_from": train_source, "per_structure": rows,
        "cumulative": cumulative([r["mae_meV"] for r in rows]), "config": cfg.to_dict(), "definitions": DEFINITIONS,
    }
    by_name = dict(zip(names, eval_items))
    report["properties"] = _properties(rows, names, by_name, reader, cfg, out_dir, log)
    _, report["gap_mae_meV"], _, report["eps_inf_mae"] = _property_errors(report["properties"])
    report["chi0_mae"] = report["eps_inf_mae"]   # chi(0) = eps_inf - 1: the same absolute error
    report["learning_curve"] = _learning_curve(model_dir, curve_models, names, by_name, reader, cfg,
                                               metrics["mae_meV"], log)
    report["figures"] = _figures(report, counts, cfg, out_dir, model_dir.name)
    report["seconds"] = time.perf_counter() - t_start
    _write_json(out_dir / "report.json", report)
    return report


def clean_json(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return clean_json(x.item())
    return x


def _write_json(path: Path, payload: dict) -> None:
    from aiida_deeph.core.files import write_json_atomic

    write_json_atomic(path, clean_json(payload), indent=1, allow_nan=False)
