"""Structure sources and the paper's filter (aiida_deeph.structures.source): snapshot, mp-api (no network)."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure

from aiida_deeph.structures import mp as src  # the mp-api client (patched below)
from aiida_deeph.structures.mp import query_mp
from aiida_deeph.structures.source import (
    ALLOWED_ELEMENTS,
    REJECTION_REASONS,
    SMALL_SNAPSHOT,
    StructureSourceError,
    filter_records,
    load_snapshot,
    mp_id_sort_key,
    select_structures,
)

from .conftest import corpus_dir, shared_dir

MP = shared_dir() / "mp"
FULL = MP / "mp_light_elements_snapshot.json.gz"
FIXTURES = MP / "mp_fixtures_small.json"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not FULL.is_file(), reason="../shared/mp not found")


def fixtures() -> list[dict]:
    return json.loads(FIXTURES.read_text())


def fixture(mp_id: str) -> dict:
    return next(dict(r) for r in fixtures() if r["material_id"] == mp_id)


@pytest.fixture(scope="module")
def full_records():
    return load_snapshot(FULL)


def same_structure(a: Structure, b: Structure, atol=1e-6) -> bool:
    return (len(a) == len(b) and [s.specie.symbol for s in a] == [s.specie.symbol for s in b]
            and np.allclose(a.lattice.matrix, b.lattice.matrix, atol=atol, rtol=0)
            and np.allclose(a.cart_coords, b.cart_coords, atol=atol, rtol=0))


def corpus_structure(mp_id: str) -> Structure:
    return Structure.from_dict(json.loads((corpus_dir() / mp_id / "meta.json").read_text())["structure"])


# ------------------------------------------------------------------------------------ the filter

def test_allowed_elements():
    assert len(ALLOWED_ELEMENTS) == len(set(ALLOWED_ELEMENTS)) == 24
    assert {"H", "Cu", "Zn", "Br", "Se"} <= set(ALLOWED_ELEMENTS)
    assert not {"Fe", "Ti", "Kr", "Ar", "I"} & set(ALLOWED_ELEMENTS)


def test_fixture_roles_get_their_reasons():
    recs = fixtures()
    result = filter_records(recs)
    by_id = {r.mp_id: r for r in result.rejections}
    for rec in recs:
        i, role = rec["material_id"], rec["role"]
        if role == "pass":
            assert i in result.ids
        elif role == "magnetic":
            assert by_id[i].reason == "magnetic" and by_id[i].detail.startswith("ordering ")
        elif role == "disallowed_element":
            assert by_id[i].reason == "element"
        # expected_pass_element_and_size_filter: never an element/size rejection when True
        if rec["expected_pass_element_and_size_filter"]:
            assert i not in by_id or by_id[i].reason not in ("element", "size")
        else:
            assert by_id[i].reason in ("element", "size")
    assert by_id["mp-13"].detail == "contains Fe"
    assert by_id["mp-2194"].detail == "contains Ti"
    assert by_id["mp-567365"].detail == "contains Kr"
    assert by_id["mp-554775"].detail == "ordering AFM"
    assert result.reasons() == {"magnetic": 4, "element": 3}
    assert all(r.reason in REJECTION_REASONS for r in result.rejections)
    json.dumps(result.query)
    # fixtures are primitive cells already
    assert all(c.nsites == c.nsites_original for c in result.candidates)


def test_full_snapshot_counts(full_records):
    result = filter_records(full_records, source="snapshot:" + FULL.name)
    assert len(full_records) == 1003
    assert len(result.candidates) == 900  # README: NM, or Unknown with no flag
    assert result.reasons() == {"magnetic": 103}
    details = [r.detail for r in result.rejections]
    assert sum(d.startswith("ordering Unknown with magnetic_risk_flags") for d in details) == 71
    assert sum(d in ("ordering FM", "ordering AFM", "ordering FiM") for d in details) == 32
    # same set as the index csv's ordering/flags columns
    with open(MP / "mp_light_elements_snapshot_index.csv") as fh:
        rows = list(csv.DictReader(fh))
    nm = {r["material_id"] for r in rows if r["ordering"] == "NM" or (r["ordering"] == "Unknown" and not r["magnetic_risk_flags"])}
    assert set(result.ids) == nm
    # primitive reduction: the candidate has the index's nsites_primitive
    prim = {r["material_id"]: int(r["nsites_primitive"]) for r in rows}
    assert all(c.nsites == prim[c.mp_id] for c in result.candidates)
    assert sum(c.nsites < c.nsites_original for c in result.candidates) == 51
    keys = [(c.nsites, mp_id_sort_key(c.mp_id)) for c in result.candidates]
    assert keys == sorted(keys)
    assert all(c.source == "snapshot:" + FULL.name for c in result.candidates)
    # primitive=False keeps the cells as stored
    kept = filter_records(full_records, primitive=False)
    assert len(kept.candidates) == 900
    assert all(c.nsites == c.nsites_original and not c.primitive for c in kept.candidates)


def test_size_uses_primitive_cell_when_reducing(full_records):
    result = filter_records(full_records, max_sites=4)
    sizes = [r for r in result.rejections if r.reason == "size"]
    assert sizes and all(r.detail.endswith(")") and "> 4 (primitive cell; given cell" in r.detail for r in sizes)
    assert max(c.nsites for c in result.candidates) == 4
    # NaCl mp-22862 is stored as an 8-site conventional cell: passes via its 2-site primitive cell
    nacl = next(c for c in result.candidates if c.mp_id == "mp-22862")
    assert (nacl.nsites_original, nacl.nsites) == (8, 2)
    assert "mp-22862" in {r.mp_id for r in filter_records(full_records, max_sites=4, primitive=False).rejections}


def test_supercell_over_150_sites():
    nacl = fixture("mp-22862")
    s = Structure.from_dict(nacl["structure"]) * (4, 4, 5)
    assert len(s) == 160
    # a pure supercell reduces back to 2 sites: passes with primitive reduction, not without
    rec = dict(nacl, structure=s.as_dict(), nsites=160)
    assert filter_records([rec]).candidates[0].nsites == 2
    kept = filter_records([rec], primitive=False)
    assert kept.rejections[0].reason == "size" and kept.rejections[0].detail == "160 sites > 150 (given cell)"
    # one Na -> K substitution: the primitive cell is the whole 160-site cell
    s.replace(0, "K")
    rec = dict(nacl, structure=s.as_dict(), nsites=160)
    rej = filter_records([rec]).rejections[0]
    assert (rej.reason, rej.detail) == ("size", "160 sites > 150 (primitive cell; given cell 160)")
    assert filter_records([rec], max_sites=160).candidates[0].nsites == 160


def test_partial_occupancy():
    nacl = fixture("mp-22862")
    s = Structure.from_dict(nacl["structure"])
    s.replace(0, {"Na": 0.5, "K": 0.5})
    r = filter_records([dict(nacl, structure=s.as_dict())]).rejections[0]
    assert (r.reason, r.detail) == ("partial occupancy", "1 of 2 sites partially occupied")
    s = Structure.from_dict(nacl["structure"])
    s.replace(1, {"Cl": 0.9})  # a vacancy
    assert filter_records([dict(nacl, structure=s.as_dict())]).rejections[0].reason == "partial occupancy"
    # element comes before partial occupancy
    s.replace(0, {"Na": 0.5, "Fe": 0.5})
    assert filter_records([dict(nacl, structure=s.as_dict())]).rejections[0].reason == "element"


def test_duplicate_and_invalid():
    si, nacl = fixture("mp-149"), fixture("mp-22862")
    broken = dict(nacl, material_id="mp-1", structure={"lattice": "nonsense"})
    result = filter_records([si, nacl, dict(si), {"formula_pretty": "X"}, broken, "not a record",
                             dict(si, material_id="mp-2", structure=None)])
    assert result.ids == ["mp-149", "mp-22862"]
    reasons = [(r.mp_id, r.reason) for r in result.rejections]
    assert reasons == [("mp-149", "duplicate"), ("?", "invalid"), ("mp-1", "invalid"), ("?", "invalid"), ("mp-2", "invalid")]
    assert result.rejections[0].detail == "mp-149 seen before in these records"


def test_unknown_ordering_with_flags_is_magnetic_offline_only_nm_online():
    si = fixture("mp-149")
    flagged = dict(si, material_id="mp-5", magnetic_risk_flags=["Cu2+_likely"])
    plain = dict(si, material_id="mp-6", ordering="Unknown")
    nm_flagged = dict(si, material_id="mp-7", ordering="NM", magnetic_risk_flags=["odd_electron_count_per_cell"])
    offline = filter_records([flagged, plain, nm_flagged])
    assert offline.ids == ["mp-6", "mp-7"]
    assert offline.rejections[0].detail == "ordering Unknown with magnetic_risk_flags: Cu2+_likely"
    online = filter_records([flagged, plain, nm_flagged], source="mp-api")
    assert online.ids == ["mp-7"] and online.reasons() == {"magnetic": 2}
    assert "mp-api" in online.notes[0]


def test_limit_and_id_order():
    assert sorted(["mp-10", "mp-2", "mp-149", "mp-100", "mvc-1"], key=mp_id_sort_key) == \
        ["mp-2", "mp-10", "mp-100", "mp-149", "mvc-1"]
    si = fixture("mp-149")
    recs = [dict(si, material_id=i) for i in ("mp-100", "mp-10", "mp-2")] + [fixture("mp-1960")]  # Li2O: 3 sites
    assert filter_records(recs).ids == ["mp-2", "mp-10", "mp-100", "mp-1960"]
    two = filter_records(recs, limit=2)
    assert two.ids == ["mp-2", "mp-10"] and two.query["dropped_by_limit"] == 2
    assert any(n.startswith("limit 2") for n in two.notes)
    assert filter_records(recs, limit=0).ids == []
    assert filter_records(recs, limit=10).ids == ["mp-2", "mp-10", "mp-100", "mp-1960"]
    with pytest.raises(ValueError):
        filter_records(recs, limit=-1)
    # the demo's pick: the smallest cells of the shipped snapshot
    assert select_structures(limit=3).ids == ["mp-10", "mp-30", "mp-45"]


def test_ids_selection():
    result = select_structures(ids=["mp-22862", "mp-92", "mp-999999999", "mp-1692"])
    assert result.ids == ["mp-92", "mp-22862"]  # (nsites, id) order
    assert [(r.mp_id, r.reason) for r in result.rejections] == [("mp-1692", "magnetic")]
    assert result.missing_ids == ["mp-999999999"]
    assert "requested ids not found: mp-999999999" in result.notes
    assert "not found: mp-999999999" in result.summary()
    # comma string and bare numbers
    assert select_structures(ids="92, 2534").ids == ["mp-92", "mp-2534"]
    assert select_structures(ids=[]).ids == []


# --------------------------------------------------------------------------- snapshots and corpus

def test_small_snapshot_contents():
    records = load_snapshot()
    assert 30 <= len(records) <= 60
    assert all(r["source"].startswith(("matminer-", "m3gnet-")) for r in records)
    ids = {r["material_id"] for r in records}
    assert {"mp-92", "mp-22862", "mp-2534", "mp-1700", "mp-30"} <= ids
    result = select_structures()
    assert result.reasons() == {"magnetic": 4}
    assert result.database_version.startswith("offline snapshot mp_snapshot_small.json.gz sha256:")
    assert result.query["source"] == "snapshot" and len(result.query["sha256"]) == 64
    json.dumps(result.query)
    assert all(c.source == "snapshot:mp_snapshot_small.json.gz" and c.database_version for c in result.candidates)
    json.dumps([c.metadata() for c in result.candidates])
    # every structure the shipped snapshot lets through is an OpenMX corpus structure, exactly
    for c in result.candidates:
        assert same_structure(c.structure, corpus_structure(c.mp_id)), c.mp_id


def test_primitive_reduction_reproduces_whole_corpus(full_records):
    corpus = sorted(p.name for p in corpus_dir().iterdir() if (p / "meta.json").is_file())
    assert len(corpus) >= 60
    result = filter_records(full_records, ids=corpus)
    assert not result.missing_ids and not result.rejections
    for c in result.candidates:
        assert same_structure(c.structure, corpus_structure(c.mp_id)), c.mp_id


def test_make_small_snapshot_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_small_snapshot", REPO / "benchmarks" / "make_small_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "small.json.gz"
    assert module.main(["--shared", str(shared_dir()), "--out", str(out)]) == 0
    assert out.read_bytes() == SMALL_SNAPSHOT.read_bytes()


def test_load_snapshot_formats(tmp_path):
    recs = fixtures()[:3]
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps(recs))
    packed = tmp_path / "b.json.gz"
    packed.write_bytes(gzip.compress(json.dumps(recs).encode()))
    assert load_snapshot(plain) == load_snapshot(packed) == recs
    assert select_structures(snapshot_path=plain).ids == ["mp-149", "mp-1265", "mp-22862"]
    with pytest.raises(StructureSourceError, match="not found"):
        load_snapshot(tmp_path / "missing.json")
    (tmp_path / "c.json").write_text('{"a": 1}')
    with pytest.raises(StructureSourceError, match="not a JSON list"):
        load_snapshot(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("[{")
    with pytest.raises(StructureSourceError, match="cannot read"):
        load_snapshot(tmp_path / "d.json")
    with pytest.raises(StructureSourceError, match="unknown structure source"):
        select_structures(source="aflow")


# ------------------------------------------------------------------------- mp-api, no network

KEY = "k" * 32


def mp_doc(mp_id="mp-149", ordering="NM", fixture_id="mp-149"):
    rec = fixture(fixture_id)
    return {"material_id": mp_id, "formula_pretty": rec["formula_pretty"], "nsites": rec["nsites"],
            "elements": rec["elements"], "ordering": ordering, "is_magnetic": ordering != "NM",
            "symmetry": {"number": 227, "symbol": "Fd-3m"}, "energy_above_hull": 0.0, "band_gap": 0.6,
            "formation_energy_per_atom": -0.1, "deprecated": False, "structure": rec["structure"]}


class DocObject:
    """Attribute-style document, as mp-api's MPDataDoc (structure as a pymatgen Structure)."""

    def __init__(self, d):
        self.__dict__.update(d)
        self.structure = Structure.from_dict(d["structure"])


@pytest.fixture
def fake_mp(monkeypatch):
    """Replace mp-api's MPRester by a fake; records constructor and search arguments."""
    calls = {"init": [], "search": []}
    docs = [mp_doc(), DocObject(mp_doc("mp-22862", fixture_id="mp-22862"))]

    class Summary:
        timeout = 20

        def search(self, **kwargs):
            calls["search"].append(kwargs)
            calls["timeout"] = self.timeout
            return list(docs)

    class Materials:
        summary = Summary()

    class FakeMPRester:
        db_version = "2025.09.25"

        def __init__(self, **kwargs):
            calls["init"].append(kwargs)
            self.materials = Materials()

        def __exit__(self, *args):
            calls["closed"] = True

    monkeypatch.setattr(src, "_mprester_class", lambda: FakeMPRester)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    calls["docs"] = docs
    return calls


def test_missing_api_key(monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.delitem(SETTINGS, "PMG_MAPI_KEY", raising=False)
    monkeypatch.setattr(src, "_mprester_class", lambda: pytest.fail("must not import mp-api"))
    with pytest.raises(StructureSourceError) as info:
        query_mp()
    msg = str(info.value)
    assert "MP_API_KEY" in msg and "\n" not in msg
    with pytest.raises(StructureSourceError, match="API key"):
        select_structures(source="mp")
    assert isinstance(info.value, ValueError)


def test_search_arguments_and_record_conversion(fake_mp, monkeypatch):
    from pymatgen.analysis.magnetism import Ordering
    from pymatgen.core import Element

    monkeypatch.setenv("MP_API_KEY", KEY)
    records = query_mp(timeout=5)
    assert fake_mp["init"] == [{"api_key": KEY, "mute_progress_bars": True}]
    (kw,) = fake_mp["search"]
    assert kw["magnetic_ordering"] is Ordering.NM
    assert kw["include_gnome"] is False
    assert kw["num_sites"] == (1, 150)
    assert "elements" not in kw  # mp-api's elements means "contains all of"
    excluded = set(kw["exclude_elements"])
    assert not excluded & set(ALLOWED_ELEMENTS)
    assert excluded | set(ALLOWED_ELEMENTS) == {e.symbol for e in Element} and len(excluded) == 94
    assert kw["deprecated"] is False and kw["chunk_size"] == 1000 and kw["num_chunks"] is None
    assert {"material_id", "structure", "ordering", "nsites", "symmetry", "energy_above_hull"} <= set(kw["fields"])
    assert fake_mp["timeout"] == 5 and fake_mp["closed"]
    assert [r["material_id"] for r in records] == ["mp-149", "mp-22862"]
    for r in records:
        assert r["source"] == "mp-api" and r["database_version"] == "2025.09.25"
        assert r["ordering"] == "NM" and r["spacegroup_number"] == 227 and r["e_above_hull"] == 0.0
        assert isinstance(r["structure"], dict) and r["magnetic_risk_flags"] == []
    json.dumps(records)

    result = select_structures(source="mp", api_key=KEY, limit=1)
    assert result.ids == ["mp-149"] and result.database_version == "2025.09.25"
    assert result.candidates[0].source == "mp-api" and result.candidates[0].database_version == "2025.09.25"
    assert result.query["search"]["magnetic_ordering"] == "NM" and result.query["search"]["include_gnome"] is False
    json.dumps(result.query)
    query_mp(api_key=KEY, max_sites=40, include_gnome=True, elements=("Si", "O"))
    kw = fake_mp["search"][-1]
    assert kw["num_sites"] == (1, 40) and kw["include_gnome"] is True and "Li" in kw["exclude_elements"]


def test_explicit_ids_are_filtered_locally(fake_mp):
    fake_mp["docs"][:] = [mp_doc("mp-149"), mp_doc("mp-5", ordering="FM"), mp_doc("mp-6", ordering="Unknown")]
    result = select_structures(source="mp", api_key=KEY, ids=["mp-149", "mp-5", "mp-6", "mp-7"])
    kw = fake_mp["search"][-1]
    assert kw["material_ids"] == ["mp-149", "mp-5", "mp-6", "mp-7"]
    assert "magnetic_ordering" not in kw and "exclude_elements" not in kw
    assert result.ids == ["mp-149"]
    assert [(r.mp_id, r.detail) for r in result.rejections] == [("mp-5", "ordering FM"), ("mp-6", "ordering Unknown")]
    assert result.missing_ids == ["mp-7"]


def test_constructor_hang_times_out(monkeypatch):
    release = threading.Event()

    class HangingMPRester:
        def __init__(self, **kwargs):
            release.wait(30)  # the heartbeat that never answers
            raise ConnectionError("late")

    monkeypatch.setattr(src, "_mprester_class", lambda: HangingMPRester)
    t0 = time.monotonic()
    try:
        with pytest.raises(StructureSourceError, match=r"did not answer within 0.3 s"):
            query_mp(api_key=KEY, timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - t0 < 3


def test_connection_and_key_errors_are_one_line(monkeypatch):
    import requests

    def failing(exc):
        class Failing:
            def __init__(self, **kwargs):
                raise exc
        return lambda: Failing

    monkeypatch.setattr(src, "_mprester_class", failing(requests.exceptions.ConnectionError("Max retries\nexceeded")))
    with pytest.raises(StructureSourceError, match="cannot reach the Materials Project API") as info:
        query_mp(api_key=KEY)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(src, "_mprester_class", failing(RuntimeError("Valid API keys are 32 characters.")))
    with pytest.raises(StructureSourceError, match="invalid Materials Project API key"):
        query_mp(api_key="short")

    class BadSearch:
        db_version = None

        class materials:  # noqa: N801
            class summary:  # noqa: N801
                @staticmethod
                def search(**kwargs):
                    raise RuntimeError("\x1b[31mREST query returned with error status code 401\x1b[39m\nUnauthorized")

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(src, "_mprester_class", lambda: BadSearch)
    with pytest.raises(StructureSourceError, match="rejected the API key") as info:
        query_mp(api_key=KEY)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


# ------------------------------------------------------------ the real mp-api client, no network

@pytest.fixture
def real_mp(monkeypatch):
    """The installed mp-api with its heartbeat answered locally (both constructors call it)."""
    pytest.importorskip("mp_api.client")
    import mp_api.client.core.client as core
    import mp_api.client.mprester as mprester
    from mp_api.client import MPRester
    from mp_api.client.core.client import _Rester

    def clear():
        _Rester._get_heartbeat_info.cache_clear()
        MPRester.get_emmet_version.cache_clear()

    class Response:
        status_code = 200

        @staticmethod
        def json():
            return {"db_version": "2025.09.25", "access_controlled_batch_ids": [], "version": "0.87.3"}

    state = {"heartbeats": 0, "hang": None}

    def heartbeat(url, *args, **kwargs):
        assert url.endswith("heartbeat"), url
        state["heartbeats"] += 1
        if state["hang"] is not None:
            state["hang"].wait(30)
            raise ConnectionError("released")  # exceptions are not cached by functools.cache
        return Response()

    clear()
    monkeypatch.setattr(core.requests, "get", heartbeat)
    monkeypatch.setattr(mprester, "get", heartbeat)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    yield state
    if state["hang"] is not None:
        state["hang"].set()
    clear()


@pytest.mark.slow
def test_real_mprester_query_parameters(real_mp, monkeypatch):
    from emmet.core.summary import SummaryDoc
    from mp_api.client.core.client import BaseRester
    from mp_api.client.core.schemas import _convert_to_model

    seen = {}

    def fake_search(self, **kwargs):  # BaseRester._search: after SummaryRester.search's translation
        seen.update(kwargs, timeout=self.timeout, available=list(self.available_fields))
        return _convert_to_model([mp_doc()], SummaryDoc, requested_fields=kwargs["fields"])

    monkeypatch.setattr(BaseRester, "_search", fake_search)
    records = query_mp(api_key=KEY, timeout=7)
    assert real_mp["heartbeats"] >= 1
    assert seen["ordering"] == "NM"
    assert seen["batch_id_not_eq"] == "gnome_r2scan_statics"  # include_gnome=False
    assert (seen["nsites_min"], seen["nsites_max"]) == (1, 150)
    assert seen["deprecated"] is False and "elements" not in seen
    assert set(seen["exclude_elements"].split(",")).isdisjoint(ALLOWED_ELEMENTS)
    assert set(src.MP_FIELDS) <= set(seen["available"])
    assert seen["timeout"] == 7
    (rec,) = records
    assert rec["material_id"] == "mp-149" and rec["ordering"] == "NM" and rec["elements"] == ["Si"]
    assert rec["spacegroup_number"] == 227 and rec["database_version"] == "2025.09.25"
    json.dumps(rec)
    assert filter_records(records, source="mp-api").ids == ["mp-149"]


@pytest.mark.slow
def test_real_mprester_heartbeat_hang(real_mp):
    real_mp["hang"] = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(StructureSourceError, match="did not answer within 0.5 s"):
        query_mp(api_key=KEY, timeout=0.5)
    assert time.monotonic() - t0 < 3


def test_pure_core_imports():
    """The module imports neither aiida nor mp-api (mp-api only inside query_mp)."""
    code = ("import sys, aiida_deeph.structures.source as s; "
            "s.select_structures(limit=1); "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'aiida', 'mp_api'}); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_primitive_cells_are_wrapped_into_the_unit_cell():
    from pymatgen.core import Lattice

    from aiida_deeph.structures.source import wrap_to_unit_cell

    s = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[1.0, 1.0, -1e-12], [1.5, -0.5, 0.5 - 1e-12]])
    w = wrap_to_unit_cell(s)
    assert np.array_equal(w.frac_coords[0], [0.0, 0.0, 0.0])
    assert np.allclose(w.frac_coords[1], [0.5, 0.5, 0.5], atol=1e-11)
    assert ((w.frac_coords >= 0) & (w.frac_coords < 1)).all()
    assert [x.specie.symbol for x in w] == ["Na", "Cl"]
    assert np.allclose(w.lattice.matrix, s.lattice.matrix, atol=0)
