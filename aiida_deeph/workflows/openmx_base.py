"""``OpenmxBaseWorkChain``: run an ``OpenmxCalculation`` and recover from OpenMX's known failures."""
from __future__ import annotations

import math

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_deeph.calculations.openmx import OpenmxCalculation, flatten_keywords, nest_keywords
from aiida_deeph.data.hamiltonian import array_checks
from aiida_deeph.engine import AttachedOutputsMixin


def _get(params: dict, key: str, default=None):
    for k, v in params.items():
        if k.lower() == key.lower():
            return v
    return default


def _set(params: dict, key: str, value) -> None:
    for k in list(params):
        if k.lower() == key.lower():
            params[k] = value
            return
    params[key] = value


def _array_problems(ham) -> list:
    """NaN/Inf in H or S, or an on-site overlap diagonal entry <= 0.5 (normalized PAOs give about 1).

    Read from the attributes that ``HamiltonianData`` records when it is created; nodes made before
    those attributes existed are checked on their stored arrays.
    """
    checks = ham.base.attributes.all
    if "all_finite" not in checks or "min_onsite_overlap_diagonal" not in checks:
        checks = array_checks(ham.get_packed(load=("hamiltonian", "overlap")))
    finite, min_diag = checks["all_finite"], checks["min_onsite_overlap_diagonal"]
    if not finite:
        return ["NaN/Inf in H or S"]
    if min_diag is None or min_diag <= 0.5:
        return ["on-site overlap diagonal not positive"]
    return []


class OpenmxBaseWorkChain(AttachedOutputsMixin, BaseRestartWorkChain):
    """Run OpenMX with automated restarts.

    Handlers (highest priority first):
    - missing PAO/VPS file: unrecoverable, stops at once with a message naming the file;
    - eigensolver abort (ELPA1 'DSTEQR failed', common with 2+ MPI ranks): switch to ``scf.eigen.lib elpa2``;
    - SCF not converged: halve the mixing weights, double ``scf.maxIter`` (up to ``max_scf_iterations``)
      and restart from the previous density (``scf.restart on`` + the previous run's ``aiida_rst``);
    - stopped before the end (killed, walltime): resubmit, doubling the walltime if one was set; a run
      that stops before the end with no walltime verdict twice in a row is unrecoverable;
    - sanity check of finished runs: H and S present, finite, atom count equal to the structure's.
    """

    _process_class = OpenmxCalculation
    MAX_SCF_ITERATIONS = 1000

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(OpenmxCalculation, namespace="openmx")
        spec.expose_outputs(OpenmxCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.exit_code(310, "ERROR_UNRECOVERABLE_FAILURE", message="Unrecoverable failure of the OpenMX run: {message}")
        spec.exit_code(320, "ERROR_SANITY_CHECK_FAILED", message="Sanity check of the finished run failed: {message}")

    @classmethod
    def get_builder_from_protocol(cls, code, structure, protocol: str | None = None, overrides: dict | None = None,
                                  **kwargs):
        """Builder with the OpenMX protocol ``protocol``; ``overrides`` may hold ``openmx`` (merged into the
        calculation's protocol overrides) and ``max_iterations``/``clean_workdir``."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - {"openmx", "max_iterations", "clean_workdir"})
        if unknown:
            raise ValueError(f"unknown override key(s) {', '.join(map(repr, unknown))} of OpenmxBaseWorkChain; "
                             "allowed: 'openmx' (the calculation's protocol overrides: parameters, kpoints_spacing, "
                             "...), 'max_iterations', 'clean_workdir'")
        calc = OpenmxCalculation.get_builder_from_protocol(code, structure, protocol, overrides.get("openmx"), **kwargs)
        builder = cls.get_builder()
        builder.openmx = calc._inputs(prune=True)
        builder.max_iterations = orm.Int(int(overrides.get("max_iterations", 4)))
        builder.clean_workdir = orm.Bool(bool(overrides.get("clean_workdir", False)))
        return builder

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(OpenmxCalculation, "openmx"))

    # ------------------------------------------------------------------ helpers
    def _parameters(self) -> dict:
        return flatten_keywords(self.ctx.inputs.parameters.get_dict())

    def _store_parameters(self, params: dict) -> None:
        self.ctx.inputs.parameters = orm.Dict(nest_keywords(params))

    # ------------------------------------------------------------------ handlers
    @process_handler(priority=610, exit_codes=OpenmxCalculation.exit_codes.ERROR_NO_RECORDING)
    def handle_no_recording(self, calculation):
        """The replay stand-in has no recording of this input: a rerun would replay nothing again."""
        self.report(f"{calculation.process_label}<{calculation.pk}>: {calculation.exit_message}; not retried")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE.format(
            message=calculation.exit_message))

    @process_handler(priority=600, exit_codes=OpenmxCalculation.exit_codes.ERROR_MISSING_PSEUDO_FILE)
    def handle_missing_pseudo(self, calculation):
        self.report(f"{calculation.process_label}<{calculation.pk}>: {calculation.exit_message}; not recoverable")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE.format(
            message=calculation.exit_message))

    @process_handler(priority=500, exit_codes=OpenmxCalculation.exit_codes.ERROR_EIGENSOLVER_ABORT)
    def handle_eigensolver_abort(self, calculation):
        params = self._parameters()
        current = str(_get(params, "scf.eigen.lib", "elpa1")).lower()
        if current == "elpa2":
            return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE.format(
                message="eigensolver aborted with scf.eigen.lib elpa2 too"))
        _set(params, "scf.eigen.lib", "elpa2")
        self._store_parameters(params)
        self.report(f"{calculation.process_label}<{calculation.pk}>: eigensolver aborted; retrying with scf.eigen.lib elpa2")
        return ProcessHandlerReport(True)

    @process_handler(priority=400, exit_codes=OpenmxCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED)
    def handle_scf_not_converged(self, calculation):
        params = self._parameters()
        changes = []
        for key, default in (("scf.Init.Mixing.Weight", 0.3), ("scf.Max.Mixing.Weight", 0.7)):
            old = float(_get(params, key, default))
            new = max(old / 2.0, 0.001)
            _set(params, key, f"{new:.4f}")
            changes.append(f"{key} {old:g} -> {new:g}")
        old_iter = int(_get(params, "scf.maxIter", 40))
        new_iter = min(2 * old_iter, self.MAX_SCF_ITERATIONS)
        _set(params, "scf.maxIter", str(new_iter))
        changes.append(f"scf.maxIter {old_iter} -> {new_iter}")
        if "remote_folder" in calculation.outputs:
            _set(params, "scf.restart", "on")
            self.ctx.inputs.parent_folder = calculation.outputs.remote_folder
            changes.append("restart from the previous density")
        self._store_parameters(params)
        self.report(f"{calculation.process_label}<{calculation.pk}>: SCF not converged; " + ", ".join(changes))
        return ProcessHandlerReport(True)

    @process_handler(priority=300, exit_codes=[OpenmxCalculation.exit_codes.ERROR_NOT_NORMALLY_FINISHED,
                                               OpenmxCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
                                               OpenmxCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_not_finished(self, calculation):
        not_normally = OpenmxCalculation.exit_codes.ERROR_NOT_NORMALLY_FINISHED.status
        if calculation.exit_status == not_normally:
            # killed or crashed with no walltime verdict: once may be a node or a transient fault; twice in a
            # row is the input or the installation, and more runs would only repeat it
            self.ctx.crashes = self.ctx.get("crashes", 0) + 1
            if self.ctx.crashes >= 2:
                message = f"OpenMX stopped before the end twice in a row; last: {calculation.exit_message}"
                self.report(f"{calculation.process_label}<{calculation.pk}>: {message}")
                return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE.format(message=message))
        else:
            self.ctx.crashes = 0
        options = self.ctx.inputs.metadata.get("options", {})
        wall = options.get("max_wallclock_seconds")
        if wall:
            options["max_wallclock_seconds"] = int(wall * 2)
            self.ctx.inputs.metadata["options"] = options
        self.report(f"{calculation.process_label}<{calculation.pk}>: run did not finish ({calculation.exit_message}); "
                    f"resubmitting{' with walltime ' + str(int(wall * 2)) + ' s' if wall else ''}")
        return ProcessHandlerReport(True)

    @process_handler(priority=100, exit_codes=None)
    def sanity_check(self, calculation):
        """Checks of a run that finished with exit status 0 (the other handlers have priority)."""
        if not calculation.is_finished_ok:
            return None
        problems = []
        ham = calculation.outputs.hamiltonian if "hamiltonian" in calculation.outputs else None
        if ham is None:
            problems.append("no hamiltonian output")
        else:
            attrs = ham.base.attributes.all
            natoms = len(self.ctx.inputs.structure.sites)
            if attrs.get("num_atoms") != natoms:
                problems.append(f"{attrs.get('num_atoms')} atoms in H, {natoms} in the structure")
            ef = attrs.get("fermi_energy")
            if ef is None or not math.isfinite(ef):
                problems.append("no finite Fermi level")
            if attrs.get("scf_converged") is not True:
                problems.append("SCF not marked converged")
            if not problems:
                problems.extend(_array_problems(ham))
        if problems:
            message = "; ".join(problems)
            self.report(f"{calculation.process_label}<{calculation.pk}>: sanity check failed: {message}")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_SANITY_CHECK_FAILED.format(message=message))
        return None
