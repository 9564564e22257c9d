"""``compute_overlap_node``: the overlap HamiltonianData of a StructureData from the PAO files, in AiiDA."""
from __future__ import annotations

import numpy as np
import pytest

from aiida_deeph.io.openmx import load_openmx_run

from .conftest import corpus_dir, corpus_ids, corpus_structure, shared_dir

PAO_DIR = shared_dir() / "openmx-data" / "PAO"

pytestmark = pytest.mark.skipif(not PAO_DIR.is_dir() or not corpus_ids(), reason="shared PAO files / corpus not found")


@pytest.mark.parametrize("mp_id", ["mp-2534", "mp-1943"])
def test_overlap_node_equals_openmx(aiida_profile, mp_id):
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.workflows.overlap import compute_overlap_node

    structure = corpus_structure(mp_id).store()
    node, process = compute_overlap_node.run_get_node(structure=structure, pao_dir=orm.Str(str(PAO_DIR)))
    assert process.is_finished_ok, process.exit_message
    assert isinstance(node, HamiltonianData) and node.is_stored
    attrs = node.base.attributes
    assert attrs.get("source") == "PAO overlap"
    assert attrs.get("has_overlap") and not attrs.get("has_hamiltonian")
    assert attrs.get("mp_id") == mp_id and attrs.get("structure_uuid") == structure.uuid
    # provenance: the structure and the PAO folder are the calcfunction's inputs
    inputs = {link.link_label: link.node for link in process.base.links.get_incoming().all()}
    assert inputs["structure"].uuid == structure.uuid and inputs["pao_dir"].value == str(PAO_DIR)

    ref = load_openmx_run(corpus_dir() / mp_id).sorted()
    got = node.get_packed()
    assert got.hamiltonian is None
    assert got.species == ref.species and np.allclose(got.positions, ref.positions, atol=1e-6)
    assert np.array_equal(got.atom_pairs, ref.atom_pairs)
    assert np.array_equal(got.offsets, ref.offsets)
    assert np.abs(got.overlap - ref.overlap).max() < 1e-6
    assert attrs.get("num_electrons") == pytest.approx(ref.num_electrons)
    assert attrs.get("basis") == ref.meta.get("basis", attrs.get("basis"))


def test_overlap_node_with_basis_dict_and_bad_input(aiida_profile):
    from aiida import orm

    from aiida_deeph.core.basis import load_basis_table
    from aiida_deeph.workflows.overlap import EXIT_BAD_INPUT, compute_overlap_node

    structure = corpus_structure("mp-2534").store()
    table = load_basis_table("corpus")
    basis = orm.Dict({"name": table.name, "elements": table.elements})
    node, process = compute_overlap_node.run_get_node(structure=structure, pao_dir=orm.Str(str(PAO_DIR)), basis=basis)
    assert process.is_finished_ok
    assert node.base.attributes.get("basis") == {el: table.elements[el]["pao"] for el in ("Ga", "As")}

    # an element without a basis: a clean exit code with a one-line message, not an exception
    only_ga = orm.Dict({"name": "ga-only", "elements": {"Ga": table.elements["Ga"]}})
    _, process = compute_overlap_node.run_get_node(structure=structure, pao_dir=orm.Str(str(PAO_DIR)), basis=only_ga)
    assert process.exit_status == EXIT_BAD_INPUT and "As" in process.exit_message
    _, process = compute_overlap_node.run_get_node(structure=structure, pao_dir=orm.Str("/nonexistent/PAO"))
    assert process.exit_status == EXIT_BAD_INPUT and "\n" not in process.exit_message
