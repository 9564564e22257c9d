"""DeepHInferCalculation and DeepHBandsWorkChain on localhost (direct scheduler, real `aiida-deeph predict`).

A tiny model is trained here on one corpus structure (NaCl) for a few epochs: the tests check the
plumbing and the numbers against independent computations, not the model's accuracy.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from .conftest import corpus_structure, load_corpus

TRAIN_ID = "mp-22862"   # NaCl: in the model
OTHER_ID = "mp-23251"   # KBr: elements unknown to the model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from aiida_deeph.core.packed import write_packed
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.train import TrainConfig, train

    root = tmp_path_factory.mktemp("model")
    write_packed(root / "data.h5", {TRAIN_ID: load_corpus(TRAIN_ID)})
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train([root / "data.h5"], root / "m", model_config=ModelConfig.preset("tiny", num_gaussians=16),
              train_config=TrainConfig.preset("tiny", max_epochs=3), log=lambda _m: None)
    finally:
        torch.set_num_threads(old)
    return root / "m"


@pytest.fixture
def model_node(aiida_profile, model_dir):
    from aiida_deeph.data.model import DeepHModelData

    return DeepHModelData(model_dir).store()


@pytest.fixture
def deeph_code(aiida_profile, aiida_localhost):
    from aiida.orm import InstalledCode, QueryBuilder

    label = "aiida-deeph-test"
    existing = QueryBuilder().append(InstalledCode, filters={"label": label}).first(flat=True)
    if existing is not None:
        return existing
    exe = Path(sys.executable).parent / "aiida-deeph"
    if not exe.is_file():
        exe = Path(shutil.which("aiida-deeph") or "aiida-deeph")
    code = InstalledCode(label=label, computer=aiida_localhost, filepath_executable=str(exe),
                         default_calc_job_plugin="deeph.infer")
    code.prepend_text = "export OMP_NUM_THREADS=1"
    return code.store()


def dft_node(mp_id):
    from aiida_deeph.data.hamiltonian import HamiltonianData

    packed = load_corpus(mp_id)
    packed.meta["mp_id"] = mp_id
    return HamiltonianData(packed).store()


def dense_k(packed, k, which):
    """H(k) or S(k) built block by block (independent of PackedHamiltonian.matrix_at_k)."""
    norb = packed.norb_per_atom
    first = np.concatenate([[0], np.cumsum(norb)])
    out = np.zeros((first[-1], first[-1]), dtype=complex)
    for p, (r1, r2, r3, i, j) in enumerate(packed.atom_pairs.tolist()):
        phase = np.exp(2j * np.pi * np.dot(k, (r1, r2, r3)))
        out[first[i]:first[i + 1], first[j]:first[j + 1]] += phase * packed.block(p, which)
    return 0.5 * (out + out.conj().T)


def eigenvalues(packed, kpoints):
    import scipy.linalg

    return np.array([scipy.linalg.eigh(dense_k(packed, k, "hamiltonian"), dense_k(packed, k, "overlap"),
                                       eigvals_only=True) for k in kpoints])


# ====================================================================== DeepHInferCalculation
def test_infer_calculation(model_node, model_dir, deeph_code):
    from aiida.engine import run_get_node

    from aiida_deeph.calculations.infer import DeepHInferCalculation
    from aiida_deeph.ml.predict import predict_hamiltonian
    from aiida_deeph.ml.train import load_model

    overlap = dft_node(TRAIN_ID)
    results, node = run_get_node(DeepHInferCalculation, code=deeph_code, model=model_node,
                                 overlaps={"nacl": overlap})
    assert node.is_finished_ok, node.exit_message
    pred = results["hamiltonians"]["nacl"]
    assert pred.source == "model"
    assert pred.base.attributes.get("model_uuid") == model_node.uuid
    assert pred.fermi_energy is None            # the DFT Fermi level is not copied onto the prediction
    # provenance: model -> calc -> predicted H
    assert pred.creator.pk == node.pk
    assert node.inputs.model.pk == model_node.pk
    # the sandbox got S only: no DFT H for the model to peek at
    remote = Path(node.outputs.remote_folder.get_remote_path())
    assert (remote / "inputs" / "nacl" / "overlap.h5").is_file()
    assert not (remote / "inputs" / "nacl" / "hamiltonian.h5").exists()
    # same pairs and S as the input; H equal to an in-process prediction
    a = pred.get_packed()
    b = overlap.get_packed()
    assert np.array_equal(a.atom_pairs, b.atom_pairs)
    np.testing.assert_allclose(a.overlap, b.overlap, atol=1e-12)
    model = load_model(model_dir)
    model.eval()
    ref = predict_hamiltonian(model, overlap.get_packed(load=("overlap",)))
    np.testing.assert_allclose(a.hamiltonian, ref.hamiltonian, atol=1e-5)
    assert not np.allclose(a.hamiltonian, b.hamiltonian, atol=1e-3)   # a 3-epoch model is not DFT


def test_infer_refuses_unknown_element(model_node, deeph_code):
    from aiida.engine import run

    from aiida_deeph.calculations.infer import DeepHInferCalculation

    with pytest.raises(ValueError, match=r"element\(s\) Br, K .*not known to the model"):
        run(DeepHInferCalculation, code=deeph_code, model=model_node, overlaps={"kbr": dft_node(OTHER_ID)})


def test_infer_parser_maps_predict_refusal(model_dir, deeph_code, tmp_path, aiida_profile):
    """A model whose metadata claims K and Br passes the pre-check; predict refuses: ERROR_INCOMPATIBLE_MODEL."""
    from aiida.engine import run_get_node

    from aiida_deeph.calculations.infer import DeepHInferCalculation
    from aiida_deeph.data.model import DeepHModelData

    fake = tmp_path / "m"
    shutil.copytree(model_dir, fake)
    meta = json.loads((fake / "metadata.json").read_text())
    kbr = load_corpus(OTHER_ID)
    meta["elements"] = sorted(set(meta["elements"]) | {"K", "Br"})
    meta["orbital_ls"] = dict(meta["orbital_ls"], **{el: kbr.orbital_ls[el] for el in ("K", "Br")})
    (fake / "metadata.json").write_text(json.dumps(meta))
    model = DeepHModelData(fake).store()
    _, node = run_get_node(DeepHInferCalculation, code=deeph_code, model=model, overlaps={"kbr": dft_node(OTHER_ID)})
    assert node.exit_status == DeepHInferCalculation.exit_codes.ERROR_INCOMPATIBLE_MODEL.status
    assert "not known to this model" in node.exit_message


def test_classify_stderr():
    from aiida_deeph.parsers.infer import classify_stderr

    assert classify_stderr("") == (None, "")
    kind, detail = classify_stderr("aiida-deeph predict: error: element K is not known to this model (trained on Na)")
    assert kind == "incompatible" and detail.startswith("element K")
    assert classify_stderr("aiida-deeph predict: error: the model produced non-finite values")[0] == "non_finite"
    assert classify_stderr("torch.OutOfMemoryError: CUDA out of memory. Tried")[0] == "cuda_oom"
    assert classify_stderr("aiida-deeph predict: error: boom")[0] == "failed"


# ====================================================================== DeepHBandsWorkChain
def test_bands_workchain_with_reference(model_node, deeph_code):
    from aiida.engine import run_get_node
    from aiida.orm import CalcFunctionNode

    from aiida_deeph.physics.compare import band_errors
    from aiida_deeph.workflows.bands import DeepHBandsWorkChain

    structure = corpus_structure(TRAIN_ID).store()
    dft = dft_node(TRAIN_ID)
    results, node = run_get_node(DeepHBandsWorkChain, structure=structure, model=model_node, infer_code=deeph_code,
                                 overlap=dft, reference=dft)
    assert node.is_finished_ok, node.exit_message
    for key in ("bands", "band_summary", "hamiltonian", "kpoints", "reference_bands", "band_errors",
                "comparison_plot"):
        assert key in results, key
    bands, kpoints = results["bands"], results["kpoints"]
    pred, ref = results["hamiltonian"].get_packed(), dft.get_packed()
    k = kpoints.get_kpoints()
    assert bands.get_bands().shape == (len(k), pred.num_orbitals)
    assert bands.base.attributes.get("fermi_energy") == results["band_summary"]["fermi_energy_eV"]
    assert bands.labels and bands.labels[0][1] in ("GAMMA", "G", "Γ")
    # the k-path was made by a calcfunction from this structure (in the graph)
    creator = kpoints.creator
    assert isinstance(creator, CalcFunctionNode) and creator.process_label == "seekpath_kpoints"
    assert creator.inputs.structure.pk == structure.pk
    # the reference (electron count 16, OpenMX mesh, 300 K): an insulator whose gap holds both our Fermi
    # level and OpenMX's own (inside a gap the level is not unique)
    ref_sum = results["reference_summary"].get_dict()
    assert ref_sum["num_electrons"] == 16.0
    assert ref_sum["band_gap_eV"] > 3.0 and not ref_sum["is_metal"]
    assert ref_sum["vbm_eV"] < ref_sum["fermi_energy_eV"] < ref_sum["cbm_eV"]
    assert ref_sum["vbm_eV"] < dft.fermi_energy < ref_sum["cbm_eV"]
    midgap = 0.5 * (ref_sum["vbm_eV"] + ref_sum["cbm_eV"])
    assert abs(ref_sum["fermi_energy_eV"] - midgap) < 0.1      # intrinsic level: near mid-gap

    # independent band errors: scipy at the same k-points, each set aligned to its own Fermi level
    ef_p = results["band_summary"]["fermi_energy_eV"]
    ef_r = ref_sum["fermi_energy_eV"]
    e_pred = eigenvalues(pred, k) - ef_p
    e_ref = eigenvalues(ref, k) - ef_r
    np.testing.assert_allclose(bands.get_bands() - ef_p, e_pred, atol=1e-6)
    mask = np.abs(e_ref) <= 3.0
    mae = float(np.mean(np.abs(e_pred - e_ref)[mask]) * 1000.0)
    errors = results["band_errors"].get_dict()
    assert errors["num_values"] == int(mask.sum()) > 0
    assert errors["mae_meV"] == pytest.approx(mae, rel=1e-6)
    assert errors["mae_meV"] > 1.0      # a 3-epoch model: the comparison cannot be trivially zero
    gap_err = (results["band_summary"]["band_gap_eV"] - ref_sum["band_gap_eV"]) * 1000.0
    assert errors["gap_error_meV"] == pytest.approx(gap_err)
    # the same routine on DFT vs DFT gives zero
    assert band_errors(e_ref, e_ref, 0.0, 0.0)["mae_meV"] == 0.0
    with results["comparison_plot"].open(mode="rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bands_workchain_explicit_kpoints(model_node, deeph_code):
    from aiida.engine import run_get_node
    from aiida.orm import KpointsData

    from aiida_deeph.workflows.bands import DeepHBandsWorkChain

    structure = corpus_structure(TRAIN_ID).store()
    kp = KpointsData()
    kp.set_cell(structure.cell)
    kp.set_kpoints([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5]])
    kp.labels = [(0, "G"), (2, "X"), (4, "R")]
    results, node = run_get_node(DeepHBandsWorkChain, structure=structure, model=model_node, infer_code=deeph_code,
                                 overlap=dft_node(TRAIN_ID), kpoints=kp)
    assert node.is_finished_ok, node.exit_message
    assert results["kpoints"].uuid == kp.uuid
    assert "band_errors" not in results and "reference_bands" not in results
    bands = results["bands"]
    assert bands.get_bands().shape == (5, results["hamiltonian"].get_packed(load=()).num_orbitals)
    assert [l for _, l in bands.labels] == ["G", "X", "R"]
    np.testing.assert_allclose(bands.get_kpoints(), kp.get_kpoints())


def test_bands_workchain_pao_overlap(model_node, deeph_code, shared):
    """The DFT-free path: S from the PAO files (compute_overlap_node) -> predict -> bands."""
    from aiida.engine import run_get_node
    from aiida.orm import KpointsData, Str

    from aiida_deeph.workflows.bands import DeepHBandsWorkChain

    pao = shared / "openmx-data" / "PAO"
    if not pao.is_dir():
        pytest.skip("shared PAO files not found")
    structure = corpus_structure(TRAIN_ID).store()
    kp = KpointsData()
    kp.set_cell(structure.cell)
    kp.set_kpoints([[0, 0, 0], [0.5, 0, 0]])
    results, node = run_get_node(DeepHBandsWorkChain, structure=structure, model=model_node, infer_code=deeph_code,
                                 pao_dir=Str(str(pao)), kpoints=kp)
    assert node.is_finished_ok, node.exit_message
    overlap = results["overlap"]
    assert overlap.source == "PAO overlap" and not overlap.base.attributes.get("has_hamiltonian")
    assert overlap.creator.process_label == "compute_overlap_node"
    pred = results["hamiltonian"].get_packed(load=("overlap",))
    assert pred.meta["overlap_uuid"] == overlap.uuid and pred.meta["source"] == "model"
    np.testing.assert_allclose(pred.overlap, overlap.get_packed(load=("overlap",)).overlap, atol=1e-12)
    assert results["bands"].get_bands().shape[0] == 2


def test_bands_workchain_incompatible_model(model_node, deeph_code):
    from aiida.engine import run_get_node

    from aiida_deeph.workflows.bands import DeepHBandsWorkChain

    _, node = run_get_node(DeepHBandsWorkChain, structure=corpus_structure(OTHER_ID).store(), model=model_node,
                           infer_code=deeph_code, overlap=dft_node(OTHER_ID))
    assert node.exit_status == DeepHBandsWorkChain.exit_codes.ERROR_INCOMPATIBLE_MODEL.status
    assert "not known to the model" in node.exit_message


def test_bands_workchain_needs_one_overlap_source(model_node, deeph_code):
    from aiida.engine import run
    from aiida.orm import Str

    from aiida_deeph.workflows.bands import DeepHBandsWorkChain

    structure = corpus_structure(TRAIN_ID)
    with pytest.raises(ValueError, match="exactly one overlap source"):
        run(DeepHBandsWorkChain, structure=structure, model=model_node, infer_code=deeph_code)
    with pytest.raises(ValueError, match="exactly one overlap source"):
        run(DeepHBandsWorkChain, structure=structure, model=model_node, infer_code=deeph_code,
            overlap=dft_node(TRAIN_ID), pao_dir=Str("/nonexistent"))


def test_structure_mismatch_and_kpoint_conversion():
    from aiida.orm import KpointsData

    from aiida_deeph.workflows.bands import fractional_kpoints, structure_mismatch

    packed = load_corpus(TRAIN_ID)
    perm = packed.positions[::-1] + packed.cell[0]      # other atom order, shifted by a lattice vector
    assert structure_mismatch(packed.cell, perm, packed.species[::-1], packed) is None
    moved = packed.positions.copy()
    moved[0] += 0.1
    assert "no counterpart" in structure_mismatch(packed.cell, moved, packed.species, packed)
    assert "cells differ" in structure_mismatch(packed.cell * 1.01, packed.positions, packed.species, packed)
    # k given in a doubled cell's basis -> the same Cartesian k in the primitive basis
    kp = KpointsData()
    kp.set_cell((packed.cell * np.array([[2], [1], [1]])).tolist())
    kp.set_kpoints([[0.5, 0.0, 0.0], [0.0, 0.5, 0.25]])
    np.testing.assert_allclose(fractional_kpoints(kp, packed.cell), [[0.25, 0, 0], [0, 0.5, 0.25]], atol=1e-12)


def test_properties_workchain_predicts_then_compares(model_node, deeph_code, shared):
    """The DFT-free path of DeepHPropertiesWorkChain: S and the position matrix from the PAO files -> predict
    (the child DeepHBandsWorkChain) -> bands, DOS, optics (or the reason they are skipped) vs the DFT reference."""
    from aiida.engine import run_get_node
    from aiida.orm import Dict, KpointsData, Str

    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.io.openmx import load_openmx_run
    from aiida_deeph.workflows.bands import DeepHBandsWorkChain
    from aiida_deeph.workflows.properties import DeepHPropertiesWorkChain

    from .conftest import corpus_dir

    pao = shared / "openmx-data" / "PAO"
    if not pao.is_dir():
        pytest.skip("shared PAO files not found")
    structure = corpus_structure(TRAIN_ID).store()
    reference = HamiltonianData(load_openmx_run(corpus_dir() / TRAIN_ID, load_position_matrix=True)).store()
    kp = KpointsData()
    kp.set_cell(structure.cell)
    kp.set_kpoints([[0, 0, 0], [0.5, 0, 0.5]])
    results, node = run_get_node(
        DeepHPropertiesWorkChain, reference=reference, kpoints=kp,
        deeph={"structure": structure, "model": model_node, "infer_code": deeph_code, "pao_dir": Str(str(pao))},
        dos_parameters=Dict({"mesh": [3, 3, 3], "sigma": 0.2}),
        optics_parameters=Dict({"mesh": [3, 3, 3], "num_omega": 21}))
    assert node.is_finished_ok, node.exit_message
    child = [c for c in node.called if c.process_class is DeepHBandsWorkChain]
    assert len(child) == 1 and child[0].inputs.position_matrix.value is True
    pred = results["hamiltonian"]
    assert pred.base.attributes.get("has_position_matrix") and pred.source == "model"
    s = results["summary"].get_dict()
    assert s["reference"]["band_gap_eV"] > 3.0 and 1.5 < s["reference"]["eps_inf"] < 4.0   # NaCl (PBE: ~2.4)
    c = s["comparison"]
    assert c["band_mae_meV"] == results["band_errors"]["mae_meV"] > 1.0     # a 3-epoch model is not DFT
    assert c["dos_relative_l1"] > 0.0
    if s["is_metal"]:
        assert "metal" in s["optics"] and "chi" not in results
    else:
        assert s["optics"] == "computed" and "eps_inf_error" in c and "chi" in results
