"""``OpenmxParser``: stdout + .out -> output_parameters; .scfout -> HamiltonianData; .Band -> BandsData."""
from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.parsers import Parser

from aiida_deeph.data.hamiltonian import HamiltonianData


class OpenmxParser(Parser):
    """Parse an ``OpenmxCalculation``. OpenMX exits with 0 even on fatal errors: only the files tell."""

    def parse(self, **kwargs):
        from aiida_deeph.io.openmx import OpenmxRunError, scfout_to_packed
        from aiida_deeph.io.openmx_out import OpenmxOutputError, parse_out, parse_stdout
        from aiida_deeph.io.scfout import ScfoutError, read_scfout

        calc = self.node.process_class
        name = calc._SYSTEM_NAME
        try:
            retrieved = self.retrieved
        except Exception:  # noqa: BLE001
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
        files = set(retrieved.base.repository.list_object_names())

        if calc._STDOUT not in files:
            return self.exit_codes.ERROR_OUTPUT_STDOUT_MISSING
        stdout = retrieved.base.repository.get_object_content(calc._STDOUT, mode="r")
        diag = parse_stdout(stdout)
        kind = diag["error_kind"]
        if kind in ("missing_pao", "missing_vps", "missing_file"):
            return self.exit_codes.ERROR_MISSING_PSEUDO_FILE.format(detail=", ".join(diag["missing_files"]))
        if kind == "eigensolver_abort":
            detail = next((e for e in diag["errors"] if "failed" in e), "DSTEQR failed")
            return self.exit_codes.ERROR_EIGENSOLVER_ABORT.format(detail=detail)

        out_name = f"{name}.out"
        if out_name not in files:
            if not diag["normally_finished"]:
                return self._not_finished(diag)
            return self.exit_codes.ERROR_OUTPUT_FILE_MISSING.format(detail=f"{out_name} not found")
        try:
            info = parse_out(retrieved.base.repository.get_object_content(out_name, mode="r"))
        except OpenmxOutputError as exc:
            return self.exit_codes.ERROR_OUTPUT_PARSING.format(detail=str(exc))
        if not diag["normally_finished"]:
            return self._not_finished(diag)

        results = {k: v for k, v in info.items() if k not in ("input_text",)}
        results["stdout_warnings"] = diag["warnings"]
        results["energy_units"] = "eV (keys *_hartree in Hartree)"
        self.out("output_parameters", orm.Dict(results))

        band_name = f"{name}.Band"
        if band_name in files:
            bands = self._bands(retrieved.base.repository.get_object_content(band_name, mode="r"))
            if bands is not None:
                self.out("band_structure", bands)

        temp = kwargs.get("retrieved_temporary_folder")
        scfout = Path(temp) / f"{name}.scfout" if temp else None
        if scfout is None or not scfout.is_file():
            return self.exit_codes.ERROR_SCFOUT_MISSING
        try:
            meta = {
                "scf_converged": info.get("scf_converged"),
                "scf_steps": info.get("scf_steps"),
            }
            structure = self.node.inputs.structure
            meta["structure_uuid"] = structure.uuid
            mp_id = structure.base.extras.get("mp_id", None) or structure.base.attributes.get("mp_id", None)
            if mp_id:
                meta["mp_id"] = mp_id
            settings = self.node.inputs.settings.get_dict() if "settings" in self.node.inputs else {}
            scf = read_scfout(scfout, load_density_matrix=False,
                              load_position_matrix=bool(settings.get("position_matrix", False)))
            packed = scfout_to_packed(scf, meta=meta)
        except (ScfoutError, OpenmxRunError) as exc:
            return self.exit_codes.ERROR_SCFOUT_CORRUPTED.format(detail=str(exc))
        self.out("hamiltonian", HamiltonianData(packed))

        if info.get("scf_converged") is False:
            history = info.get("scf_history") or [{}]
            return self.exit_codes.ERROR_SCF_NOT_CONVERGED.format(
                max_iter=info.get("scf_max_iter"), normrd=history[-1].get("NormRD"))
        return None

    def _not_finished(self, diag):
        replay = self._replay_error()
        if replay:
            return self.exit_codes.ERROR_NO_RECORDING.format(detail=replay)
        detail = f"stdout stops at SCF step {diag['last_scf_step']}" if diag.get("last_scf_step") else "stdout incomplete"
        if diag["errors"]:
            detail += f"; {diag['errors'][-1]}"
        last = self._last_stderr_line()
        if last:
            detail += f"; stderr: {last}"
        return self.exit_codes.ERROR_NOT_NORMALLY_FINISHED.format(detail=detail)

    def _replay_error(self) -> str:
        """The replay stand-in's own error line (it recorded no run of this input), or ''."""
        marker = "REPLAY openmx stand-in: ERROR: "
        line = self._last_stderr_line(limit=2000)
        return line.split(marker, 1)[1][:600] if marker in line else ""

    def _last_stderr_line(self, limit: int = 300) -> str:
        """The last non-empty line of the job's stderr (mpirun, the MPI library or the OS say why a run
        died there, not on stdout), or ''."""
        try:
            name = self.node.get_option("scheduler_stderr")
            if not name or name not in self.retrieved.base.repository.list_object_names():
                return ""
            text = self.retrieved.base.repository.get_object_content(name, mode="r")
        except Exception:  # noqa: BLE001 - a missing stderr only means less detail
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:limit] if lines else ""

    def _bands(self, text):
        from aiida_deeph.io.openmx_band import read_band

        try:
            band = read_band(text)
        except ValueError as exc:
            self.logger.warning(f"could not read the .Band file: {exc}")
            return None
        bands = orm.BandsData()
        bands.set_cell(self.node.inputs.structure.cell)
        bands.set_kpoints(band["kpoints"])
        bands.set_bands(band["eigenvalues"], units="eV")
        labels, idx = [], 0
        for seg in band.get("kpath") or []:
            labels.append((idx, seg["labels"][0]))
            idx += seg["npoints"]
            labels.append((idx - 1, seg["labels"][1]))
        if labels:
            try:
                bands.labels = labels
            except Exception:  # noqa: BLE001
                pass
        bands.base.attributes.set("fermi_energy", band["fermi_energy"])
        return bands
