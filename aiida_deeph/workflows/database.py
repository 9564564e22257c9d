"""``DatabaseWorkChain``: Materials Project structures -> OpenMX -> a Group of HamiltonianData.

Resumable (structures whose Hamiltonian is already in the target group are skipped), failure-isolating
(a failed structure is reported, never fails the database) and with bounded concurrency: at most
``max_concurrent`` OpenmxBaseWorkChains run at any time, and a new one starts as soon as one ends (a
rolling window, not batches that wait for their slowest run). Only converged runs that pass the
sanity check are added to the group (quality gate).

Scale: the checkpointed context stays small whatever the number of structures (a cursor, counters
and the running children); the queue of structures and the skipped/rejected lists are kept once in
the work chain node's extras, and the summary is assembled from the graph at the end.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, calcfunction, while_
from aiida.engine.processes.workchains.awaitable import Awaitable, AwaitableAction, AwaitableTarget
from plumpy import ProcessState

from aiida_deeph.engine import AttachedOutputsMixin
from aiida_deeph.workflows.openmx_base import OpenmxBaseWorkChain

GROUP_WORKCHAINS_EXTRA = "deeph_database_workchains"
GROUP_FAILED_EXTRA = "deeph_failed"
QUEUE_EXTRA = "deeph_queue"          # on the DatabaseWorkChain node: pks of the StructureData to compute, in order
SKIPPED_EXTRA = "deeph_skipped"
REJECTED_EXTRA = "deeph_rejected"
TERMINAL_STATES = ("finished", "excepted", "killed")
NOT_LAUNCHED_EXTRA = "deeph_not_launched"   # structures whose OpenmxBaseWorkChain could not be created
# inputs that are the same for every structure of a run: one stored node shared by all OpenmxBaseWorkChains
SHARED_INPUTS = (("openmx", "parameters"), ("openmx", "basis"), ("max_iterations",), ("clean_workdir",))


@calcfunction
def import_structure(record: orm.Dict) -> orm.StructureData:
    """A StructureData from a structure-source record (MP id, formula, query, database version, structure)."""
    from pymatgen.core import Structure

    return orm.StructureData(pymatgen=Structure.from_dict(record["structure"]))


def _validate_positive(value, _):
    if value.value < 1:
        return f"max_concurrent must be at least 1, not {value.value}"
    return None


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


def _validate_overrides(value, _):
    if value is None:
        return None
    unknown = sorted(set(value.get_dict()) - {"openmx", "max_iterations", "clean_workdir"})
    if unknown:
        return (f"unknown override key(s) {', '.join(map(repr, unknown))}; allowed: 'openmx' (protocol overrides of "
                "the calculation), 'max_iterations', 'clean_workdir'")
    return None


class DatabaseWorkChain(AttachedOutputsMixin, WorkChain):
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
        spec.input("overrides", valid_type=orm.Dict, required=False, validator=_validate_overrides,
                   help="Protocol overrides for OpenmxBaseWorkChain ({'openmx': {'parameters': {...}}, ...}).")
        spec.input("options", valid_type=orm.Dict, required=False,
                   help="metadata.options of every OpenmxCalculation (resources, max_wallclock_seconds, ...).")
        spec.input("max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(4), validator=_validate_positive,
                   help="At most this many OpenmxBaseWorkChains run at a time; a new one starts as one ends.")
        spec.input("group_label", valid_type=orm.Str, help="The dataset Group (created if missing).")
        spec.input("retry_failed", valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help="Also rerun structures that failed in earlier runs for this group.")
        spec.outline(
            cls.setup,
            cls.select,
            while_(cls.has_work)(cls.launch),
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
        self.ctx.notes = []
        self.ctx.num_queued = 0      # structures in the queue (node extra QUEUE_EXTRA)
        self.ctx.next = 0            # index of the next structure to launch
        self.ctx.running = []        # pks of the OpenmxBaseWorkChains running now (at most max_concurrent)
        self.ctx.shared = {}         # SHARED_INPUTS path -> pk of the stored node every child uses

    def _key(self, structure) -> str:
        return structure.base.extras.get("mp_id", None) or structure.uuid

    def select(self):
        source = self.inputs.source.value
        primitive = self.inputs.primitive.value
        structures = []
        rejected = []
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
            rejected = [r.as_dict() for r in result.rejections]
            self.ctx.notes.extend(result.notes)
            if result.missing_ids:
                self.ctx.notes.append(f"requested ids not found: {', '.join(result.missing_ids)}")
            for note in result.notes:
                self.report(note)
            structures = [store_candidate(c, result.query, result.database_version) for c in result.candidates]
        else:
            return self.exit_codes.ERROR_STRUCTURE_SOURCE.format(message=f"unknown source {source!r}")
        if not structures:
            self.node.base.extras.set(REJECTED_EXTRA, rejected)
            return self.exit_codes.ERROR_NO_STRUCTURES

        # resume: skip what the group already holds (and, unless retry_failed, what failed before)
        in_group = orm.QueryBuilder().append(orm.Group, filters={"id": self.ctx.group.pk}, tag="g").append(
            orm.Data, with_group="g", project=["attributes.mp_id", "attributes.structure_uuid"]).all()
        have = {m for m, _ in in_group if m} | {u for _, u in in_group if u}
        failed_before = {} if self.inputs.retry_failed.value else dict(
            self.ctx.group.base.extras.get(GROUP_FAILED_EXTRA, {}))
        skipped, queue = [], []
        for structure in structures:
            key = self._key(structure)
            if key in have or structure.uuid in have:
                skipped.append({"mp_id": key, "reason": "already in group"})
            elif key in failed_before:
                skipped.append({"mp_id": key, "reason": f"failed before: {failed_before[key]}"})
            else:
                queue.append(structure.pk)
        # kept once in the node's extras, not in the context that every checkpoint writes
        self.node.base.extras.set_many({QUEUE_EXTRA: queue, SKIPPED_EXTRA: skipped, REJECTED_EXTRA: rejected})
        self.ctx.num_queued = len(queue)
        self.report(f"{len(structures)} structures: {len(queue)} to compute, "
                    f"{len(skipped)} skipped, {len(rejected)} candidates rejected")

    def has_work(self):
        return bool(self.ctx.running) or self.ctx.next < self.ctx.num_queued

    def launch(self):
        """Fill the window of running OpenmxBaseWorkChains, then wait until one of them ends.

        A child's end is handled in :meth:`_on_awaitable_finished`: it is recorded at once and, while
        structures are waiting, this step runs again to start the next one. The engine-level parts (which
        use aiida-core 2.9's WorkChain internals ``_awaitables``, ``_action_awaitables``,
        ``_on_awaitable_finished``) are tested through ``run()``, a daemon and a daemon restart.
        """
        if self.ctx.running:   # children that ended with no callback seen (a safety net: one query)
            states = orm.QueryBuilder().append(orm.ProcessNode, filters={"id": {"in": list(self.ctx.running)}},
                                               project=["id", "attributes.process_state"]).all()
            for pk, state in states:
                if state in TERMINAL_STATES:
                    self._record_child(orm.load_node(pk))
        room = self.inputs.max_concurrent.value - len(self.ctx.running)
        if room > 0 and self.ctx.next < self.ctx.num_queued:
            queue = self.node.base.extras.get(QUEUE_EXTRA)
            for pk in queue[self.ctx.next: self.ctx.next + room]:
                self.ctx.next += 1
                try:
                    self.ctx.running.append(self._submit(pk).pk)
                except Exception as exc:  # noqa: BLE001 - one structure never fails the database
                    self._record_launch_failure(pk, exc)
        for key in [k for k in self.ctx if k.startswith("child_")]:   # resolved or superseded placeholders
            del self.ctx[key]
        # await every running child (what ``ToContext`` does, with one status update instead of one per child)
        for pk in self.ctx.running:
            awaitable = Awaitable(pk=pk, action=AwaitableAction.ASSIGN, target=AwaitableTarget.PROCESS,
                                  outputs=False, key=f"child_{pk}")
            self.ctx[awaitable.key] = awaitable
            self._awaitables.append(awaitable)
        if self.ctx.running:
            self._update_process_status()

    def _submit(self, pk: int):
        """Submit the OpenmxBaseWorkChain of StructureData ``pk`` (inputs equal for all children are shared)."""
        structure = orm.load_node(pk)
        builder = OpenmxBaseWorkChain.get_builder_from_protocol(
            self.inputs.code, structure, self.inputs.protocol.value,
            overrides=self.inputs.overrides.get_dict() if "overrides" in self.inputs else {})
        options = self.inputs.options.get_dict() if "options" in self.inputs else {}
        for key, value in options.items():
            builder.openmx.metadata.options[key] = value
        for path in SHARED_INPUTS:
            self._share_input(builder, path)
        builder.metadata.label = self._key(structure)
        builder.metadata.call_link_label = f"openmx_{pk}"
        node = self.submit(builder)
        for path in SHARED_INPUTS:
            name = ".".join(path)
            if name not in self.ctx.shared:
                value = _get_path(builder, path)
                if value is not None and value.is_stored:
                    self.ctx.shared[name] = value.pk
        return node

    def _record_launch_failure(self, pk: int, exc: Exception) -> None:
        """A structure whose OpenmxBaseWorkChain could not even be created (invalid inputs, e.g. an element
        without a basis): reported like a failed run, in the group's failure record and the summary."""
        structure = orm.load_node(pk)
        key = self._key(structure)
        reason = "could not launch: " + (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        not_launched = list(self.node.base.extras.get(NOT_LAUNCHED_EXTRA, []))
        not_launched.append({"mp_id": key, "reason": reason, "exit_status": None, "workchain": None})
        self.node.base.extras.set(NOT_LAUNCHED_EXTRA, not_launched)
        group = self.ctx.group
        failed_record = dict(group.base.extras.get(GROUP_FAILED_EXTRA, {}))
        failed_record[key] = reason
        group.base.extras.set(GROUP_FAILED_EXTRA, failed_record)
        self.report(f"{key}: {reason}; not added to the dataset")

    def _share_input(self, builder, path) -> None:
        """Replace the builder's input at ``path`` by the stored node of an earlier child when they are equal."""
        pk = self.ctx.shared.get(".".join(path))
        value = _get_path(builder, path)
        if pk is None or value is None:
            return
        cache = self.__dict__.setdefault("_deeph_shared_content", {})   # pk -> content (never changes)
        if pk not in cache:
            cache[pk] = _node_content(orm.load_node(pk))
        if cache[pk] == _node_content(value):
            _set_path(builder, path, orm.load_node(pk))

    def _classify(self, child):
        """(HamiltonianData or None, failure reason or None) of a terminated OpenmxBaseWorkChain.

        When the work chain's own message is generic (out of iterations), the reason also gives what its
        last OpenmxCalculation said (SCF not converged, crashed, ...)."""
        ham = child.base.links.get_outgoing(link_label_filter="hamiltonian").first()
        ham = ham.node if ham is not None else None
        if _goes_into_dataset(child.is_finished_ok, ham is not None,
                              ham.base.attributes.get("scf_converged", None) if ham is not None else None):
            return ham, None
        reason = _failure_reason(child.is_finished_ok, child.is_excepted, child.exit_status, child.exit_message,
                                 child.exception)
        if child.exit_status == OpenmxBaseWorkChain.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status:
            calcs = sorted((c for c in child.called if isinstance(c, orm.CalcJobNode)), key=lambda c: c.ctime)
            if calcs:
                last = calcs[-1]
                reason += f" Last run {last.process_label}<{last.pk}>: [{last.exit_status}] {last.exit_message}"
        return None, reason

    def _child_key(self, child) -> str:
        """The MP id (or uuid) of a child's structure: :meth:`_submit` makes it the child's label."""
        if child.label:
            return child.label
        structure = child.inputs["openmx"]["structure"] if "openmx" in child.inputs else None
        return self._key(structure) if structure is not None else str(child.pk)

    def _record_child(self, child) -> None:
        """Put one ended OpenmxBaseWorkChain's result in the dataset Group (or the failure record), once.

        Called as each child ends (:meth:`_on_awaitable_finished`), or by :meth:`launch` for a child
        that ended while no callback could run; a child no longer among the running ones was recorded.
        """
        if child.pk not in self.ctx.running:
            return
        self.ctx.running.remove(child.pk)
        self.ctx.pop(f"child_{child.pk}", None)
        group = self.ctx.group
        key = self._child_key(child)
        ham, reason = self._classify(child)
        if ham is not None:
            group.add_nodes(ham)
            failed_record = group.base.extras.get(GROUP_FAILED_EXTRA, {})
            if key in failed_record:
                failed_record.pop(key)
                group.base.extras.set(GROUP_FAILED_EXTRA, failed_record)
        else:
            failed_record = dict(group.base.extras.get(GROUP_FAILED_EXTRA, {}))
            failed_record[key] = reason
            group.base.extras.set(GROUP_FAILED_EXTRA, failed_record)
            self.report(f"{key}: failed ({reason}); not added to the dataset")

    def _on_awaitable_finished(self, awaitable) -> None:
        """AiiDA's callback when an awaited child ends: record it, and start the next one without waiting for
        the other running children.

        Replaces aiida-core's handler (which resolves the awaitable and resumes once none is left). Every
        running child is awaited at each :meth:`launch`, but its callback is registered only once per
        Python process (:meth:`_action_awaitables`), so a callback may come for an awaitable of an earlier
        step, or while a step runs. Callbacks may also interleave with each other at database calls, so
        the list of awaitables is changed in place and before any database call.
        """
        pk = awaitable.pk
        self._awaitables[:] = [a for a in self._awaitables if a.pk != pk]
        self._watched.discard(pk)
        self.logger.info("received callback that awaitable %d has terminated", pk)
        try:
            child = orm.load_node(pk)
            if isinstance(child, orm.WorkflowNode) and child.is_terminated:
                self._record_child(child)
        except Exception as exc:  # noqa: BLE001 - launch() records it at its next run anyway
            self.logger.warning(f"could not record child {pk} as it ended: {exc}")
        if self.state != ProcessState.WAITING:
            return
        room = len(self.ctx.running) < self.inputs.max_concurrent.value and self.ctx.next < self.ctx.num_queued
        if room:
            self._awaitables.clear()   # the other children stay watched: their callbacks are registered
        self._update_process_status()
        if not self._awaitables and self.state == ProcessState.WAITING:
            self.resume()

    @property
    def _watched(self) -> set:
        """pks of the children whose end-of-process callback is registered in this Python process."""
        return self.__dict__.setdefault("_deeph_watched", set())

    def _action_awaitables(self) -> None:
        """Register the end-of-process callback once per child (aiida-core would do it at every wait)."""
        watched = self._watched
        awaitables = self._awaitables
        self._awaitables = [a for a in awaitables if a.pk not in watched]
        try:
            super()._action_awaitables()
        finally:
            watched.update(a.pk for a in self._awaitables)
            self._awaitables = awaitables

    def finalize(self):
        # two queries for all children (a 12k-structure run has 12k): the work chains, and their 'hamiltonian'
        # (an outer join cannot be used: the filter on the link label would drop the children without one)
        def children_query():
            return orm.QueryBuilder().append(orm.WorkChainNode, filters={"id": self.node.pk}, tag="db").append(
                orm.WorkflowNode, with_incoming="db", tag="child")

        qb = children_query()
        qb.add_projection("child", ["id", "uuid", "label", "attributes.process_state", "attributes.exit_status"])
        hams = children_query()
        hams.add_projection("child", "id")
        hams.append(orm.Data, with_incoming="child", edge_filters={"label": "hamiltonian"},
                    project=["uuid", "attributes.scf_converged"])
        ham_of = {pk: (uuid, None if conv is None else bool(conv))    # SQLite's JSON gives 1/0 for booleans
                  for pk, uuid, conv in hams.all()}
        done, failed = [], []
        for pk, uuid, label, state, status in sorted(qb.all()):
            ham_uuid, converged = ham_of.get(pk, (None, None))
            key = label or uuid
            if _goes_into_dataset(state == "finished" and status == 0, ham_uuid is not None, converged):
                done.append({"mp_id": key, "hamiltonian": ham_uuid, "workchain": uuid})
            else:   # failures are few: the full reason, as recorded when the run ended
                failed.append({"mp_id": key, "reason": self._classify(orm.load_node(pk))[1], "exit_status": status,
                               "workchain": uuid})
        extras = self.node.base.extras
        failed.extend(extras.get(NOT_LAUNCHED_EXTRA, []))
        skipped, rejected = extras.get(SKIPPED_EXTRA, []), extras.get(REJECTED_EXTRA, [])
        summary = {
            "group": self.ctx.group.label,
            "num_done": len(done), "num_skipped": len(skipped),
            "num_failed": len(failed), "num_rejected": len(rejected),
            "done": done, "skipped": skipped, "failed": failed,
            "rejected": rejected, "notes": self.ctx.notes,
        }
        self.out("summary", orm.Dict(summary).store())
        self.report(f"done {len(done)}, skipped {len(skipped)}, failed {len(failed)}, "
                    f"rejected {len(rejected)}; group {self.ctx.group.label} holds {self.ctx.group.count()} nodes")


def _goes_into_dataset(finished_ok, has_hamiltonian, scf_converged) -> bool:
    """The quality gate for a terminated OpenmxBaseWorkChain: finished with 0, a Hamiltonian, and that
    Hamiltonian's SCF converged."""
    return bool(finished_ok and has_hamiltonian and scf_converged is True)


def _failure_reason(finished_ok, excepted, exit_status, exit_message, exception) -> str:
    """Why a terminated OpenmxBaseWorkChain that did not pass :func:`_goes_into_dataset` is not in the group."""
    if excepted:
        lines = (exception or "").strip().splitlines()
        return ("excepted: " + lines[-1]) if lines else "excepted"
    if finished_ok:
        return "finished without a converged Hamiltonian"
    return exit_message or f"exit status {exit_status}"


def _get_path(builder, path):
    node = builder
    for part in path:
        if part not in node:
            return None
        node = node[part]
    return node


def _set_path(builder, path, value) -> None:
    node = builder
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _node_content(node):
    if isinstance(node, orm.Dict):
        return ("Dict", node.get_dict())
    if isinstance(node, orm.BaseType):
        return (type(node).__name__, node.value)
    return ("uuid", node.uuid)
