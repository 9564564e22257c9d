"""``aiida-deeph info --preset NAME [--json]``: a preset's model and training configuration and its size."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="a model preset: configuration and parameter count",
        description=("Print a preset's ModelConfig and TrainConfig and its parameter count for the elements of "
                     "a basis table (default: the corpus table, 24 elements). With --json stdout is exactly one "
                     "JSON object (keys preset, basis_table, elements, num_parameters, model, train)."),
    )
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "medium", "paper"), help="default: small")
    parser.add_argument("--basis-table", default="corpus", help="basis table name or JSON file (default: corpus)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(func=run)


def preset_info(preset: str = "small", basis_table: str = "corpus") -> dict:
    from aiida_deeph.core.basis import load_basis_table
    from aiida_deeph.core.constants import BOHR_TO_ANGSTROM
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.model import DeepH2
    from aiida_deeph.ml.train import TrainConfig

    table = load_basis_table(basis_table)
    elements = sorted(table.elements)
    ls = {el: table.orbital_ls(el) for el in elements}
    rc = {el: table.pao(el).cutoff_bohr * BOHR_TO_ANGSTROM for el in elements}
    cfg = ModelConfig.preset(preset).with_elements(ls, rc)
    cfg.max_pair_distance = 2.0 * max(rc.values())
    model = DeepH2(cfg)
    return {"preset": preset, "basis_table": table.name, "elements": elements,
            "num_parameters": int(model.num_parameters()), "model": cfg.to_dict(),
            "train": TrainConfig.preset(preset).to_dict()}


def run(args) -> int:
    info = preset_info(args.preset, args.basis_table)
    if args.json:
        print(json.dumps(info))
        return 0
    m = info["model"]
    print(f"preset {info['preset']}: {info['num_parameters']:,} parameters for the {len(info['elements'])} elements "
          f"of the basis table '{info['basis_table']}' ({' '.join(info['elements'])})")
    for section in ("model", "train"):
        print(f"{section}:")
        for key, value in info[section].items():
            if key in ("elements", "orbital_ls", "cutoff_radius"):
                continue
            print(f"  {key:22s} {value}")
    print(f"  (pair range {m['max_pair_distance']:.2f} A; per-element bases and cutoffs: --json)")
    return 0
