"""OpenmxCalculation + OpenmxParser run through AiiDA for real against the replay stand-in."""
import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_deeph.calculations.openmx import OpenmxCalculation
from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.io.openmx import load_openmx_run

from .conftest import corpus_dir, corpus_structure, shared_dir, si_failure_builder


def test_protocol_run_produces_hamiltonian(openmx_code):
    structure = corpus_structure("mp-22862")  # NaCl
    builder = OpenmxCalculation.get_builder_from_protocol(openmx_code, structure, protocol="moderate")
    builder.metadata.options.withmpi = False
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    params = results["output_parameters"].get_dict()
    assert params["scf_converged"] is True and params["scf_steps"] > 3
    assert params["fermi_energy"] == pytest.approx(params["fermi_energy_hartree"] * 27.2113845)
    ham = results["hamiltonian"]
    assert isinstance(ham, HamiltonianData)
    attrs = ham.base.attributes.all
    assert attrs["formula"] == "NaCl"           # elements by electronegativity (pymatgen's order)
    assert attrs["mp_id"] == "mp-22862" and attrs["source"] == "DFT"
    assert attrs["basis"] == {"Cl": "Cl7.0-s2p2d1", "Na": "Na9.0-s3p2d1"} or attrs["basis"]["Na"] == "Na9.0-s3p2d1"
    assert "Cl-Na" in attrs["element_pairs"]
    # numbers are exactly the recorded OpenMX ones
    ref = load_openmx_run(corpus_dir() / "mp-22862")
    packed = ham.get_packed()
    assert np.array_equal(packed.atom_pairs, ref.atom_pairs)
    assert np.array_equal(packed.hamiltonian, ref.hamiltonian)
    assert np.array_equal(packed.overlap, ref.overlap)
    # the .scfout is not kept in the repository (parsed from the temporary retrieve folder)
    assert "aiida.scfout" not in node.outputs.retrieved.base.repository.list_object_names()
    # H(k) is Hermitian
    hk = ham.hk([0.1, 0.2, 0.3])
    assert np.abs(hk - hk.conj().T).max() < 1e-6  # OpenMX H(R) vs H(-R)^T agree to ~1e-9 eV


@pytest.mark.parametrize("case, maxiter, pao, exit_label", [
    ("scf-not-converged", 4, "Si7.0-s2p2d1", "ERROR_SCF_NOT_CONVERGED"),
    ("missing-pao", 100, "Si7.5-s2p2d1", "ERROR_MISSING_PSEUDO_FILE"),
    ("elpa-abort", 2, "Si7.0-s2p2d1", "ERROR_EIGENSOLVER_ABORT"),
    ("killed", 100, "Si7.0-s2p2d1", "ERROR_NOT_NORMALLY_FINISHED"),
])
def test_real_failures_give_exit_codes(openmx_code, case, maxiter, pao, exit_label):
    assert (shared_dir() / "openmx-failures" / case).is_dir()
    _, node = run_get_node(si_failure_builder(openmx_code, maxiter, basis_pao=pao))
    assert node.exit_status == OpenmxCalculation.exit_codes[exit_label].status, node.exit_message
    if case == "scf-not-converged":
        # outputs are still attached (for restarts), but flagged
        assert node.outputs.hamiltonian.base.attributes.get("scf_converged") is False
        assert node.outputs.output_parameters["scf_steps"] == 4


def test_bad_inputs_are_refused(openmx_code):
    from pymatgen.core import Lattice, Structure

    partial = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="partial occupancy"):
        OpenmxCalculation.get_builder_from_protocol(openmx_code, orm.StructureData(pymatgen=partial))
    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    builder = OpenmxCalculation.get_builder_from_protocol(openmx_code, orm.StructureData(pymatgen=fe))
    with pytest.raises(ValueError, match="Fe have no basis"):
        run_get_node(builder)


def test_position_matrix_setting_stores_openmx_olppo(openmx_code):
    """settings {'position_matrix': True}: the HamiltonianData holds OpenMX's <i|r|j> (what compute_optics needs)."""
    structure = corpus_structure("mp-1550")  # AlP
    builder = OpenmxCalculation.get_builder_from_protocol(openmx_code, structure, protocol="moderate")
    builder.metadata.options.withmpi = False
    builder.settings = orm.Dict({"position_matrix": True})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    ham = results["hamiltonian"]
    assert ham.base.attributes.get("has_position_matrix") is True
    ref = load_openmx_run(corpus_dir() / "mp-1550", load_position_matrix=True)
    assert np.array_equal(ham.get_packed(load=("position_matrix",)).position_matrix, ref.position_matrix)


def test_unknown_protocol_override_keys_are_refused(openmx_code):
    from aiida_deeph.workflows.openmx_base import OpenmxBaseWorkChain

    structure = corpus_structure("mp-22862")
    with pytest.raises(ValueError, match="unknown protocol override key.*'kpoint_spacing'.*parameters"):
        OpenmxCalculation.get_builder_from_protocol(openmx_code, structure, overrides={"kpoint_spacing": 0.2})
    with pytest.raises(ValueError, match="unknown override key.*'maxiterations'"):
        OpenmxBaseWorkChain.get_builder_from_protocol(openmx_code, structure, overrides={"maxiterations": 2})
    builder = OpenmxBaseWorkChain.get_builder_from_protocol(
        openmx_code, structure, overrides={"max_iterations": 2, "openmx": {"kpoints_spacing": 0.5}})
    assert builder.max_iterations.value == 2
