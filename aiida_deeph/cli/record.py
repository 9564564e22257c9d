"""``aiida-deeph record-openmx``: record real OpenMX runs for the replay stand-in (no AiiDA needed)."""
from __future__ import annotations

from pathlib import Path

from aiida_deeph.cli.errors import CliError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "record-openmx", help="record real OpenMX 3.9 runs for the replay stand-in",
        description=(
            "Run the real OpenMX (OPENMX_EXECUTABLE/OPENMX_DATA_PATH, else the install of "
            "scripts/install-openmx.sh) on structures with today's input writer and write recordings that the "
            "replay stand-in (`aiida-deeph setup openmx-replay --corpus DIR`) can replay. --refresh re-records "
            "every recording in OUT from its own meta.json (when the input writer changed); --ids records "
            "snapshot structures (primitive cells, as the DatabaseWorkChain imports them); --structures records "
            "structure files as given."
        ),
    )
    parser.add_argument("--out", required=True, help="folder of recordings (one subfolder per structure)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--refresh", action="store_true", help="re-record the recordings already in --out")
    what.add_argument("--ids", help="comma-separated MP ids from the snapshot")
    what.add_argument("--structures", nargs="+", metavar="FILE",
                      help="structure files (pymatgen formats, or JSON with 'structure' such as a run's meta.json)")
    parser.add_argument("--snapshot", default=None, help="snapshot file for --ids (default: the one shipped)")
    parser.add_argument("--protocol", default="moderate", help="OpenMX protocol (default: moderate)")
    parser.add_argument("--mpiprocs", type=int, default=1, help="MPI ranks per run (default 1)")
    parser.add_argument("--no-band", action="store_true", help="do not compute OpenMX's own band path (.Band)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from aiida_deeph.io.openmx_install import locate_openmx
    from aiida_deeph.replay.record import RecordError, record_structures, recording_structures

    install, why = locate_openmx()
    if install is None:
        raise CliError(why)
    out = Path(args.out)
    if args.refresh:
        structures = recording_structures(out)
        if not structures:
            raise CliError(f"no recordings with a meta.json structure in {out}")
    elif args.structures:
        from aiida_deeph.structures.files import read_structure_file

        structures = {}
        for path in args.structures:
            name, structure, meta = read_structure_file(path)
            structures[name] = (structure, {"material_id": name, **meta})
    else:
        from aiida_deeph.structures.source import select_structures

        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
        result = select_structures("snapshot", snapshot_path=args.snapshot, ids=ids)
        found = {c.mp_id: c for c in result.candidates}
        missing = [i for i in ids if i not in found]
        if missing:
            reasons = {r.mp_id: r.reason for r in result.rejections}
            raise CliError("not in the snapshot (or rejected by the filter): "
                           + ", ".join(f"{i}{' (' + reasons[i] + ')' if i in reasons else ''}" for i in missing))
        structures = {i: (found[i].structure, {"material_id": i, "source_record": found[i].metadata()}) for i in ids}
    print(f"recording with {install.describe()}")
    try:
        record_structures(structures, out, install, protocol=args.protocol, band_kpath=not args.no_band,
                          mpiprocs=args.mpiprocs)
    except RecordError as exc:
        raise CliError(str(exc)) from None
    return 0
