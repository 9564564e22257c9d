"""Properties of a HamiltonianData: calcfunctions (the AiiDA side of physics/dos.py and physics/optics.py) and
``DeepHPropertiesWorkChain`` (bands, gap, DOS, chi(omega) of a given or predicted H, vs DFT when given).

``compute_dos``: XyData ``dos`` (x: absolute energy in eV; y: total DOS and the projected DOS per element and
l, states/eV/cell) and a Dict ``summary``. ``compute_optics``: XyData ``chi`` (x: hbar omega in eV; y: Re and
Im of chi_xx, chi_yy, chi_zz) and a Dict ``static`` (chi0, eps_inf, gap on the mesh). Errors of the pure
core (a metal, no position matrix, a too-coarse mesh) are raised with their one-line message.
"""
from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_

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


# ====================================================================== nodes <-> dos.json / chi.json
def dos_result(dos: orm.XyData, summary: orm.Dict) -> dict:
    """The dos.json dictionary of a ``compute_dos`` output pair (for plots and comparisons)."""
    _, energy, _ = dos.get_x()
    result = dict(summary.get_dict())
    result["energy_eV"] = np.asarray(energy)
    result["projected"] = {}
    for name, values, _ in dos.get_y():
        if name == "total":
            result["total"] = np.asarray(values)
        else:
            element, l = name.split("_", 1)
            result["projected"].setdefault(element, {})[l] = np.asarray(values)
    return result


def chi_result(chi: orm.XyData, static: orm.Dict) -> dict:
    """The chi.json dictionary of a ``compute_optics`` output pair (diagonal of chi(omega); off-diagonal 0)."""
    _, omega, _ = chi.get_x()
    ys = {name: np.asarray(values) for name, values, _ in chi.get_y()}
    re = np.zeros((len(omega), 3, 3))
    im = np.zeros((len(omega), 3, 3))
    for a, c in enumerate("xyz"):
        re[:, a, a], im[:, a, a] = ys[f"re_chi_{c}{c}"], ys[f"im_chi_{c}{c}"]
    result = dict(static.get_dict())
    result.update({"omega_eV": np.asarray(omega), "chi": {"real": re, "imag": im}})
    return result


def _trapezoid(y, x) -> float:
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def dos_difference(result: dict, reference: dict, window_eV: float = 3.0) -> dict:
    """Total-DOS difference of ``result`` against ``reference``, each relative to its own Fermi level (as
    band errors are), over the reference grid within E_F +- ``window_eV``: relative L1
    (int |g - g_ref| / int g_ref) and the largest absolute difference (states/eV/cell)."""
    er = np.asarray(reference["energy_eV"], dtype=float) - reference["fermi_energy_eV"]
    gr = np.asarray(reference["total"], dtype=float)
    e = np.asarray(result["energy_eV"], dtype=float) - result["fermi_energy_eV"]
    mask = np.abs(er) <= window_eV
    if mask.sum() < 2:
        raise ValueError(f"the reference DOS grid holds fewer than 2 points within E_F +- {window_eV} eV")
    g = np.interp(er[mask], e, np.asarray(result["total"], dtype=float), left=np.nan, right=np.nan)
    if not np.all(np.isfinite(g)):
        raise ValueError("the DOS grid does not cover the reference's window around E_F (use a wider 'window')")
    diff = np.abs(g - gr[mask])
    x = er[mask]
    ref_int = float(_trapezoid(gr[mask], x))
    return {"dos_relative_l1": float(_trapezoid(diff, x) / ref_int) if ref_int > 0 else None,
            "dos_max_abs_difference": float(diff.max()),
            "dos_window_eV": float(window_eV),
            "dos_alignment": "each DOS relative to its own Fermi level"}


def dos_at_fermi(result: dict) -> float:
    """Total DOS at the Fermi level (states/eV/cell), interpolated on the grid."""
    return float(np.interp(result["fermi_energy_eV"], np.asarray(result["energy_eV"]), np.asarray(result["total"])))


# ====================================================================== calcfunctions of the work chain
@calcfunction
def hamiltonian_structure(hamiltonian: HamiltonianData) -> orm.StructureData:
    """The crystal structure of a HamiltonianData (cell, positions, species), for its k-path."""
    packed = hamiltonian.get_packed(load=())
    structure = orm.StructureData(cell=packed.cell.tolist())
    for symbol, position in zip(packed.species, packed.positions):
        structure.append_atom(position=position.tolist(), symbols=symbol)
    return structure


@calcfunction
def plot_dos_node(dos: orm.XyData, summary: orm.Dict, parameters: orm.Dict, reference_dos: orm.XyData | None = None,
                  reference_summary: orm.Dict | None = None) -> orm.SinglefileData:
    """PNG of the DOS (total and projected), or of the DOS against a reference DOS (``parameters``: title)."""
    from aiida_deeph.physics.plots import plot_dos
    from aiida_deeph.workflows.bands import png_node

    reference = None if reference_dos is None else dos_result(reference_dos, reference_summary)
    return png_node(lambda path: plot_dos(dos_result(dos, summary), path, title=parameters.get("title", ""),
                                          reference=reference), "dos.png")


@calcfunction
def plot_chi_node(chi: orm.XyData, static: orm.Dict, parameters: orm.Dict, reference_chi: orm.XyData | None = None,
                  reference_static: orm.Dict | None = None) -> orm.SinglefileData:
    """PNG of chi(omega), or of its trace against a reference's (``parameters``: title)."""
    from aiida_deeph.physics.plots import plot_chi
    from aiida_deeph.workflows.bands import png_node

    reference = None if reference_chi is None else chi_result(reference_chi, reference_static)
    return png_node(lambda path: plot_chi(chi_result(chi, static), path, title=parameters.get("title", ""),
                                          reference=reference), "chi.png")


def _properties(band_summary: dict, dos: dict, optics: dict | None, optics_note: str) -> dict:
    out = {"fermi_energy_eV": band_summary["fermi_energy_eV"], "band_gap_eV": band_summary["band_gap_eV"],
           "is_metal": band_summary["is_metal"], "dos_at_fermi": dos_at_fermi(dos),
           "dos_fermi_energy_eV": dos["fermi_energy_eV"], "optics": optics_note}
    if optics is not None:
        out.update({"eps_inf": optics["eps_inf"], "chi0": optics["chi0"],
                    "eps_inf_diagonal": optics["eps_inf_diagonal"]})
    return out


@calcfunction
def summarize_properties(band_summary: orm.Dict, dos: orm.XyData, dos_summary: orm.Dict, parameters: orm.Dict,
                         optics: orm.Dict | None = None, band_errors: orm.Dict | None = None,
                         reference_summary: orm.Dict | None = None, reference_dos: orm.XyData | None = None,
                         reference_dos_summary: orm.Dict | None = None,
                         reference_optics: orm.Dict | None = None) -> orm.Dict:
    """One Dict of the properties (gap, E_F, DOS at E_F, eps_inf, chi(0)) and, with a reference, theirs and the
    errors (band MAE, gap error, eps_inf error, DOS difference). ``parameters``: ``window_eV``, ``optics_note``,
    ``reference_optics_note``, ``formula``."""
    p = parameters.get_dict()
    window = float(p.get("window_eV", 3.0))
    dos_res = dos_result(dos, dos_summary)
    summary = {"formula": p.get("formula"), "units": {"energy": "eV", "dos": "states/eV/cell", "chi": "SI"},
               **_properties(band_summary.get_dict(), dos_res, None if optics is None else optics.get_dict(),
                             p.get("optics_note", ""))}
    if reference_summary is not None:
        ref_dos = dos_result(reference_dos, reference_dos_summary)
        summary["reference"] = _properties(reference_summary.get_dict(), ref_dos,
                                           None if reference_optics is None else reference_optics.get_dict(),
                                           p.get("reference_optics_note", ""))
        cmp = dict(dos_difference(dos_res, ref_dos, window))
        if band_errors is not None:
            e = band_errors.get_dict()
            cmp.update({"band_mae_meV": e.get("mae_meV"), "band_rmse_meV": e.get("rmse_meV"),
                        "gap_error_meV": e.get("gap_error_meV"), "band_window_eV": e.get("window_eV")})
        if optics is not None and reference_optics is not None:
            a, b = optics["eps_inf"], reference_optics["eps_inf"]
            cmp.update({"eps_inf_error": float(a - b), "eps_inf_relative_error": float((a - b) / b),
                        "chi0_relative_error": float((a - b) / (b - 1.0)) if b != 1.0 else None})
        cmp["metal_agreement"] = bool(summary["is_metal"]) == bool(summary["reference"]["is_metal"])
        summary["comparison"] = cmp
    return orm.Dict(summary)


# ====================================================================== the WorkChain
BAND_INPUTS = ("reference", "kpoints", "kpath_parameters", "protocol", "temperature", "window", "position_matrix")


def _validate_properties_inputs(inputs, _):
    has_h = inputs.get("hamiltonian") is not None
    deeph = inputs.get("deeph") or {}
    has_model = bool(deeph.get("model") is not None or deeph.get("structure") is not None)
    if has_h == has_model:
        return ("give either 'hamiltonian' (a HamiltonianData: DFT or predicted) or the 'deeph' namespace "
                "(structure + model + infer_code + one overlap source, as DeepHBandsWorkChain takes them)"
                + ("; got both" if has_h else "; got neither"))
    for name in ("dos_parameters", "optics_parameters"):
        node = inputs.get(name)
        if node is not None:
            allowed = DOS_KEYS if name == "dos_parameters" else OPTICS_KEYS
            try:
                _checked(node, allowed)
            except ValueError as exc:
                return f"{name}: {exc}"
    return None


class DeepHPropertiesWorkChain(WorkChain):
    """Bands, gap, DOS and chi(omega) of a Hamiltonian (given, or predicted from a structure and a model), each
    compared with a DFT reference when one is given.

    Either ``hamiltonian`` (any HamiltonianData, DFT or predicted) or the ``deeph`` namespace (the inputs of
    DeepHBandsWorkChain: structure, model, infer_code and one overlap source), which runs DeepHBandsWorkChain as a
    child; with ``compute_optics`` the child also gets the position matrix (PAO integrals or OpenMX's), so the
    DFT-free path gives chi(omega) as well. Optics are skipped, with the reason in the report and the summary,
    for a metal (chi(0) diverges) or a Hamiltonian without a position matrix.
    """

    @classmethod
    def define(cls, spec):
        from aiida_deeph.workflows.bands import DeepHBandsWorkChain

        super().define(spec)
        spec.input("hamiltonian", valid_type=HamiltonianData, required=False,
                   help="The Hamiltonian (DFT or predicted) whose properties are computed.")
        spec.expose_inputs(DeepHBandsWorkChain, namespace="deeph", exclude=BAND_INPUTS,
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Predict H first: the inputs of DeepHBandsWorkChain "
                                                      "(structure, model, infer_code, an overlap source)."})
        spec.input("reference", valid_type=HamiltonianData, required=False,
                   help="DFT HamiltonianData of the same structure: its properties and the errors against it "
                        "(a position matrix in it gives the DFT chi(omega): OpenmxCalculation settings "
                        "{'position_matrix': True} or `convert openmx --position-matrix`).")
        spec.input("kpoints", valid_type=orm.KpointsData, required=False,
                   help="Explicit k-points of the bands; default: the seekpath path.")
        spec.input("kpath_parameters", valid_type=orm.Dict, default=lambda: orm.Dict({"reference_distance": 0.025}),
                   help="seekpath_kpoints parameters: reference_distance (1/A), symprec.")
        spec.input("protocol", valid_type=orm.Str, default=lambda: orm.Str("moderate"),
                   help="OpenMX protocol giving the basis table (valence electrons) and the Fermi-level k-mesh.")
        spec.input("temperature", valid_type=orm.Float, default=lambda: orm.Float(300.0),
                   help="Electronic temperature (K) of the band Fermi level.")
        spec.input("window", valid_type=orm.Float, default=lambda: orm.Float(3.0),
                   help="Band and DOS errors within E_F +- window (eV).")
        spec.input("dos_parameters", valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help=f"compute_dos parameters ({', '.join(DOS_KEYS)}); default: Gaussian sigma 0.1 eV on a "
                        "Gamma-centred mesh of spacing 0.1 1/A.")
        spec.input("compute_optics", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help="chi(omega) and eps_inf when the Hamiltonian is an insulator with a position matrix.")
        spec.input("optics_parameters", valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help=f"compute_optics parameters ({', '.join(OPTICS_KEYS)}); default mesh: spacing 0.2 1/A "
                        "(2 pi included), eta 0.1 eV.")
        spec.inputs.validator = _validate_properties_inputs

        spec.outline(
            cls.setup,
            if_(cls.predicts)(cls.run_prediction, cls.inspect_prediction).else_(cls.run_bands),
            cls.run_dos,
            if_(cls.should_run_optics)(cls.run_optics),
            cls.summarize,
        )
        spec.output("hamiltonian", valid_type=HamiltonianData, required=False,
                    help="The predicted Hamiltonian (deeph namespace).")
        spec.output("kpoints", valid_type=orm.KpointsData, help="The k-points of the bands.")
        spec.output("bands", valid_type=orm.BandsData, help="Bands (eV), with labels and fermi_energy.")
        spec.output("band_summary", valid_type=orm.Dict, help="Fermi level, gap and how they were computed.")
        spec.output("dos", valid_type=orm.XyData, help="Total and projected DOS (absolute energies, eV).")
        spec.output("dos_summary", valid_type=orm.Dict)
        spec.output("dos_plot", valid_type=orm.SinglefileData, help="DOS PNG (against the reference's when given).")
        spec.output("chi", valid_type=orm.XyData, required=False, help="Re and Im chi_aa(omega).")
        spec.output("optics", valid_type=orm.Dict, required=False, help="chi(0), eps_inf, mesh and gap on it.")
        spec.output("chi_plot", valid_type=orm.SinglefileData, required=False)
        spec.output_namespace("reference_properties", dynamic=True, required=False,
                              help="The reference's bands, band_summary, dos, dos_summary, chi and optics.")
        spec.output("band_errors", valid_type=orm.Dict, required=False)
        spec.output("comparison_plot", valid_type=orm.SinglefileData, required=False, help="Bands DFT vs DeepH.")
        spec.output("summary", valid_type=orm.Dict,
                    help="Gap, E_F, DOS at E_F, eps_inf; with a reference its values and the errors.")

        spec.exit_code(300, "ERROR_SUB_PROCESS_FAILED_BANDS",
                       message="DeepHBandsWorkChain<{pk}> failed: [{status}] {detail}")
        spec.exit_code(320, "ERROR_STRUCTURE_MISMATCH", message="the reference does not match the Hamiltonian: {detail}")
        spec.exit_code(340, "ERROR_KPOINTS_FAILED", message="The k-path could not be built: {detail}")
        spec.exit_code(350, "ERROR_BANDS_FAILED", message="The band structure could not be computed: {detail}")
        spec.exit_code(360, "ERROR_DOS_FAILED", message="The density of states could not be computed: {detail}")
        spec.exit_code(370, "ERROR_OPTICS_FAILED", message="chi(omega) could not be computed: {detail}")
        spec.exit_code(380, "ERROR_SUMMARY_FAILED", message="The property summary failed: {detail}")

    # ------------------------------------------------------------------ steps
    def setup(self):
        from aiida_deeph.workflows.bands import band_parameters

        deeph = self.inputs.get("deeph") or {}
        basis = deeph.get("basis")
        self.ctx.band_parameters = band_parameters(self.inputs.protocol.value, self.inputs.temperature.value,
                                                   basis.get_dict() if basis is not None else None)
        self.ctx.optics_note = "not asked for (compute_optics False)"
        self.ctx.reference_optics_note = self.ctx.optics_note

    def predicts(self):
        return "hamiltonian" not in self.inputs

    def run_prediction(self):
        from aiida_deeph.workflows.bands import DeepHBandsWorkChain

        inputs = self.exposed_inputs(DeepHBandsWorkChain, namespace="deeph")
        for name in BAND_INPUTS:
            if name in self.inputs:
                inputs[name] = self.inputs[name]
        inputs["position_matrix"] = orm.Bool(bool(self.inputs.compute_optics.value))
        node = self.submit(DeepHBandsWorkChain, **inputs)
        self.report(f"predicting H and its bands: DeepHBandsWorkChain<{node.pk}>")
        return ToContext(bands_workchain=node)

    def inspect_prediction(self):
        child = self.ctx.bands_workchain
        if not child.is_finished_ok:
            return self.exit_codes.ERROR_SUB_PROCESS_FAILED_BANDS.format(pk=child.pk, status=child.exit_status,
                                                                        detail=child.exit_message)
        out = child.outputs
        self.ctx.hamiltonian = out.hamiltonian
        self.out("hamiltonian", out.hamiltonian)
        self._bands_outputs(out.kpoints, out.bands, out.band_summary)
        if "reference_bands" in out:
            self._reference_bands(out.reference_bands, out.reference_summary, out.band_errors, out.comparison_plot)
        return None

    def run_bands(self):
        from aiida_deeph.workflows.bands import compare_bands, compute_bands, seekpath_kpoints, structure_mismatch

        self.ctx.hamiltonian = ham = self.inputs.hamiltonian
        if "reference" in self.inputs:
            packed = ham.get_packed(load=())
            ref = self.inputs.reference.get_packed(load=())
            mismatch = structure_mismatch(ref.cell, ref.positions, list(ref.species), packed)
            if mismatch:
                return self.exit_codes.ERROR_STRUCTURE_MISMATCH.format(detail=mismatch)
        if "kpoints" in self.inputs:
            kpoints = self.inputs.kpoints
        else:
            try:
                kpoints = seekpath_kpoints(hamiltonian_structure(ham), self.inputs.kpath_parameters)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_KPOINTS_FAILED.format(detail=str(exc))
        params = orm.Dict(self.ctx.band_parameters)
        try:
            res = compute_bands(ham, kpoints, params)
        except Exception as exc:  # noqa: BLE001
            return self.exit_codes.ERROR_BANDS_FAILED.format(detail=str(exc))
        self._bands_outputs(kpoints, res["bands"], res["summary"])
        if "reference" in self.inputs:
            try:
                ref = compute_bands(self.inputs.reference, kpoints, params)
                title = ham.formula + (f" ({ham.base.attributes.get('mp_id')})" if ham.base.attributes.get("mp_id")
                                       else "")
                cmp = compare_bands(res["bands"], ref["bands"], res["summary"], ref["summary"],
                                    orm.Dict({"window_eV": float(self.inputs.window.value), "title": title}))
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_BANDS_FAILED.format(detail=f"reference: {exc}")
            self._reference_bands(ref["bands"], ref["summary"], cmp["band_errors"], cmp["comparison_plot"])
        return None

    def run_dos(self):
        params = self.inputs.dos_parameters
        targets = [("", self.ctx.hamiltonian)]
        if "reference" in self.inputs:
            targets.append(("reference_", self.inputs.reference))
        for prefix, node in targets:
            try:
                res = compute_dos(node, params)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_DOS_FAILED.format(detail=f"{prefix or 'the '}Hamiltonian: {exc}")
            self.ctx[f"{prefix}dos"], self.ctx[f"{prefix}dos_summary"] = res["dos"], res["summary"]
            s = res["summary"].get_dict()
            self.report(f"{prefix.rstrip('_') or 'Hamiltonian'} DOS: {'x'.join(map(str, s['mesh']))} mesh, "
                        f"{s['method']}, E_F = {s['fermi_energy_eV']:.4f} eV, {s['integrated_to_fermi'] + s['states_below_grid']:.3f} "
                        f"states below E_F ({s['num_electrons']:g} electrons)")
        self.out("dos", self.ctx.dos)
        self.out("dos_summary", self.ctx.dos_summary)
        title = orm.Dict({"title": self.ctx.hamiltonian.formula})
        if "reference" in self.inputs:
            plot = plot_dos_node(self.ctx.dos, self.ctx.dos_summary, title, reference_dos=self.ctx.reference_dos,
                                 reference_summary=self.ctx.reference_dos_summary)
            self.out("reference_properties.dos", self.ctx.reference_dos)
            self.out("reference_properties.dos_summary", self.ctx.reference_dos_summary)
        else:
            plot = plot_dos_node(self.ctx.dos, self.ctx.dos_summary, title)
        self.out("dos_plot", plot)
        return None

    def should_run_optics(self):
        if not self.inputs.compute_optics.value:
            return False
        self.ctx.optics_note = self._optics_obstacle(self.ctx.hamiltonian, self.ctx.band_summary)
        if "reference" in self.inputs:
            self.ctx.reference_optics_note = self._optics_obstacle(self.inputs.reference, self.ctx.reference_summary)
        for who, note in (("the Hamiltonian", self.ctx.optics_note),
                          ("the reference", self.ctx.reference_optics_note if "reference" in self.inputs else "")):
            if note and note != "computed":
                self.report(f"optics of {who} skipped: {note}")
        return self.ctx.optics_note == "computed" or self.ctx.reference_optics_note == "computed"

    def run_optics(self):
        params = dict(self.inputs.optics_parameters.get_dict())
        if "mesh" not in params:
            from aiida_deeph.core.lattice import kpoint_grid

            params["mesh"] = [int(n) for n in kpoint_grid(self.ctx.hamiltonian.get_packed(load=()).cell, 0.2,
                                                          kmax=None)]
        targets = []
        if self.ctx.optics_note == "computed":
            targets.append(("", self.ctx.hamiltonian))
        if "reference" in self.inputs and self.ctx.reference_optics_note == "computed":
            targets.append(("reference_", self.inputs.reference))
        from aiida_deeph.physics.optics import OpticsError

        for prefix, node in targets:
            try:
                res = compute_optics(node, orm.Dict(params))
            except OpticsError as exc:           # e.g. a metal on the optics mesh: skipped, with the reason
                self.ctx[f"{prefix}optics_note"] = f"skipped: {exc}"
                self.report(f"optics of {prefix.rstrip('_') or 'the Hamiltonian'} skipped: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_OPTICS_FAILED.format(detail=f"{prefix or 'the '}Hamiltonian: {exc}")
            self.ctx[f"{prefix}chi"], self.ctx[f"{prefix}optics"] = res["chi"], res["static"]
            s = res["static"].get_dict()
            self.report(f"{prefix.rstrip('_') or 'Hamiltonian'} optics: eps_inf = {s['eps_inf']:.3f} on the "
                        f"{'x'.join(map(str, s['mesh']))} mesh (eta {s['eta_eV']:g} eV)")
        if "chi" in self.ctx:
            self.out("chi", self.ctx.chi)
            self.out("optics", self.ctx.optics)
            title = orm.Dict({"title": self.ctx.hamiltonian.formula})
            if "reference_chi" in self.ctx:
                plot = plot_chi_node(self.ctx.chi, self.ctx.optics, title, reference_chi=self.ctx.reference_chi,
                                     reference_static=self.ctx.reference_optics)
            else:
                plot = plot_chi_node(self.ctx.chi, self.ctx.optics, title)
            self.out("chi_plot", plot)
        if "reference_chi" in self.ctx:
            self.out("reference_properties.chi", self.ctx.reference_chi)
            self.out("reference_properties.optics", self.ctx.reference_optics)
        return None

    def summarize(self):
        kwargs = {"band_summary": self.ctx.band_summary, "dos": self.ctx.dos, "dos_summary": self.ctx.dos_summary,
                  "parameters": orm.Dict({"window_eV": float(self.inputs.window.value),
                                          "formula": self.ctx.hamiltonian.formula,
                                          "optics_note": self.ctx.optics_note,
                                          "reference_optics_note": self.ctx.reference_optics_note})}
        if "optics" in self.ctx:
            kwargs["optics"] = self.ctx.optics
        if "reference" in self.inputs:
            kwargs.update(reference_summary=self.ctx.reference_summary, reference_dos=self.ctx.reference_dos,
                          reference_dos_summary=self.ctx.reference_dos_summary)
            if "band_errors" in self.ctx:
                kwargs["band_errors"] = self.ctx.band_errors
            if "reference_optics" in self.ctx:
                kwargs["reference_optics"] = self.ctx.reference_optics
        try:
            summary = summarize_properties(**kwargs)
        except Exception as exc:  # noqa: BLE001
            return self.exit_codes.ERROR_SUMMARY_FAILED.format(detail=str(exc))
        self.out("summary", summary)
        s = summary.get_dict()
        line = f"{s['formula']}: gap {s['band_gap_eV']:.3f} eV{' (metal)' if s['is_metal'] else ''}"
        if "eps_inf" in s:
            line += f", eps_inf {s['eps_inf']:.3f}"
        c = s.get("comparison")
        if c:
            fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
            line += (f"; vs the reference: band MAE {fmt(c.get('band_mae_meV'))} meV, gap error "
                     f"{fmt(c.get('gap_error_meV'))} meV, DOS relative L1 {c['dos_relative_l1']:.3g}")
            if "eps_inf_error" in c:
                line += f", eps_inf error {c['eps_inf_error']:+.3f}"
        self.report(line)
        return None

    # ------------------------------------------------------------------ helpers
    def _bands_outputs(self, kpoints, bands, summary):
        self.ctx.band_summary = summary
        self.out("kpoints", kpoints)
        self.out("bands", bands)
        self.out("band_summary", summary)

    def _reference_bands(self, bands, summary, errors, plot):
        self.ctx.reference_summary = summary
        self.ctx.band_errors = errors
        self.out("reference_properties.bands", bands)
        self.out("reference_properties.band_summary", summary)
        self.out("band_errors", errors)
        self.out("comparison_plot", plot)

    @staticmethod
    def _optics_obstacle(node: HamiltonianData, band_summary: orm.Dict) -> str:
        if not node.base.attributes.get("has_position_matrix"):
            return ("skipped: no position matrix (a predicted H gets it from deeph.pao_dir or an overlap node that "
                    "holds one; a DFT run from OpenmxCalculation settings {'position_matrix': True} or "
                    "`aiida-deeph convert openmx --position-matrix`)")
        if band_summary.get("is_metal"):
            return "skipped: a metal (band gap 0): chi(0) diverges (intraband Drude term)"
        return "computed"
