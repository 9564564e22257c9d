"""The real OpenMX 3.9 through AiiDA (marker ``real_openmx``; built by scripts/install-openmx.sh).

Found by the install script's own rule (OPENMX_EXECUTABLE/OPENMX_DATA_PATH, else its cache); skipped with
the reason where there is none, and failed in CI, where scripts/test.sh builds it first. Small cells and
the ``fast`` protocol keep these to about two minutes on 2 cores.
"""
from __future__ import annotations

import shutil
import stat

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_deeph.calculations.openmx import OpenmxCalculation, flatten_keywords
from aiida_deeph.workflows.openmx_base import OpenmxBaseWorkChain

from .conftest import _in_ci

pytestmark = pytest.mark.real_openmx


@pytest.fixture(scope="session")
def openmx_install():
    from aiida_deeph.io.openmx_install import locate_openmx

    install, why = locate_openmx()
    if install is None:
        if _in_ci():
            pytest.fail(f"CI requires the real OpenMX (scripts/install-openmx.sh): {why}")
        pytest.skip(why)
    return install


def _code(computer, install, label, executable=None, data_path=None):
    from aiida_deeph.cli.setup import setup_openmx_code

    code, _ = setup_openmx_code(executable or install.executable, data_path or install.data_path, label=label,
                                computer=computer.label)
    return code


@pytest.fixture
def real_code(aiida_profile, aiida_localhost, openmx_install):
    return _code(aiida_localhost, openmx_install, "openmx-real")


def _structure(name):
    from pymatgen.core import Lattice, Structure

    if name == "Li":  # bcc Li, 1 atom: the quickest real run (about 14 s with `fast`)
        a = 1.72
        s = Structure(Lattice([[-a, a, a], [a, -a, a], [a, a, -a]]), ["Li"], [[0, 0, 0]])
    elif name == "Al":  # fcc Al, 1 atom
        a = 2.02
        s = Structure(Lattice([[0, a, a], [a, 0, a], [a, a, 0]]), ["Al"], [[0, 0, 0]])
    elif name == "Si":  # diamond Si, 2 atoms
        a = 2.715
        s = Structure(Lattice([[0, a, a], [a, 0, a], [a, a, 0]]), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    else:
        raise KeyError(name)
    return orm.StructureData(pymatgen=s)


def _builder(code, name, protocol="fast", overrides=None, band=False, mpiprocs=1):
    builder = OpenmxCalculation.get_builder_from_protocol(code, _structure(name), protocol=protocol, overrides=overrides)
    if band:
        builder.settings = orm.Dict({"band_kpath": True})
    builder.metadata.options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": mpiprocs}
    builder.metadata.options.withmpi = mpiprocs > 1
    return builder


_RUNS: dict = {}


def _li_fast(code, mpiprocs=1):
    """One real run per rank count, shared by the tests of this module."""
    if mpiprocs not in _RUNS:
        _RUNS[mpiprocs] = run_get_node(_builder(code, "Li", band=True, mpiprocs=mpiprocs))[1]
    return _RUNS[mpiprocs]


def test_fast_calculation_reproduces_its_own_bands(real_code):
    from aiida_deeph.physics.bands import band_energies

    node = _li_fast(real_code)
    assert node.is_finished_ok, node.exit_message
    params = node.outputs.output_parameters.get_dict()
    assert params["scf_converged"] is True and params["scf_steps"] > 1
    assert params["timings"] and all(v >= 0 for v in params["timings"].values())
    ham = node.outputs.hamiltonian
    assert ham.base.attributes.get("scf_converged") is True
    # H and S parsed from the .scfout give the .Band eigenvalues that OpenMX itself computed
    bands = node.outputs.band_structure
    kpoints = bands.get_kpoints()
    ref = bands.get_bands()
    ours = band_energies(ham.get_packed(), kpoints, threads=1).eigenvalues[:, :ref.shape[1]]
    assert np.abs(ours - ref).max() < 1e-4
    assert abs(bands.base.attributes.get("fermi_energy") - params["fermi_energy"]) < 1e-6


def test_overlap_only_protocol_gives_the_pao_overlap(real_code, openmx_install):
    """One SCF step is enough for S: it equals S computed from the PAO files (atom pairs, order, values)."""
    from pathlib import Path

    from aiida_deeph.overlap.compute import compute_overlap

    _, node = run_get_node(_builder(real_code, "Si", protocol="overlap_only"))
    assert node.exit_status in (0, OpenmxCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status), node.exit_message
    assert node.outputs.output_parameters["scf_steps"] == 1
    ref = node.outputs.hamiltonian.get_packed(load=("overlap",))
    got = compute_overlap(ref.cell, ref.positions, ref.species, basis_table="corpus",
                          pao_dir=Path(openmx_install.data_path) / "PAO")
    assert np.array_equal(got.atom_pairs, ref.atom_pairs) and np.array_equal(got.offsets, ref.offsets)
    assert np.abs(got.overlap - ref.overlap).max() < 1e-6


def test_scf_not_converged_then_restarts_converge(real_code):
    """scf.maxIter 3: the first run ends 410 with outputs attached; the base work chain's restarts
    (halved mixing, doubled maxIter, restart from the density) end converged."""
    calc = _builder(real_code, "Al", overrides={"parameters": {"scf.maxIter": "3"}})
    builder = OpenmxBaseWorkChain.get_builder()
    builder.openmx = calc._inputs(prune=True)
    builder.max_iterations = orm.Int(5)
    results, node = run_get_node(builder)
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert calcs[0].exit_status == OpenmxCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    assert calcs[0].outputs.hamiltonian.base.attributes.get("scf_converged") is False
    assert flatten_keywords(calcs[1].inputs.parameters.get_dict())["scf.restart"] == "on"
    assert node.is_finished_ok, node.exit_message
    assert len(calcs) >= 2 and calcs[-1].is_finished_ok
    assert results["output_parameters"]["scf_converged"] is True


@pytest.mark.parametrize("missing", ["PAO", "VPS"])
def test_missing_basis_file_gives_320(aiida_localhost, openmx_install, tmp_path, missing):
    """A DATA.PATH without Li's PAO (or VPS) file: OpenMX stops (and exits 0); the parser says 320."""
    data = tmp_path / "DFT_DATA19"
    shutil.copytree(openmx_install.data_path, data)
    for f in (data / missing).glob("Li*"):
        f.unlink()
    code = _code(aiida_localhost, openmx_install, f"openmx-no-{missing.lower()}", data_path=str(data))
    _, node = run_get_node(_builder(code, "Li"))
    assert node.exit_status == OpenmxCalculation.exit_codes.ERROR_MISSING_PSEUDO_FILE.status, node.exit_message
    assert "Li" in node.exit_message
    assert "hamiltonian" not in node.outputs


def test_killed_run_gives_340(aiida_localhost, openmx_install, tmp_path):
    """A real run killed (SIGKILL, as a scheduler does) a few seconds in: 340, nothing half-stored."""
    wrapper = tmp_path / "openmx-killed"
    wrapper.write_text(f'#!/bin/bash\nexec timeout -s KILL 4 {openmx_install.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    code = _code(aiida_localhost, openmx_install, "openmx-killed", executable=str(wrapper))
    _, node = run_get_node(_builder(code, "Li"))
    assert node.exit_status == OpenmxCalculation.exit_codes.ERROR_NOT_NORMALLY_FINISHED.status, node.exit_message
    assert "hamiltonian" not in node.outputs


def test_database_workchain_with_the_real_code(real_code):
    from aiida_deeph.workflows.database import DatabaseWorkChain

    label = "test-db-real-openmx"
    inputs = {"code": real_code, "source": orm.Str("snapshot"), "limit": orm.Int(2), "protocol": orm.Str("fast"),
              "group_label": orm.Str(label), "max_concurrent": orm.Int(2)}
    results, node = run_get_node(DatabaseWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    summary = results["summary"].get_dict()
    assert summary["num_done"] == 2 and summary["num_failed"] == 0, summary
    group = orm.load_group(label)
    assert group.count() == 2
    for ham in group.nodes:
        assert ham.base.attributes.get("scf_converged") is True
        assert ham.creator.process_class is OpenmxCalculation
    ncalc = orm.QueryBuilder().append(OpenmxCalculation).count()
    _, again = run_get_node(DatabaseWorkChain, **inputs)
    assert again.is_finished_ok, again.exit_message
    assert orm.QueryBuilder().append(OpenmxCalculation).count() == ncalc
    assert orm.load_group(label).count() == 2


def test_two_mpi_ranks_give_the_same_hamiltonian(real_code):
    """The same run on 2 ranks: S identical to 1e-12; H within 1e-6 eV. Measured: 1.4e-13 eV (bcc Li, `fast`;
    the ranks only sum in another order). The bound is what the SCF criterion (1e-6 Ha on NormRD) could allow
    when a different summation order changed the SCF path, not what one run needs."""
    one, two = _li_fast(real_code, 1), _li_fast(real_code, 2)
    assert one.is_finished_ok and two.is_finished_ok, (one.exit_message, two.exit_message)
    a = one.outputs.hamiltonian.get_packed()
    b = two.outputs.hamiltonian.get_packed()
    assert np.array_equal(a.atom_pairs, b.atom_pairs)
    assert np.abs(a.overlap - b.overlap).max() < 1e-12
    dh = np.abs(a.hamiltonian - b.hamiltonian).max()
    print(f"max |dH| {dh:.2e} eV between 1 and 2 ranks")
    assert dh < 1e-6, f"max |dH| {dh:.2e} eV between 1 and 2 ranks"
    assert "using 2 MPI processes" in two.outputs.retrieved.base.repository.get_object_content("aiida.out")
    assert "mpirun -np 2" in two.base.repository.get_object_content("_aiidasubmit.sh").replace("'", "")
