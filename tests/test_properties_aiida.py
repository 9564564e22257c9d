"""The property calcfunctions on stored HamiltonianData: XyData outputs and provenance (issue 14, item 5 part)."""
from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.io.openmx import load_openmx_run
from aiida_deeph.workflows.properties import compute_dos, compute_optics

from .conftest import corpus_dir


def test_dos_and_optics_calcfunctions(aiida_profile):
    node = HamiltonianData(load_openmx_run(corpus_dir() / "mp-1550", load_position_matrix=True)).store()
    assert node.base.attributes.get("has_position_matrix") is True
    out = compute_dos(node, orm.Dict({"mesh": [4, 4, 4], "sigma": 0.2}))
    x_name, x, _ = out["dos"].get_x()
    ys = {name: values for name, values, _ in out["dos"].get_y()}
    assert x_name == "energy" and {"total", "Al_s", "P_p"} <= set(ys)
    np.testing.assert_allclose(sum(v for k, v in ys.items() if k != "total"), ys["total"], atol=1e-9)
    assert out["summary"]["method"] == "gaussian"
    assert out["dos"].creator.process_label == "compute_dos"
    chi = compute_optics(node, orm.Dict({"mesh": [4, 4, 4], "num_omega": 21}))
    assert 6.0 < chi["static"]["eps_inf"] < 15.0
    assert len(chi["chi"].get_y()) == 6


def test_property_calcfunctions_refuse_bad_parameters(aiida_profile):
    node = HamiltonianData(load_openmx_run(corpus_dir() / "mp-1550")).store()
    with pytest.raises(ValueError, match="unknown parameter"):
        compute_dos(node, orm.Dict({"meshh": [2, 2, 2]}))
    with pytest.raises(ValueError, match="no position matrix"):
        compute_optics(node, orm.Dict({"mesh": [2, 2, 2]}))


# ====================================================================== DeepHPropertiesWorkChain, given H
def _shifted(packed, shift_eV):
    """H + c S: every eigenvalue moves by c, so every property relative to E_F is unchanged."""
    import copy

    out = copy.copy(packed)
    out.hamiltonian = packed.hamiltonian + shift_eV * packed.overlap
    out.meta = dict(packed.meta, source="model")
    return out


SMALL = {"dos_parameters": {"mesh": [4, 4, 4], "sigma": 0.2}, "optics_parameters": {"mesh": [4, 4, 4], "num_omega": 41}}


def _kpath():
    kp = orm.KpointsData()
    kp.set_kpoints([[0, 0, 0], [0.25, 0, 0.25], [0.5, 0, 0.5], [0.5, 0.25, 0.75]])
    kp.labels = [(0, "G"), (2, "X"), (3, "W")]
    return kp


def test_properties_workchain_of_a_rigidly_shifted_hamiltonian(aiida_profile):
    """A DFT H shifted by 0.3 eV x S against the DFT H itself: bands, gap, DOS and eps_inf relative to E_F equal
    the reference's (errors ~0), E_F moves by 0.3 eV; the chain's nodes are all in the graph."""
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.properties import DeepHPropertiesWorkChain

    packed = load_openmx_run(corpus_dir() / "mp-1550", load_position_matrix=True)   # AlP, an insulator
    dft = HamiltonianData(packed).store()
    shifted = HamiltonianData(_shifted(packed, 0.3)).store()
    results, node = run_get_node(DeepHPropertiesWorkChain, hamiltonian=shifted, reference=dft, kpoints=_kpath(),
                                 dos_parameters=orm.Dict(SMALL["dos_parameters"]),
                                 optics_parameters=orm.Dict(SMALL["optics_parameters"]))
    assert node.is_finished_ok, node.exit_message
    for key in ("bands", "band_summary", "dos", "dos_summary", "dos_plot", "chi", "optics", "chi_plot", "band_errors",
                "comparison_plot", "summary"):
        assert key in results, key
    assert {"bands", "band_summary", "dos", "dos_summary", "chi", "optics"} <= set(results["reference_properties"])
    s = results["summary"].get_dict()
    ref = s["reference"]
    assert s["fermi_energy_eV"] - ref["fermi_energy_eV"] == pytest.approx(0.3, abs=1e-6)
    assert s["band_gap_eV"] == pytest.approx(ref["band_gap_eV"], abs=1e-6) and ref["band_gap_eV"] > 1.0
    assert s["eps_inf"] == pytest.approx(ref["eps_inf"], rel=1e-8) and 5.0 < ref["eps_inf"] < 15.0
    c = s["comparison"]
    assert c["band_mae_meV"] < 1e-3 and abs(c["gap_error_meV"]) < 1e-3 and abs(c["eps_inf_error"]) < 1e-6
    assert c["dos_relative_l1"] < 1e-3 and c["metal_agreement"] is True
    # the DOS is the same function of E - E_F; summary values agree with the nodes
    ys = {n: v for n, v, _ in results["dos"].get_y()}
    _, x, _ = results["dos"].get_x()
    assert s["dos_at_fermi"] == pytest.approx(float(np.interp(s["dos_fermi_energy_eV"], x, ys["total"])))
    assert results["optics"]["eps_inf"] == s["eps_inf"]
    for key in ("dos_plot", "chi_plot", "comparison_plot"):
        with results[key].open(mode="rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert results["summary"].creator.process_label == "summarize_properties"
    assert results["kpoints"].pk == node.inputs.kpoints.pk


def test_properties_workchain_skips_optics_with_the_reason(aiida_profile):
    """No position matrix: DOS and bands, optics skipped with how to get P; a metal (Cu): skipped as a metal."""
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.properties import DeepHPropertiesWorkChain

    no_p = HamiltonianData(load_openmx_run(corpus_dir() / "mp-1550")).store()
    results, node = run_get_node(DeepHPropertiesWorkChain, hamiltonian=no_p, kpoints=_kpath(),
                                 dos_parameters=orm.Dict(SMALL["dos_parameters"]))
    assert node.is_finished_ok, node.exit_message
    assert "chi" not in results and "no position matrix" in results["summary"]["optics"]
    assert "--position-matrix" in results["summary"]["optics"]
    copper = HamiltonianData(load_openmx_run(corpus_dir() / "mp-30", load_position_matrix=True)).store()
    results, node = run_get_node(DeepHPropertiesWorkChain, hamiltonian=copper, kpoints=_kpath(),
                                 dos_parameters=orm.Dict(SMALL["dos_parameters"]))
    assert node.is_finished_ok, node.exit_message
    assert results["summary"]["is_metal"] and "metal" in results["summary"]["optics"] and "chi" not in results
    assert results["summary"]["dos_at_fermi"] > 0.1          # a metal has states at E_F


def test_properties_workchain_refuses_bad_input(aiida_profile):
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.properties import DeepHPropertiesWorkChain

    alp = HamiltonianData(load_openmx_run(corpus_dir() / "mp-1550")).store()
    with pytest.raises(ValueError, match="give either 'hamiltonian'"):
        run_get_node(DeepHPropertiesWorkChain)
    with pytest.raises(ValueError, match="dos_parameters: unknown parameter"):
        run_get_node(DeepHPropertiesWorkChain, hamiltonian=alp, dos_parameters=orm.Dict({"sgima": 0.1}))
    nacl = HamiltonianData(load_openmx_run(corpus_dir() / "mp-22862")).store()
    _, node = run_get_node(DeepHPropertiesWorkChain, hamiltonian=alp, reference=nacl)
    assert node.exit_status == DeepHPropertiesWorkChain.exit_codes.ERROR_STRUCTURE_MISMATCH.status
    assert "does not match" in node.exit_message
