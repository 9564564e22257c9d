"""Gauge invariance of the loss and of the corrected metrics."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from aiida_deeph.ml.loss import MetricAccumulator, gauge_loss, gauge_residual, gauge_shift  # noqa: E402
from aiida_deeph.ml.model import BasisMap, ModelConfig, basis_metadata, collate_graphs, prepare_graph  # noqa: E402
from .test_ml_equivariance import load_corpus  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    hams = [load_corpus("mp-134"), load_corpus("mp-1550")]
    ols, rc = {}, {}
    for h in hams:
        a, b = basis_metadata(h)
        ols.update(a)
        rc.update(b)
    cfg = ModelConfig.preset("tiny").with_elements(ols, rc)
    g = collate_graphs([prepare_graph(h, BasisMap(cfg)) for h in hams])
    rng = np.random.default_rng(0)
    pred = g["H"] + torch.tensor(rng.normal(scale=0.02, size=g["H"].shape)) + 0.3 * g["S"]
    return cfg, g, pred


@pytest.mark.parametrize("kind", ["huber", "mse"])
def test_loss_gauge_invariant(batch, kind):
    cfg, g, pred = batch
    eb = g["entry_batch"]
    base = gauge_loss(pred, g["H"], g["S"], eb, 2, kind=kind)
    c = torch.tensor([1.7, -0.4], dtype=torch.float64)
    shifted = g["H"] + c[eb] * g["S"]
    assert torch.allclose(gauge_loss(pred, shifted, g["S"], eb, 2, kind=kind), base, rtol=1e-10, atol=1e-14)
    # without correction the shift matters
    assert not torch.allclose(gauge_loss(pred, shifted, g["S"], eb, 2, kind=kind, correct=False), base)


def test_gauge_shift_recovers_constant(batch):
    cfg, g, _ = batch
    eb = g["entry_batch"]
    c = torch.tensor([0.25, -1.0], dtype=torch.float64)
    pred = g["H"] + c[eb] * g["S"]
    assert torch.allclose(gauge_shift(pred, g["H"], g["S"], eb, 2), c, atol=1e-12)
    assert gauge_residual(pred, g["H"], g["S"], eb, 2).abs().max() < 1e-12


def test_metrics_gauge_invariant(batch):
    cfg, g, pred = batch
    acc1 = MetricAccumulator(cfg.elements)
    acc1.add_batch(g, pred, ["a", "b"])
    g2 = dict(g)
    g2["H"] = g["H"] + 5.0 * g["S"]
    acc2 = MetricAccumulator(cfg.elements)
    acc2.add_batch(g2, pred, ["a", "b"])
    r1, r2 = acc1.result(), acc2.result()
    assert abs(r1["mae_meV"] - r2["mae_meV"]) < 1e-9
    for el in r1["per_element_meV"]:
        assert abs(r1["per_element_meV"][el] - r2["per_element_meV"][el]) < 1e-9
    assert r2["mae_uncorrected_meV"] > r1["mae_uncorrected_meV"]
    assert set(r1["per_element_pair_meV"]) == {"Al-Al", "Al-P", "P-P"}
    assert set(r1["per_structure_meV"]) == {"a", "b"}
    # the per-element MAE of Al covers Al-Al and Al-P blocks
    n_al = r1["per_element_pair_entries"]["Al-Al"] + r1["per_element_pair_entries"]["Al-P"]
    tot_al = (r1["per_element_pair_meV"]["Al-Al"] * r1["per_element_pair_entries"]["Al-Al"]
              + r1["per_element_pair_meV"]["Al-P"] * r1["per_element_pair_entries"]["Al-P"])
    assert abs(r1["per_element_meV"]["Al"] - tot_al / n_al) < 1e-9
