"""``DeepHInferCalculation``: a trained DeepH-2 model + overlaps S -> predicted Hamiltonians H.

The sandbox holds ``model/`` (the model node exported, as ``aiida-deeph train`` wrote it) and one
DeepH-dock folder ``inputs/<name>/`` (POSCAR, info.json, overlap.h5: S only) per input overlap; the
code (an ``aiida-deeph`` executable on the CPU or GPU computer) runs

    aiida-deeph predict --model model --input inputs/<name> ... --output outputs

and the parser turns every ``outputs/<name>/`` into a ``HamiltonianData`` (``source = 'model'``,
the model's UUID in ``model_uuid``; H predicted, S copied from the input) in the ``hamiltonians``
output namespace under the same name. The provenance link to the model node goes through this
calculation. Elements and basis (orbital l lists) are checked against the model before submission.
"""
from __future__ import annotations

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.data.model import DeepHModelData

MODEL_FOLDER = "model"
INPUT_FOLDER = "inputs"
OUTPUT_FOLDER = "outputs"
STDOUT = "aiida.out"
STDERR = "aiida.err"


def model_compatibility(model: DeepHModelData, overlap: HamiltonianData, name: str = "overlap") -> str | None:
    """Why ``overlap`` cannot go through ``model`` (elements, orbital l lists, basis names, S), or None."""
    attrs = overlap.base.attributes
    if not attrs.get("has_overlap", False):
        return f"{name}: HamiltonianData<{overlap.pk}> holds no overlap S"
    known = set(model.elements)
    elements = list(attrs.get("elements") or [])
    unknown = sorted(set(elements) - known)
    if unknown:
        return (f"{name}: element(s) {', '.join(unknown)} of {attrs.get('formula')} are not known to the model "
                f"(trained on {' '.join(sorted(known))})")
    model_ls = model.orbital_ls
    ham_ls = attrs.get("orbital_ls") or {}
    for el in elements:
        if el in model_ls and el in ham_ls and [int(x) for x in ham_ls[el]] != [int(x) for x in model_ls[el]]:
            return (f"{name}: element {el} has basis l = {list(ham_ls[el])}, the model was trained with "
                    f"{list(model_ls[el])}")
    model_basis = model.base.attributes.get("basis", {}) or {}
    ham_basis = attrs.get("basis") or {}
    for el in elements:
        a, b = model_basis.get(el), ham_basis.get(el)
        if isinstance(a, str) and isinstance(b, str) and a != b:
            return f"{name}: element {el} has basis {b}, the model was trained with {a}"
    return None


def _validate_inputs(inputs, _):
    model = inputs.get("model")
    overlaps = inputs.get("overlaps") or {}
    if not overlaps:
        return "give at least one overlap in the `overlaps` namespace"
    if model is None:
        return None
    problems = [msg for name, node in overlaps.items() if (msg := model_compatibility(model, node, name))]
    if problems:
        return "incompatible model: " + "; ".join(problems)
    return None


class DeepHInferCalculation(CalcJob):
    """Predict H with a DeepH-2 model for one or more structures given by their overlap S.

    Inputs: ``model`` (DeepHModelData), ``overlaps`` (namespace of HamiltonianData holding S; their
    structures are taken from the node's packed data; any H they hold is not sent), ``settings``
    (optional Dict: ``{'device': 'cuda'}``), ``code`` (``aiida-deeph``). For one structure use one
    item: ``overlaps={'structure': node}`` gives ``outputs.hamiltonians.structure``.
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("model", valid_type=DeepHModelData, help="The trained DeepH-2 model.")
        spec.input_namespace("overlaps", valid_type=HamiltonianData, dynamic=True,
                             help="HamiltonianData with S (and its structure), one per structure; the key names "
                                  "the output.")
        spec.input("settings", valid_type=orm.Dict, required=False,
                   help="{'device': 'cpu' | 'cuda' | 'cuda:1'} (default: cuda when available).")
        spec.inputs.validator = _validate_inputs
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        spec.inputs["metadata"]["options"]["parser_name"].default = "deeph.infer"
        spec.inputs["metadata"]["options"]["withmpi"].default = False

        spec.output_namespace("hamiltonians", valid_type=HamiltonianData, dynamic=True,
                              help="Predicted H (eV) with the input S, one per input overlap (same key).")

        spec.exit_code(300, "ERROR_NO_RETRIEVED_FOLDER", message="The retrieved folder could not be accessed.")
        spec.exit_code(310, "ERROR_INCOMPATIBLE_MODEL",
                       message="aiida-deeph predict refused the input: {detail}")
        spec.exit_code(320, "ERROR_NON_FINITE_PREDICTION", message="The model produced NaN/Inf values: {detail}")
        spec.exit_code(330, "ERROR_PREDICT_FAILED", message="aiida-deeph predict failed: {detail}")
        spec.exit_code(340, "ERROR_MISSING_OUTPUT",
                       message="No predicted hamiltonian.h5 for: {names}")
        spec.exit_code(350, "ERROR_READING_OUTPUT", message="A predicted Hamiltonian could not be read: {detail}")
        spec.exit_code(360, "ERROR_CUDA_OUT_OF_MEMORY", message="CUDA ran out of memory: {detail}")

    def prepare_for_submission(self, folder):
        import tempfile
        from pathlib import Path

        from aiida_deeph.io.dock import write_dock

        names = sorted(self.inputs.overlaps)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            self.inputs.model.export(tmp / MODEL_FOLDER)
            for name in names:
                node = self.inputs.overlaps[name]
                packed = node.get_packed(load=("overlap",))
                packed.hamiltonian = None
                packed.density_matrix = None
                packed.fermi_energy_eV = None   # a DFT Fermi level does not belong to the prediction
                packed.meta = {k: v for k, v in packed.meta.items()
                               if k in ("mp_id", "structure_uuid", "basis", "supercell")}
                packed.meta["overlap_uuid"] = node.uuid
                write_dock(packed, tmp / INPUT_FOLDER / name, include=("overlap",))
            folder.insert_path(str(tmp / MODEL_FOLDER), MODEL_FOLDER)
            folder.insert_path(str(tmp / INPUT_FOLDER), INPUT_FOLDER)

        settings = self.inputs.settings.get_dict() if "settings" in self.inputs else {}
        params = ["predict", "--model", MODEL_FOLDER, "--input", *[f"{INPUT_FOLDER}/{n}" for n in names],
                  "--output", OUTPUT_FOLDER]
        if settings.get("device"):
            params += ["--device", str(settings["device"])]

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = params
        codeinfo.stdout_name = STDOUT
        codeinfo.stderr_name = STDERR
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [STDOUT, STDERR]
        # The predicted H is stored once, as HamiltonianData; the dock files are not kept twice.
        calcinfo.retrieve_temporary_list = [OUTPUT_FOLDER]
        return calcinfo
