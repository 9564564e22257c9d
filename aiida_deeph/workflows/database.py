"""``DatabaseWorkChain``: Materials Project structures -> OpenMX -> a Group of HamiltonianData.

Resumable (structures whose Hamiltonian is already in the target group are skipped), failure-isolating
(a failed structure is reported, never fails the database) and with bounded concurrency (batches of
at most ``max_concurrent`` OpenmxBaseWorkChains). Only converged runs that pass the sanity check are
added to the group (quality gate).
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, calcfunction, while_
from aiida.plugins import WorkflowFactory

GROUP_WORKCHAINS_EXTRA = "deeph_database_workchains"
GROUP_FAILED_EXTRA = "deeph_failed"


@calcfunction
def import_structure(record: orm.Dict) -> orm.StructureData:
    """A StructureData from a structure-source record (MP id, formula, query, database version, structure)."""
    from pymatgen.core import Structure

    return orm.StructureData(pymatgen=Structure.from_dict(record["structure"]))


def find_imported_structure(mp_id: str, primitive: bool):
    """The StructureData already imported for ``mp_id`` (same primitive setting), or None."""
    qb = orm.QueryBuilder().append(
        orm.StructureData, filters={"extras.mp_id": mp_id, "extras.deeph_primitive": primitive}, project="*")
    return qb.first(flat=True)


def store_candidate(candidate, query: dict, database_version) -> orm.StructureData:
    """Store a structure-source candidate once (deduplicated by MP id across runs) with provenance."""
    existing = find_imported_structure(candidate.mp_id, candidate.primitive)
    if existing is not None:
        return existing
    record = {
        "mp_id": candidate.mp_id,
        "formula": candidate.formula,
        "source": candidate.source,
        "database_version": database_version,
        "query": query,
        "metadata": candidate.metadata() if hasattr(candidate, "metadata") else {},
        "primitive": candidate.primitive,
        "structure": candidate.structure.as_dict(),
    }
    structure = import_structure(orm.Dict(record))
    structure.base.extras.set_many({"mp_id": candidate.mp_id, "formula": candidate.formula,
                                    "deeph_primitive": candidate.primitive})
    structure.label = f"{candidate.mp_id} {candidate.formula}"
    return structure


class DatabaseWorkChain(WorkChain):
    """Build (or extend) a Group of DFT HamiltonianData from a structure source."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("code", valid_type=orm.AbstractCode, help="The OpenMX code.")
        spec.input("source", valid_type=orm.Str, default=lambda: orm.Str("snapshot"),
                   help="'snapshot' (offline file), 'mp' (mp-api; key from $MP_API_KEY) or 'group'.")
        spec.input("snapshot_path", valid_type=orm.Str, required=False,
                   help="Snapshot file (gzipped JSON list of MP records); default: the one shipped in the package.")
        spec.input("structure_group", valid_type=orm.Str, required=False,
                   help="Label of a Group of StructureData (source 'group').")
        spec.input("ids", valid_type=orm.List, required=False, help="Only these MP ids.")
        spec.input("limit", valid_type=orm.Int, required=False,
                   help="Take the N candidates with the fewest atoms (after primitive reduction; ties by MP id).")
        spec.input("max_sites", valid_type=orm.Int, default=lambda: orm.Int(150))
        spec.input("primitive", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help="Reduce cells to the primitive cell (default) or keep them as given.")
        spec.input("include_gnome", valid_type=orm.Bool, default=lambda: orm.Bool(False))
        spec.input("protocol", valid_type=orm.Str, default=lambda: orm.Str("moderate"))
        spec.input("overrides", valid_type=orm.Dict, required=False,
                   help="Protocol overrides for OpenmxBaseWorkChain ({'openmx': {'parameters': {...}}, ...}).")
        spec.input("options", valid_type=orm.Dict, required=False,
                   help="metadata.options of every OpenmxCalculation (resources, max_wallclock_seconds, ...).")
        spec.input("max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(4))
        spec.input("group_label", valid_type=orm.Str, help="The dataset Group (created if missing).")
        spec.input("retry_failed", valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help="Also rerun structures that failed in earlier runs for this group.")
        spec.outline(
            cls.setup,
            cls.select,
            while_(cls.has_pending)(cls.submit_batch, cls.collect_batch),
            cls.finalize,
        )
        spec.output("summary", valid_type=orm.Dict,
                    help="done / skipped / failed (with reasons) / rejected candidates and counts.")
        spec.exit_code(400, "ERROR_STRUCTURE_SOURCE", message="The structure source failed: {message}")
        spec.exit_code(401, "ERROR_NO_STRUCTURES", message="The structure source gave no candidate structures.")

    # ------------------------------------------------------------------ steps
    def setup(self):
        self.ctx.group, created = orm.Group.collection.get_or_create(self.inputs.group_label.value)
        if created:
            self.ctx.group.description = "HamiltonianData built by aiida-deeph's DatabaseWorkChain"
        known = list(self.ctx.group.base.extras.get(GROUP_WORKCHAINS_EXTRA, []))
        if self.node.uuid not in known:
            self.ctx.group.base.extras.set(GROUP_WORKCHAINS_EXTRA, known + [self.node.uuid])
        self.ctx.done, self.ctx.skipped, self.ctx.failed, self.ctx.rejected, self.ctx.notes = [], [], [], [], []
        self.ctx.queue = []

    def _key(self, structure) -> str:
        return structure.base.extras.get("mp_id", None) or structure.uuid

    def select(self):
        source = self.inputs.source.value
        primitive = self.inputs.primitive.value
        structures = []
        if source == "group":
            if "structure_group" not in self.inputs:
                return self.exit_codes.ERROR_STRUCTURE_SOURCE.format(message="source 'group' needs structure_group")
            try:
                group = orm.load_group(self.inputs.structure_group.value)
            except Exception as exc:  # noqa: BLE001
                return self.exit_codes.ERROR_STRUCTURE_SOURCE.format(message=str(exc).splitlines()[0])
            structures = [n for n in group.nodes if isinstance(n, orm.StructureData)]
            structures.sort(key=lambda s: (len(s.sites), self._key(s)))
            if "ids" in self.inputs:
                wanted = set(self.inputs.ids.get_list())
                structures = [s for s in structures if self._key(s) in wanted]
            if "limit" in self.inputs:
                structures = structures[: self.inputs.limit.value]
            self.ctx.notes.append(f"structures from group {group.label}")
        elif source in ("snapshot", "mp"):
            from aiida_deeph.structures.source import StructureSourceError, select_structures

            try:
                result = select_structures(
                    source=source,
                    snapshot_path=self.inputs.snapshot_path.value if "snapshot_path" in self.inputs else None,
                    ids=self.inputs.ids.get_list() if "ids" in self.inputs else None,
                    limit=self.inputs.limit.value if "limit" in self.inputs else None,
                    max_sites=self.inputs.max_sites.value, primitive=primitive,
                    include_gnome=self.inputs.include_gnome.value,
                )
            except (StructureSourceError, OSError, ValueError) as exc:
                return self.exit_codes.ERROR_STRUCTURE_SOURCE.format(message=str(exc).splitlines()[0])
            self.ctx.rejected = [r.as_dict() for r in result.rejections]
            self.ctx.notes.extend(result.notes)
            if result.missing_ids:
                self.ctx.notes.append(f"requested ids not found: {', '.join(result.missing_ids)}")
            for note in result.notes:
                self.report(note)
            structures = [store_candidate(c, result.query, result.database_version) for c in result.candidates]
        else:
            return self.exit_codes.ERROR_STRUCTURE_SOURCE.format(message=f"unknown source {source!r}")
        if not structures:
            return self.exit_codes.ERROR_NO_STRUCTURES

        # resume: skip what the group already holds (and, unless retry_failed, what failed before)
        in_group = orm.QueryBuilder().append(orm.Group, filters={"id": self.ctx.group.pk}, tag="g").append(
            orm.Data, with_group="g", project=["attributes.mp_id", "attributes.structure_uuid"]).all()
        have = {m for m, _ in in_group if m} | {u for _, u in in_group if u}
        failed_before = {} if self.inputs.retry_failed.value else dict(
            self.ctx.group.base.extras.get(GROUP_FAILED_EXTRA, {}))
        for structure in structures:
            key = self._key(structure)
            if key in have or structure.uuid in have:
                self.ctx.skipped.append({"mp_id": key, "reason": "already in group"})
            elif key in failed_before:
                self.ctx.skipped.append({"mp_id": key, "reason": f"failed before: {failed_before[key]}"})
            else:
                self.ctx.queue.append(structure.pk)
        self.report(f"{len(structures)} structures: {len(self.ctx.queue)} to compute, "
                    f"{len(self.ctx.skipped)} skipped, {len(self.ctx.rejected)} candidates rejected")

    def has_pending(self):
        return bool(self.ctx.queue)

    def submit_batch(self):
        base = WorkflowFactory("deeph.openmx.base")
        overrides = self.inputs.overrides.get_dict() if "overrides" in self.inputs else {}
        options = self.inputs.options.get_dict() if "options" in self.inputs else {}
        batch, self.ctx.queue = self.ctx.queue[: self.inputs.max_concurrent.value], self.ctx.queue[
            self.inputs.max_concurrent.value:]
        futures = {}
        for pk in batch:
            structure = orm.load_node(pk)
            builder = base.get_builder_from_protocol(self.inputs.code, structure, self.inputs.protocol.value,
                                                     overrides=overrides)
            if options:
                for key, value in options.items():
                    builder.openmx.metadata.options[key] = value
            builder.metadata.label = self._key(structure)
            builder.metadata.call_link_label = f"openmx_{pk}"
            futures[f"run_{pk}"] = self.submit(builder)
        self.ctx.batch = list(futures)
        return self.to_context(**futures)

    def _record_child(self, child) -> None:
        """Put one finished OpenmxBaseWorkChain's result in the dataset Group (or the failure record), once.

        Called as each child finishes (:meth:`_on_awaitable_finished`) and again for the whole batch in
        :meth:`collect_batch` (a no-op for children already recorded), so a structure enters the Group
        as soon as its run ends, not when the slowest run of its batch does.
        """
        last = len(self.ctx.batch)   # a child of this batch can only be among the last entries
        if any(entry["workchain"] == child.uuid for entry in self.ctx.done[-last:] + self.ctx.failed[-last:]):
            return
        group = self.ctx.group
        structure = child.inputs["openmx"]["structure"] if "openmx" in child.inputs else None
        key = self._key(structure) if structure is not None else child.label
        ham = child.outputs.hamiltonian if "hamiltonian" in child.outputs else None
        failed_record = dict(group.base.extras.get(GROUP_FAILED_EXTRA, {}))
        if child.is_finished_ok and ham is not None and ham.base.attributes.get("scf_converged") is True:
            group.add_nodes(ham)
            self.ctx.done.append({"mp_id": key, "hamiltonian": ham.uuid, "workchain": child.uuid})
            if failed_record.pop(key, None) is not None:
                group.base.extras.set(GROUP_FAILED_EXTRA, failed_record)
        else:
            reason = child.exit_message or f"exit status {child.exit_status}"
            if child.is_excepted:
                reason = "excepted: " + (child.exception or "").strip().splitlines()[-1:][0] if child.exception else "excepted"
            self.ctx.failed.append({"mp_id": key, "reason": reason, "exit_status": child.exit_status,
                                    "workchain": child.uuid})
            failed_record[key] = reason
            group.base.extras.set(GROUP_FAILED_EXTRA, failed_record)
            self.report(f"{key}: failed ({reason}); not added to the dataset")

    def _on_awaitable_finished(self, awaitable) -> None:
        """AiiDA's callback when an awaited child terminates: also record that child at once."""
        super()._on_awaitable_finished(awaitable)
        try:
            child = orm.load_node(awaitable.pk)
            if isinstance(child, orm.WorkflowNode) and child.is_terminated:
                self._record_child(child)
        except Exception as exc:  # noqa: BLE001 - collect_batch records it at the end of the batch anyway
            self.logger.warning(f"could not record child {awaitable.pk} as it finished: {exc}")

    def collect_batch(self):
        for name in self.ctx.batch:
            self._record_child(self.ctx[name])

    def finalize(self):
        summary = {
            "group": self.ctx.group.label,
            "num_done": len(self.ctx.done), "num_skipped": len(self.ctx.skipped),
            "num_failed": len(self.ctx.failed), "num_rejected": len(self.ctx.rejected),
            "done": self.ctx.done, "skipped": self.ctx.skipped, "failed": self.ctx.failed,
            "rejected": self.ctx.rejected, "notes": self.ctx.notes,
        }
        self.out("summary", orm.Dict(summary).store())
        self.report(f"done {len(self.ctx.done)}, skipped {len(self.ctx.skipped)}, failed {len(self.ctx.failed)}, "
                    f"rejected {len(self.ctx.rejected)}; group {self.ctx.group.label} holds {self.ctx.group.count()} nodes")
