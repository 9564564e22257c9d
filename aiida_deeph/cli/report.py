"""``aiida-deeph report``: the DeepH-2 paper's evaluation of a model (figures 2a-e, 3, 4b, 4d, 4e) as PNG + JSON.

See :mod:`aiida_deeph.analysis.report` for the files and the definitions of every number.
"""
from __future__ import annotations

import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="the paper's evaluation of a model: per-element/pair MAE, Spearman, bands, gaps, chi",
        description="Predict H for the evaluation structures and write report.json, the figures of the DeepH-2 "
                    "paper's evaluation (MAE per element and element pair, MAE vs training counts with Spearman's "
                    "rho, per-structure MAE distribution, DFT-vs-DeepH bands and chi(omega) at MAE ranks, gap and "
                    "static-chi parity, a learning curve) and predictions.h5 into OUTPUT.")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a trained model folder (config.json, best.pt)")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="DFT data: packed .h5 files, DeepH-dock folders, OpenMX run folders, or folders of them")
    p.add_argument("--output", required=True, metavar="DIR", help="where report.json, the PNGs and predictions.h5 go")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which part of the model's split.json to evaluate (default: test when split.json matches "
                        "--data, else all of --data)")
    p.add_argument("--train-data", nargs="+", metavar="PATH", default=None,
                   help="the training structures, for the per-pair training counts (default: the train split of "
                        "--data)")
    p.add_argument("--curve", nargs="+", metavar="MODEL_DIR", default=(),
                   help="more model folders (trained or fine-tuned on other numbers of structures): the learning "
                        "curve (Fig. 4b) on the same evaluation structures")
    p.add_argument("--ranks", nargs="+", type=float, default=[0.1, 0.5, 0.9], metavar="Q",
                   help="MAE quantiles (0-1) of the structures whose bands and chi are plotted (default 0.1 0.5 0.9)")
    p.add_argument("--max-properties", type=int, default=12, metavar="N",
                   help="structures with bands, gaps and chi (the ranks included; default 12)")
    p.add_argument("--rare", type=int, default=100, metavar="N",
                   help="element pairs with fewer training blocks are greyed (default 100)")
    p.add_argument("--no-optics", action="store_true", help="no chi(omega) / eps_inf")
    p.add_argument("--optics-mesh", nargs=3, type=int, default=None, metavar="N",
                   help="k-mesh of chi (default: spacing 0.25 1/A)")
    p.add_argument("--pao-dir", default=None, metavar="DIR",
                   help="PAO files: the position matrix of structures whose data hold none (for chi)")
    p.add_argument("--basis", default="corpus", help="basis table of the electron counts (default corpus)")
    p.add_argument("--device", default=None, help="torch device of the predictions (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines and no summary line")
    p.set_defaults(func=run)


def run(args) -> int:
    from aiida_deeph.analysis.report import ReportConfig, make_report

    from .errors import CliError

    if not all(0.0 <= q <= 1.0 for q in args.ranks):
        raise CliError(f"--ranks are quantiles between 0 and 1, got {args.ranks}")
    cfg = ReportConfig(split=args.split, ranks=tuple(args.ranks), max_properties=args.max_properties,
                       rare_count=args.rare, optics=not args.no_optics,
                       optics_mesh=tuple(args.optics_mesh) if args.optics_mesh else None, pao_dir=args.pao_dir,
                       basis_table=args.basis, device=args.device)
    t0 = time.perf_counter()
    log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    report = make_report(args.model, args.data, args.output, train_data=args.train_data, curve_models=args.curve,
                         config=cfg, log=log)
    rho = report["spearman"].get("rho")
    gap = report.get("gap_mae_meV")
    if not args.quiet:
        print(f"{report['num_structures']} structures ({report['split']}): H MAE {report['mae_meV']:.3f} meV; "
              f"Spearman rho {'n/a' if rho is None else f'{rho:.2f}'}; gap MAE "
              f"{'n/a' if gap is None else f'{gap:.0f} meV'}; {len(report['figures'])} figure panels; "
              f"{time.perf_counter() - t0:.1f} s; written to {args.output}/report.json")
    return 0
