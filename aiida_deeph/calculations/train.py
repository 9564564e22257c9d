"""``DeepHTrainCalculation``: train (resume, fine-tune) a DeepH-2 model with ``aiida-deeph train`` on a cluster."""
from __future__ import annotations

import json
import re

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.data.model import DeepHModelData
from aiida_deeph.ml.config import PRESETS  # noqa: E402,F401  (torch-free: the presets' one list)

SETTINGS_KEYS = {
    "num_processes": "processes (one per GPU) started by torch.distributed.run on the node; 1: a plain process",
    "max_minutes": "time budget of one job in minutes (0: none); default from max_wallclock_seconds",
    "max_epochs_per_job": "stop cleanly after K epochs of one job (resumable), a deterministic walltime stand-in",
    "retrieve_checkpoints": "also retrieve latest.pt: output `checkpoints` (FolderData with best.pt, latest.pt)",
    "device": "torch device (default: cuda if the node has one)",
    "workers": "data-loader worker processes per training process",
    "amp": "bf16 autocast on CUDA",
    "evaluate_test": "evaluate the best model on the test split at the end (default True)",
    "shard_size": "structures per packed shard when `hamiltonians` are packed at submission (default 500)",
}


def walltime_budget_minutes(max_wallclock_seconds) -> float | None:
    """Training budget for a job of ``max_wallclock_seconds``: 90 % minus 5 minutes, at least half the walltime.

    The margin covers start-up, the final validation and test evaluation and the retrieval of files.
    """
    if not max_wallclock_seconds:
        return None
    seconds = float(max_wallclock_seconds)
    return round(max(0.9 * seconds - 300.0, 0.5 * seconds) / 60.0, 3)


def _validate_config(config, _):
    data = config.get_dict()
    unknown = set(data) - {"preset", "model", "train"}
    if unknown:
        return f"config: unknown key(s) {', '.join(sorted(unknown))} (allowed: preset, model, train)"
    preset = data.get("preset", "small")
    if preset not in PRESETS:
        return f"config: unknown preset {preset!r} (one of {', '.join(PRESETS)})"
    for key in ("model", "train"):
        if not isinstance(data.get(key, {}), dict):
            return f"config: '{key}' must be a dictionary"
    try:  # the ML stack may not be installed where AiiDA runs: then the cluster-side CLI checks
        import dataclasses

        from aiida_deeph.ml.config import ModelConfig
        from aiida_deeph.ml.train import TrainConfig
    except ImportError:
        return None
    for key, cls in (("model", ModelConfig), ("train", TrainConfig)):
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(data.get(key, {})) - known
        if bad:
            return f"config: unknown {key} key(s) {', '.join(sorted(bad))}"
    return None


def _validate_settings(settings, _):
    data = settings.get_dict()
    unknown = set(data) - set(SETTINGS_KEYS)
    if unknown:
        return f"settings: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(SETTINGS_KEYS)})"
    n = data.get("num_processes", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return "settings: num_processes must be a positive integer"
    k = data.get("max_epochs_per_job")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        return "settings: max_epochs_per_job must be a positive integer"
    m = data.get("max_minutes")
    if m is not None and (not isinstance(m, (int, float)) or isinstance(m, bool) or m < 0):
        return "settings: max_minutes must be a number >= 0 (0: no budget)"
    return None


def _validate_inputs(inputs, _):
    dataset = inputs.get("dataset")
    hamiltonians = inputs.get("hamiltonians") or {}
    if (dataset is None) == (not hamiltonians):
        return "give exactly one of `dataset` (RemoteData / FolderData of shards) and `hamiltonians`"
    code = inputs.get("code")
    computer = code.computer if code is not None else inputs.get("metadata", {}).get("computer")
    for name in ("dataset", "restart_folder"):
        node = inputs.get(name)
        if isinstance(node, orm.RemoteData) and computer is not None and node.computer.uuid != computer.uuid:
            return (f"{name} lives on computer {node.computer.label!r}, the calculation runs on {computer.label!r}: "
                    "stage the data on that computer (aiida_deeph.workflows.staging.stage_dataset)")
    if isinstance(dataset, orm.FolderData) and not dataset.base.repository.list_object_names():
        return "dataset: the FolderData is empty"
    return None


def hamiltonians_namespace(nodes) -> dict:
    """``{link label: HamiltonianData}`` for the ``hamiltonians`` input from a list / Group of nodes."""
    if isinstance(nodes, orm.Group):
        nodes = [n for n in nodes.nodes if isinstance(n, HamiltonianData)]
    out = {}
    for node in nodes:
        base = node.base.attributes.get("mp_id", None) or f"n{node.pk or len(out)}"
        label = re.sub(r"\W", "_", str(base))
        if not re.match(r"[A-Za-z]", label):
            label = f"h_{label}"
        while label in out:
            label = f"{label}_{len(out)}"
        out[label] = node
    return out


class DeepHTrainCalculation(CalcJob):
    """Train a DeepH-2 model with ``aiida-deeph train`` (the code: the ``aiida-deeph`` executable of the cluster).

    **Data** (exactly one): ``dataset``, a ``RemoteData`` folder of packed shards already on the computer
    (symlinked into the working directory as ``data``, never copied: stage it once with
    :func:`aiida_deeph.workflows.staging.stage_dataset`) or a ``FolderData`` (uploaded); or
    ``hamiltonians``, HamiltonianData nodes that are packed into shards at submission (fine for
    small sets, each run uploads them again).

    **Model**: ``config`` ``{'preset': 'paper'|'small'|'tiny', 'model': {...ModelConfig}, 'train':
    {...TrainConfig}}``; ``parent_model`` fine-tunes a DeepHModelData (new elements allowed);
    ``restart_folder`` (the ``remote_folder`` of an earlier run) resumes exactly from its ``latest.pt``
    (the model folder is copied on the computer).

    **GPUs and walltime on Slurm** (the computer: ``examples/computers/slurm-gpu.yaml``)::

        builder.metadata.options.resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1,
                                              'num_cores_per_mpiproc': 16}
        builder.metadata.options.custom_scheduler_commands = '#SBATCH --gres=gpu:4'
        builder.metadata.options.max_wallclock_seconds = 24 * 3600
        builder.settings = orm.Dict({'num_processes': 4})

    **More than one node**: ``resources = {'num_machines': M, 'num_mpiprocs_per_machine': 1}`` gives
    ``aiida-deeph train --nnodes M``, which starts one torchrun agent per Slurm task with ``srun`` (c10d
    rendezvous on the first host of the allocation), each with ``num_processes`` processes: M x N in all.

    One Slurm task per node; ``num_processes`` N > 1 makes ``aiida-deeph train --nproc-per-node N``
    re-launch itself under ``python -m torch.distributed.run --standalone --nproc_per_node N`` (one
    process per GPU, DistributedDataParallel; N must equal the GPUs of ``--gres``). The training gets a
    time budget of 90 % of ``max_wallclock_seconds`` minus 5 minutes (``settings.max_minutes``
    overrides it) so that it stops cleanly, checkpointed, before Slurm kills it; a kill is handled too
    (``latest.pt`` is written after every epoch). :class:`~aiida_deeph.workflows.train.DeepHTrainingWorkChain`
    chains jobs until the schedule ends.

    **Outputs**: ``model`` (DeepHModelData from ``best.pt``), ``metrics`` (Dict), ``learning_curve``
    (ArrayData: epoch, train_loss, val_mae_meV, lr), ``split`` (the exact ``split.json``), optionally
    ``checkpoints`` (FolderData, ``settings.retrieve_checkpoints``); ``remote_folder`` keeps
    ``model/latest.pt`` on the computer (the checkpoint store for restarts).
    """

    _DATA_DIR = "data"
    _MODEL_DIR = "model"
    _PARENT_DIR = "parent"
    _CONFIG = "train_input.json"
    _STDOUT = "train.log"
    _STDERR = "train.err"
    _SMALL_FILES = ("config.json", "train_config.json", "metadata.json", "split.json", "status.json",
                    "metrics.jsonl", "test_metrics.json", "latest.json")

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("dataset", valid_type=(orm.RemoteData, orm.FolderData), required=False,
                   help="Packed shards (or DeepH-dock folders): a RemoteData folder on the computer (symlinked) "
                        "or a FolderData (uploaded).")
        spec.input_namespace("hamiltonians", valid_type=HamiltonianData, dynamic=True, required=False,
                             help="HamiltonianData nodes, packed into shards at submission "
                                  "(see hamiltonians_namespace()).")
        spec.input("config", valid_type=orm.Dict, validator=_validate_config,
                   help="{'preset': 'paper'|'small'|'tiny', 'model': {...}, 'train': {...}}")
        spec.input("parent_model", valid_type=DeepHModelData, required=False,
                   help="Fine-tune this model (its best.pt; new elements get new embedding rows).")
        spec.input("restart_folder", valid_type=orm.RemoteData, required=False,
                   help="remote_folder of an earlier training run: resume from its model/latest.pt.")
        spec.input("settings", valid_type=orm.Dict, required=False, validator=_validate_settings,
                   help="; ".join(f"{k}: {v}" for k, v in SETTINGS_KEYS.items()))
        spec.inputs.validator = _validate_inputs
        options = spec.inputs["metadata"]["options"]
        options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options["parser_name"].default = "deeph.train"
        options["input_filename"].default = cls._CONFIG
        options["output_filename"].default = cls._STDOUT
        options["withmpi"].default = False

        spec.output("model", valid_type=DeepHModelData, required=False,
                    help="The best model so far (best.pt + JSON config/metadata/metrics).")
        spec.output("metrics", valid_type=orm.Dict, required=False,
                    help="Stop reason, epochs, best/last validation and test MAE (meV), per-element test MAE.")
        spec.output("learning_curve", valid_type=orm.ArrayData, required=False,
                    help="Arrays epoch, train_loss, val_mae_meV (NaN where not validated), lr, epoch_time_s.")
        spec.output("split", valid_type=orm.Dict, required=False, help="The exact train/val/test split (split.json).")
        spec.output("checkpoints", valid_type=orm.FolderData, required=False,
                    help="best.pt and latest.pt (settings.retrieve_checkpoints).")
        spec.default_output_node = "metrics"

        spec.exit_code(300, "ERROR_MISSING_DATA", message="No training data, or unreadable data: {detail}")
        spec.exit_code(310, "ERROR_OUTPUT_MISSING", message="The training wrote no status/model files: {detail}")
        spec.exit_code(400, "ERROR_OUT_OF_WALLTIME_WITH_CHECKPOINT",
                       message="Stopped by the walltime ({detail}) after epoch {epochs}; resumable from latest.pt.")
        spec.exit_code(401, "ERROR_OUT_OF_WALLTIME_NO_CHECKPOINT",
                       message="Stopped by the walltime ({detail}) before the first epoch ended: no checkpoint. "
                               "Give the job more time.")
        spec.exit_code(402, "ERROR_INTERRUPTED_WITH_CHECKPOINT",
                       message="The job was killed ({detail}) after epoch {epochs}; resumable from latest.pt.")
        spec.exit_code(410, "ERROR_NAN_LOSS", message="The loss became NaN/Inf: {detail}")
        spec.exit_code(420, "ERROR_CUDA_OUT_OF_MEMORY", message="Out of GPU memory: {detail}")

    # ------------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return self.inputs.settings.get_dict() if "settings" in self.inputs else {}

    def prepare_for_submission(self, folder):
        settings = self._settings()
        config = self.inputs.config.get_dict()
        preset = config.get("preset", "small")
        with folder.open(self._CONFIG, "w") as handle:
            json.dump({"model": config.get("model", {}), "train": config.get("train", {})}, handle, indent=1)

        calcinfo = datastructures.CalcInfo()
        calcinfo.local_copy_list = []
        calcinfo.remote_copy_list = []
        calcinfo.remote_symlink_list = []

        dataset = self.inputs.get("dataset")
        if isinstance(dataset, orm.RemoteData):
            calcinfo.remote_symlink_list.append((dataset.computer.uuid, dataset.get_remote_path(), self._DATA_DIR))
        elif isinstance(dataset, orm.FolderData):
            dataset.base.repository.copy_tree(folder.get_subfolder(self._DATA_DIR, create=True).abspath)
        else:
            self._pack_hamiltonians(folder, int(settings.get("shard_size", 500)))

        params = ["train", "--preset", preset, "--config", self._CONFIG, "--data", self._DATA_DIR,
                  "--output", self._MODEL_DIR]
        if "parent_model" in self.inputs:
            parent = self.inputs.parent_model
            for name in parent.base.repository.list_object_names():
                if name != "latest.pt":
                    calcinfo.local_copy_list.append((parent.uuid, name, f"{self._PARENT_DIR}/{name}"))
            params += ["--parent", self._PARENT_DIR]
        if "restart_folder" in self.inputs:
            restart = self.inputs.restart_folder
            calcinfo.remote_copy_list.append(
                (restart.computer.uuid, f"{restart.get_remote_path().rstrip('/')}/{self._MODEL_DIR}", self._MODEL_DIR))

        budget = settings.get("max_minutes")
        if budget is None:
            budget = walltime_budget_minutes(self.inputs.metadata.options.get("max_wallclock_seconds"))
        if budget:
            params += ["--max-minutes", f"{float(budget):g}"]
        if settings.get("max_epochs_per_job"):
            params += ["--max-epochs-per-run", str(int(settings["max_epochs_per_job"]))]
        if int(settings.get("num_processes", 1)) > 1:
            params += ["--nproc-per-node", str(int(settings["num_processes"]))]
        resources = self.inputs.metadata.options.resources
        agents = int(resources.get("num_machines", 1)) * int(resources.get("num_mpiprocs_per_machine", 1) or 1)
        if agents > 1:
            params += ["--nnodes", str(agents)]
        if settings.get("device"):
            params += ["--device", str(settings["device"])]
        if settings.get("workers") is not None:
            params += ["--workers", str(int(settings["workers"]))]
        if settings.get("amp"):
            params.append("--amp")
        if settings.get("evaluate_test") is False:
            params.append("--no-test")

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = params
        codeinfo.stdout_name = self._STDOUT
        codeinfo.stderr_name = self._STDERR
        calcinfo.codes_info = [codeinfo]

        model = self._MODEL_DIR
        calcinfo.retrieve_list = [self._STDOUT, self._STDERR] + [f"{model}/{name}" for name in self._SMALL_FILES]
        calcinfo.retrieve_temporary_list = [f"{model}/best.pt"]
        if settings.get("retrieve_checkpoints"):
            calcinfo.retrieve_temporary_list.append(f"{model}/latest.pt")
        return calcinfo

    def _pack_hamiltonians(self, folder, shard_size: int) -> None:
        """Write the ``hamiltonians`` input as packed shards ``data/shard-00000.h5`` ... in the sandbox."""
        from aiida_deeph.data.stats import node_rows, write_shards

        nodes = [node for _key, node in sorted(self.inputs.hamiltonians.items())]
        data_dir = folder.get_subfolder(self._DATA_DIR, create=True)
        write_shards(node_rows(nodes), data_dir.abspath, max(int(shard_size), 1))
