"""Train a small DeepH-2 model on a dataset group, then compute DeepH vs DFT bands of a held-out structure.

    verdi run examples/train_and_bands.py --group GROUP --test MP_ID [--minutes M] [--epochs N] [--preset tiny|small]
        [--parent MODEL_DIR|PK] [--lr LR] [--band-weight W] [--model MODEL_DIR|PK] [--plot out.png] [--code aiida-deeph]

1. Training (skipped with ``--model``): a DeepHTrainCalculation (``aiida-deeph train`` through the ``aiida-deeph`` code on
   localhost) on every HamiltonianData of GROUP except the test structure, for at most M minutes
   (default 2) or 400 epochs of CPU: a TINY demonstration model, not a production one; or, with
   ``--parent``, fine-tuning of a trained model (the shipped carbon model: a model folder is stored as
   DeepHModelData once) for that budget.
2. Bands: DeepHBandsWorkChain on the test structure (not in the training set). The overlap S is
   taken from the DFT HamiltonianData of the same structure (only S is used, the DFT H never reaches
   the model) and that DFT
   Hamiltonian is the reference: band errors (each set aligned to its own Fermi level, bands matched
   by index, MAE in meV within E_F +- 3 eV of DFT) and a DFT-vs-DeepH PNG.

The ``aiida-deeph`` code is created on localhost when missing (the venv's ``aiida-deeph`` script).
"""
import argparse
import sys
import time
from pathlib import Path

from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.workflows.bands import DeepHBandsWorkChain


def get_code(label: str) -> orm.InstalledCode:
    try:
        return orm.load_code(label)
    except Exception:  # noqa: BLE001
        pass
    exe = Path(sys.executable).parent / "aiida-deeph"
    if not exe.is_file():
        raise SystemExit(f"no code {label!r} and no aiida-deeph script next to {sys.executable}")
    code = orm.InstalledCode(label=label, computer=orm.load_computer("localhost"), filepath_executable=str(exe),
                             default_calc_job_plugin="deeph.infer",
                             description="aiida-deeph (train / predict) of this virtual environment")
    code.store()
    print(f"created code {code.full_label} -> {exe}")
    return code


def structure_of(node: HamiltonianData) -> orm.StructureData:
    """The StructureData the DFT run was made from (provenance), else one built from the stored cell (by the
    ``hamiltonian_structure`` calcfunction, so it is in the graph too)."""
    from aiida_deeph.workflows.properties import hamiltonian_structure

    creator = node.creator
    if creator is not None and "structure" in creator.inputs:
        return creator.inputs.structure
    return hamiltonian_structure(node)


def model_node(spec: str):
    """A DeepHModelData: a pk/UUID, or a model folder (stored once; found again by the sha256 of best.pt)."""
    import hashlib

    from aiida_deeph.data.model import DeepHModelData

    folder = Path(spec)
    if not folder.is_dir():
        return orm.load_node(spec)
    digest = hashlib.sha256((folder / "best.pt").read_bytes()).hexdigest()
    found = (orm.QueryBuilder().append(DeepHModelData, filters={"extras.best_pt_sha256": digest}).first(flat=True))
    if found is not None:
        return found
    node = DeepHModelData(model_dir=folder)
    node.label = folder.name
    node.store()
    node.base.extras.set_many({"best_pt_sha256": digest, "source_folder": str(folder)})
    print(f"stored the model folder {folder} as DeepHModelData<{node.pk}>")
    return node


def train_model(code, nodes, preset: str, minutes: float, epochs: int, parent=None, train_overrides=None):
    from aiida_deeph.calculations.train import DeepHTrainCalculation, hamiltonians_namespace

    builder = DeepHTrainCalculation.get_builder()
    builder.code = code
    builder.hamiltonians = hamiltonians_namespace(nodes)
    # every training structure in the training split (the held-out test structure is the real test);
    # validation every 5 epochs to save CPU
    train = {"seed": 0, "split": [1.0, 0.0, 0.0], "max_epochs": int(epochs), "val_every": 5, "lr_patience": 4,
             **(train_overrides or {})}
    builder.config = orm.Dict({"preset": preset, "train": train})
    if parent is not None:
        builder.parent_model = parent
    builder.settings = orm.Dict({"max_minutes": float(minutes)})
    builder.metadata.options.max_wallclock_seconds = int(minutes * 60 + 600)
    builder.metadata.label = "train_and_bands demo model"
    t0 = time.monotonic()
    results, node = run_get_node(builder)
    budget = DeepHTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME_WITH_CHECKPOINT.status
    if node.exit_status == budget and "model" in results:
        print(f"note: the training stopped at its {minutes:g}-minute budget (exit status {budget}, resumable with "
              f"DeepHTrainingWorkChain); its best model so far is used")
    elif not node.is_finished_ok or "model" not in results:
        raise SystemExit(f"DeepHTrainCalculation<{node.pk}> failed: [{node.exit_status}] {node.exit_message}")
    model = results["model"]
    metrics = results["metrics"].get_dict() if "metrics" in results else {}
    print(f"DeepHTrainCalculation<{node.pk}>: DeepHModelData<{model.pk}> in {time.monotonic() - t0:.0f} s; "
          f"{model.base.attributes.get('num_parameters')} parameters, epochs {metrics.get('epochs')}, "
          f"train-set MAE {_fmt(metrics.get('best_val_mae_meV'))} meV")
    return model


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f}"


def main(argv):
    parser = argparse.ArgumentParser(prog="verdi run examples/train_and_bands.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True, help="label of the dataset group (HamiltonianData)")
    parser.add_argument("--test", required=True, help="MP id of the held-out structure (must be in the group)")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget in minutes (default 2)")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny", help="model size (default tiny)")
    parser.add_argument("--epochs", type=int, default=400, help="at most this many epochs (default 400)")
    parser.add_argument("--plot", default=None, help="PNG path of the comparison plot (default bands_<MP_ID>.png)")
    parser.add_argument("--code", default="aiida-deeph", help="label of the aiida-deeph code (created if missing)")
    parser.add_argument("--model", default=None,
                        help="use this model instead of training: a model folder (e.g. the shipped carbon model) or a "
                             "DeepHModelData pk/UUID")
    parser.add_argument("--parent", default=None,
                        help="fine-tune this model (a model folder, e.g. the shipped carbon model, or a pk/UUID)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    parser.add_argument("--band-weight", type=float, default=0.0,
                        help="weight of the band loss (eigenvalues of H(k) with the true S(k); default 0)")
    args = parser.parse_args(argv)
    t_start = time.monotonic()

    try:
        group = orm.load_group(args.group)
    except NotExistent:
        labels = ", ".join(sorted(orm.QueryBuilder().append(orm.Group, project="label").all(flat=True))) or "none"
        raise SystemExit(f"train_and_bands.py: no group {args.group!r} (groups here: {labels}; build one with "
                         f"examples/build_database.py)") from None
    nodes = [n for n in group.nodes if isinstance(n, HamiltonianData)]
    test = [n for n in nodes if n.base.attributes.get("mp_id") == args.test]
    if not test:
        raise SystemExit(f"{args.test} is not in group {args.group!r} "
                         f"({', '.join(sorted(str(n.base.attributes.get('mp_id')) for n in nodes))})")
    test = test[0]
    training = [n for n in nodes if n.base.attributes.get("mp_id") != args.test]
    if not training:
        raise SystemExit(f"group {args.group!r} holds no structure besides {args.test} to train on")
    code = get_code(args.code)

    if args.model:
        model = model_node(args.model)
        print(f"using DeepHModelData<{model.pk}> ({model.label or 'model'}; no training here)")
    else:
        names = ", ".join(f"{n.base.attributes.get('mp_id')} {n.formula}" for n in training)
        print(f"training a {args.preset!r} DeepH-2 model for at most {args.minutes:g} min on {len(training)} "
              f"structures ({names}); {args.test} {test.formula} is held out")
        parent = model_node(args.parent) if args.parent else None
        overrides = {"band_weight": args.band_weight} if args.band_weight else {}
        if args.lr:
            overrides["lr"] = args.lr
        if parent is not None:
            print(f"fine-tuning DeepHModelData<{parent.pk}> ({parent.label or 'model'}: "
                  f"{parent.base.attributes.get('num_parameters')} parameters, elements "
                  f"{' '.join(parent.base.attributes.get('elements', []))})")
        model = train_model(code, training, args.preset, args.minutes, args.epochs, parent=parent,
                            train_overrides=overrides)

    structure = structure_of(test)
    print(f"bands of {args.test} {test.formula} (not in the training set). Overlap: the S of its DFT "
          f"HamiltonianData<{test.pk}> (S alone: the DFT H is not sent to the model); reference: the same DFT "
          f"Hamiltonian.")
    t0 = time.monotonic()
    results, node = run_get_node(DeepHBandsWorkChain, structure=structure, model=model, infer_code=code,
                                 overlap=test, reference=test)
    if not node.is_finished_ok:
        raise SystemExit(f"DeepHBandsWorkChain<{node.pk}> failed: [{node.exit_status}] {node.exit_message}")
    s = results["band_summary"].get_dict()
    r = results["reference_summary"].get_dict()
    e = results["band_errors"].get_dict()
    print(f"DeepHBandsWorkChain<{node.pk}> in {time.monotonic() - t0:.0f} s: {s['num_kpoints']} k-points, "
          f"{s['num_bands']} bands, Fermi level from {s['num_electrons']:g} electrons on a "
          f"{'x'.join(map(str, s['fermi_kmesh']))} mesh at {s['temperature_K']:g} K")
    print(f"  Fermi level  DeepH {s['fermi_energy_eV']:.4f} eV   DFT {r['fermi_energy_eV']:.4f} eV")
    print(f"  band gap     DeepH {s['band_gap_eV']:.4f} eV   DFT {r['band_gap_eV']:.4f} eV   "
          f"error {_fmt(e.get('gap_error_meV'))} meV")
    print(f"  band MAE {_fmt(e.get('mae_meV'))} meV (RMSE {_fmt(e.get('rmse_meV'))}, max "
          f"{_fmt(e.get('max_abs_error_meV'))}) over {e['num_values']} eigenvalues within E_F +- "
          f"{e['window_eV']:g} eV of DFT, each set aligned to its own Fermi level")
    mae, gap_err = e.get("mae_meV"), e.get("gap_error_meV")
    good = mae is not None and mae <= 50 and gap_err is not None and abs(gap_err) <= 100
    if good:
        print(f"  => DeepH reproduces DFT's bands of {args.test} here (band MAE <= 50 meV, gap within 0.1 eV).")
    else:
        who = ("the given model" if args.model else
               f"a model {'fine-tuned' if args.parent else 'trained'} for {args.minutes:g} CPU-minutes on "
               f"{len(training)} structures")
        print(f"  => not DFT quality (that needs band MAE <= 50 meV and the gap within 0.1 eV): {who} has H errors "
              f"of tens of meV, and this basis' ill-conditioned S(k) turns them into band errors of eV (README, "
              f"'End to end'; benchmarks/RESULTS.md).")
    plot = Path(args.plot or f"bands_{args.test}.png")
    with results["comparison_plot"].open(mode="rb") as src:
        plot.write_bytes(src.read())
    print(f"  comparison plot: {plot} (SinglefileData<{results['comparison_plot'].pk}>)")
    print(f"total {time.monotonic() - t_start:.0f} s")
    print(f"held-out {args.test}: band MAE {_fmt(mae)} meV, gap error {_fmt(gap_err)} meV")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
