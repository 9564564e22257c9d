"""``aiida-deeph convert openmx RUN_DIR OUT_DIR [--format dock|legacy|packed]``."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an OpenMX run folder to a DeepH folder",
        description="Convert OpenMX output to the DeepH ecosystem's formats (no AiiDA needed).",
    )
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True, help="what to convert from")
    openmx = sub.add_parser(
        "openmx", help="an OpenMX 3.9 run folder (<name>.out and <name>.scfout, optionally .xz)",
        description=(
            "Read RUN_DIR/<name>.scfout and <name>.out (plain or .xz) of an OpenMX 3.9 run and write OUT_DIR, "
            "the structure folder itself. 'dock': DeepH-dock format (POSCAR, info.json, hamiltonian.h5, "
            "overlap.h5; eV; real-harmonic m=-l..l order; atoms grouped by species). 'legacy': DeepH-pack "
            "format (OpenMX orbital order). 'packed': aiida-deeph's packed HDF5 file (OUT_DIR is then a file)."
        ),
    )
    openmx.add_argument("run_dir", metavar="RUN_DIR")
    openmx.add_argument("out_dir", metavar="OUT_DIR")
    openmx.add_argument("--format", choices=("dock", "legacy", "packed"), default="dock")
    openmx.add_argument("--density-matrix", action="store_true", help="also write the density matrix")
    openmx.add_argument("--position-matrix", action="store_true",
                        help="also write the position matrix <i|r|j,R> (position_matrix.h5, Angstrom, absolute "
                             "Cartesian, as DeepH-dock's --export-r): needed by 'aiida-deeph optics'")
    openmx.add_argument("--allow-unconverged", action="store_true",
                        help="convert even if the .out shows an unconverged SCF")
    openmx.set_defaults(func=run_convert_openmx)


def run_convert_openmx(args) -> int:
    from aiida_deeph.cli.main import CliError
    from aiida_deeph.io.dock import write_dock, write_legacy
    from aiida_deeph.io.openmx import load_openmx_run

    ham = load_openmx_run(args.run_dir, require_out=True, load_density_matrix=args.density_matrix,
                          load_position_matrix=args.position_matrix)
    if ham.meta.get("scf_converged") is False and not args.allow_unconverged:
        raise CliError(f"{args.run_dir}: the SCF did not converge (use --allow-unconverged to convert anyway)")
    include = (("hamiltonian", "overlap") + (("density_matrix",) if args.density_matrix else ())
               + (("position_matrix",) if args.position_matrix else ()))
    out = Path(args.out_dir)
    if args.format == "dock":
        write_dock(ham, out, include=include)
    elif args.format == "legacy":
        if not args.density_matrix:
            ham.density_matrix = None
        if args.position_matrix:
            raise CliError("--position-matrix is written in the dock and packed formats, not in 'legacy'")
        write_legacy(ham, out)
    else:
        ham.save(out, name=ham.meta.get("mp_id") or Path(args.run_dir).resolve().name)
    print(f"wrote {args.format} {out} ({ham.formula}: {ham.num_atoms} atoms, {ham.num_orbitals} orbitals, "
          f"{ham.num_pairs} atom pairs, E_F = {ham.fermi_energy_eV:.6f} eV)")
    return 0
