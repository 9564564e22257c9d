"""Structure sources: the Materials Project (live, mp-api) or an offline snapshot, and the paper's filter.

Pure core: this module never imports aiida. pymatgen is imported where structures are built; the live
source is :mod:`aiida_deeph.structures.mp` (mp-api only inside its :func:`query_mp`: 5-10 s to import).

The filter (:func:`filter_records`) follows the DeepH-2 database recipe: light elements only
(:data:`ALLOWED_ELEMENTS`), at most ``max_sites`` atoms, non-magnetic, fully ordered. Every record
that does not become a :class:`Candidate` gets a :class:`Rejection` with one reason, the first that
applies in this order::

    invalid -> duplicate -> element -> partial occupancy -> magnetic -> size

Rules, decided here and repeated in :attr:`SelectionResult.notes`:

* size: with ``primitive=True`` (default) the cell is reduced with pymatgen's
  ``Structure.get_primitive_structure()`` (default tolerances; the OpenMX corpus was built with
  exactly that call) and the *primitive* site count is tested against ``max_sites``; a conventional
  cell whose primitive cell is small enough passes. With ``primitive=False`` the cell is kept as
  given and its own site count is tested. Both counts are reported (``Candidate.nsites_original``,
  ``Candidate.nsites``, and the rejection detail).
* magnetic, offline snapshot: the snapshot knows the magnetic ordering only for a few records;
  ``ordering == 'NM'`` passes, ``'Unknown'`` passes only when ``magnetic_risk_flags`` is empty,
  everything else (FM, AFM, FiM, flagged Unknown) is rejected as magnetic.
* magnetic, live mp-api: the query already asks MP for ``magnetic_ordering=NM``; locally only
  ``ordering == 'NM'`` passes (this matters with explicit ids, which are fetched unfiltered so
  that every requested id gets a reason).
* ``limit=N`` keeps the N candidates with the fewest sites (after primitive reduction when
  enabled); ties are broken by MP id compared on its integer part (mp-2 < mp-10 < mp-149).
  Candidates are always returned in that (nsites, id) order.
* ``ids``: only these MP ids are considered; requested ids absent from the records are listed in
  :attr:`SelectionResult.missing_ids` (and in the notes); other records are skipped silently.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ALLOWED_ELEMENTS, MP_DEFAULT_ENDPOINT, StructureSourceError, _normalise_ids  # noqa: F401

__all__ = [
    "ALLOWED_ELEMENTS",
    "REJECTION_REASONS",
    "SMALL_SNAPSHOT",
    "Candidate",
    "Rejection",
    "SelectionResult",
    "StructureSourceError",
    "filter_records",
    "load_snapshot",
    "mp_id_sort_key",
    "select_structures",
]

#: Every rejection carries exactly one of these reasons.
REJECTION_REASONS: tuple[str, ...] = ("element", "size", "magnetic", "partial occupancy", "duplicate", "invalid")

#: The small snapshot shipped in the package (regenerate with benchmarks/make_small_snapshot.py).
SMALL_SNAPSHOT: Path = Path(__file__).resolve().parents[1] / "resources" / "mp_snapshot_small.json.gz"

OFFLINE_MAGNETIC_RULE = (
    "non-magnetic (offline snapshot): ordering NM, or Unknown with no magnetic_risk_flags; "
    "FM/AFM/FiM and flagged Unknown are rejected as magnetic"
)
MP_MAGNETIC_RULE = "non-magnetic (mp-api): MP summary ordering NM (queried with magnetic_ordering=Ordering.NM)"


@dataclass
class Candidate:
    """A structure that passed the filter."""

    mp_id: str
    formula: str
    structure: Any  # pymatgen.core.Structure (primitive cell when primitive reduction was on)
    nsites_original: int  # sites of the cell as given by the source
    source: str  # 'mp-api' or 'snapshot:<file>'
    ordering: str | None = None
    magnetic_risk_flags: list[str] = field(default_factory=list)
    spacegroup_number: int | None = None
    e_above_hull: float | None = None
    band_gap: float | None = None
    formation_energy_per_atom: float | None = None
    database_version: str | None = None
    record_source: str | None = None  # the record's own provenance field ('matminer-0.4.0:...', 'mp-api')
    primitive: bool = True  # whether get_primitive_structure() was applied

    @property
    def nsites(self) -> int:
        return len(self.structure)

    def metadata(self) -> dict:
        """JSON-able description (everything except the structure)."""
        return {
            "mp_id": self.mp_id, "formula": self.formula, "nsites": self.nsites,
            "nsites_original": self.nsites_original, "source": self.source, "ordering": self.ordering,
            "magnetic_risk_flags": list(self.magnetic_risk_flags), "spacegroup_number": self.spacegroup_number,
            "e_above_hull": self.e_above_hull, "band_gap": self.band_gap,
            "formation_energy_per_atom": self.formation_energy_per_atom,
            "database_version": self.database_version, "record_source": self.record_source,
            "primitive": self.primitive,
        }


@dataclass
class Rejection:
    mp_id: str
    formula: str
    reason: str  # one of REJECTION_REASONS
    detail: str = ""

    def as_dict(self) -> dict:
        return {"mp_id": self.mp_id, "formula": self.formula, "reason": self.reason, "detail": self.detail}


@dataclass
class SelectionResult:
    candidates: list[Candidate]
    rejections: list[Rejection]
    query: dict  # JSON-able description of the query and the filter
    database_version: str | None = None
    notes: list[str] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)  # requested ids not present in the records

    def reasons(self) -> dict[str, int]:
        """Histogram of rejection reasons."""
        return dict(Counter(r.reason for r in self.rejections))

    @property
    def ids(self) -> list[str]:
        return [c.mp_id for c in self.candidates]

    def summary(self) -> str:
        hist = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons().items())) or "none"
        text = f"{len(self.candidates)} candidates, {len(self.rejections)} rejected ({hist})"
        if self.missing_ids:
            text += f"; not found: {', '.join(self.missing_ids)}"
        return text


# ----------------------------------------------------------------------------------------- helpers

_ID_RE = re.compile(r"^([A-Za-z]+)-(\d+)$")


def mp_id_sort_key(mp_id: str) -> tuple:
    """Order MP ids on their integer part: mp-2 < mp-10 < mp-149; other prefixes (mvc-) after mp-."""
    m = _ID_RE.match(str(mp_id).strip())
    if m:
        prefix = m.group(1).lower()
        return (0 if prefix == "mp" else 1, prefix, int(m.group(2)), "")
    return (2, "", 0, str(mp_id))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _magnetic_problem(record: dict, offline: bool) -> str | None:
    """None when the record counts as non-magnetic, else the rejection detail."""
    ordering = record.get("ordering")
    ordering = "Unknown" if ordering in (None, "") else str(getattr(ordering, "value", ordering))
    flags = list(record.get("magnetic_risk_flags") or [])
    if ordering == "NM":
        return None
    if offline and ordering == "Unknown" and not flags:
        return None
    if ordering == "Unknown" and flags:
        return f"ordering Unknown with magnetic_risk_flags: {', '.join(flags)}"
    return f"ordering {ordering}"


def _structure_of(record: dict):
    from pymatgen.core import Structure

    s = record.get("structure")
    if s is None:
        raise ValueError("no structure")
    if isinstance(s, Structure):
        return s.copy()
    if isinstance(s, str):
        s = json.loads(s)
    return Structure.from_dict(s)


# ------------------------------------------------------------------------------------------ filter

def wrap_to_unit_cell(structure, tol: float = 1e-8):
    """The same structure with every fractional coordinate in [0, 1) (values within ``tol`` of 1 become 0).

    pymatgen's ``get_primitive_structure`` may leave a site one lattice vector outside the cell (seen with
    pymatgen-core 2026.10: bcc Li's only atom at fractional (1, 1, 0)); wrapping makes the stored cell
    independent of such version details (the OpenMX corpus has all coordinates in [0, 1)).
    """
    import numpy as np
    from pymatgen.core import Structure

    frac = np.mod(structure.frac_coords, 1.0)
    frac[np.abs(frac - 1.0) < tol] = 0.0
    return Structure(structure.lattice, structure.species_and_occu, frac,
                     site_properties=structure.site_properties or None)


def _screen(record, allowed: set, offline: bool, primitive: bool, max_sites: int, source: str, seen: set,
            wanted_set) -> Candidate | Rejection | None:
    """One record through the filter: a Candidate, the first Rejection that applies, or None (not asked for)."""
    if not isinstance(record, dict):
        return Rejection("?", "?", "invalid", f"record is a {type(record).__name__}, not a dict")
    mp_id = str(record.get("material_id") or "").strip()
    formula = str(record.get("formula_pretty") or record.get("formula") or "?")
    if wanted_set is not None and mp_id not in wanted_set:
        return None
    if not mp_id:
        return Rejection("?", formula, "invalid", "record has no material_id")
    if mp_id in seen:
        return Rejection(mp_id, formula, "duplicate", f"{mp_id} seen before in these records")
    seen.add(mp_id)
    try:
        structure = _structure_of(record)
    except Exception as exc:  # noqa: BLE001 - any unreadable structure is 'invalid'
        msg = " ".join(str(exc).split())[:200]
        return Rejection(mp_id, formula, "invalid", f"unreadable structure: {type(exc).__name__}: {msg}")
    if len(structure) == 0:
        return Rejection(mp_id, formula, "invalid", "structure has no sites")
    if formula == "?":
        formula = structure.composition.reduced_formula
    symbols = sorted({el.symbol for el in structure.composition.elements})
    symbols += [e for e in (record.get("elements") or []) if str(e) not in symbols]
    bad = [str(e) for e in symbols if str(e) not in allowed]
    if bad:
        return Rejection(mp_id, formula, "element", f"contains {', '.join(bad)}")
    if not structure.is_ordered:
        disordered = sum(1 for site in structure if not site.is_ordered)
        return Rejection(mp_id, formula, "partial occupancy",
                         f"{disordered} of {len(structure)} sites partially occupied")
    problem = _magnetic_problem(record, offline)
    if problem:
        return Rejection(mp_id, formula, "magnetic", problem)
    n_given = len(structure)
    if primitive:
        try:
            structure = wrap_to_unit_cell(structure.get_primitive_structure())
        except Exception as exc:  # noqa: BLE001
            return Rejection(mp_id, formula, "invalid", f"primitive reduction failed: {exc}")
        if len(structure) > max_sites:
            return Rejection(mp_id, formula, "size",
                             f"{len(structure)} sites > {max_sites} (primitive cell; given cell {n_given})")
    elif n_given > max_sites:
        return Rejection(mp_id, formula, "size", f"{n_given} sites > {max_sites} (given cell)")
    sg = record.get("spacegroup_number")
    return Candidate(
        mp_id=mp_id, formula=formula, structure=structure, nsites_original=n_given,
        source=source, ordering=str(record.get("ordering") or "Unknown"),
        magnetic_risk_flags=list(record.get("magnetic_risk_flags") or []),
        spacegroup_number=int(sg) if sg is not None else None,
        e_above_hull=record.get("e_above_hull"), band_gap=record.get("band_gap"),
        formation_energy_per_atom=record.get("formation_energy_per_atom"),
        database_version=record.get("database_version"), record_source=record.get("source"),
        primitive=bool(primitive),
    )


def filter_records(
    records: Iterable[dict],
    max_sites: int = 150,
    elements: Sequence[str] = ALLOWED_ELEMENTS,
    primitive: bool = True,
    ids=None,
    limit: int | None = None,
    source: str = "snapshot",
) -> SelectionResult:
    """Apply the paper's filter to record dicts (snapshot format, or :func:`.mp.query_mp` output).

    ``source`` labels the candidates: ``'mp-api'``, ``'snapshot'`` or ``'snapshot:<file>'``; it also
    picks the magnetic rule (anything not ``'mp-api'`` uses the offline rule).
    """
    if max_sites is None or int(max_sites) < 1:
        raise ValueError(f"max_sites must be a positive integer, got {max_sites!r}")
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    allowed = set(elements)
    wanted = _normalise_ids(ids)
    wanted_set = set(wanted) if wanted is not None else None
    offline = source != "mp-api"

    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    n_records = 0
    for record in records:
        n_records += 1
        outcome = _screen(record, allowed, offline, primitive, int(max_sites), source, seen, wanted_set)
        if isinstance(outcome, Rejection):
            rejections.append(outcome)
        elif outcome is not None:
            candidates.append(outcome)

    candidates.sort(key=lambda c: (c.nsites, mp_id_sort_key(c.mp_id)))
    notes = [
        OFFLINE_MAGNETIC_RULE if offline else MP_MAGNETIC_RULE,
        (f"size: primitive cell (pymatgen get_primitive_structure) must have <= {max_sites} sites"
         if primitive else f"size: the cell as given must have <= {max_sites} sites (no primitive reduction)"),
        f"elements: only {' '.join(sorted(allowed, key=_z))}",
        "reasons are checked in the order invalid, duplicate, element, partial occupancy, magnetic, size",
    ]
    dropped = 0
    if limit is not None:
        dropped = max(0, len(candidates) - int(limit))
        candidates = candidates[: int(limit)]
        notes.append(f"limit {int(limit)}: kept the smallest cells, ties by MP id integer part "
                     f"(mp-2 < mp-10); {dropped} further candidates dropped")
    missing = []
    if wanted is not None:
        missing = [i for i in wanted if i not in seen]
        if missing:
            notes.append(f"requested ids not found: {', '.join(missing)}")
    versions = sorted({c.database_version for c in candidates if c.database_version})
    query = {
        "source": source, "n_records": n_records, "max_sites": int(max_sites), "elements": sorted(allowed, key=_z),
        "primitive": bool(primitive), "ids": wanted, "limit": None if limit is None else int(limit),
        "dropped_by_limit": dropped,
        "magnetic_rule": "NM or Unknown without magnetic_risk_flags" if offline else "NM",
    }
    return SelectionResult(candidates=candidates, rejections=rejections, query=query,
                           database_version=versions[0] if len(versions) == 1 else None,
                           notes=notes, missing_ids=missing)


def _z(symbol: str) -> int:
    from aiida_deeph.core.elements import ATOMIC_NUMBERS

    return ATOMIC_NUMBERS.get(symbol, 999)


# ---------------------------------------------------------------------------------------- snapshot

def load_snapshot(path=None) -> list[dict]:
    """Records of a snapshot file: a JSON list, gzipped or not. ``None``: the small shipped snapshot."""
    path = Path(path) if path is not None else SMALL_SNAPSHOT
    if not path.is_file():
        raise StructureSourceError(f"snapshot file not found: {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, EOFError) as exc:
        raise StructureSourceError(f"cannot read snapshot {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise StructureSourceError(f"snapshot {path} is not a JSON list of records")
    return data


# ------------------------------------------------------------------------------------------ select

def select_structures(
    source: str = "snapshot",
    snapshot_path=None,
    ids=None,
    limit: int | None = None,
    max_sites: int = 150,
    primitive: bool = True,
    api_key: str | None = None,
    include_gnome: bool = False,
    timeout: float = 20,
) -> SelectionResult:
    """Query a source and filter it. ``source``: ``'snapshot'`` (offline; ``snapshot_path`` None means
    the small shipped snapshot) or ``'mp'`` (live mp-api, needs an API key)."""
    if source in ("snapshot", "offline"):
        path = Path(snapshot_path) if snapshot_path is not None else SMALL_SNAPSHOT
        records = load_snapshot(path)
        digest = _sha256(path)
        label = f"snapshot:{path.name}"
        result = filter_records(records, max_sites=max_sites, primitive=primitive, ids=ids, limit=limit, source=label)
        result.query.update({"source": "snapshot", "file": str(path), "sha256": digest})
        result.database_version = f"offline snapshot {path.name} sha256:{digest[:12]}"
        vintages = sorted({str(r.get("source_vintage")) for r in records if isinstance(r, dict) and r.get("source_vintage")})
        if vintages:
            result.notes.append("snapshot MP vintages: " + "; ".join(vintages))
        for c in result.candidates:
            c.database_version = c.database_version or result.database_version
        return result
    if source in ("mp", "mp-api", "materialsproject"):
        from .mp import mp_search_kwargs, query_mp

        records = query_mp(api_key=api_key, max_sites=max_sites, include_gnome=include_gnome, timeout=timeout,
                           mp_ids=ids)
        result = filter_records(records, max_sites=max_sites, primitive=primitive, ids=ids, limit=limit, source="mp-api")
        search = mp_search_kwargs(max_sites=max_sites, include_gnome=include_gnome, mp_ids=ids)
        search.pop("exclude_elements", None)  # implied by 'elements' in the query
        result.query.update({"source": "mp-api", "search": search, "n_records": len(records)})
        versions = sorted({r.get("database_version") for r in records if r.get("database_version")})
        result.database_version = versions[0] if versions else None
        return result
    raise StructureSourceError(f"unknown structure source {source!r}: use 'snapshot' or 'mp'")
