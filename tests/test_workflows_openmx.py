"""OpenmxBaseWorkChain handlers and the DatabaseWorkChain, run through AiiDA with the replay stand-in."""
import time

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_deeph.calculations.openmx import OpenmxCalculation, flatten_keywords
from aiida_deeph.workflows.database import GROUP_FAILED_EXTRA, DatabaseWorkChain
from aiida_deeph.workflows.openmx_base import OpenmxBaseWorkChain

from .conftest import corpus_structure, si_failure_builder


def _base_from_calc_builder(calc_builder, max_iterations=2):
    builder = OpenmxBaseWorkChain.get_builder()
    builder.openmx = calc_builder._inputs(prune=True)
    builder.max_iterations = orm.Int(max_iterations)
    return builder


def test_base_workchain_success(openmx_code):
    builder = OpenmxBaseWorkChain.get_builder_from_protocol(openmx_code, corpus_structure("mp-2534"))
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert results["hamiltonian"].base.attributes.get("formula") == "GaAs"          # pymatgen's order
    assert len(node.called) == 1


def test_scf_not_converged_handler(openmx_code):
    _, node = run_get_node(_base_from_calc_builder(si_failure_builder(openmx_code, 4)))
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert calcs[0].exit_status == OpenmxCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    second = flatten_keywords(calcs[1].inputs.parameters.get_dict())
    assert float(second["scf.Init.Mixing.Weight"]) == pytest.approx(0.15)
    assert int(second["scf.maxIter"]) == 8 and second["scf.restart"] == "on"
    assert calcs[1].inputs.parent_folder.uuid == calcs[0].outputs.remote_folder.uuid
    # the replay has no recording of the restarted run: the chain ends failed, with a message
    assert not node.is_finished_ok


def test_eigensolver_abort_handler(openmx_code):
    _, node = run_get_node(_base_from_calc_builder(si_failure_builder(openmx_code, 2)))
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert calcs[0].exit_status == OpenmxCalculation.exit_codes.ERROR_EIGENSOLVER_ABORT.status
    assert flatten_keywords(calcs[1].inputs.parameters.get_dict())["scf.eigen.lib"] == "elpa2"


def test_missing_pao_is_unrecoverable(openmx_code):
    _, node = run_get_node(_base_from_calc_builder(si_failure_builder(openmx_code, 100, basis_pao="Si7.5-s2p2d1")))
    assert node.exit_status == OpenmxBaseWorkChain.exit_codes.ERROR_UNRECOVERABLE_FAILURE.status
    assert len(node.called) == 1 and "Si7.5" in node.exit_message


def _count_calcs():
    return orm.QueryBuilder().append(OpenmxCalculation).count()


def test_database_workchain_resumes_and_isolates_failures(openmx_code):
    label = "test-db-snapshot"
    inputs = {"code": openmx_code, "source": orm.Str("snapshot"), "limit": orm.Int(3),
              "group_label": orm.Str(label), "max_concurrent": orm.Int(2)}
    results, node = run_get_node(DatabaseWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    summary = results["summary"].get_dict()
    assert summary["num_done"] == 3 and summary["num_failed"] == 0
    group = orm.load_group(label)
    assert group.count() == 3
    ids = sorted(n.base.attributes.get("mp_id") for n in group.nodes)
    assert ids == sorted(d["mp_id"] for d in summary["done"])
    # the StructureData carries its provenance: a calcfunction from the MP record
    structure = orm.QueryBuilder().append(orm.StructureData, filters={"extras.mp_id": ids[0]}).one()[0]
    record = structure.creator.inputs.record.get_dict()
    assert record["mp_id"] == ids[0] and "database_version" in record and "query" in record

    # inputs equal for every structure are one stored node shared by all children; k-points are per structure
    children = [c for c in node.called if isinstance(c, orm.WorkflowNode)]
    for name in ("parameters", "basis"):
        assert len({c.inputs.openmx[name].uuid for c in children}) == 1, name
    assert len({c.inputs.max_iterations.uuid for c in children}) == 1
    assert len({c.inputs.openmx.kpoints.uuid for c in children}) == 3
    # the checkpointed context holds no per-structure lists (the queue is an extra of the node)
    assert node.base.extras.get("deeph_queue") == [c.inputs.openmx.structure.pk for c in sorted(children, key=lambda c: c.pk)]

    # re-running the same command computes nothing new
    before = _count_calcs()
    results2, node2 = run_get_node(DatabaseWorkChain, **inputs)
    assert node2.is_finished_ok
    assert _count_calcs() == before
    assert results2["summary"]["num_skipped"] == 3 and group.count() == 3
    # structures are stored once
    assert orm.QueryBuilder().append(orm.StructureData, filters={"extras.mp_id": ids[0]}).count() == 1


def test_database_failure_is_reported_not_added(openmx_code, monkeypatch):
    import inspect

    from pymatgen.core import Lattice, Structure

    # each child is recorded (Group / failure record) as it finishes, not at the end of its batch
    # (the outline's own steps are bound when the spec is first built, so spy on the recorder itself)
    first_caller = {}
    original = DatabaseWorkChain._record_child

    def spy(self, child):
        first_caller.setdefault(child.pk, inspect.stack()[1].function)
        return original(self, child)

    monkeypatch.setattr(DatabaseWorkChain, "_record_child", spy)

    good = corpus_structure("mp-22862").store()
    # a cell with no recorded OpenMX run: the stand-in refuses it, so this structure cannot be computed
    bad = orm.StructureData(pymatgen=Structure(Lattice.cubic(5.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    bad.base.extras.set("mp_id", "test-unrecorded")
    bad.store()
    # an element without a basis in the table: its OpenmxBaseWorkChain cannot even be created
    iron = orm.StructureData(pymatgen=Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    iron.base.extras.set("mp_id", "test-iron")
    iron.store()
    sgroup = orm.Group(label="test-structures-mixed").store()
    sgroup.add_nodes([good, bad, iron])
    inputs = {"code": openmx_code, "source": orm.Str("group"), "structure_group": orm.Str(sgroup.label),
              "group_label": orm.Str("test-db-mixed")}
    results, node = run_get_node(DatabaseWorkChain, **inputs)
    assert node.is_finished_ok  # one failed structure never fails the database
    summary = results["summary"].get_dict()
    assert summary["num_done"] == 1 and summary["num_failed"] == 2
    failed = {f["mp_id"]: f["reason"] for f in summary["failed"]}
    assert "Fe" in failed["test-iron"] and "basis" in failed["test-iron"], failed
    # no recording: its own exit code (350, not "killed or crashed") and no second run of the same input
    assert "REPLAY stand-in has no recorded OpenMX run" in failed["test-unrecorded"], failed
    runs = [calc for base in node.called if base.process_label == "OpenmxBaseWorkChain" for calc in base.called
            if calc.process_label == "OpenmxCalculation" and calc.inputs.structure.uuid == bad.uuid]
    assert len(runs) == 1 and runs[0].exit_status == 350
    group = orm.load_group("test-db-mixed")
    assert [n.base.attributes.get("mp_id") for n in group.nodes] == ["mp-22862"]
    # the reason recorded as the run ended (group extra) is the one the summary gives
    assert {k: group.base.extras.get(GROUP_FAILED_EXTRA)[k] for k in failed} == failed
    assert list(first_caller.values()) == ["_on_awaitable_finished"] * 2, first_caller
    # rerun: the failed structure is not recomputed unless asked
    before = _count_calcs()
    results2, _ = run_get_node(DatabaseWorkChain, **inputs)
    assert _count_calcs() == before and results2["summary"]["num_skipped"] == 3


# ------------------------------------------------------------------------------------ sanity check

def _corpus_hamiltonian(mp_id="mp-22862"):
    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.io.openmx import load_openmx_run

    from .conftest import corpus_dir

    return load_openmx_run(corpus_dir() / mp_id), HamiltonianData


def test_sanity_check_reads_attributes_and_falls_back_to_arrays(aiida_profile):
    from aiida_deeph.workflows.openmx_base import _array_problems

    packed, HamiltonianData = _corpus_hamiltonian()
    good = HamiltonianData(packed)
    attrs = good.base.attributes.all
    assert attrs["all_finite"] is True and 0.9 < attrs["min_onsite_overlap_diagonal"] < 1.1
    assert _array_problems(good) == []

    nan = packed.copy()
    nan.hamiltonian[7] = float("nan")
    bad = HamiltonianData(nan)
    assert bad.base.attributes.get("all_finite") is False
    assert _array_problems(bad) == ["NaN/Inf in H or S"]

    small = packed.copy()
    onsite = next(p for p in range(small.num_pairs)
                  if small.atom_pairs[p, 3] == small.atom_pairs[p, 4] and not small.atom_pairs[p, :3].any())
    start = small.offsets[onsite]
    small.overlap[start] = 0.2          # first diagonal entry of an on-site block
    low = HamiltonianData(small)
    assert low.base.attributes.get("min_onsite_overlap_diagonal") == pytest.approx(0.2)
    assert _array_problems(low) == ["on-site overlap diagonal not positive"]

    # nodes stored before these attributes existed: the arrays are read
    for node, expected in ((good, []), (bad, ["NaN/Inf in H or S"]), (low, ["on-site overlap diagonal not positive"])):
        node.base.attributes.delete("all_finite")
        node.base.attributes.delete("min_onsite_overlap_diagonal")
        assert _array_problems(node.store()) == expected


def test_sanity_check_fails_the_base_workchain(openmx_code, monkeypatch):
    import aiida_deeph.data.hamiltonian as hd

    monkeypatch.setattr(hd, "array_checks", lambda packed: {"all_finite": True, "min_onsite_overlap_diagonal": 0.1})
    builder = OpenmxBaseWorkChain.get_builder_from_protocol(openmx_code, corpus_structure("mp-22862"))
    _, node = run_get_node(builder)
    assert node.exit_status == OpenmxBaseWorkChain.exit_codes.ERROR_SANITY_CHECK_FAILED.status
    assert "on-site overlap diagonal" in node.exit_message


def test_database_window_refills_as_each_run_ends(openmx_code, monkeypatch, tmp_path):
    """max_concurrent is a rolling window: a new structure starts when any run ends, not when its batch does.

    Event order, not wall-clock races: the replay of the first structure (mp-10044) is held until the third one
    has been submitted. With a rolling window the third starts as soon as the second (fast) run ends, which
    releases the first; with batches it would wait for the held run, which ends only after the hold's timeout.
    """
    from aiida_deeph.replay.standin import HOLD_VAR

    ids = ["mp-10044", "mp-632172", "mp-684609", "mp-79"]   # launched in this order (2 sites each, then by id)
    sentinel = tmp_path / "third-submitted"
    monkeypatch.setenv(HOLD_VAR, f"mp-10044:{sentinel}")
    events = []
    original = DatabaseWorkChain._submit

    def submit(self, pk):
        node = original(self, pk)
        label = node.label
        events.append(("submitted", label, time.monotonic()))
        if label == "mp-684609":
            sentinel.touch()
        return node

    monkeypatch.setattr(DatabaseWorkChain, "_submit", submit)
    sgroup = orm.Group(label="test-structures-window").store()
    sgroup.add_nodes([corpus_structure(i).store() for i in ids])
    t0 = time.monotonic()
    results, node = run_get_node(DatabaseWorkChain, code=openmx_code, source=orm.Str("group"),
                                 structure_group=orm.Str(sgroup.label), group_label=orm.Str("test-db-window"),
                                 max_concurrent=orm.Int(2))
    assert node.is_finished_ok and results["summary"]["num_done"] == 4
    assert [e[1] for e in events] == ids
    children = {c.label: c for c in node.called}
    slow, late = children["mp-10044"], children["mp-684609"]
    assert late.ctime < slow.mtime, (late.ctime, slow.mtime)       # the third started while the first still ran
    assert time.monotonic() - t0 < 100, "the held run was released only by its timeout: no rolling window"
    starts = sorted(c.ctime for c in children.values())
    running_at = [sum(1 for c in children.values() if c.ctime <= t < c.mtime) for t in starts]
    assert max(running_at) <= 2, running_at    # never more than max_concurrent at once


def test_outputs_are_attached_with_few_link_queries(openmx_code, monkeypatch):
    """AttachedOutputsMixin: aiida-core's update_outputs (one link query each) runs only when an output is new."""
    from aiida.engine.processes.process import Process

    calls = []
    original = Process.update_outputs

    def counting(self):
        calls.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(Process, "update_outputs", counting)
    builder = OpenmxBaseWorkChain.get_builder_from_protocol(openmx_code, corpus_structure("mp-22862"))
    results, node = run_get_node(builder)
    assert node.is_finished_ok
    calc = node.called[0]
    # every output is linked: those of the calculation and those the work chain exposes
    assert {"hamiltonian", "output_parameters", "remote_folder", "retrieved"} <= set(calc.outputs)
    assert {"hamiltonian", "output_parameters", "remote_folder", "retrieved"} <= set(node.outputs)
    assert node.outputs.hamiltonian.uuid == calc.outputs.hamiltonian.uuid
    # the calculation adds outputs at upload, retrieve and parse; the work chain once, in its results step
    assert calls.count("OpenmxCalculation") <= 4 and calls.count("OpenmxBaseWorkChain") <= 2, calls


def test_crash_twice_is_unrecoverable_with_the_reason(openmx_code):
    """A run killed mid-way (recorded: SIGKILL 12 s in) is resubmitted once; stopping early again ends the chain
    with a message that carries OpenMX's and the job's stderr's last words."""
    _, node = run_get_node(_base_from_calc_builder(si_failure_builder(openmx_code, 100), max_iterations=4))
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calcs] == [OpenmxCalculation.exit_codes.ERROR_NOT_NORMALLY_FINISHED.status] * 2
    assert node.exit_status == OpenmxBaseWorkChain.exit_codes.ERROR_UNRECOVERABLE_FAILURE.status
    assert "twice in a row" in node.exit_message and "stderr: REPLAY" in node.exit_message, node.exit_message
