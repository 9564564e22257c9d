"""Build (or resume) a Hamiltonian database with aiida-deeph's DatabaseWorkChain.

    verdi run examples/build_database.py --code LABEL --source snapshot|mp [--snapshot PATH]
        [--ids mp-22862,mp-2534] [--limit N] --group NAME [--protocol P] [--max-concurrent N] [--submit]
    verdi run examples/build_database.py --code LABEL --source files --structures FILE [FILE ...] --group NAME

--source files: your own structures (any file pymatgen reads, named by the file's stem; or a JSON file
with a pymatgen 'structure' and an optional 'material_id', as the recordings' meta.json). They are stored
once (found again by name on a re-run) in the group NAME-structures, and run as given (no primitive
reduction unless you ask for it with --primitive).

--source snapshot: the offline snapshot (default: the small one shipped in the package; --snapshot PATH
for another, e.g. ../shared/mp/mp_light_elements_snapshot.json.gz). --source mp: the Materials Project
API (needs $MP_API_KEY). --limit N takes the N candidates with the fewest atoms after primitive reduction
(ties by MP id); --ids picks structures by MP id. Re-running the same command resumes: structures already
in the group are skipped. At the end the summary and the dataset statistics are printed. --submit hands
the work chain to the daemon instead (`verdi daemon start`; a profile with a broker) and returns at once.
"""
import argparse
import sys

from aiida import orm
from aiida.common.exceptions import MultipleObjectsError, NotExistent
from aiida.engine import run_get_node

from aiida_deeph.workflows.database import DatabaseWorkChain


def import_structures(files, label, primitive=False):
    """Store each structure once (by name; a re-run finds it) in the Group ``label``; returns the label."""
    group, _ = orm.Group.collection.get_or_create(label)
    present = {n.base.extras.get("mp_id", None): n for n in group.nodes if isinstance(n, orm.StructureData)}
    added = 0
    from aiida_deeph.structures.files import read_structure_file

    for path in files:
        name, structure, meta = read_structure_file(path)
        if name in present:
            continue
        if primitive:
            structure = structure.get_primitive_structure()
        node = orm.StructureData(pymatgen=structure)
        node.base.extras.set_many({"mp_id": name, "source_file": str(path), "meta": meta})
        node.store()
        group.add_nodes(node)
        present[name] = node
        added += 1
    print(f"structures: {added} imported, {len(present) - added} already in group {label}")
    return label


def _print_rejected(rejected: list, pk: int, limit: int = 20) -> None:
    """Each rejected candidate with its reason (all of them stay in the node extra ``deeph_rejected``)."""
    for item in rejected[:limit]:
        detail = f" ({item['detail']})" if item.get("detail") else ""
        print(f"  rejected {item.get('mp_id')} {item.get('formula') or ''}: {item.get('reason')}{detail}")
    if len(rejected) > limit:
        print(f"  ... and {len(rejected) - limit} more: DatabaseWorkChain<{pk}>.base.extras['deeph_rejected']")


def main(argv):
    parser = argparse.ArgumentParser(prog="verdi run examples/build_database.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", required=True, help="label of the OpenMX code (aiida-deeph setup openmx)")
    parser.add_argument("--source", choices=("snapshot", "mp", "files"), default="snapshot")
    parser.add_argument("--structures", nargs="+", default=None, help="structure files for --source files")
    parser.add_argument("--primitive", action="store_true", help="--source files: reduce to the primitive cell")
    parser.add_argument("--snapshot", default=None, help="snapshot file (default: the one shipped in the package)")
    parser.add_argument("--ids", default=None, help="comma-separated MP ids")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--group", required=True, help="label of the dataset group")
    parser.add_argument("--protocol", default="moderate", help="fast, moderate (default) or precise")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="at most N OpenMX runs at a time; the next starts as soon as one ends (default 4)")
    parser.add_argument("--max-sites", type=int, default=150)
    parser.add_argument("--keep-cell", action="store_true", help="do not reduce to the primitive cell")
    parser.add_argument("--no-stats", action="store_true",
                        help="do not print the dataset statistics at the end (`verdi data deeph stats GROUP` does)")
    parser.add_argument("--submit", action="store_true",
                        help="submit to the daemon and return (follow it with verdi process list / report)")
    args = parser.parse_args(argv)

    if (args.source == "files") != bool(args.structures):
        parser.error("--source files and --structures go together")
    try:
        code = orm.load_code(args.code)
    except (NotExistent, MultipleObjectsError, ValueError) as exc:
        codes = ", ".join(sorted(orm.QueryBuilder().append((orm.InstalledCode, orm.PortableCode), project="label")
                                 .all(flat=True))) or "none"
        raise SystemExit(f"build_database.py: no usable code {args.code!r} ({type(exc).__name__}); codes here: "
                         f"{codes}. Set one up with `aiida-deeph setup openmx --auto`.") from None
    if code.base.extras.get("deeph_replay", False):
        print(f"NOTE: code '{code.label}' is the REPLAY stand-in: results are recorded real OpenMX 3.9 outputs, "
              "replayed, not computed now.")
    inputs = {
        "code": code, "source": orm.Str(args.source), "group_label": orm.Str(args.group),
        "protocol": orm.Str(args.protocol), "max_concurrent": orm.Int(args.max_concurrent),
        "max_sites": orm.Int(args.max_sites), "primitive": orm.Bool(not args.keep_cell),
    }
    if args.source == "files":
        inputs["source"] = orm.Str("group")
        inputs["structure_group"] = orm.Str(import_structures(args.structures, f"{args.group}-structures", args.primitive))
        inputs["primitive"] = orm.Bool(args.primitive)
    if args.snapshot:
        inputs["snapshot_path"] = orm.Str(args.snapshot)
    if args.ids:
        inputs["ids"] = orm.List([i.strip() for i in args.ids.split(",") if i.strip()])
    if args.limit is not None:
        inputs["limit"] = orm.Int(args.limit)
    if args.submit:
        from aiida.engine import submit

        node = submit(DatabaseWorkChain, **inputs)
        print(f"submitted DatabaseWorkChain<{node.pk}>: follow it with `verdi process report {node.pk}`; when it "
              f"has finished, `verdi data deeph stats {args.group}`")
        return 0
    results, node = run_get_node(DatabaseWorkChain, **inputs)
    rejected = node.base.extras.get("deeph_rejected", [])
    if "summary" not in results:
        print(f"DatabaseWorkChain<{node.pk}> failed: [{node.exit_status}] {node.exit_message}")
        _print_rejected(rejected, node.pk)
        return 1
    s = results["summary"].get_dict()
    print(f"DatabaseWorkChain<{node.pk}>: done {s['num_done']}, skipped {s['num_skipped']}, "
          f"failed {s['num_failed']}, rejected candidates {s['num_rejected']}")
    for item in s["failed"]:
        print(f"  failed  {item['mp_id']}: {item['reason']}")
    _print_rejected(rejected, node.pk)
    for note in s["notes"]:
        print(f"  note: {note}")
    if args.no_stats:
        return 0
    try:
        from aiida_deeph.data.stats import collect_stats, format_stats
    except ImportError:
        return 0
    print(format_stats(collect_stats(args.group)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
