"""``DeepHTrainingWorkChain``: a long DeepH-2 training as a chain of cluster jobs, resumed from checkpoints."""
from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_deeph.calculations.train import DeepHTrainCalculation

_CALC = DeepHTrainCalculation.exit_codes


def _has_checkpoint(calculation) -> bool:
    """Whether the run left ``model/latest.pt`` in its working directory (``latest.json`` is written after it)."""
    retrieved = calculation.outputs.retrieved if "retrieved" in calculation.outputs else None
    if retrieved is None or "remote_folder" not in calculation.outputs:
        return False
    return "latest.json" in retrieved.base.repository.list_object_names()


class DeepHTrainingWorkChain(BaseRestartWorkChain):
    """Run ``DeepHTrainCalculation`` jobs until the training schedule ends (learning rate below its minimum
    or the maximum number of epochs), each job resuming from the previous job's ``latest.pt``.

    Handlers: walltime / time budget with a checkpoint (400), a killed job with a checkpoint (402) and the
    scheduler's node failure / walltime / memory verdicts (140, 120, 110) resubmit with
    ``restart_folder`` = the last ``remote_folder`` holding a checkpoint (a 200-hour training becomes a chain
    of jobs; nothing but the unfinished epoch is lost). Stops with a message on a NaN loss (410: lower
    the learning rate), out of GPU memory (420), missing data (300) and on a walltime too short for one
    epoch (401). ``max_iterations`` (default 50) bounds the number of jobs.
    """

    _process_class = DeepHTrainCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(DeepHTrainCalculation, namespace="train")
        spec.expose_outputs(DeepHTrainCalculation)
        spec.inputs["max_iterations"].default = lambda: orm.Int(50)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.exit_code(310, "ERROR_NAN_LOSS", message="The training diverged (NaN/Inf loss): {message}")
        spec.exit_code(320, "ERROR_OUT_OF_MEMORY", message="Out of (GPU) memory: {message}")
        spec.exit_code(330, "ERROR_MISSING_DATA", message="The training data is missing or unreadable: {message}")
        spec.exit_code(340, "ERROR_WALLTIME_TOO_SHORT",
                       message="The walltime ended before the first epoch: {message}")
        spec.exit_code(350, "ERROR_NO_PROGRESS", message="The training makes no progress: {message}")

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(DeepHTrainCalculation, "train"))

    def _restart_from(self, calculation, why: str) -> ProcessHandlerReport:
        epochs = None
        if _has_checkpoint(calculation):
            self.ctx.inputs.restart_folder = calculation.outputs.remote_folder
            epochs = calculation.outputs.metrics.get("epochs") if "metrics" in calculation.outputs else None
            self.report(f"{calculation.process_label}<{calculation.pk}>: {why}; resuming from its checkpoint "
                        f"(epoch {epochs})")
        else:
            self.report(f"{calculation.process_label}<{calculation.pk}>: {why}; no new checkpoint, resubmitting")
        # two jobs in a row without a new epoch: something else is wrong, stop
        progressed = epochs is not None and epochs > self.ctx.get("last_epochs", -1)
        self.ctx.stalled = 0 if progressed else self.ctx.get("stalled", 0) + 1
        if progressed:
            self.ctx.last_epochs = epochs
        if self.ctx.stalled >= 2:
            message = f"two consecutive jobs ended without completing an epoch (last: {why})"
            self.report(message)
            return ProcessHandlerReport(True, self.exit_codes.ERROR_NO_PROGRESS.format(message=message))
        return ProcessHandlerReport(True)

    @process_handler(priority=600, exit_codes=[_CALC.ERROR_NAN_LOSS])
    def handle_nan(self, calculation):
        message = (f"{calculation.exit_message}. Lower the learning rate (config.train.lr) or enable gradient "
                   "clipping (config.train.grad_clip) and start again.")
        self.report(f"{calculation.process_label}<{calculation.pk}>: {message}")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_NAN_LOSS.format(message=message))

    @process_handler(priority=590, exit_codes=[_CALC.ERROR_CUDA_OUT_OF_MEMORY, _CALC.ERROR_SCHEDULER_OUT_OF_MEMORY])
    def handle_oom(self, calculation):
        message = (f"{calculation.exit_message}. Use a smaller model (config.model), a smaller batch "
                   "(config.train.batch_size), bf16 (settings.amp) or a GPU with more memory.")
        self.report(f"{calculation.process_label}<{calculation.pk}>: {message}")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_OUT_OF_MEMORY.format(message=message))

    @process_handler(priority=580, exit_codes=[_CALC.ERROR_MISSING_DATA])
    def handle_missing_data(self, calculation):
        self.report(f"{calculation.process_label}<{calculation.pk}>: {calculation.exit_message}")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_MISSING_DATA.format(message=calculation.exit_message))

    @process_handler(priority=570, exit_codes=[_CALC.ERROR_OUT_OF_WALLTIME_NO_CHECKPOINT])
    def handle_walltime_no_checkpoint(self, calculation):
        message = (f"{calculation.exit_message} Increase metadata.options.max_wallclock_seconds so that at least "
                   "one epoch (plus validation) fits.")
        self.report(f"{calculation.process_label}<{calculation.pk}>: {message}")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_WALLTIME_TOO_SHORT.format(message=message))

    @process_handler(priority=500, exit_codes=[_CALC.ERROR_OUT_OF_WALLTIME_WITH_CHECKPOINT,
                                               _CALC.ERROR_INTERRUPTED_WITH_CHECKPOINT])
    def handle_checkpointed_stop(self, calculation):
        return self._restart_from(calculation, calculation.exit_message or "stopped before the schedule ended")

    @process_handler(priority=400, exit_codes=[_CALC.ERROR_SCHEDULER_NODE_FAILURE,
                                               _CALC.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_scheduler_failure(self, calculation):
        return self._restart_from(calculation, f"scheduler: {calculation.exit_message} (preemption / node failure)")
