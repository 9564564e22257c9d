"""Gauge invariance of the loss and of the corrected metrics."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from aiida_deeph.ml.config import ModelConfig  # noqa: E402
from aiida_deeph.ml.graph import BasisMap, basis_metadata, collate_graphs, prepare_graph
from aiida_deeph.ml.loss import MetricAccumulator, gauge_loss, gauge_residual, gauge_shift  # noqa: E402

from .conftest import load_corpus  # noqa: E402


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


@pytest.fixture(scope="module")
def carbon_batch():
    """Two real rattled-diamond cells (2 and 8 atoms, DeepH-dock folders) with the k-space fields."""
    from aiida_deeph.io.dock import read_dock

    from .conftest import shared_dir

    root = shared_dir() / "openmx-carbon"
    hams = [read_dock(root / name / "dock", load=("hamiltonian", "overlap")) for name in ("C-dia2-r000", "C-dia8-r000")]
    cfg = ModelConfig.preset("tiny").with_elements(*basis_metadata(hams[0]))
    g = collate_graphs([prepare_graph(h, BasisMap(cfg), with_kspace=True) for h in hams])
    return hams, g


def _symmetric_noise(ham, scale, seed):
    """Entry noise with H_ij(R) = H_ji(-R)^T kept (so H(k) stays Hermitian)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(scale=scale, size=ham.hamiltonian.shape)
    out = ham.copy()
    out.hamiltonian = ham.hamiltonian + noise
    index = ham.pair_index()
    for p, (r1, r2, r3, i, j) in enumerate(ham.atom_pairs.tolist()):
        q = index[(-r1, -r2, -r3, j, i)]
        if q > p:
            blk = out.block(p).copy()
            out.hamiltonian[ham.offsets[q]:ham.offsets[q + 1]] = blk.T.reshape(-1)
        elif q == p:
            blk = out.block(p)
            out.hamiltonian[ham.offsets[p]:ham.offsets[p + 1]] = (0.5 * (blk + blk.T)).reshape(-1)
    return out


@pytest.mark.parametrize("name", ["band_loss", "projected_band_loss"])
def test_band_losses_are_gauge_invariant_and_zero_for_the_truth(carbon_batch, name):
    from aiida_deeph.ml import loss as losses

    _, g = carbon_batch
    eb = g["entry_batch"]
    c = torch.tensor([0.7, -1.3], dtype=torch.float64)
    shifted = g["H"] + c[eb] * g["S"]          # the same physics: every eigenvalue moves by c
    loss = getattr(losses, name)(shifted, g, 2, num_k=2, generator=torch.Generator().manual_seed(1))
    assert float(loss) < 1e-16


def _noisy_prediction(hams, loss_fn, g, **kw):
    """Symmetric 3 meV noise on the DFT H as the prediction; ``loss_fn`` of it must have a finite, non-zero
    gradient. Returns (noisy hamiltonians, prediction tensor, loss)."""
    noisy = [_symmetric_noise(h, 0.003, seed) for seed, h in enumerate(hams)]
    pred = torch.cat([torch.from_numpy(n.hamiltonian) for n in noisy]).requires_grad_(True)
    loss = loss_fn(pred, g, 2, **kw)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad.abs().max()) > 0
    return noisy, pred, loss


def _huber_np(r, delta=0.01):
    a = np.abs(r)
    return np.where(a < delta, 0.5 * a * a, delta * (a - 0.5 * delta))


def test_band_loss_equals_the_band_solver(carbon_batch):
    """band_loss's eigenvalues are those of physics.bands at the same k (Huber of the shifts in the window)."""
    from aiida_deeph.ml.loss import band_loss, gauge_shift
    from aiida_deeph.physics.bands import band_energies

    hams, g = carbon_batch
    noisy, pred, loss = _noisy_prediction(hams, band_loss, g, num_k=3, generator=torch.Generator().manual_seed(5))
    kpts = torch.rand(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)   # the same draw
    dmu = gauge_shift(pred.detach(), g["H"], g["S"], g["entry_batch"], 2).numpy()
    terms = []
    for b, (ham, n) in enumerate(zip(hams, noisy)):
        kb = kpts.numpy() if b == 0 else torch.rand(3, 3, generator=_after(5, 1), dtype=torch.float64).numpy()
        et = band_energies(ham, kb, s_threshold=0.0, threads=1).eigenvalues
        ep = band_energies(n, kb, s_threshold=0.0, threads=1).eigenvalues - dmu[b]
        for k in range(3):
            keep = np.abs(et[k] - ham.fermi_energy_eV) <= 3.0
            if not keep.any():          # skipped by band_loss too
                continue
            terms.append(np.mean(_huber_np(ep[k][keep] - et[k][keep])))
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-6)


def _after(seed, draws):
    """A generator seeded with ``seed`` that has made ``draws`` (3, 3) k-point draws."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        torch.rand(3, 3, generator=gen, dtype=torch.float64)
    return gen


def test_projected_band_loss_is_the_error_in_the_dft_eigenbasis(carbon_batch):
    """D = C^H dH(k) C with scipy's generalised eigenvectors (C^H S C = 1), weighted as documented."""
    import scipy.linalg as sl

    from aiida_deeph.ml.loss import gauge_shift, projected_band_loss

    hams, g = carbon_batch
    noisy, pred, loss = _noisy_prediction(hams, projected_band_loss, g, num_k=2,
                                          generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    dmu = gauge_shift(pred.detach(), g["H"], g["S"], g["entry_batch"], 2).numpy()
    terms = []
    for b, (ham, n) in enumerate(zip(hams, noisy)):
        for k in torch.rand(2, 3, generator=gen, dtype=torch.float64).numpy():
            Hk, Sk = ham.matrix_at_k(k), ham.matrix_at_k(k, "overlap")
            e, C = sl.eigh(Hk, Sk)
            w = (1 + np.abs(e - ham.fermi_energy_eV) / 3.0) ** -0.5
            D = (C * w).conj().T @ (n.matrix_at_k(k) - Hk - dmu[b] * Sk) @ (C * w)
            terms.append(_huber_np(np.abs(D)).mean())
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-6)


def test_onsite_entry_weights(carbon_batch):
    """Weight w on the entries of the on-site blocks (0,0,0,i,i), 1 elsewhere; the loss is their weighted mean."""
    from aiida_deeph.ml.loss import gauge_loss, gauge_residual, onsite_entry_weights

    hams, g = carbon_batch
    assert onsite_entry_weights(g, 1.0) is None
    w = onsite_entry_weights(g, 10.0, torch.float64)
    ap = np.concatenate([h.atom_pairs for h in hams])
    onsite_pairs = (ap[:, 3] == ap[:, 4]) & ~ap[:, :3].any(axis=1)
    sizes = np.concatenate([np.diff(h.offsets) for h in hams])
    expected_onsite = sum(int(s) for s, o in zip(sizes, onsite_pairs) if o)
    assert int((w == 10.0).sum()) == expected_onsite and int((w == 1.0).sum()) == w.numel() - expected_onsite
    pred = g["H"] + 0.003 * torch.randn(g["H"].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = gauge_residual(pred, g["H"], g["S"], g["entry_batch"], 2).abs()
    per = torch.where(r < 0.01, 0.5 * r * r, 0.01 * (r - 0.005))
    eb = g["entry_batch"]
    manual = np.mean([float((per * w)[eb == b].sum() / w[eb == b].sum()) for b in range(2)])
    assert float(gauge_loss(pred, g["H"], g["S"], eb, 2, weights=w)) == pytest.approx(manual, rel=1e-10)
