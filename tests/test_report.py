"""``aiida-deeph report``: the paper's evaluation suite, its numbers recomputed independently (issue 14, item 4).

A tiny model is trained for a few epochs on three corpus structures; the report's numbers are checked against
``aiida-deeph evaluate`` (the torch metric accumulator of training) and against a from-scratch recomputation
from the saved predictions, not for the model's accuracy.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from .conftest import corpus_dir, load_corpus

TRAIN = ("mp-1550", "mp-22862", "mp-2534")       # AlP, NaCl, GaAs
EVAL = ("mp-1550", "mp-2534", "mp-22862")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from aiida_deeph.core.packed import write_packed
    from aiida_deeph.ml.config import ModelConfig
    from aiida_deeph.ml.train import TrainConfig, train

    root = tmp_path_factory.mktemp("report")
    write_packed(root / "train.h5", {m: load_corpus(m) for m in TRAIN})
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, epochs, data in (("m", 3, [root / "train.h5"]), ("m_small", 1, [root / "train.h5"])):
            train(data, root / name, model_config=ModelConfig.preset("tiny", num_gaussians=16),
                  train_config=TrainConfig.preset("tiny", max_epochs=epochs), log=lambda _m: None)
    finally:
        torch.set_num_threads(old)
    return root


@pytest.fixture(scope="module")
def report(trained):
    from aiida_deeph.cli.main import main

    out = trained / "out"
    data = [str(corpus_dir() / m) for m in EVAL]
    rc = main(["report", "--model", str(trained / "m"), "--data", *data, "--output", str(out),
               "--train-data", str(trained / "train.h5"), "--max-properties", "2", "--ranks", "0", "1",
               "--optics-mesh", "3", "3", "3", "--curve", str(trained / "m_small"), "--rare", "50", "--quiet"])
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_numbers_equal_aiida_deeph_evaluate(trained, report):
    """Two implementations of the metric (the torch accumulator of training and the report's numpy one)."""
    from aiida_deeph.ml.evaluate import evaluate

    _, rep = report
    ev = evaluate(trained / "m", [str(corpus_dir() / m) for m in EVAL])
    assert rep["num_structures"] == ev["num_structures"] == 3
    assert rep["mae_meV"] == pytest.approx(ev["mae_meV"], rel=1e-6)
    assert rep["mae_uncorrected_meV"] == pytest.approx(ev["mae_uncorrected_meV"], rel=1e-6)
    assert rep["per_element_mae_meV"] == pytest.approx(ev["per_element_meV"], rel=1e-6)
    pairs = {p["pair"]: p["mae_meV"] for p in rep["per_pair"]}
    assert pairs == pytest.approx(ev["per_element_pair_meV"], rel=1e-6)
    per = {r["name"]: r["mae_meV"] for r in rep["per_structure"]}
    assert per == pytest.approx({k: v["mae_meV"] for k, v in ev["per_structure_meV"].items()}, rel=1e-6)


def test_report_numbers_recomputed_from_the_saved_predictions(trained, report):
    """From predictions.h5 and the DFT data, by plain loops: MAE per structure and pair, training counts, rho."""
    from aiida_deeph.core.packed import PackedFile
    from aiida_deeph.io.openmx import load_openmx_run

    out, rep = report
    sums, counts = {}, {}
    total = [0.0, 0]
    with PackedFile(out / "predictions.h5") as pf:
        assert sorted(pf.names()) == sorted(EVAL)
        for name in EVAL:
            pred, ref = pf.read(name), load_openmx_run(corpus_dir() / name)
            d = pred.hamiltonian - ref.hamiltonian
            mu = (d * ref.overlap).sum() / (ref.overlap ** 2).sum()
            err = np.abs(d - mu * ref.overlap)
            total[0] += err.sum()
            total[1] += err.size
            for p, (_, _, _, i, j) in enumerate(ref.atom_pairs.tolist()):
                key = "-".join(sorted((ref.species[i], ref.species[j])))
                block = err[ref.offsets[p]:ref.offsets[p + 1]]
                sums[key] = sums.get(key, 0.0) + block.sum()
                counts[key] = counts.get(key, 0) + block.size
    assert rep["mae_meV"] == pytest.approx(1000 * total[0] / total[1], rel=1e-9)
    for row in rep["per_pair"]:
        assert row["mae_meV"] == pytest.approx(1000 * sums[row["pair"]] / counts[row["pair"]], rel=1e-9)
    # training counts: H blocks per element pair of the three training structures
    train_counts = {}
    for m in TRAIN:
        ham = load_corpus(m)
        for _, _, _, i, j in ham.atom_pairs.tolist():
            key = "-".join(sorted((ham.species[i], ham.species[j])))
            train_counts[key] = train_counts.get(key, 0) + 1
    assert {p["pair"]: p["train_count"] for p in rep["per_pair"]} == {k: train_counts.get(k, 0) for k in sums}
    assert all(p["rare"] == (p["train_count"] < 50) for p in rep["per_pair"])
    # Spearman: Pearson correlation of the ranks (average ranks for ties)
    from scipy.stats import rankdata

    x = rankdata([p["train_count"] for p in rep["per_pair"]])
    y = rankdata([p["mae_meV"] for p in rep["per_pair"]])
    assert rep["spearman"]["rho"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    assert 0.0 <= rep["spearman"]["p"] <= 1.0 and rep["spearman"]["n"] == len(rep["per_pair"])
    # the cumulative distribution is the sorted per-structure MAEs
    assert rep["cumulative"]["mae_meV"] == sorted(r["mae_meV"] for r in rep["per_structure"])


def test_report_properties_and_figures(report):
    out, rep = report
    props = {p["name"]: p for p in rep["properties"]}
    ranks = sorted(rep["per_structure"], key=lambda r: r["mae_meV"])
    assert set(props) == {ranks[0]["name"], ranks[-1]["name"]}          # --ranks 0 1, --max-properties 2
    for p in props.values():
        assert p["band_mae_meV"] is not None and p["dft_gap_eV"] >= 0 and "bands_figure" in p
    gaps = {"mp-1550": (1.2, 2.5), "mp-22862": (4.0, 6.0), "mp-2534": (0.0, 1.0)}    # PBE, this basis
    for name, p in props.items():
        lo, hi = gaps[name]
        assert lo <= p["dft_gap_eV"] <= hi, (name, p["dft_gap_eV"])
        if not p["dft_is_metal"]:       # the DFT chi is computed (OpenMX's position matrix from the run folder)
            assert p["position_matrix_from"].startswith("the data") and p["dft_eps_inf"] > 1.5
        if p["optics"] == "computed":
            assert (out / p["chi_figure"]).is_file()
    gap_rows = [p for p in props.values() if "dft_gap_eV" in p]
    assert rep["gap_mae_meV"] == pytest.approx(
        1000 * np.mean([abs(p["deeph_gap_eV"] - p["dft_gap_eV"]) for p in gap_rows]))
    assert len(rep["learning_curve"]) == 2 and all(c["num_train_structures"] for c in rep["learning_curve"])
    for key in ("2a", "2b", "2c", "2d", "2e", "4b", "4d"):
        with open(out / rep["figures"][key], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", key
    assert len(rep["figures"]["3"]) >= 2


def test_report_bad_input_is_one_line(trained, tmp_path, capsys):
    from aiida_deeph.cli.main import main

    assert main(["report", "--model", str(tmp_path), "--data", str(corpus_dir() / "mp-1550"),
                 "--output", str(tmp_path / "o")]) == 1
    assert "not a model directory" in capsys.readouterr().err
    assert main(["report", "--model", str(trained / "m"), "--data", str(corpus_dir() / "mp-1550"),
                 "--output", str(tmp_path / "o"), "--split", "test"]) == 1
    assert "split.json does not match" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_evaluation_report_calcfunction(trained, report, aiida_profile):
    """The same report in AiiDA: model node + HamiltonianData in, Dict + SinglefileData out, same numbers."""
    from aiida import orm

    from aiida_deeph.data.hamiltonian import HamiltonianData
    from aiida_deeph.data.model import DeepHModelData
    from aiida_deeph.io.openmx import load_openmx_run
    from aiida_deeph.workflows.report import evaluation_report

    _, cli = report
    model = DeepHModelData(trained / "m").store()
    inputs = {f"eval__{m.replace('-', '_')}": HamiltonianData(load_openmx_run(corpus_dir() / m)).store()
              for m in EVAL}
    inputs.update({f"train__{m.replace('-', '_')}": HamiltonianData(load_corpus(m)).store() for m in TRAIN})
    out, node = evaluation_report.run_get_node(model=model, parameters=orm.Dict({"max_properties": 1,
                                                                                "optics": False}), **inputs)
    assert node.is_finished_ok, node.exit_message
    rep = out["report"].get_dict()
    assert rep["mae_meV"] == pytest.approx(cli["mae_meV"], rel=1e-9)
    assert rep["spearman"]["rho"] == pytest.approx(cli["spearman"]["rho"], abs=1e-12)
    assert {p["pair"]: p["train_count"] for p in rep["per_pair"]} == {p["pair"]: p["train_count"] for p in cli["per_pair"]}
    assert "fig2a_per_element_png" in out and "predictions" in out
    assert out["fig2e_mae_vs_count_png"].filename == "fig2e_mae_vs_count.png"
    assert rep["model_uuid"] == model.uuid
    _, bad = evaluation_report.run_get_node(model=model, parameters=orm.Dict({"max_propertiez": 1}), **inputs)
    assert bad.exit_status == 300 and "max_propertiez" in bad.exit_message


def test_report_position_matrix_from_the_pao_files_follows_the_data_pair_order(shared):
    """Data whose pairs come in another order than compute_overlap's: the PAO position matrix is gathered into
    the data's order (each block where its pair is)."""
    from aiida_deeph.analysis.report import ReportConfig, _position_matrix

    pao = shared / "openmx-data" / "PAO"
    ref = load_corpus("mp-1550")
    ref.position_matrix = None
    shuffled = ref.reorder_pairs(np.random.default_rng(0).permutation(ref.num_pairs))
    p_sorted, _ = _position_matrix(ref, ReportConfig(pao_dir=str(pao)))
    p_shuffled, source = _position_matrix(shuffled, ReportConfig(pao_dir=str(pao)))
    assert source == "the PAO files" and p_shuffled.shape == (shuffled.num_entries, 3)
    index = ref.pair_index()
    for q, row in enumerate(shuffled.atom_pairs.tolist()[:50]):
        p = index[tuple(row)]
        np.testing.assert_array_equal(p_shuffled[shuffled.offsets[q]:shuffled.offsets[q + 1]],
                                      p_sorted[ref.offsets[p]:ref.offsets[p + 1]])
