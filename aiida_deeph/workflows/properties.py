"""Properties of a HamiltonianData as calcfunctions (the AiiDA side of physics/dos.py and physics/optics.py).

``compute_dos``: XyData ``dos`` (x: absolute energy in eV; y: total DOS and the projected DOS per element and
l, states/eV/cell) and a Dict ``summary``. ``compute_optics``: XyData ``chi`` (x: hbar omega in eV; y: Re and
Im of chi_xx, chi_yy, chi_zz) and a Dict ``static`` (chi0, eps_inf, gap on the mesh). Errors of the pure
core (a metal, no position matrix, a too-coarse mesh) are raised with their one-line message.
"""
from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_deeph.data.hamiltonian import HamiltonianData

DOS_KEYS = ("mesh", "spacing", "sigma", "method", "grid", "window", "num_electrons", "projected", "s_threshold",
            "basis_table")
OPTICS_KEYS = ("mesh", "eta", "omega_max", "num_omega", "num_electrons", "s_threshold", "basis_table")


def _checked(parameters: orm.Dict, allowed) -> dict:
    params = parameters.get_dict()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return params


@calcfunction
def compute_dos(hamiltonian: HamiltonianData, parameters: orm.Dict):
    """Total and projected DOS (:func:`aiida_deeph.physics.dos.density_of_states`, its keyword arguments)."""
    from aiida_deeph.physics.dos import density_of_states, integrated

    params = _checked(parameters, DOS_KEYS)
    result = density_of_states(hamiltonian.get_packed(load=("hamiltonian", "overlap")), **params)
    xy = orm.XyData()
    xy.set_x(np.asarray(result["energy_eV"]), "energy", "eV")
    names, arrays, units = ["total"], [np.asarray(result["total"])], ["states/eV/cell"]
    for element, by_l in result["projected"].items():
        for l, values in by_l.items():
            names.append(f"{element}_{l}")
            arrays.append(np.asarray(values))
            units.append("states/eV/cell")
    xy.set_y(arrays, names, units)
    summary = {k: v for k, v in result.items() if k not in ("energy_eV", "total", "projected")}
    summary["integrated_to_fermi"] = integrated(result)
    return {"dos": xy, "summary": orm.Dict(summary)}


@calcfunction
def compute_optics(hamiltonian: HamiltonianData, parameters: orm.Dict):
    """chi(omega) and eps_inf (:func:`aiida_deeph.physics.optics.susceptibility`, its keyword arguments)."""
    from aiida_deeph.physics.optics import susceptibility

    params = _checked(parameters, OPTICS_KEYS)
    if "mesh" not in params:
        raise ValueError("parameters need 'mesh' (three integers, e.g. [12, 12, 12])")
    result = susceptibility(hamiltonian.get_packed(load=("hamiltonian", "overlap", "position_matrix")), **params)
    re, im = np.asarray(result["chi"]["real"]), np.asarray(result["chi"]["imag"])
    xy = orm.XyData()
    xy.set_x(np.asarray(result["omega_eV"]), "hbar_omega", "eV")
    names = [f"{part}_chi_{a}{a}" for a in "xyz" for part in ("re", "im")]
    arrays = [x for i in range(3) for x in (re[:, i, i], im[:, i, i])]
    xy.set_y(arrays, names, ["dimensionless"] * 6)
    static = {k: v for k, v in result.items() if k not in ("omega_eV", "chi")}
    return {"chi": xy, "static": orm.Dict(static)}
