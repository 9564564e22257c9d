"""``aiida-deeph overlap``: S and the atom pairs of a structure from the PAO files (no DFT).

Writes a DeepH-dock folder (POSCAR, info.json, overlap.h5; no hamiltonian.h5) that
``aiida-deeph predict`` and ``aiida-deeph bands`` take directly; with ``--position-matrix`` also
position_matrix.h5 (the two-centre integrals of r), which ``predict`` carries over and ``optics`` needs.
"""
from __future__ import annotations

import os
import sys
import time


def run(args) -> int:
    from ..io.dock import write_dock
    from ..overlap import compute_overlap
    from ..overlap.compute import read_structure

    t0 = time.perf_counter()
    cell, positions, species = read_structure(args.structure)
    pao_dir = args.pao_dir
    ham = compute_overlap(cell, positions, species, basis_table=args.basis, pao_dir=pao_dir,
                          meta={"structure_file": os.path.basename(str(args.structure))},
                          position_matrix=args.position_matrix)
    t1 = time.perf_counter()
    write_dock(ham, args.output, include=("overlap", "position_matrix") if args.position_matrix else ("overlap",))
    t2 = time.perf_counter()
    if not args.quiet:
        print(f"{ham.formula}: {ham.num_atoms} atoms, {ham.num_pairs} atom pairs, {ham.num_orbitals} orbitals; "
              f"S{' and position matrix' if args.position_matrix else ''} in {t1 - t0:.2f} s, written to {args.output} in {t2 - t1:.2f} s", file=sys.stdout)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "overlap",
        help="overlap S and atom pairs of a structure from the PAO files (no DFT)",
        description="Compute the overlap matrix S of a structure directly from OpenMX PAO files, with "
        "OpenMX's atom pairs (distance < rc_i + rc_j) and orbital conventions, and write a "
        "DeepH-dock folder (POSCAR, info.json, overlap.h5).",
    )
    p.add_argument("--structure", required=True, help="structure file: POSCAR/CONTCAR, CIF or pymatgen JSON")
    p.add_argument("--basis", default="corpus",
                   help="basis protocol (basis-table name, e.g. 'corpus', or a basis-table JSON file)")
    p.add_argument("--pao-dir", default=os.environ.get("AIIDA_DEEPH_PAO_DIR"),
                   help="folder of <name>.pao or <name>.pao.xz files (DFT_DATA19/PAO); "
                   "default $AIIDA_DEEPH_PAO_DIR")
    p.add_argument("--output", required=True, help="DeepH-dock structure folder to write")
    p.add_argument("--position-matrix", action="store_true",
                   help="also write position_matrix.h5 (<i,0|r|j,R>, Angstrom, absolute Cartesian; two-centre "
                   "integrals of r from the PAO files) for `aiida-deeph optics` on a predicted Hamiltonian; "
                   "`predict` copies it into its output folder")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
