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
