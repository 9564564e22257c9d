"""DeepHTrainCalculation / DeepHTrainingWorkChain / dataset staging through the direct scheduler and a real Slurm.

The code is the ``aiida-deeph`` console script of this environment; the model is the ``tiny`` preset on
a handful of small corpus structures, so every job takes seconds. The Slurm tests follow the rule of
``tests/test_slurm.py``: skipped with the reason where no local Slurm runs, failed in CI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")


from .conftest import load_corpus  # noqa: E402

TRAIN_IDS = ("mp-134", "mp-92", "mp-1550", "mp-21", "mp-22297")
CONFIG = {"preset": "tiny", "model": {"num_gaussians": 16}, "train": {"max_epochs": 2}}


def _executable() -> str:
    path = Path(sys.executable).parent / "aiida-deeph"
    return str(path) if path.is_file() else shutil.which("aiida-deeph")


def _code(computer, label="aiida-deeph-train"):
    from aiida.common.exceptions import NotExistent
    from aiida.orm import InstalledCode, load_code

    try:
        return load_code(f"{label}@{computer.label}")
    except NotExistent:
        code = InstalledCode(label=label, computer=computer, filepath_executable=_executable(),
                             default_calc_job_plugin="deeph.train")
        code.prepend_text = "export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="
        return code.store()


@pytest.fixture(scope="module")
def hamiltonians(aiida_profile):
    from aiida_deeph.data.hamiltonian import HamiltonianData

    nodes = []
    for mp_id in TRAIN_IDS:
        packed = load_corpus(mp_id)
        packed.meta["mp_id"] = mp_id
        nodes.append(HamiltonianData(packed).store())
    return nodes



def _builder(code, config=None, settings=None, wall=300, **inputs):
    from aiida import orm

    builder = code.get_builder()
    builder.config = orm.Dict(config or CONFIG)
    if settings:
        builder.settings = orm.Dict(settings)
    builder.metadata.options.max_wallclock_seconds = wall
    for key, value in inputs.items():
        setattr(builder, key, value)
    return builder


def _ns(nodes):
    from aiida_deeph.calculations.train import hamiltonians_namespace

    return hamiltonians_namespace(nodes)


def _check_finished(node, results, epochs):
    from aiida_deeph.data.model import DeepHModelData

    assert node.is_finished_ok, (node.exit_status, node.exit_message,
                                 node.outputs.retrieved.base.repository.get_object_content("train.err")
                                 if "retrieved" in node.outputs else "")
    model = results["model"]
    assert isinstance(model, DeepHModelData)
    assert model.elements and model.base.attributes.get("num_parameters") > 0
    assert model.base.attributes.get("test_mae_meV") is not None
    assert model.base.attributes.get("stop_reason") == "epochs"
    metrics = results["metrics"].get_dict()
    assert metrics["completed"] and metrics["stop_reason"] == "epochs" and metrics["epochs"] == epochs
    assert metrics["test_mae_meV"] == pytest.approx(model.base.attributes.get("test_mae_meV"))
    curve = results["learning_curve"]
    assert list(curve.get_array("epoch")) == list(range(1, epochs + 1))
    assert np.all(np.isfinite(curve.get_array("val_mae_meV")))
    split = results["split"].get_dict()
    assert sum(len(split[k]) for k in ("train", "val", "test")) == len(TRAIN_IDS)
    assert "remote_folder" in results
    return model


def _local_computer(workdir):
    """The ``localhost`` computer of aiida's ``aiida_localhost`` fixture (get or create it, module scope)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.Computer.collection.get(label="localhost", hostname="localhost",
                                               scheduler_type="core.direct", transport_type="core.local")
    except NotExistent:
        computer = orm.Computer(label="localhost", hostname="localhost", workdir=str(workdir),
                                transport_type="core.local", scheduler_type="core.direct").store()
        computer.set_minimum_job_poll_interval(0)
        computer.set_default_mpiprocs_per_machine(1)
    if not computer.is_configured:
        computer.configure()
    return computer


@pytest.fixture(scope="module")
def trained(aiida_profile, hamiltonians, tmp_path_factory):
    """One training run through the direct scheduler (HamiltonianData packed at submission)."""
    from aiida.engine import run_get_node

    computer = _local_computer(tmp_path_factory.mktemp("work"))
    results, node = run_get_node(_builder(_code(computer), hamiltonians=_ns(hamiltonians)))
    return results, node


@pytest.fixture
def localhost(aiida_localhost):
    return aiida_localhost


def test_train_direct_scheduler(localhost, trained, tmp_path):
    results, node = trained
    assert node.computer.scheduler_type == "core.direct"
    model = _check_finished(node, results, epochs=2)
    # provenance: the HamiltonianData are inputs of the calculation, the model its output
    assert len(node.inputs.hamiltonians) == len(TRAIN_IDS)
    assert model.base.links.get_incoming().first().node.pk == node.pk
    assert model.base.attributes.get("basis")
    # the exported folder works with the command line outside AiiDA
    from aiida_deeph.io.dock import write_dock

    folder = model.export(tmp_path / "model")
    dock = tmp_path / "in" / "mp-1550"
    write_dock(load_corpus("mp-1550"), dock, include=("overlap",))
    proc = subprocess.run([_executable(), "predict", "--model", str(folder), "--input", str(dock),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "mp-1550" / "hamiltonian.h5").is_file()
    # latest.pt stays on the computer (the checkpoint store), best.pt is in the model node only
    assert (Path(node.outputs.remote_folder.get_remote_path()) / "model" / "latest.pt").is_file()
    assert "best.pt" not in node.outputs.retrieved.base.repository.list_object_names()


def test_command_line_and_multi_gpu_options(localhost, hamiltonians, tmp_path, monkeypatch):
    """dry run: torchrun launch for num_processes > 1 and the time budget from the walltime."""
    from aiida.engine import run_get_node

    monkeypatch.chdir(tmp_path)    # dry runs write ./submit_test/

    builder = _builder(_code(localhost), settings={"num_processes": 4}, wall=4 * 3600,
                       hamiltonians=_ns(hamiltonians[:2]))
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = Path(node.dry_run_info["folder"])
    script = (folder / "_aiidasubmit.sh").read_text()
    assert "'--nproc-per-node' '4'" in script
    assert f"'--max-minutes' '{(0.9 * 4 * 3600 - 300) / 60:g}'" in script
    assert "'--data' 'data'" in script and (folder / "data" / "shard-00000.h5").is_file()
    # a FolderData of shards is uploaded as `data/`; settings are checked
    from aiida import orm

    shards = orm.FolderData()
    shards.base.repository.put_object_from_file(str(folder / "data" / "shard-00000.h5"), "shard-00000.h5")
    builder = _builder(_code(localhost), settings={"max_minutes": 30}, dataset=shards)
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = Path(node.dry_run_info["folder"])
    assert (folder / "data" / "shard-00000.h5").is_file()
    assert "'--max-minutes' '30'" in (folder / "_aiidasubmit.sh").read_text()
    with pytest.raises(ValueError, match="num_processes"):
        _builder(_code(localhost), settings={"num_processes": 0}, dataset=shards)


def test_missing_data(localhost, tmp_path):
    from aiida import orm
    from aiida.engine import run_get_node

    empty = tmp_path / "empty-dataset"
    empty.mkdir()
    remote = orm.RemoteData(computer=localhost, remote_path=str(empty)).store()
    _, node = run_get_node(_builder(_code(localhost), dataset=remote))
    assert node.exit_status == node.process_class.exit_codes.ERROR_MISSING_DATA.status, node.exit_message
    assert "no DeepH-dock folders" in node.exit_message


def test_nan_loss(localhost, hamiltonians):
    from aiida.engine import run_get_node

    config = {"preset": "tiny", "train": {"max_epochs": 2, "lr": 1e30, "grad_clip": None}}
    _, node = run_get_node(_builder(_code(localhost), config=config, hamiltonians=_ns(hamiltonians[:3])))
    assert node.exit_status == node.process_class.exit_codes.ERROR_NAN_LOSS.status, node.exit_message
    assert "lower learning rate" in node.exit_message


def test_finetune_parent_model(localhost, trained):
    from aiida.engine import run_get_node

    from aiida_deeph.data.hamiltonian import HamiltonianData

    parent = trained[0]["model"]
    packed = load_corpus("mp-23193")   # KCl: elements the parent has not seen
    packed.meta["mp_id"] = "mp-23193"
    extra = [HamiltonianData(packed).store()]
    config = {"preset": "tiny", "train": {"max_epochs": 1}}
    results, node = run_get_node(_builder(_code(localhost), config=config, parent_model=parent,
                                          hamiltonians=_ns(extra)))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    child = results["model"]
    assert set(parent.elements) < set(child.elements)
    assert json.loads(child.base.repository.get_object_content("metadata.json"))["parent"] == "parent"


def test_walltime_restart_equals_uninterrupted_run(localhost, hamiltonians, tmp_path):
    """A job stopped by its budget (400, checkpointed) is resumed by the WorkChain to the same result as one
    uninterrupted run: same weights, same learning curve. The dataset is staged once and symlinked."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_deeph.ml.train import load_checkpoint
    from aiida_deeph.workflows.staging import stage_dataset
    from aiida_deeph.workflows.train import DeepHTrainingWorkChain

    remote = stage_dataset(hamiltonians, localhost, str(tmp_path / "staged"))
    assert stage_dataset(hamiltonians, localhost, str(tmp_path / "staged")).pk == remote.pk   # staged once
    creator = remote.creator
    assert creator is not None and len(creator.base.links.get_incoming().all()) == len(TRAIN_IDS) + 1
    config = {"preset": "tiny", "model": {"num_gaussians": 16}, "train": {"max_epochs": 4}}
    code = _code(localhost)

    straight, straight_node = run_get_node(_builder(code, config=config, dataset=remote))
    assert straight_node.is_finished_ok, straight_node.exit_message

    builder = DeepHTrainingWorkChain.get_builder()
    builder.train.code = code
    builder.train.config = orm.Dict(config)
    builder.train.settings = orm.Dict({"max_epochs_per_job": 2})   # a deterministic stand-in for the walltime
    builder.train.dataset = remote
    builder.train.metadata.options.max_wallclock_seconds = 300
    results, wc = run_get_node(builder)
    assert wc.is_finished_ok, (wc.exit_status, wc.exit_message)
    calcs = sorted(wc.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calcs] == [400, 0]
    assert calcs[0].exit_code.message.startswith("Stopped by the walltime")
    assert "model" in calcs[0].outputs                    # the best model so far is attached at 400
    assert calcs[1].inputs.restart_folder.pk == calcs[0].outputs.remote_folder.pk
    # symlinked, never copied
    workdir = Path(calcs[1].outputs.remote_folder.get_remote_path())
    assert (workdir / "data").is_symlink() and os.readlink(workdir / "data") == remote.get_remote_path()

    def best_state(model_node, where):
        model_node.export(where)
        return load_checkpoint(where / "best.pt")["model"]

    a = best_state(straight["model"], tmp_path / "a")
    b = best_state(results["model"], tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=0) for k in a)
    for key in ("epoch", "val_mae_meV", "train_loss", "lr"):
        assert np.array_equal(straight["learning_curve"].get_array(key), results["learning_curve"].get_array(key))
    assert straight["split"].get_dict() == results["split"].get_dict()
    assert results["metrics"]["test_mae_meV"] == straight["metrics"]["test_mae_meV"]


@pytest.mark.slurm
def test_train_through_slurm(slurm_computer, hamiltonians, tmp_path):
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.staging import stage_dataset

    remote = stage_dataset(hamiltonians, slurm_computer, str(tmp_path / "staged-slurm"))
    results, node = run_get_node(_builder(_code(slurm_computer), dataset=remote, wall=600))
    _check_finished(node, results, epochs=2)
    job_id = node.get_job_id()
    assert job_id and job_id.isdigit()
    info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    assert "JobState=COMPLETED" in info.stdout, info.stdout
    script = (Path(node.get_remote_workdir()) / "_aiidasubmit.sh").read_text()
    assert "#SBATCH --time=00:10:00" in script


@pytest.mark.slurm
def test_train_two_torchrun_agents_through_slurm(slurm_computer, hamiltonians, tmp_path):
    """More than one node: 2 Slurm tasks -> `aiida-deeph train --nnodes 2` -> srun starts 2 torchrun agents that
    meet at a c10d rendezvous (gloo, CPU; both tasks on the local node, as two nodes' agents would)."""
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.staging import stage_dataset

    remote = stage_dataset(hamiltonians, slurm_computer, str(tmp_path / "staged-2agents"))
    builder = _builder(_code(slurm_computer), dataset=remote, wall=600)
    builder.metadata.options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": 2}
    results, node = run_get_node(builder)
    _check_finished(node, results, epochs=2)
    script = (Path(node.get_remote_workdir()) / "_aiidasubmit.sh").read_text()
    assert "'--nnodes' '2'" in script
    out = node.outputs.retrieved.base.repository.get_object_content("train.log")
    assert "launching: srun --ntasks 2" in out and "--rdzv_backend c10d" in out
    assert "world 2" in out, out[-2000:]


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_walltime_kill_resumes(slurm_computer, hamiltonians, tmp_path):
    """Slurm kills the job at its 1-minute limit (no time budget: settings max_minutes 0): exit 400 from the
    scheduler's verdict and the checkpoint; a second job resumes from it."""
    from aiida.engine import run_get_node

    config = {"preset": "tiny", "model": {"num_gaussians": 16},
              "train": {"max_epochs": 100000, "lr_patience": 100000}}   # the schedule cannot end in a minute
    code = _code(slurm_computer)
    _, node = run_get_node(_builder(code, config=config, settings={"max_minutes": 0}, wall=60,
                                    hamiltonians=_ns(hamiltonians)))
    assert node.exit_status == 400, (node.exit_status, node.exit_message)
    assert "killed by the scheduler" in node.exit_message
    epochs = node.outputs.metrics["epochs"]
    assert epochs >= 1 and "model" in node.outputs
    config["train"]["max_epochs"] = epochs + 2
    results, second = run_get_node(_builder(code, config=config, wall=600, hamiltonians=_ns(hamiltonians),
                                            restart_folder=node.outputs.remote_folder))
    assert second.is_finished_ok, (second.exit_status, second.exit_message)
    assert list(results["learning_curve"].get_array("epoch"))[-3:] == [epochs, epochs + 1, epochs + 2]
    assert "resuming from epoch" in second.outputs.retrieved.base.repository.get_object_content("train.log")


def test_cli_status_and_exit_codes(tmp_path, monkeypatch):
    """`aiida-deeph train`: status.json and exit code 3 on a NaN loss, 4 on CUDA out of memory (no AiiDA)."""
    from aiida_deeph.cli.main import main
    from aiida_deeph.core.packed import write_packed

    data = tmp_path / "set.h5"
    write_packed(data, {m: load_corpus(m) for m in TRAIN_IDS[:3]})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"lr": 1e30, "grad_clip": None}}))
    out = tmp_path / "nan"
    assert main(["train", "--preset", "tiny", "--config", str(config), "--max-epochs", "2", "--data", str(data),
                 "--output", str(out)]) == 3
    status = json.loads((out / "status.json").read_text())
    assert status["stop_reason"] == "nan" and not status["completed"] and "learning rate" in status["message"]
    # missing data: one line, exit code 1
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "nothing"), "--output", str(out)]) == 1

    import aiida_deeph.ml.train as ml_train

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ml_train, "train", oom)
    out = tmp_path / "oom"
    out.mkdir()
    assert main(["train", "--preset", "tiny", "--data", str(data), "--output", str(out)]) == 4
    status = json.loads((out / "status.json").read_text())
    assert status["stop_reason"] == "oom" and "out of memory" in status["message"]
