"""``aiida-deeph predict``: predicted hamiltonian.h5 for DeepH-dock folders (no aiida needed)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict Hamiltonians with a trained DeepH-2 model",
                              description="Each input is a DeepH-dock folder with POSCAR, info.json and overlap.h5 "
                                          "(its atom_pairs define the edges); OUT_DIR/<name>/ gets the same files "
                                          "plus the predicted hamiltonian.h5.")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="a trained model folder")
    p.add_argument("--input", nargs="+", required=True, metavar="DIR",
                   help="DeepH-dock folders with POSCAR, info.json and overlap.h5 (e.g. from `aiida-deeph overlap`)")
    p.add_argument("--output", required=True, metavar="OUT_DIR", help="one output folder per input, same name")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from aiida_deeph.ml.predict import predict_dock_folders

    predict_dock_folders(args.model, args.input, args.output, device=args.device, log=lambda m: print(m, flush=True))
    return 0
