"""``verdi data deeph stats/export``: counts checked against an independent count from the packed arrays."""
from __future__ import annotations

import json
import uuid as uuidlib
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import corpus_dir

# Small corpus runs covering 1- and 2-element cells: H2, HCl, LiH, KH, Li.
CORPUS_IDS = ["mp-632172", "mp-684609", "mp-23703", "mp-24084", "mp-567337"]
NO_MP_ID = "mp-567337"  # stored without an MP id: exported under its UUID


@pytest.fixture(scope="module")
def dataset(aiida_profile):
    """A uniquely labelled group of HamiltonianData built from real corpus runs; returns (label, pks)."""
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.io.openmx import load_openmx_run

    missing = [m for m in CORPUS_IDS if not (corpus_dir() / m).is_dir()]
    if missing:
        pytest.fail(f"corpus runs missing from {corpus_dir()}: {missing}")
    group = orm.Group(label=f"deeph-stats-{uuidlib.uuid4().hex[:10]}").store()
    pks = []
    for mp_id in CORPUS_IDS:
        packed = load_openmx_run(corpus_dir() / mp_id)
        if mp_id != NO_MP_ID:
            packed.meta["mp_id"] = mp_id
        node = HamiltonianData(packed).store()
        pks.append(node.pk)
    group.add_nodes([orm.load_node(pk) for pk in pks])
    # a node outside the group must not be counted
    HamiltonianData(load_openmx_run(corpus_dir() / "mp-684609")).store()
    return group.label, pks


def independent_counts(pks) -> dict:
    """The statistics recomputed from the stored arrays and files (not from the attributes)."""
    from aiida import orm

    from aiida_deeph.data.hamiltonian import FILENAME

    elements, pairs, atoms, nel = Counter(), Counter(), Counter(), Counter()
    total_pairs = total_entries = storage = steps = 0
    steps_max = 0
    for pk in pks:
        node = orm.load_node(pk)
        packed = node.get_packed()
        species = packed.species
        elements.update(set(species))
        pair_keys = {"-".join(sorted((species[i], species[j]))) for i, j in packed.atom_pairs[:, 3:].tolist()}
        pairs.update(pair_keys)
        atoms[len(species)] += 1
        nel[len(set(species))] += 1
        total_pairs += len(packed.atom_pairs)
        total_entries += len(packed.hamiltonian)
        storage += len(node.base.repository.get_object_content(FILENAME, mode="rb"))
        steps += packed.meta["scf_steps"]
        steps_max = max(steps_max, packed.meta["scf_steps"])
    return {
        "elements": dict(elements), "element_pairs": dict(pairs), "atoms_per_cell": dict(atoms),
        "elements_per_structure": dict(nel), "num_atom_pairs": total_pairs,
        "num_matrix_entries": total_entries, "storage_bytes": storage,
        "scf_total": steps, "scf_max": steps_max,
    }


def invoke(args, expect_ok=True):
    from aiida_deeph.cmdline.data import deeph

    result = CliRunner().invoke(deeph, args, catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def test_entry_point_registered():
    from aiida.plugins.entry_point import load_entry_point

    from aiida_deeph.cmdline.data import deeph

    assert load_entry_point("aiida.cmdline.data", "deeph") is deeph


def test_stats_json_matches_independent_count(dataset, monkeypatch):
    from aiida_deeph.data.hamiltonian import HamiltonianData

    label, pks = dataset
    expected = independent_counts(pks)

    # the statistics must come from attributes only: forbid reading arrays or repository files
    def forbidden(*args, **kwargs):
        raise AssertionError("stats opened a file")

    monkeypatch.setattr(HamiltonianData, "get_packed", forbidden)
    monkeypatch.setattr("aiida.orm.nodes.repository.NodeRepository.open", forbidden)
    monkeypatch.setattr("aiida.orm.nodes.repository.NodeRepository.get_object_content", forbidden)

    result = invoke(["stats", label, "--json"])
    stats = json.loads(result.stdout)
    assert stats["num_structures"] == len(CORPUS_IDS)
    assert stats["elements"] == expected["elements"]
    assert stats["element_pairs"] == expected["element_pairs"]
    assert {int(k): v for k, v in stats["atoms_per_cell"].items()} == expected["atoms_per_cell"]
    assert {int(k): v for k, v in stats["elements_per_structure"].items()} == expected["elements_per_structure"]
    assert stats["num_atom_pairs"] == expected["num_atom_pairs"]
    assert stats["num_matrix_entries"] == expected["num_matrix_entries"]
    assert stats["storage_bytes"] == expected["storage_bytes"]
    assert stats["scf_steps"]["total"] == expected["scf_total"]
    assert stats["scf_steps"]["max"] == expected["scf_max"]
    assert stats["scf_steps"]["mean"] == pytest.approx(expected["scf_total"] / len(CORPUS_IDS))
    assert stats["failures"] == []
    # hand-checked values for this corpus subset, so a shared bug in both counts would show
    assert stats["elements"] == {"H": 4, "Li": 2, "Cl": 1, "K": 1}
    assert set(stats["element_pairs"]) == {"H-H", "Cl-H", "Cl-Cl", "H-Li", "Li-Li", "H-K", "K-K"}
    assert stats["element_pairs"]["H-H"] == 4 and stats["element_pairs"]["Li-Li"] == 2
    assert {int(k): v for k, v in stats["atoms_per_cell"].items()} == {1: 1, 2: 4}


def test_stats_table_and_plot(dataset, tmp_path):
    label, _ = dataset
    png = tmp_path / "stats.png"
    result = invoke(["stats", label, "--plot", str(png)])
    assert f"{len(CORPUS_IDS)} structures" in result.stdout
    assert "Cl-H" in result.stdout and "matrix entries" in result.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_stats_missing_and_empty_group(aiida_profile):
    from aiida import orm

    missing = f"no-such-group-{uuidlib.uuid4().hex}"
    result = invoke(["stats", missing], expect_ok=False)
    assert result.exit_code != 0
    assert missing in result.stderr and len(result.stderr.strip().splitlines()) == 1

    empty = orm.Group(label=f"deeph-empty-{uuidlib.uuid4().hex[:10]}").store()
    stats = json.loads(invoke(["stats", empty.label, "--json"]).stdout)
    assert stats["num_structures"] == 0
    assert stats["elements"] == {} and stats["element_pairs"] == {} and stats["atoms_per_cell"] == {}
    assert stats["num_atom_pairs"] == 0 and stats["num_matrix_entries"] == 0 and stats["storage_bytes"] == 0
    assert stats["scf_steps"]["total"] == 0 and stats["failures"] == []
    assert "0 structures" in invoke(["stats", empty.label]).stdout

    result = invoke(["export", missing, "somewhere"], expect_ok=False)
    assert result.exit_code != 0 and missing in result.stderr


def _workflow(process_type):
    from aiida import orm

    node = orm.WorkflowNode()
    node.process_type = process_type
    return node.store()


def _summary(workflow, failed):
    from aiida import orm
    from aiida.common.links import LinkType

    summary = orm.Dict({"done": [], "skipped": [], "failed": failed}).store()
    summary.base.links.add_incoming(workflow, link_type=LinkType.RETURN, link_label="summary")
    return summary


def test_failures_from_database_workchains(aiida_profile):
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.data.stats import DATABASE_PROCESS_TYPE, WORKCHAINS_EXTRA, collect_stats
    from aiida_deeph.io.openmx import load_openmx_run

    group = orm.Group(label=f"deeph-failures-{uuidlib.uuid4().hex[:10]}").store()
    packed = load_openmx_run(corpus_dir() / "mp-23703")
    packed.meta["mp_id"] = "mp-23703"
    group.add_nodes(HamiltonianData(packed).store())

    first = _workflow(DATABASE_PROCESS_TYPE)
    _summary(first, [{"mp_id": "mp-999", "reason": "SCF not converged"},
                     {"mp_id": "mp-1000", "reason": "ELPA abort"},
                     {"mp_id": "mp-23703", "reason": "walltime"}])
    second = _workflow(DATABASE_PROCESS_TYPE)
    _summary(second, [{"mp_id": "mp-999", "reason": "SCF not converged after 3 restarts"}])
    other = _workflow("aiida.workflows:core.arithmetic.add_multiply")  # listed but not a DatabaseWorkChain
    _summary(other, [{"mp_id": "mp-1", "reason": "must not appear"}])
    unlisted = _workflow(DATABASE_PROCESS_TYPE)  # a DatabaseWorkChain that did not fill this group
    _summary(unlisted, [{"mp_id": "mp-2", "reason": "must not appear"}])
    group.base.extras.set(WORKCHAINS_EXTRA, [first.uuid, second.pk, other.uuid])

    stats = json.loads(invoke(["stats", group.label, "--json"]).stdout)
    assert {f["mp_id"]: f["reason"] for f in stats["failures"]} == {
        "mp-999": "SCF not converged after 3 restarts",
        "mp-1000": "ELPA abort",
    }
    # mp-23703 failed once but is in the group now (a later run computed it)
    assert [f["mp_id"] for f in stats["resolved_failures"]] == ["mp-23703"]
    assert set(stats["database_workchains"]) == {first.uuid, second.uuid}
    assert stats["num_structures"] == 1
    assert collect_stats(group.label)["failures"] == stats["failures"]
    table = invoke(["stats", group.label]).stdout
    assert "mp-1000: ELPA abort" in table


def _assert_same(a, b):
    a, b = a.sorted(), b.sorted()
    assert a.species == b.species
    np.testing.assert_allclose(a.cell, b.cell, atol=1e-9)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)
    np.testing.assert_array_equal(a.atom_pairs, b.atom_pairs)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_allclose(a.hamiltonian, b.hamiltonian, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.overlap, b.overlap, rtol=0, atol=1e-12)


def test_export_dock_round_trip(dataset, tmp_path):
    from aiida import orm

    from aiida_deeph.io.dock import read_dock

    label, pks = dataset
    out = tmp_path / "dock"
    invoke(["export", label, str(out), "--format", "dock"])
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "dock" and index["num_structures"] == len(pks)
    by_uuid = {e["uuid"]: e for e in index["structures"]}
    for pk in pks:
        node = orm.load_node(pk)
        entry = by_uuid[node.uuid]
        mp_id = node.base.attributes.get("mp_id")
        assert entry["name"] == (mp_id or node.uuid) and entry["mp_id"] == mp_id
        assert entry["formula"] == node.formula
        _assert_same(read_dock(out / entry["name"]), node.get_packed())
    assert sorted(p.name for p in out.iterdir()) == sorted([e["name"] for e in index["structures"]] + ["index.json"])


def test_export_packed_shards(dataset, tmp_path):
    from aiida import orm

    from aiida_deeph.core.packed import PackedFile

    label, pks = dataset
    out = tmp_path / "packed"
    invoke(["export", label, str(out), "--format", "packed", "--shard-size", "2"])
    index = json.loads((out / "index.json").read_text())
    shards = sorted(p.name for p in out.glob("shard-*.h5"))
    assert shards == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert index["num_shards"] == 3 and index["num_structures"] == len(pks)
    assert not list(out.glob(".tmp-*"))
    seen = {}
    for shard in shards:
        with PackedFile(out / shard) as pf:
            listed = [e["name"] for e in index["structures"] if e["shard"] == shard]
            assert pf.names() == sorted(listed) and 1 <= len(pf) <= 2
            for name, packed in pf:
                seen[name] = packed
    assert len(seen) == len(pks)
    for pk in pks:
        node = orm.load_node(pk)
        name = node.base.attributes.get("mp_id") or node.uuid
        _assert_same(seen[name], node.get_packed())

    # re-export with bigger shards: the stale shards of the previous index are removed
    invoke(["export", label, str(out), "--format", "packed", "--shard-size", "500"])
    assert sorted(p.name for p in out.glob("shard-*.h5")) == ["shard-00000.h5"]
    with PackedFile(out / "shard-00000.h5") as pf:
        assert len(pf) == len(pks)
