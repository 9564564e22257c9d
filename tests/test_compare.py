"""Band comparison math (aiida_deeph.physics.compare): alignment, window, MAE, gap error."""
from __future__ import annotations

import numpy as np
import pytest

from aiida_deeph.physics.compare import band_errors, combine_gaps, path_distances, plot_comparison
from aiida_deeph.physics.fermi import intrinsic_fermi_level


def test_band_errors_by_hand():
    # reference Fermi level 1.0, predicted 2.0: a rigid shift of +1 eV is removed by the alignment
    ref = np.array([[-5.0, 0.0, 1.5, 3.9], [-4.0, 0.5, 2.0, 4.5]])
    pred = ref + 1.0
    pred[0, 1] += 0.010   # inside the window  (0 - 1 = -1 eV)
    pred[1, 2] -= 0.030   # inside the window  (2 - 1 = +1 eV)
    pred[0, 0] += 5.0     # outside (-6 eV): ignored
    pred[1, 3] += 5.0     # outside (+3.5 eV): ignored
    res = band_errors(pred, ref, predicted_fermi=2.0, reference_fermi=1.0, window_eV=3.0,
                      predicted_gap=1.2, reference_gap=1.0)
    # window: ref - 1 in [-3, 3] -> entries (0,1) (0,2) (0,3:2.9) (1,1) (1,2)
    assert res["num_values"] == 5
    assert res["mae_meV"] == pytest.approx((10.0 + 30.0) / 5)
    assert res["max_abs_error_meV"] == pytest.approx(30.0)
    assert res["mean_signed_error_meV"] == pytest.approx((10.0 - 30.0) / 5)
    assert res["gap_error_meV"] == pytest.approx(200.0)
    assert res["abs_gap_error_meV"] == pytest.approx(200.0)


def test_band_errors_window_uses_reference_and_ignores_nan():
    ref = np.array([[0.0, 2.9, 3.1]])
    pred = np.array([[np.nan, 10.0, 3.1]])
    res = band_errors(pred, ref, 0.0, 0.0, window_eV=3.0)
    # (0,0) NaN in prediction: skipped; (0,1) in window; (0,2) outside the reference window
    assert res["num_values"] == 1
    assert res["mae_meV"] == pytest.approx(7100.0)
    assert res["gap_error_meV"] is None


def test_band_errors_matches_bands_by_index_and_checks_kpoints():
    ref = np.array([[0.0, 1.0]])
    pred = np.array([[0.1, 1.0, 7.0]])   # an extra band: ignored
    res = band_errors(pred, ref, 0.0, 0.0)
    assert res["num_bands_compared"] == 2
    assert res["mae_meV"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        band_errors(np.zeros((2, 2)), np.zeros((3, 2)), 0.0, 0.0)


def test_combine_gaps():
    a = {"is_metal": False, "num_occupied_bands": 4, "vbm_eV": 1.0, "cbm_eV": 3.0}
    b = {"is_metal": False, "num_occupied_bands": 4, "vbm_eV": 1.2, "cbm_eV": 2.5}
    assert combine_gaps(a, b)["gap_eV"] == pytest.approx(1.3)
    assert combine_gaps(a, dict(b, num_occupied_bands=5))["is_metal"]
    assert combine_gaps(a, dict(b, is_metal=True))["gap_eV"] == 0.0


def test_path_distances_merges_discontinuities(tmp_path):
    k = np.array([[0, 0, 0], [0.5, 0, 0], [1, 0, 0], [5, 5, 5], [5, 5.5, 5], [5, 6, 5]], dtype=float)
    x, ticks = path_distances(k, [(0, "G"), (2, "X"), (3, "U"), (5, "K")])
    assert x.tolist() == [0.0, 0.5, 1.0, 1.0, 1.5, 2.0]
    assert ticks == [(0.0, "Γ"), (1.0, "X|U"), (2.0, "K")]
    plot_comparison(tmp_path / "p.png", x, ticks, np.zeros((6, 2)), np.ones((6, 2)), title="t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_intrinsic_fermi_level_wide_gap():
    kt = 8.617333262e-5 * 300.0
    # symmetric bands: mid-gap; a doubly degenerate conduction band pulls it down by kT/2 ln 2
    assert intrinsic_fermi_level(np.array([[-1.0, 1.0]]), [1.0], 2.0) == pytest.approx(0.0, abs=1e-12)
    mu = intrinsic_fermi_level(np.array([[-1.0, 1.0, 1.0]]), [1.0], 2.0)
    assert mu == pytest.approx(-0.5 * kt * np.log(2.0), rel=1e-9)
    # many k-points, a 4.5 eV gap: the root is where holes = electrons, far from both edges, whatever rounding
    rng = np.random.default_rng(0)
    e = np.concatenate([rng.uniform(-5, -4, (112, 8)), rng.uniform(0.5, 3, (112, 8))], axis=1)
    mu = intrinsic_fermi_level(e, np.full(112, 1 / 112), 16.0)
    assert e[:, :8].max() + 1.5 < mu < e[:, 8:].min() - 1.5
    # no gap / fractional filling / narrow gap: None (the bisection is fine there)
    assert intrinsic_fermi_level(np.array([[-1.0, 1.0]]), [1.0], 3.0) is None
    assert intrinsic_fermi_level(np.array([[0.0, 0.1]]), [1.0], 2.0) is None
