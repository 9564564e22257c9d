"""The live Materials Project source: mp-api queries of the paper's chemical space (imported only when used).

:func:`query_mp` returns plain record dicts in the snapshot's format, for :func:`.source.filter_records`;
mp-api itself is imported only inside it (its import takes 5-10 s). One-line :class:`StructureSourceError`
messages for a missing or rejected API key, a timeout or a failed search.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from typing import Any

from .common import ALLOWED_ELEMENTS, MP_DEFAULT_ENDPOINT, StructureSourceError, _normalise_ids

#: Fields asked from mp-api's summary search (all exist in emmet-core's SummaryDoc).
MP_FIELDS: tuple[str, ...] = (
    "material_id", "formula_pretty", "nsites", "elements", "structure", "ordering", "is_magnetic",
    "total_magnetization", "symmetry", "energy_above_hull", "formation_energy_per_atom", "band_gap",
    "deprecated",
)


def _api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        try:
            from pymatgen.core import SETTINGS

            key = SETTINGS.get("PMG_MAPI_KEY")
        except Exception:  # noqa: BLE001
            key = None
    if not key:
        raise StructureSourceError(
            "no Materials Project API key: pass api_key or set MP_API_KEY "
            "(or use the offline snapshot source)")
    return str(key).strip()


def mp_search_kwargs(max_sites: int = 150, elements: Sequence[str] = ALLOWED_ELEMENTS, include_gnome: bool = False,
                     chunk_size: int = 1000, num_chunks: int | None = None, mp_ids=None) -> dict:
    """Keyword arguments for ``MPRester().materials.summary.search`` (``magnetic_ordering`` as 'NM').

    mp-api's ``elements`` means "contains all of these", so the element filter is expressed with
    ``exclude_elements`` = every other element of the periodic table. With explicit ``mp_ids``
    only ``material_ids`` is sent, and the filter runs locally so that every id gets a reason.
    """
    from pymatgen.core import Element

    allowed = set(elements)
    kwargs: dict[str, Any] = {}
    ids = _normalise_ids(mp_ids)
    if ids:
        kwargs["material_ids"] = ids
    else:
        kwargs.update(
            exclude_elements=[e.symbol for e in Element if e.symbol not in allowed],
            num_sites=(1, int(max_sites)),
            magnetic_ordering="NM",
            deprecated=False,
        )
    kwargs.update(include_gnome=bool(include_gnome), chunk_size=int(chunk_size), num_chunks=num_chunks,
                  fields=list(MP_FIELDS))
    return kwargs


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _mprester_class():
    from mp_api.client import MPRester

    return MPRester


def _open_rester(key: str, timeout: float, endpoint: str | None):
    """Build MPRester and its summary rester in a daemon thread, waiting at most ``timeout`` s.

    mp-api's constructors call the server's heartbeat with plain ``requests.get`` and no timeout,
    so a silent network would hang forever; the search requests themselves do carry a timeout.
    Returns ``(rester, summary_rester)``.
    """
    MPRester = _mprester_class()
    box: dict[str, Any] = {}

    def build():
        try:
            kwargs = {"api_key": key, "mute_progress_bars": True}
            if endpoint:
                kwargs["endpoint"] = endpoint
            rester = MPRester(**kwargs)
            box["summary"] = rester.materials.summary
            box["rester"] = rester
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    where = endpoint or MP_DEFAULT_ENDPOINT
    worker = threading.Thread(target=build, name="aiida-deeph-mprester", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise StructureSourceError(
            f"the Materials Project API ({where}) did not answer within {timeout:g} s "
            "(MPRester heartbeat); check the network or use the offline snapshot")
    if "error" in box:
        exc = box["error"]
        if "32 characters" in str(exc) or "API key" in str(exc):
            raise StructureSourceError(f"invalid Materials Project API key: {_one_line(exc)}") from exc
        raise StructureSourceError(f"cannot reach the Materials Project API ({where}; offline: use the snapshot "
                                   f"source): {_one_line(exc)}") from exc
    return box["rester"], box["summary"]


def _set_request_timeout(summary, timeout: float) -> None:
    """Per-request timeout of the search (mp-api hands out the rester wrapped in a LazyImport)."""
    target = getattr(summary, "_obj", None) or summary
    try:
        if isinstance(getattr(target, "timeout", None), (int, float)):
            target.timeout = timeout
    except (AttributeError, TypeError):
        pass


def _get(doc, name, default=None):
    if isinstance(doc, dict):
        return doc.get(name, default)
    return getattr(doc, name, default)


def _plain(value):
    if value is None:
        return None
    value = getattr(value, "value", value)  # enums
    return value


def _doc_to_record(doc, db_version: str | None) -> dict:
    """An mp-api summary document (SummaryDoc or dict) as a snapshot-format record."""
    structure = _get(doc, "structure")
    if structure is not None and not isinstance(structure, dict):
        structure = structure.as_dict()
    symmetry = _get(doc, "symmetry") or {}
    sg = _get(symmetry, "number")
    elements = [str(getattr(e, "symbol", e)) for e in (_get(doc, "elements") or [])]
    nsites = _get(doc, "nsites")
    if nsites is None and structure is not None:
        nsites = len(structure.get("sites", []))
    ordering = _plain(_get(doc, "ordering"))

    def num(name):
        v = _get(doc, name)
        return None if v is None else float(v)

    return {
        "material_id": str(_get(doc, "material_id")),
        "formula_pretty": _get(doc, "formula_pretty"),
        "nsites": None if nsites is None else int(nsites),
        "elements": elements,
        "spacegroup_number": None if sg is None else int(sg),
        "ordering": None if ordering is None else str(ordering),
        "is_magnetic": _get(doc, "is_magnetic"),
        "total_magnetization": num("total_magnetization"),
        "magnetic_risk_flags": [],
        "formation_energy_per_atom": num("formation_energy_per_atom"),
        "band_gap": num("band_gap"),
        "e_above_hull": num("energy_above_hull"),
        "deprecated": _get(doc, "deprecated"),
        "source": "mp-api",
        "database_version": db_version,
        "structure": structure,
    }


def query_mp(
    api_key: str | None = None,
    max_sites: int = 150,
    elements: Sequence[str] = ALLOWED_ELEMENTS,
    include_gnome: bool = False,
    timeout: float = 20,
    chunk_size: int = 1000,
    num_chunks: int | None = None,
    mp_ids=None,
    endpoint: str | None = None,
) -> list[dict]:
    """Records from the live Materials Project summary endpoint (snapshot record format).

    Each record carries ``database_version`` (MPRester's ``db_version`` from the heartbeat).
    Raises :class:`StructureSourceError` with a one-line message for a missing or invalid key, no
    network, or a server that does not answer within ``timeout`` seconds.
    """
    key = _api_key(api_key)
    kwargs = mp_search_kwargs(max_sites=max_sites, elements=elements, include_gnome=include_gnome,
                              chunk_size=chunk_size, num_chunks=num_chunks, mp_ids=mp_ids)
    if kwargs.get("magnetic_ordering") == "NM":
        from pymatgen.analysis.magnetism import Ordering

        kwargs["magnetic_ordering"] = Ordering.NM
    try:
        rester, summary = _open_rester(key, timeout, endpoint)
    except ImportError as exc:
        raise StructureSourceError(f"mp-api is not installed ({exc}); pip install mp-api") from exc
    db_version = getattr(rester, "db_version", None)
    try:
        _set_request_timeout(summary, timeout)
        docs = summary.search(**kwargs)
    except StructureSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - MPRestError, requests errors...
        text = _one_line(exc)
        if any(s in text for s in ("status code 401", "status code 403", "API key", "api_key", "Unauthorized",
                                   "Forbidden")):
            raise StructureSourceError(f"the Materials Project rejected the API key: {text}") from exc
        raise StructureSourceError(f"Materials Project search failed: {text}") from exc
    finally:
        close = getattr(rester, "__exit__", None)
        if close is not None:
            try:
                close(None, None, None)
            except Exception:  # noqa: BLE001
                pass
    return [_doc_to_record(d, db_version) for d in docs]


