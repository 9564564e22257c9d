"""``OpenmxCalculation``: an OpenMX 3.9 SCF run whose H and S become a ``HamiltonianData`` node."""
from __future__ import annotations

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_deeph.core.basis import BasisTable, load_basis_table
from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.engine import AttachedOutputsMixin

DATA_PATH_EXTRA = "openmx_data_path"
# Keywords that the CalcJob itself owns: the user may not set them through ``parameters``.
_RESERVED = ("system.name", "system.currrentdirectory", "data.path", "scf.kgrid") + tuple(
    k.lower() for k in (
        "Species.Number", "Definition.of.Atomic.Species", "Atoms.Number", "Atoms.SpeciesAndCoordinates.Unit",
        "Atoms.SpeciesAndCoordinates", "Atoms.UnitVectors.Unit", "Atoms.UnitVectors",
    )
)


def nest_keywords(flat: dict) -> dict:
    """OpenMX keywords ``{'scf.Mixing.Type': 'rmm-diisk'}`` -> ``{'scf': {'Mixing': {'Type': 'rmm-diisk'}}}``.

    AiiDA Dict keys cannot contain dots, so ``parameters`` holds OpenMX keywords nested at the dots.
    """
    nested: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"OpenMX keyword {key} clashes with a shorter keyword")
        node[parts[-1]] = value
    return nested


def flatten_keywords(nested: dict, prefix: str = "") -> dict:
    """Inverse of :func:`nest_keywords` (also accepts flat keys written with ``__`` for dots)."""
    flat: dict = {}
    for key, value in nested.items():
        name = f"{prefix}{key.replace('__', '.')}"
        if isinstance(value, dict):
            flat.update(flatten_keywords(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _validate_structure(structure, _):
    for kind in structure.kinds:
        if kind.is_alloy or kind.has_vacancies:
            return (f"structure has partial occupancy (kind {kind.name}: {kind.symbols} weights {kind.weights}); "
                    "OpenMX needs an ordered structure")
    return None


def _validate_parameters(parameters, _):
    bad = [k for k in flatten_keywords(parameters.get_dict()) if k.lower() in _RESERVED]
    if bad:
        return f"parameters may not set {', '.join(bad)}: the calculation writes them from its inputs"
    return None


def _validate_inputs(inputs, _):
    structure = inputs.get("structure")
    if structure is None:
        return None
    table = basis_table_from_input(inputs.get("basis"))
    missing = sorted({sym for kind in structure.kinds for sym in kind.symbols} - set(table.elements))
    if missing:
        return (f"element(s) {', '.join(missing)} have no basis in the basis table '{table.name}' "
                f"(available: {' '.join(sorted(table.elements))})")
    kpoints = inputs.get("kpoints")
    if kpoints is not None:
        try:
            mesh, _offset = kpoints.get_kpoints_mesh()
        except AttributeError:
            return "kpoints must be a mesh (KpointsData.set_kpoints_mesh)"
    return None


def basis_table_from_input(basis) -> BasisTable:
    """``basis`` Dict: {'name': ..., 'elements': {el: {'pao','vps','valence'}}} or None (corpus table)."""
    if basis is None:
        return load_basis_table("corpus")
    data = basis.get_dict()
    if "elements" not in data:
        return load_basis_table(data.get("name", "corpus"))
    return BasisTable(name=data.get("name", "custom"), elements=data["elements"])


class OpenmxCalculation(AttachedOutputsMixin, CalcJob):
    """Run OpenMX 3.9 (``HS.fileout on``) on a structure and store H, S as ``HamiltonianData``.

    ``parameters`` holds OpenMX keywords (protocol values plus overrides); the structure, species,
    basis, k-grid and DATA.PATH are written by the calculation. DATA.PATH comes from ``data_path``
    in ``settings``, else from the code's extra ``openmx_data_path`` (set by ``aiida-deeph setup openmx``).
    """

    _INPUT = "aiida.dat"
    _SYSTEM_NAME = "aiida"
    _STDOUT = "aiida.std"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, validator=_validate_structure,
                   help="The crystal structure (ordered; Cartesian Angstrom are written).")
        spec.input("parameters", valid_type=orm.Dict, validator=_validate_parameters,
                   help="OpenMX keywords nested at the dots (AiiDA keys cannot hold dots): "
                        "{'scf': {'energycutoff': '200.0'}} for scf.energycutoff 200.0.")
        spec.input("kpoints", valid_type=orm.KpointsData, help="Monkhorst-Pack mesh (scf.Kgrid).")
        spec.input("basis", valid_type=orm.Dict, required=False,
                   help="Basis table {'name', 'elements': {el: {pao, vps, valence}}}; default: the corpus table.")
        spec.input("settings", valid_type=orm.Dict, required=False,
                   help="{'data_path': DATA.PATH on the computer, 'band_kpath': True or segments, "
                        "'position_matrix': True to store OpenMX's <i|r|j> (OLPpo) in the HamiltonianData, "
                        "which compute_optics needs}")
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="A previous run: its restart files are copied and used when parameters set scf.restart on.")
        spec.inputs.validator = _validate_inputs
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        spec.inputs["metadata"]["options"]["parser_name"].default = "deeph.openmx"
        spec.inputs["metadata"]["options"]["input_filename"].default = cls._INPUT
        spec.inputs["metadata"]["options"]["output_filename"].default = f"{cls._SYSTEM_NAME}.out"
        spec.inputs["metadata"]["options"]["withmpi"].default = False

        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Energies (eV and Hartree), Fermi level, SCF history, convergence, timings, warnings.")
        spec.output("hamiltonian", valid_type=HamiltonianData, required=False,
                    help="HamiltonianData: H (eV) and S of the converged run.")
        spec.output("band_structure", valid_type=orm.BandsData, required=False,
                    help="OpenMX's own band structure (.Band) when Band.dispersion was on.")
        spec.default_output_node = "output_parameters"

        spec.exit_code(300, "ERROR_NO_RETRIEVED_FOLDER", message="The retrieved folder could not be accessed.")
        spec.exit_code(301, "ERROR_OUTPUT_STDOUT_MISSING", message="OpenMX's standard output was not retrieved.")
        spec.exit_code(302, "ERROR_OUTPUT_FILE_MISSING", message="The .out file was not written: {detail}")
        spec.exit_code(303, "ERROR_SCFOUT_MISSING", message="The .scfout file was not written (HS.fileout on?).")
        spec.exit_code(304, "ERROR_SCFOUT_CORRUPTED", message="The .scfout file could not be read: {detail}")
        spec.exit_code(310, "ERROR_OUTPUT_PARSING", message="The output could not be parsed: {detail}")
        spec.exit_code(320, "ERROR_MISSING_PSEUDO_FILE",
                       message="OpenMX could not find a PAO/VPS file: {detail} (check DATA.PATH and the basis table)")
        spec.exit_code(330, "ERROR_EIGENSOLVER_ABORT",
                       message="OpenMX's eigensolver aborted (ELPA/LAPACK DSTEQR failed): {detail}")
        spec.exit_code(340, "ERROR_NOT_NORMALLY_FINISHED",
                       message="OpenMX stopped before 'The calculation was normally finished.' (killed or crashed): {detail}")
        spec.exit_code(350, "ERROR_NO_RECORDING",
                       message="The REPLAY stand-in has no recorded OpenMX run of this input (nothing ran): {detail}")
        spec.exit_code(400, "ERROR_OUT_OF_WALLTIME", message="The calculation ran out of walltime.")
        spec.exit_code(410, "ERROR_SCF_NOT_CONVERGED",
                       message="The SCF did not converge within scf.maxIter={max_iter} steps (last NormRD {normrd}).")

    # ------------------------------------------------------------------ helpers
    @classmethod
    def get_builder_from_protocol(cls, code, structure, protocol: str | None = None, overrides: dict | None = None,
                                  **_):
        """A builder filled from an OpenMX protocol (``fast``, ``moderate`` (default), ``precise``,
        ``overlap_only``); ``overrides`` are merged recursively: ``{'parameters': {...},
        'kpoints_spacing': 0.2, 'basis_table': 'corpus', 'metadata': {'options': {...}}}``."""
        from aiida_deeph.core.lattice import kpoint_grid
        from aiida_deeph.io.protocols import load_protocol

        proto = load_protocol(protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        builder.structure = structure
        builder.parameters = orm.Dict(nest_keywords(dict(proto.get("parameters", {}))))
        cell = structure.cell
        mesh = kpoint_grid(cell, proto["kpoints_spacing"], proto.get("kpoints_max", 8))
        kpoints = orm.KpointsData()
        kpoints.set_cell(cell)
        kpoints.set_kpoints_mesh(mesh)
        builder.kpoints = kpoints
        table = load_basis_table(proto.get("basis_table", "corpus"))
        builder.basis = orm.Dict({"name": table.name, "elements": table.elements})
        options = dict(proto.get("metadata", {}).get("options", {}))
        mpiprocs = int(code.base.extras.get("default_mpiprocs", 1) or 1)
        options.setdefault("resources", {"num_machines": 1, "num_mpiprocs_per_machine": mpiprocs})
        if mpiprocs > 1:
            options.setdefault("withmpi", True)
        if options:
            builder.metadata.options = options
        return builder

    def data_path(self) -> str | None:
        settings = self.inputs.settings.get_dict() if "settings" in self.inputs else {}
        if settings.get("data_path"):
            return settings["data_path"]
        code = self.inputs.code
        return code.base.extras.get(DATA_PATH_EXTRA, None) or code.base.attributes.get(DATA_PATH_EXTRA, None)

    def prepare_for_submission(self, folder):
        from aiida_deeph.io.openmx_input import write_input

        structure = self.inputs.structure
        pmg = structure.get_pymatgen_structure()
        symbols = [site.specie.symbol for site in pmg]
        positions = [site.coords for site in pmg]
        settings = self.inputs.settings.get_dict() if "settings" in self.inputs else {}
        parameters = flatten_keywords(self.inputs.parameters.get_dict())
        mesh, _offset = self.inputs.kpoints.get_kpoints_mesh()
        parameters["scf.Kgrid"] = " ".join(str(int(n)) for n in mesh)
        parameters["HS.fileout"] = "on"
        text = write_input(
            structure.cell, symbols, positions, parameters,
            basis_table=basis_table_from_input(self.inputs.get("basis")),
            system_name=self._SYSTEM_NAME, data_path=self.data_path(),
            band_kpath=settings.get("band_kpath"),
        )
        with folder.open(self._INPUT, "w") as handle:
            handle.write(text)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self._INPUT]
        codeinfo.stdout_name = self._STDOUT
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [f"{self._SYSTEM_NAME}.out", self._STDOUT, f"{self._SYSTEM_NAME}.Band"]
        # The .scfout (tens of MB) is parsed into HamiltonianData and not kept twice in the repository.
        calcinfo.retrieve_temporary_list = [f"{self._SYSTEM_NAME}.scfout"]
        calcinfo.remote_copy_list = []
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            calcinfo.remote_copy_list.append(
                (parent.computer.uuid, f"{parent.get_remote_path()}/{self._SYSTEM_NAME}_rst", "./")
            )
        return calcinfo
