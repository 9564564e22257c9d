"""Shared test helpers: location of ../shared, the OpenMX corpus, and AiiDA fixtures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep AiiDA's configuration out of the user's home during tests (and remove it when the run ends).
if "AIIDA_PATH" not in os.environ:
    import atexit
    import shutil

    os.environ["AIIDA_PATH"] = tempfile.mkdtemp(prefix="aiida-deeph-tests-")
    atexit.register(shutil.rmtree, os.environ["AIIDA_PATH"], True)


def shared_dir() -> Path:
    """The ``shared/`` folder beside the checkout (override with AIIDA_DEEPH_SHARED)."""
    env = os.environ.get("AIIDA_DEEPH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def corpus_dir() -> Path:
    return shared_dir() / "openmx-corpus"


def corpus_ids() -> list:
    root = corpus_dir()
    return sorted(p.name for p in root.iterdir() if (p / "openmx.scfout.xz").is_file()) if root.is_dir() else []


def corpus_ids_with_band() -> list:
    return [i for i in corpus_ids() if (corpus_dir() / i / "openmx.Band").is_file()]


@pytest.fixture(scope="session")
def shared():
    path = shared_dir()
    if not path.is_dir():
        pytest.fail(f"../shared not found at {path}: the tests need the shared corpus beside the checkout")
    return path


pytest_plugins = ["aiida.tools.pytest_fixtures"]


@pytest.fixture(scope="session")
def replay_executable(tmp_path_factory):
    """A stand-in `openmx` that replays the recorded runs of ../shared (corpus and failures)."""
    from aiida_deeph.replay.standin import write_replay_executable

    path = tmp_path_factory.mktemp("replay") / "openmx"
    return write_replay_executable(path, [corpus_dir(), shared_dir() / "openmx-failures"])


@pytest.fixture
def openmx_code(aiida_profile, aiida_localhost, replay_executable):
    """An InstalledCode on localhost running the replay stand-in (no MPI)."""
    from aiida.orm import InstalledCode, QueryBuilder

    label = "openmx-replay"
    existing = QueryBuilder().append(InstalledCode, filters={"label": label}).first(flat=True)
    if existing is not None:
        return existing
    code = InstalledCode(label=label, computer=aiida_localhost, filepath_executable=str(replay_executable),
                         default_calc_job_plugin="deeph.openmx")
    code.base.extras.set("openmx_data_path", "/nonexistent/DFT_DATA19")
    return code.store()


def corpus_structure(mp_id: str):
    """StructureData of a corpus run, exactly as computed (meta.json), with the MP id as extra."""
    import json

    from aiida.orm import StructureData
    from pymatgen.core import Structure

    meta = json.loads((corpus_dir() / mp_id / "meta.json").read_text())
    structure = StructureData(pymatgen=Structure.from_dict(meta["structure"]))
    structure.base.extras.set("mp_id", mp_id)
    return structure


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture
def slurm_computer(aiida_profile, tmp_path):
    """An AiiDA computer on the local single-node Slurm (scripts/slurm-local.sh); skipped with the reason
    where no Slurm runs, failed in CI (where it must run)."""
    from aiida_deeph.testing.slurm import setup_slurm_computer, slurm_available

    available, reason = slurm_available()
    if not available:
        if _in_ci():
            pytest.fail(f"CI requires the Slurm tests to run (scripts/slurm-local.sh as root): {reason}")
        pytest.skip(reason)
    return setup_slurm_computer(label="localhost-slurm", workdir=str(tmp_path / "slurm-work"))


# ---------------------------------------------------------------- helpers shared by several test modules
def load_corpus(mp_id: str):
    """The PackedHamiltonian of a corpus run (skips the test when the run is not there)."""
    from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout

    folder = corpus_dir() / mp_id
    if not folder.is_dir():
        pytest.skip(f"corpus structure {mp_id} not available")
    return scfout_to_packed(read_scfout(find_run_files(folder)["scfout"]))


def random_rotation(seed):
    """A random 3x3 rotation matrix (scipy), reproducible by seed."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


def si_failure_builder(code, maxiter, criterion="1.0e-10", basis_pao="Si7.0-s2p2d1"):
    """An OpenmxCalculation builder of Si whose recorded runs fail in known ways (../shared/openmx-failures)."""
    from aiida import orm
    from pymatgen.core import Lattice, Structure

    from aiida_deeph.calculations.openmx import OpenmxCalculation

    s = Structure(Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]), ["Si", "Si"],
                  [[0, 0, 0], [1.3575, 1.3575, 1.3575]], coords_are_cartesian=True)
    overrides = {"parameters": {"scf.maxIter": str(maxiter), "scf.criterion": criterion}}
    builder = OpenmxCalculation.get_builder_from_protocol(code, orm.StructureData(pymatgen=s), overrides=overrides)
    kp = orm.KpointsData()
    kp.set_kpoints_mesh([6, 6, 6])
    builder.kpoints = kp
    builder.basis = orm.Dict({"name": "test", "elements": {"Si": {"pao": basis_pao, "vps": "Si_PBE19", "valence": 4}}})
    builder.metadata.options.withmpi = False
    return builder
