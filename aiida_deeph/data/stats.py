"""Dataset statistics and export of a Group of ``HamiltonianData`` (the logic behind ``verdi data deeph``).

Everything here works from the provenance graph:

- :func:`collect_stats` runs ONE QueryBuilder query projecting only the attributes it needs (no node is
  loaded, no file is opened) and adds the failures recorded by the ``DatabaseWorkChain`` runs that
  filled the group (their ``summary`` output). Sums are computed in Python: QueryBuilder has no
  ``sum`` and its ``min`` is wrong in aiida-core 2.9.4.
- :func:`plot_stats` draws element counts, the element-pair heat map (the DeepH-2 paper's Fig. 2d)
  and the atoms-per-cell histogram.
- :func:`export_group` writes the group as DeepH-dock folders or packed shards (``shard-00000.h5``
  ... plus ``index.json``), streaming node by node.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

#: ``process_type`` of the DatabaseWorkChain nodes (entry point ``deeph.database``).
DATABASE_PROCESS_TYPE = "aiida.workflows:deeph.database"
#: Group extra listing the PKs/UUIDs of the DatabaseWorkChains that filled the group.
WORKCHAINS_EXTRA = "deeph_database_workchains"
#: Link label of the DatabaseWorkChain output Dict holding ``{"failed": [{"mp_id", "reason"}, ...]}``.
SUMMARY_LABEL = "summary"

#: Node attributes projected by :func:`collect_stats` (one query, nothing else is read).
STAT_ATTRIBUTES = (
    "mp_id", "elements", "element_pairs", "num_atoms", "num_pairs", "num_entries",
    "file_size", "scf_steps", "scf_converged", "source",
)

INDEX_FILE = "index.json"
EXPORT_FORMATS = ("dock", "packed", "legacy")


class GroupNotFound(LookupError):
    """No group with that label (or identifier)."""


# ---------------------------------------------------------------------- helpers
def load_group(group_label):
    """The group with label ``group_label``; a PK or UUID is accepted too. Raises :class:`GroupNotFound`."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    if isinstance(group_label, orm.Group):
        return group_label
    try:
        return orm.load_group(label=str(group_label))
    except NotExistent:
        pass
    except MultipleObjectsError:
        raise GroupNotFound(f"several groups are labelled {group_label!r}: give its PK or UUID") from None
    try:
        return orm.load_group(str(group_label))
    except (NotExistent, MultipleObjectsError, ValueError, TypeError):
        raise GroupNotFound(f"no group with label {group_label!r}") from None


def _atomic_number(symbol: str) -> int:
    from aiida_deeph.core.elements import ATOMIC_NUMBERS

    return ATOMIC_NUMBERS.get(symbol, 1000)


def _element_key(symbol: str):
    return (_atomic_number(symbol), symbol)


# ---------------------------------------------------------------------- failures
def _workchain_refs(group) -> tuple:
    refs = group.base.extras.get(WORKCHAINS_EXTRA, None) or []
    if isinstance(refs, (str, int)):
        refs = [refs]
    pks, uuids = [], []
    for ref in refs:
        if isinstance(ref, bool):
            continue
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
            pks.append(int(ref))
        elif isinstance(ref, str) and ref.strip():
            uuids.append(ref.strip())
    return pks, uuids


def collect_failures(group) -> tuple:
    """Failures recorded by the DatabaseWorkChains listed in the group's extras.

    Returns ``(failures, workchain_uuids)``: ``failures`` is a list of ``{"mp_id", "reason", "workchain"}``
    deduplicated by ``mp_id`` (the reason of the most recent workchain wins), in order of first failure.
    """
    from aiida import orm

    pks, uuids = _workchain_refs(group)
    alternatives = []
    if uuids:
        alternatives.append({"uuid": {"in": uuids}})
    if pks:
        alternatives.append({"id": {"in": pks}})
    if not alternatives:
        return [], []
    filters = {"process_type": DATABASE_PROCESS_TYPE}
    filters.update(alternatives[0] if len(alternatives) == 1 else {"or": alternatives})
    qb = orm.QueryBuilder()
    qb.append(orm.WorkflowNode, filters=filters, project=["id", "uuid", "ctime"], tag="wf")
    qb.append(orm.Dict, with_incoming="wf", edge_filters={"label": SUMMARY_LABEL},
              project=["attributes.failed"], tag="summary")
    rows = sorted(qb.all(), key=lambda r: (r[2], r[0]))  # oldest first: later reasons overwrite
    workchains = list(dict.fromkeys(r[1] for r in rows))

    failures: dict = {}
    for _pk, uuid, _ctime, failed in rows:
        if not failed:
            continue
        if isinstance(failed, dict):  # tolerate {mp_id: reason}
            failed = [{"mp_id": k, "reason": v} for k, v in failed.items()]
        for item in failed:
            if isinstance(item, dict):
                mp_id = item.get("mp_id") or item.get("uuid") or item.get("label") or item.get("pk")
                reason = item.get("reason")
            else:
                mp_id, reason = item, None
            key = str(mp_id)
            entry = {"mp_id": mp_id, "reason": reason, "workchain": uuid}
            if key in failures:
                failures[key].update(entry)
            else:
                failures[key] = entry
    return list(failures.values()), workchains


# ---------------------------------------------------------------------- statistics
def collect_stats(group_label) -> dict:
    """Statistics of the ``HamiltonianData`` nodes of a group, from node attributes only.

    Keys: ``group``, ``num_structures``, ``elements`` {element: structures containing it},
    ``element_pairs`` {"A-B" (A <= B alphabetically): structures with an A-B atom pair},
    ``atoms_per_cell`` {n: structures}, ``elements_per_structure`` {n: structures}, ``num_atoms``,
    ``num_atom_pairs``, ``num_matrix_entries``, ``storage_bytes``, ``scf_steps`` {total, mean, max,
    count}, ``scf_not_converged``, ``sources`` {source: structures}, ``failures`` [{mp_id, reason,
    workchain}] (structures whose failure was later fixed, i.e. that are in the group, are moved to
    ``resolved_failures``), ``database_workchains`` (UUIDs).
    """
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData

    group = load_group(group_label)
    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(HamiltonianData, with_group="group", project=[f"attributes.{k}" for k in STAT_ATTRIBUTES])

    elements, pairs, atoms_hist, nel_hist, sources = Counter(), Counter(), Counter(), Counter(), Counter()
    n = num_atoms = num_pairs = num_entries = storage = 0
    steps_total = steps_count = 0
    steps_max = None
    not_converged = 0
    mp_ids = set()
    for mp_id, els, el_pairs, natoms, npairs, nentries, size, steps, converged, source in qb.iterall(batch_size=2000):
        n += 1
        els = els or []
        elements.update(set(els))
        pairs.update(set(el_pairs or []))
        nel_hist[len(set(els))] += 1
        if natoms is not None:
            atoms_hist[int(natoms)] += 1
            num_atoms += int(natoms)
        num_pairs += int(npairs or 0)
        num_entries += int(nentries or 0)
        storage += int(size or 0)
        if steps is not None:
            steps_total += int(steps)
            steps_count += 1
            steps_max = int(steps) if steps_max is None else max(steps_max, int(steps))
        if converged is False:
            not_converged += 1
        sources[source or "unknown"] += 1
        if mp_id:
            mp_ids.add(str(mp_id))

    failures, workchains = collect_failures(group)
    resolved = [f for f in failures if str(f["mp_id"]) in mp_ids]
    failures = [f for f in failures if str(f["mp_id"]) not in mp_ids]

    return {
        "group": group.label,
        "group_uuid": group.uuid,
        "num_structures": n,
        "elements": {el: elements[el] for el in sorted(elements, key=_element_key)},
        "element_pairs": {p: pairs[p] for p in sorted(pairs)},
        "atoms_per_cell": {k: atoms_hist[k] for k in sorted(atoms_hist)},
        "elements_per_structure": {k: nel_hist[k] for k in sorted(nel_hist)},
        "num_atoms": num_atoms,
        "num_atom_pairs": num_pairs,
        "num_matrix_entries": num_entries,
        "storage_bytes": storage,
        "scf_steps": {
            "total": steps_total,
            "mean": (steps_total / steps_count) if steps_count else None,
            "max": steps_max,
            "count": steps_count,
        },
        "scf_not_converged": not_converged,
        "sources": dict(sorted(sources.items())),
        "failures": failures,
        "resolved_failures": resolved,
        "database_workchains": workchains,
    }


def stats_to_json(stats: dict) -> str:
    return json.dumps(stats, indent=2, default=str)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_stats(stats: dict) -> str:
    """A readable, plain-text report of :func:`collect_stats`' result."""
    lines = []
    add = lines.append
    steps = stats["scf_steps"]
    mean = "-" if steps["mean"] is None else f"{steps['mean']:.1f}"
    add(f"Group {stats['group']!r}: {stats['num_structures']} structures")
    add("")
    rows = [
        ("atoms (total)", f"{stats['num_atoms']:,}"),
        ("atom pairs", f"{stats['num_atom_pairs']:,}"),
        ("matrix entries", f"{stats['num_matrix_entries']:,}"),
        ("storage", f"{_human_bytes(stats['storage_bytes'])} ({stats['storage_bytes']:,} bytes)"),
        ("SCF iterations", f"total {steps['total']:,}, mean {mean}, max {steps['max'] if steps['max'] is not None else '-'}"),
        ("SCF not converged", str(stats["scf_not_converged"])),
        ("sources", ", ".join(f"{k}: {v}" for k, v in stats["sources"].items()) or "-"),
        ("failures", str(len(stats["failures"]))),
    ]
    width = max(len(r[0]) for r in rows)
    lines.extend(f"  {k.ljust(width)}  {v}" for k, v in rows)

    def table(title, mapping, key_header, per_line=6):
        add("")
        add(f"{title}:")
        if not mapping:
            add("  (none)")
            return
        cells = [f"{str(k):>{key_header}}: {v:<6}" for k, v in mapping.items()]
        for i in range(0, len(cells), per_line):
            add(("  " + "  ".join(cells[i:i + per_line])).rstrip())

    table("Structures containing each element", stats["elements"], 3)
    table("Structures containing each element pair", stats["element_pairs"], 6, per_line=5)
    table("Structures with n atoms per cell (n: structures)", stats["atoms_per_cell"], 4)
    table("Structures with n elements (n: structures)", stats["elements_per_structure"], 3)
    if stats["failures"]:
        add("")
        add("Failures recorded by the DatabaseWorkChains:")
        shown = 50
        for f in stats["failures"][:shown]:
            add(f"  {f['mp_id']}: {f['reason']}")
        if len(stats["failures"]) > shown:
            add(f"  ... and {len(stats['failures']) - shown} more (--json lists all)")
    if stats.get("resolved_failures"):
        add("")
        add(f"({len(stats['resolved_failures'])} earlier failure(s) since computed and in the group)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- plotting
def _pair_heatmap(fig, ax_hm, stats: dict, elements: list) -> None:
    """The element-pair heat map, lower triangle (elements ordered by atomic number)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    ne = len(elements)
    matrix = np.full((ne, ne), np.nan)
    index = {el: i for i, el in enumerate(elements)}
    for pair, count in stats["element_pairs"].items():
        a, b = pair.split("-")
        i, j = sorted((index[a], index[b]), reverse=True)
        matrix[i, j] = count
    ax_hm.set_title("Structures containing each element pair")
    if ne and np.isfinite(matrix).any():
        vmax = np.nanmax(matrix)
        norm = LogNorm(vmin=1, vmax=max(vmax, 2)) if vmax >= 50 else None
        masked = np.ma.masked_invalid(matrix)
        image = ax_hm.imshow(masked, cmap="viridis", norm=norm, vmin=None if norm else 0,
                             vmax=None if norm else vmax)
        bar = fig.colorbar(image, ax=ax_hm, shrink=0.8, label="structures")
        if norm is None:
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
        if ne <= 12:
            for i in range(ne):
                for j in range(i + 1):
                    if np.isfinite(matrix[i, j]):
                        value = matrix[i, j]
                        light = (np.log(value) / np.log(max(vmax, 2)) if norm else value / vmax) < 0.6
                        ax_hm.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=9,
                                   color="white" if light else "black")
    else:
        ax_hm.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_hm.transAxes)
    ax_hm.set_xticks(range(ne), elements, rotation=0 if ne <= 16 else 90)
    ax_hm.set_yticks(range(ne), elements)
    ax_hm.set_xlim(-0.5, ne - 0.5)
    ax_hm.set_ylim(ne - 0.5, -0.5)
    for spine in ("top", "right"):
        ax_hm.spines[spine].set_visible(False)


def _save_atomically(fig, path) -> Path:
    from aiida_deeph.core.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def plot_stats(stats: dict, path) -> Path:
    """Write a figure: element counts, element-pair heat map (paper's Fig. 2d), atoms-per-cell histogram."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state, nothing to close
    from matplotlib.ticker import MaxNLocator

    elements = sorted(stats["elements"], key=_element_key)
    for pair in stats["element_pairs"]:
        for el in pair.split("-"):
            if el not in stats["elements"]:
                elements = sorted(set(elements) | {el}, key=_element_key)
    ne = len(elements)

    fig = Figure(figsize=(13, 7.5), constrained_layout=True)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.0, 1.05])
    ax_el = fig.add_subplot(grid[0, 0])
    ax_at = fig.add_subplot(grid[1, 0])
    fig.suptitle(f"{stats['group']}: {stats['num_structures']} structures, "
                 f"{stats['num_atom_pairs']:,} atom pairs, {_human_bytes(stats['storage_bytes'])}")

    # element counts
    counts = [stats["elements"].get(el, 0) for el in elements]
    ax_el.bar(range(ne), counts, color="tab:blue")
    ax_el.set_xticks(range(ne), elements, rotation=0 if ne <= 16 else 90)
    ax_el.set_ylabel("structures")
    ax_el.set_title("Structures containing each element")
    if not ne:
        ax_el.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_el.transAxes)

    # atoms per cell
    hist = {int(k): v for k, v in stats["atoms_per_cell"].items()}
    if hist:
        ax_at.bar(list(hist), list(hist.values()), width=0.8, color="tab:green")
        ax_at.set_xlim(min(hist) - 1, max(hist) + 1)
    else:
        ax_at.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_at.transAxes)
    for axis in (ax_el.yaxis, ax_at.xaxis, ax_at.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    ax_at.set_xlabel("atoms per cell")
    ax_at.set_ylabel("structures")
    ax_at.set_title("Atoms per cell")

    _pair_heatmap(fig, fig.add_subplot(grid[:, 1]), stats, elements)
    return _save_atomically(fig, path)


# ---------------------------------------------------------------------- export
def _group_rows(group) -> list:
    """(pk, uuid, mp_id, formula) of the group's HamiltonianData, by PK (small: no node is loaded)."""
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData

    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(HamiltonianData, with_group="group",
              project=["id", "uuid", "attributes.mp_id", "attributes.formula"])
    qb.order_by({HamiltonianData: {"id": "asc"}})
    return qb.all()


def node_rows(nodes) -> list:
    """(pk, uuid, mp_id, formula) of stored HamiltonianData nodes, as :func:`_group_rows` gives them."""
    return [(n.pk, n.uuid, n.base.attributes.get("mp_id", None), n.base.attributes.get("formula", None))
            for n in nodes]


def write_shards(rows, directory, shard_size: int = 500, names=None, progress=None,
                 load=("hamiltonian", "overlap")) -> list:
    """The one shard writer: ``rows`` (pk, uuid, mp_id, formula) -> ``directory/shard-00000.h5`` ... of up to
    ``shard_size`` structures each, named by :func:`structure_names` (unless ``names`` are given), nodes loaded
    one at a time by PK. Returns the index entries ``{shard, name, uuid, mp_id, formula}``;
    ``progress(done, total, name)`` after each structure."""
    from aiida import orm

    from aiida_deeph.core.packed import write_packed

    shard_size = int(shard_size)
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    names = structure_names(rows) if names is None else list(names)
    directory = Path(directory)
    total, done, entries = len(rows), 0, []
    for k, start in enumerate(range(0, total, shard_size)):
        shard = f"shard-{k:05d}.h5"
        chunk = list(zip(rows[start:start + shard_size], names[start:start + shard_size]))

        def stream(chunk=chunk):
            nonlocal done
            for (pk, _uuid, _mp_id, _formula), name in chunk:
                yield name, orm.load_node(pk).get_packed(load=load)
                done += 1
                if progress is not None:
                    progress(done, total, name)

        write_packed(directory / shard, stream())
        entries += [{"shard": shard, "name": name, "uuid": uuid, "mp_id": mp_id, "formula": formula}
                    for (_pk, uuid, mp_id, formula), name in chunk]
    return entries


def _safe_name(name: str) -> str:
    name = str(name).strip().replace(os.sep, "_").replace("/", "_")
    if name in ("", ".", ".."):
        name = "_"
    return name


def structure_names(rows) -> list:
    """One unique name per row: the MP id, or the UUID; MP ids met several times get a UUID suffix."""
    counts = Counter(str(r[2]) for r in rows if r[2])
    names = []
    for _pk, uuid, mp_id, _formula in rows:
        if mp_id and counts[str(mp_id)] == 1:
            names.append(_safe_name(mp_id))
        elif mp_id:
            names.append(_safe_name(f"{mp_id}-{uuid[:8]}"))
        else:
            names.append(uuid)
    return names


def _write_json_atomic(path: Path, data) -> None:
    from aiida_deeph.core.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _previous_outputs(directory: Path) -> set:
    try:
        old = json.loads((directory / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(old, dict):
        return set()
    out = set()
    for entry in old.get("structures", []):
        if isinstance(entry, dict):
            out.add(entry.get("shard") or entry.get("path") or "")
    out.discard("")
    return out


def export_group(group_label, directory, fmt: str = "dock", shard_size: int = 500, progress=None) -> dict:
    """Export a group's ``HamiltonianData`` for use outside AiiDA; returns the index written to ``index.json``.

    ``fmt``: ``dock`` (one DeepH-dock folder per structure, named by MP id or UUID), ``legacy``
    (DeepH-pack folders) or ``packed`` (``shard-00000.h5`` ... of up to ``shard_size`` structures each).
    Nodes are loaded one at a time (by PK), so memory stays bounded. ``index.json`` lists every structure
    as ``{shard or path, name, uuid, mp_id, formula}``. Shards/folders listed by a previous ``index.json``
    in ``directory`` that the new export does not rewrite are removed. ``progress(done, total, name)``
    is called after each structure.
    """
    import shutil

    from aiida import orm

    from aiida_deeph.core.packed import ARRAY_NAMES, FORMAT_VERSION

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
    shard_size = int(shard_size)
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    group = load_group(group_label)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _previous_outputs(directory)
    rows = _group_rows(group)
    names = structure_names(rows)
    total = len(rows)
    entries = []
    done = 0

    if fmt == "packed":
        entries = write_shards(rows, directory, shard_size, names=names, progress=progress, load=ARRAY_NAMES)
    else:
        for (pk, uuid, mp_id, formula), name in zip(rows, names):
            orm.load_node(pk).export(directory / name, fmt=fmt)
            entries.append({"path": name, "name": name, "uuid": uuid, "mp_id": mp_id, "formula": formula})
            done += 1
            if progress is not None:
                progress(done, total, name)

    index = {
        "format": fmt,
        "packed_format_version": FORMAT_VERSION if fmt == "packed" else None,
        "group": group.label,
        "group_uuid": group.uuid,
        "num_structures": total,
        "shard_size": shard_size if fmt == "packed" else None,
        "num_shards": len({e["shard"] for e in entries}) if fmt == "packed" else None,
        "structures": entries,
    }
    _write_json_atomic(directory / INDEX_FILE, index)

    # remove what a previous export listed and this one did not write
    current = {e.get("shard") or e.get("path") for e in entries}
    for stale in sorted(previous - current):
        target = directory / stale
        if target.resolve().parent != directory.resolve():
            continue
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.is_file():
            target.unlink()
    return index
