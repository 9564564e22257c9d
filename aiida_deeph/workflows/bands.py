"""``DeepHBandsWorkChain``: structure + DeepH model -> predicted H -> band structure (vs DFT when given).

Steps: overlap S (given node, PAO files via ``compute_overlap_node``, or an OpenMX run with the
``overlap_only`` protocol) -> ``DeepHInferCalculation`` -> k-path (seekpath through the
``seekpath_kpoints`` calcfunction, or explicit ``kpoints``) -> ``compute_bands`` calcfunction
(BandsData in eV, Fermi level from the electron count, band gap) -> with a ``reference``: the same
for the DFT H, then ``compare_bands`` (band errors, DFT-vs-DeepH PNG). Every derived node is made
by a calcfunction, so the whole chain is in the provenance graph.
"""
from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.data.model import DeepHModelData

ACCEPTED_OPENMX_EXIT_STATUS = (0, 410)  # 410: SCF not converged -- expected with the overlap_only protocol


# ====================================================================== pure helpers
def structure_mismatch(cell, positions, symbols, packed, tol: float = 1e-3) -> str | None:
    """Why the structure (cell rows, Cartesian positions, symbols) differs from ``packed``'s, or None.

    Same cell (within ``tol`` Angstrom), same composition, and every atom found at the same
    fractional position (modulo lattice vectors, within ``tol`` Angstrom); the atom order may differ.
    """
    cell = np.asarray(cell, dtype=float)
    if not np.allclose(cell, packed.cell, atol=tol):
        return f"cells differ: {cell.round(5).tolist()} vs {packed.cell.round(5).tolist()}"
    if sorted(symbols) != sorted(packed.species):
        return f"compositions differ: {sorted(symbols)} vs {sorted(packed.species)}"
    inv = np.linalg.inv(cell)
    frac_a = np.asarray(positions, dtype=float) @ inv
    frac_b = packed.positions @ inv
    for a, (s, fa) in enumerate(zip(symbols, frac_a)):
        d = fa[None, :] - frac_b
        d -= np.rint(d)
        dist = np.linalg.norm(d @ cell, axis=1)
        ok = [b for b in np.nonzero(dist < tol)[0] if packed.species[b] == s]
        if not ok:
            return f"atom {a} ({s}) at {np.round(positions[a], 4).tolist()} has no counterpart"
    return None


def fractional_kpoints(kpoints: orm.KpointsData, cell) -> np.ndarray:
    """k-points of an explicit-list KpointsData, fractional in the reciprocal basis of ``cell``.

    A KpointsData with a cell different from ``cell`` is converted through Cartesian coordinates;
    one without a cell is taken as fractional in ``cell``'s reciprocal basis.
    """
    try:
        kcell = np.asarray(kpoints.cell)
    except AttributeError:
        kcell = None
    frac = np.asarray(kpoints.get_kpoints(), dtype=float).reshape(-1, 3)
    cell = np.asarray(cell, dtype=float)
    if kcell is None or np.allclose(kcell, cell, atol=1e-8):
        return frac
    from aiida_deeph.core.lattice import cartesian_to_fractional, fractional_to_cartesian

    return cartesian_to_fractional(fractional_to_cartesian(frac, kcell), cell)


def band_parameters(protocol: str, temperature: float, basis: dict | None = None) -> dict:
    """``compute_bands`` parameters of an OpenMX protocol (basis table, SCF k-spacing of the Fermi level) at
    ``temperature`` (K); a custom ``basis`` ({'name', 'elements': {el: {.., 'valence'}}}) gives the valence."""
    from aiida_deeph.io.protocols import load_protocol

    proto = load_protocol(protocol)
    params = {
        "basis_table": proto.get("basis_table", "corpus"),
        "kpoints_spacing": float(proto["kpoints_spacing"]),
        "kpoints_max": int(proto.get("kpoints_max", 8)),
        "temperature": float(temperature),
        "protocol": protocol,
    }
    if basis:
        if basis.get("elements"):
            params["valence"] = {el: float(v["valence"]) for el, v in basis["elements"].items()
                                 if isinstance(v, dict) and "valence" in v}
        elif basis.get("name"):
            params["basis_table"] = basis["name"]
    return params


def png_node(draw, filename: str) -> orm.SinglefileData:
    """A SinglefileData ``filename`` of the PNG that ``draw(path)`` writes (through a temporary file)."""
    import os
    import tempfile

    fd, png = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        draw(png)
        with open(png, "rb") as handle:
            return orm.SinglefileData(handle, filename=filename)
    finally:
        os.unlink(png)


# ====================================================================== calcfunctions
@calcfunction
def seekpath_kpoints(structure: orm.StructureData, parameters: orm.Dict) -> orm.KpointsData:
    """The seekpath band path of ``structure`` with k in the reciprocal basis of the INPUT cell.

    ``parameters``: ``reference_distance`` (1/Angstrom between points, default 0.025),
    ``symprec`` (default 1e-3). Labels are kept; the path may be built on seekpath's standardized
    cell, but the k-points are expressed in the input cell's basis (attribute ``kpath_source``).
    """
    from aiida_deeph.physics.kpath import auto_kpath

    params = parameters.get_dict()
    pmg = structure.get_pymatgen_structure()
    path = auto_kpath(np.asarray(structure.cell), pmg.cart_coords, [site.specie.symbol for site in pmg],
                      reference_distance=float(params.get("reference_distance", 0.025)),
                      symprec=float(params.get("symprec", 1e-3)))
    kp = orm.KpointsData()
    kp.set_cell(structure.cell)
    kp.set_kpoints(np.asarray(path["kpoints"], dtype=float))
    labels = [(int(i), str(l)) for i, l in path.get("labels", [])]
    if labels:
        kp.labels = labels
    for key in ("bravais_lattice", "spacegroup_number", "is_supercell"):
        if path.get(key) is not None:
            kp.base.attributes.set(key, path[key])
    kp.base.attributes.set("kpath_source", "seekpath; k fractional in the input cell's reciprocal basis")
    return kp


def _electrons(packed, table_name: str, valence: dict | None = None):
    """Valence electron count: ``valence`` {element: electrons} (a custom basis), else the named basis
    table, else the count stored in the Hamiltonian."""
    from aiida_deeph.physics.kspace import valence_electrons

    if valence and all(s in valence for s in packed.species):
        return float(sum(float(valence[s]) for s in packed.species)), "basis valence (input basis)"
    return valence_electrons(packed, table_name)


@calcfunction
def compute_bands(hamiltonian: HamiltonianData, kpoints: orm.KpointsData, parameters: orm.Dict):
    """Band structure (BandsData, eV) of ``hamiltonian`` along ``kpoints`` and a summary Dict.

    ``parameters``: ``basis_table`` or ``valence`` ({element: electrons}), ``kpoints_spacing``/``kpoints_max`` (SCF
    k-mesh of the Fermi level, the protocol's), ``temperature`` (K, Fermi-Dirac),
    ``s_threshold``, ``num_bands`` (only for the sparse solver of large cells).
    Fermi level: electron count of the basis table on the protocol mesh (physics.bands.fermi_level);
    band gap: over the union of the band path and the mesh.
    """
    from aiida_deeph.physics.bands import band_structure

    p = parameters.get_dict()
    packed = hamiltonian.get_packed(load=("hamiltonian", "overlap"))
    kfrac = fractional_kpoints(kpoints, packed.cell)
    nel, nel_source = _electrons(packed, p.get("basis_table", "corpus"), p.get("valence"))
    s_threshold = float(p.get("s_threshold", 1e-7))
    bs = band_structure(packed, kfrac, nel, spacing=float(p.get("kpoints_spacing", 0.30)),
                        kmax=p.get("kpoints_max", 8), temperature=float(p.get("temperature", 300.0)),
                        s_threshold=s_threshold, num_bands=p.get("num_bands"))
    res, solver, eig, fl, ef = bs["result"], bs["solver"], bs["eigenvalues"], bs["fermi"], bs["fermi_energy_eV"]
    path_gap, gap = bs["path_gap"], bs["gap"]

    bands = orm.BandsData()
    bands.set_cell(packed.cell.tolist())
    bands.set_kpoints(kfrac)
    bands.set_bands(eig, units="eV")
    labels = getattr(kpoints, "labels", None) or []
    if labels:
        bands.labels = [(int(i), str(l)) for i, l in labels]
    bands.base.attributes.set("fermi_energy", float(ef))
    bands.base.attributes.set("fermi_energy_units", "eV")
    bands.base.attributes.set("source", hamiltonian.base.attributes.get("source"))

    summary = {
        "fermi_energy_eV": float(ef),
        "band_gap_eV": float(gap["gap_eV"]),
        "is_metal": bool(gap["is_metal"]),
        "vbm_eV": gap["vbm_eV"],
        "cbm_eV": gap["cbm_eV"],
        "band_gap_path_eV": float(path_gap["gap_eV"]),
        "direct_gap_path_eV": path_gap.get("direct_gap_eV"),
        "band_gap_mesh_eV": float(fl["gap_eV"]),
        "gap_over": "band path and Fermi-level k-mesh",
        "num_electrons": float(nel),
        "electrons_source": nel_source,
        "fermi_method": ("Fermi-Dirac electron count on the protocol k-mesh (physics.bands.fermi_level; "
                         "mid-gap intrinsic level for gaps wider than 20 kT)"),
        "fermi_kmesh": list(fl["kmesh"]),
        "fermi_num_kpoints": int(fl["num_kpoints"]),
        "temperature_K": float(fl["temperature"]),
        "smearing": "Fermi-Dirac",
        "num_kpoints": int(len(kfrac)),
        "num_bands": int(eig.shape[1]),
        "solver": solver,
        "dropped_s_eigenvectors": int(max(int(np.max(res.dropped)) if len(res.dropped) else 0,
                                          fl["dropped_s_eigenvectors"])),
        "min_s_eigenvalue": float(res.min_s_eigenvalue),
        "hamiltonian_source": hamiltonian.base.attributes.get("source"),
        "energy_unit": "eV",
    }
    if hamiltonian.base.attributes.get("fermi_energy") is not None:
        summary["node_fermi_energy_eV"] = float(hamiltonian.base.attributes.get("fermi_energy"))
    return {"bands": bands, "summary": orm.Dict(summary)}


@calcfunction
def compare_bands(bands: orm.BandsData, reference_bands: orm.BandsData, summary: orm.Dict,
                  reference_summary: orm.Dict, parameters: orm.Dict):
    """Band errors of ``bands`` against ``reference_bands`` (Dict) and a DFT-vs-DeepH plot (PNG).

    Each set aligned to its own Fermi level, bands matched by index, MAE (meV) over the eigenvalues
    within ``E_F +- window_eV`` of the reference; gap error = predicted - reference gap.
    """

    from aiida_deeph.physics.compare import band_errors, path_distances, plot_comparison

    p = parameters.get_dict()
    window = float(p.get("window_eV", 3.0))
    pred = bands.get_bands()
    ref = reference_bands.get_bands()
    s, rs = summary.get_dict(), reference_summary.get_dict()
    errors = band_errors(pred, ref, s["fermi_energy_eV"], rs["fermi_energy_eV"], window_eV=window,
                         predicted_gap=s["band_gap_eV"], reference_gap=rs["band_gap_eV"])
    errors["predicted_is_metal"] = s["is_metal"]
    errors["reference_is_metal"] = rs["is_metal"]

    kcart = bands.get_kpoints(cartesian=True)
    x, ticks = path_distances(kcart, bands.labels)
    title = p.get("title") or ""
    mae = errors.get("mae_meV")
    if mae is not None:
        title = f"{title}  band MAE {mae:.1f} meV (E_F ± {window:g} eV)".strip()
    plot = png_node(lambda path: plot_comparison(
        path, x, ticks, pred - s["fermi_energy_eV"], ref - rs["fermi_energy_eV"], title=title, window_eV=window,
        labels=(p.get("reference_label", "DFT (OpenMX)"), "DeepH")), "bands_comparison.png")
    return {"band_errors": orm.Dict(errors), "comparison_plot": plot}


# ====================================================================== the WorkChain
def _validate_inputs(inputs, _):
    sources = [k for k in ("overlap", "pao_dir", "openmx_code") if inputs.get(k) is not None]
    if len(sources) != 1:
        return (f"give exactly one overlap source: overlap (HamiltonianData with S), pao_dir (PAO folder) or "
                f"openmx_code (OpenMX 'overlap_only' run); got {sources or 'none'}")
    kpoints = inputs.get("kpoints")
    if kpoints is not None:
        try:
            kpoints.get_kpoints()
        except AttributeError:
            return "kpoints must be an explicit list of k-points (KpointsData.set_kpoints), not a mesh"
    return None


class DeepHBandsWorkChain(WorkChain):
    """Band structure of a structure from a DeepH model, optionally compared with a DFT reference."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, help="The structure.")
        spec.input("model", valid_type=DeepHModelData, help="The trained DeepH-2 model.")
        spec.input("infer_code", valid_type=orm.AbstractCode, help="The `aiida-deeph` code running predict.")
        spec.input("infer_options", valid_type=orm.Dict, required=False,
                   help="metadata.options of the DeepHInferCalculation (resources, queue, GPUs, ...).")
        spec.input("infer_settings", valid_type=orm.Dict, required=False, help="settings of the inference: {'device'}.")
        # overlap sources (exactly one)
        spec.input("overlap", valid_type=HamiltonianData, required=False,
                   help="A HamiltonianData whose S is used (its H is never sent to the model).")
        spec.input("pao_dir", valid_type=orm.Str, required=False,
                   help="Folder with the PAO files: S from the two-centre integrals (compute_overlap_node).")
        spec.input("basis", valid_type=orm.Dict, required=False,
                   help="Basis table for pao_dir / OpenMX: {'name', 'elements': {el: {pao, vps, valence}}}; "
                        "default: the protocol's table.")
        spec.input("openmx_code", valid_type=orm.AbstractCode, required=False,
                   help="OpenMX code: S from a run with the 'overlap_only' protocol (one SCF step).")
        spec.input("openmx_options", valid_type=orm.Dict, required=False,
                   help="metadata.options of the overlap-only OpenmxCalculation.")
        spec.input("position_matrix", valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help="Also get the position matrix <i|r|j> with S (pao_dir: two-centre integrals; openmx_code: "
                        "OpenMX's OLPpo); the predicted H then carries it, which compute_optics needs. A given "
                        "overlap node passes on the position matrix it holds.")
        # bands
        spec.input("reference", valid_type=HamiltonianData, required=False,
                   help="DFT HamiltonianData of the same structure: its bands, band errors and a comparison plot.")
        spec.input("kpoints", valid_type=orm.KpointsData, required=False,
                   help="Explicit k-points (fractional in the reciprocal basis of the KpointsData's cell, or of "
                        "the structure's cell when it has none); default: the seekpath path.")
        spec.input("kpath_parameters", valid_type=orm.Dict, default=lambda: orm.Dict({"reference_distance": 0.025}),
                   help="seekpath_kpoints parameters: reference_distance (1/A), symprec.")
        spec.input("protocol", valid_type=orm.Str, default=lambda: orm.Str("moderate"),
                   help="OpenMX protocol giving the basis table (valence electrons) and the SCF k-spacing of the "
                        "Fermi level.")
        spec.input("temperature", valid_type=orm.Float, default=lambda: orm.Float(300.0),
                   help="Electronic temperature (K) of the Fermi-Dirac occupation.")
        spec.input("window", valid_type=orm.Float, default=lambda: orm.Float(3.0),
                   help="Band errors over reference eigenvalues within E_F +- window (eV).")
        spec.inputs.validator = _validate_inputs

        spec.outline(
            cls.setup,
            if_(cls.should_run_openmx)(cls.run_openmx_overlap),
            cls.get_overlap,
            cls.run_inference,
            cls.inspect_inference,
            cls.get_kpoints,
            cls.run_bands,
            if_(cls.has_reference)(cls.compare),
            cls.finalize,
        )
        spec.output("hamiltonian", valid_type=HamiltonianData, help="The predicted Hamiltonian (source 'model').")
        spec.output("overlap", valid_type=HamiltonianData, required=False,
                    help="The overlap node made by the workchain (pao_dir or OpenMX source).")
        spec.output("kpoints", valid_type=orm.KpointsData, help="The k-points of the bands.")
        spec.output("bands", valid_type=orm.BandsData, help="DeepH bands (eV), with labels and fermi_energy.")
        spec.output("band_summary", valid_type=orm.Dict, help="Fermi level, band gap and how they were computed.")
        spec.output("reference_bands", valid_type=orm.BandsData, required=False)
        spec.output("reference_summary", valid_type=orm.Dict, required=False)
        spec.output("band_errors", valid_type=orm.Dict, required=False,
                    help="MAE/RMSE/max (meV) in E_F +- window, gap error (meV).")
        spec.output("comparison_plot", valid_type=orm.SinglefileData, required=False, help="DFT vs DeepH PNG.")

        spec.exit_code(300, "ERROR_INCOMPATIBLE_MODEL", message="The model cannot handle this structure: {detail}")
        spec.exit_code(310, "ERROR_OVERLAP_FAILED", message="The overlap S could not be obtained: {detail}")
        spec.exit_code(320, "ERROR_STRUCTURE_MISMATCH", message="{what} does not match the input structure: {detail}")
        spec.exit_code(330, "ERROR_INFERENCE_FAILED", message="DeepHInferCalculation<{pk}> failed: {detail}")
        spec.exit_code(340, "ERROR_KPOINTS_FAILED", message="The k-path could not be built: {detail}")
        spec.exit_code(350, "ERROR_BANDS_FAILED", message="The band structure could not be computed: {detail}")
        spec.exit_code(360, "ERROR_COMPARISON_FAILED", message="The band comparison failed: {detail}")

    # ------------------------------------------------------------------ steps
    def setup(self):
        self.ctx.band_parameters = band_parameters(self.inputs.protocol.value, self.inputs.temperature.value,
                                                   self.inputs.basis.get_dict() if "basis" in self.inputs else None)
        model = self.inputs.model
        symbols = sorted({s for kind in self.inputs.structure.kinds for s in kind.symbols})
        unknown = sorted(set(symbols) - set(model.elements))
        if unknown:
            return self.exit_codes.ERROR_INCOMPATIBLE_MODEL.format(
                detail=f"element(s) {', '.join(unknown)} are not known to the model (trained on "
                       f"{' '.join(model.elements)})")
        return None

    def should_run_openmx(self):
        return "openmx_code" in self.inputs

    def run_openmx_overlap(self):
        from aiida_deeph.calculations.openmx import OpenmxCalculation

        overrides = {}
        if "openmx_options" in self.inputs:
            overrides["metadata"] = {"options": self.inputs.openmx_options.get_dict()}
        builder = OpenmxCalculation.get_builder_from_protocol(self.inputs.openmx_code, self.inputs.structure,
                                                              protocol="overlap_only", overrides=overrides)
        if "basis" in self.inputs:
            builder.basis = self.inputs.basis
        if self.inputs.position_matrix.value:
            settings = builder.settings.get_dict() if builder.get("settings") is not None else {}
            builder.settings = orm.Dict({**settings, "position_matrix": True})
        node = self.submit(builder)
        self.report(f"running OpenmxCalculation<{node.pk}> with the 'overlap_only' protocol (one SCF step) for S")
        return ToContext(openmx=node)

    def get_overlap(self):
        structure = self.inputs.structure
        if "overlap" in self.inputs:
            node = self.inputs.overlap
            self.report(f"overlap: the S of the given HamiltonianData<{node.pk}> (source "
                        f"{node.base.attributes.get('source')!r}, {node.formula}); e.g. the replayed DFT run of "
                        f"the same structure when neither PAO files nor OpenMX are available. Its H is not used "
                        f"for the prediction.")
        elif "pao_dir" in self.inputs:
            from aiida_deeph.workflows.overlap import compute_overlap_node

            basis = self.inputs.basis if "basis" in self.inputs else self._protocol_basis()
            try:
                result, calc = compute_overlap_node.run_get_node(structure=structure, pao_dir=self.inputs.pao_dir,
                                                                 basis=basis, position_matrix=self.inputs.position_matrix)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_OVERLAP_FAILED.format(detail=f"compute_overlap_node: {exc}")
            if not calc.is_finished_ok or not isinstance(result, HamiltonianData):
                return self.exit_codes.ERROR_OVERLAP_FAILED.format(
                    detail=f"compute_overlap_node<{calc.pk}>: [{calc.exit_status}] {calc.exit_message}")
            node = result
            self.report(f"overlap: S from the PAO files in {self.inputs.pao_dir.value} -> HamiltonianData<{node.pk}>")
            self.out("overlap", node)
        else:
            calc = self.ctx.openmx
            if calc.exit_status not in ACCEPTED_OPENMX_EXIT_STATUS or "hamiltonian" not in calc.outputs:
                return self.exit_codes.ERROR_OVERLAP_FAILED.format(
                    detail=f"OpenmxCalculation<{calc.pk}> finished with exit status {calc.exit_status} "
                           f"({calc.exit_message}) and no hamiltonian output")
            node = calc.outputs.hamiltonian
            self.report(f"overlap: S of the overlap-only OpenmxCalculation<{calc.pk}> -> HamiltonianData<{node.pk}>")
            self.out("overlap", node)
        from aiida_deeph.calculations.infer import model_compatibility

        problem = model_compatibility(self.inputs.model, node)
        if problem:
            return self.exit_codes.ERROR_INCOMPATIBLE_MODEL.format(detail=problem)
        mismatch = self._mismatch(node)
        if mismatch:
            return self.exit_codes.ERROR_STRUCTURE_MISMATCH.format(what=f"the overlap HamiltonianData<{node.pk}>",
                                                                   detail=mismatch)
        if "reference" in self.inputs:
            mismatch = self._mismatch(self.inputs.reference)
            if mismatch:
                return self.exit_codes.ERROR_STRUCTURE_MISMATCH.format(
                    what=f"the reference HamiltonianData<{self.inputs.reference.pk}>", detail=mismatch)
        self.ctx.overlap = node
        return None

    def run_inference(self):
        from aiida_deeph.calculations.infer import DeepHInferCalculation

        builder = DeepHInferCalculation.get_builder()
        builder.code = self.inputs.infer_code
        builder.model = self.inputs.model
        builder.overlaps = {"structure": self.ctx.overlap}
        if "infer_settings" in self.inputs:
            builder.settings = self.inputs.infer_settings
        if "infer_options" in self.inputs:
            builder.metadata.options = self.inputs.infer_options.get_dict()
        node = self.submit(builder)
        self.report(f"predicting H with DeepHModelData<{self.inputs.model.pk}>: DeepHInferCalculation<{node.pk}>")
        return ToContext(infer=node)

    def inspect_inference(self):
        from aiida_deeph.calculations.infer import DeepHInferCalculation

        calc = self.ctx.infer
        if not calc.is_finished_ok or "structure" not in calc.outputs.hamiltonians:
            if calc.exit_status == DeepHInferCalculation.exit_codes.ERROR_INCOMPATIBLE_MODEL.status:
                return self.exit_codes.ERROR_INCOMPATIBLE_MODEL.format(detail=calc.exit_message)
            return self.exit_codes.ERROR_INFERENCE_FAILED.format(
                pk=calc.pk, detail=f"exit status {calc.exit_status}: {calc.exit_message}")
        self.ctx.hamiltonian = calc.outputs.hamiltonians.structure
        self.out("hamiltonian", self.ctx.hamiltonian)
        return None

    def get_kpoints(self):
        if "kpoints" in self.inputs:
            self.ctx.kpoints = self.inputs.kpoints
            self.report(f"bands at the {len(self.inputs.kpoints.get_kpoints())} given k-points")
        else:
            try:
                self.ctx.kpoints = seekpath_kpoints(self.inputs.structure, self.inputs.kpath_parameters)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_KPOINTS_FAILED.format(detail=str(exc))
            labels = "-".join(l for _, l in (self.ctx.kpoints.labels or []))
            self.report(f"seekpath k-path ({len(self.ctx.kpoints.get_kpoints())} points, {labels}); k in the "
                        f"input cell's reciprocal basis")
        self.out("kpoints", self.ctx.kpoints)
        return None

    def run_bands(self):
        params = orm.Dict(self.ctx.band_parameters)
        try:
            res = compute_bands(self.ctx.hamiltonian, self.ctx.kpoints, params)
        except Exception as exc:  # noqa: BLE001
            return self.exit_codes.ERROR_BANDS_FAILED.format(detail=f"predicted H: {exc}")
        self.ctx.bands, self.ctx.summary = res["bands"], res["summary"]
        s = self.ctx.summary.get_dict()
        self.report(f"DeepH bands: E_F = {s['fermi_energy_eV']:.4f} eV, gap = {s['band_gap_eV']:.4f} eV"
                    f"{' (metal)' if s['is_metal'] else ''}")
        if "reference" in self.inputs:
            try:
                ref = compute_bands(self.inputs.reference, self.ctx.kpoints, params)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_BANDS_FAILED.format(detail=f"reference H: {exc}")
            self.ctx.reference_bands, self.ctx.reference_summary = ref["bands"], ref["summary"]
            r = self.ctx.reference_summary.get_dict()
            self.report(f"reference bands: E_F = {r['fermi_energy_eV']:.4f} eV, gap = {r['band_gap_eV']:.4f} eV")
        return None

    def has_reference(self):
        return "reference" in self.inputs

    def compare(self):
        title = f"{self.ctx.hamiltonian.formula}"
        mp_id = self.inputs.reference.base.attributes.get("mp_id")
        if mp_id:
            title += f" ({mp_id})"
        try:
            res = compare_bands(self.ctx.bands, self.ctx.reference_bands, self.ctx.summary,
                                self.ctx.reference_summary,
                                orm.Dict({"window_eV": float(self.inputs.window.value), "title": title}))
        except Exception as exc:  # noqa: BLE001
            return self.exit_codes.ERROR_COMPARISON_FAILED.format(detail=str(exc))
        e = res["band_errors"].get_dict()
        mae = e.get("mae_meV")
        gap = e.get("gap_error_meV")
        self.report(f"band errors vs the reference: MAE {mae if mae is None else round(mae, 2)} meV over "
                    f"{e['num_values']} eigenvalues within E_F +- {e['window_eV']:g} eV; gap error "
                    f"{gap if gap is None else round(gap, 2)} meV")
        self.out("reference_bands", self.ctx.reference_bands)
        self.out("reference_summary", self.ctx.reference_summary)
        self.out("band_errors", res["band_errors"])
        self.out("comparison_plot", res["comparison_plot"])
        return None

    def finalize(self):
        self.out("bands", self.ctx.bands)
        self.out("band_summary", self.ctx.summary)

    # ------------------------------------------------------------------ helpers
    def _protocol_basis(self) -> orm.Dict:
        from aiida_deeph.core.basis import load_basis_table

        table = load_basis_table(self.ctx.band_parameters["basis_table"])
        return orm.Dict({"name": table.name, "elements": table.elements})

    def _mismatch(self, node: HamiltonianData):
        structure = self.inputs.structure
        pmg = structure.get_pymatgen_structure()
        packed = node.get_packed(load=())
        return structure_mismatch(structure.cell, pmg.cart_coords, [s.specie.symbol for s in pmg], packed)

