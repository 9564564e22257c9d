"""Stage a Hamiltonian dataset on a computer once; training runs then reuse it by symlink.

For 12k structures (~100 GB) a training run must not upload the data again::

    from aiida_deeph.workflows.staging import stage_dataset
    remote = stage_dataset('my-database', load_computer('gpu-cluster'), '/scratch/me/deeph-data/v1')
    builder.train.dataset = remote       # DeepHTrainCalculation symlinks it as `data`

:func:`stage_dataset` packs the HamiltonianData of a Group (or a list) into shards (``export_group``
``fmt='packed'``: ``shard-00000.h5`` ... + ``index.json``), puts them on the computer with its transport
(a copy for ``core.local``, SFTP for ``core.ssh``) and records the result by a calcfunction whose
inputs are the HamiltonianData nodes themselves (plus a Dict with the index: names, UUIDs, shards) and
whose output is the ``RemoteData``. Staging the same nodes to the same folder again returns the
existing ``RemoteData`` without packing or uploading anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import calcfunction

from aiida_deeph.data.hamiltonian import HamiltonianData

EXTRA_HASH = "deeph_dataset_hash"


def _collect(group_or_nodes) -> tuple[list, orm.Group | None]:
    group = None
    if isinstance(group_or_nodes, str):
        group = orm.load_group(group_or_nodes)
    elif isinstance(group_or_nodes, orm.Group):
        group = group_or_nodes
    if group is not None:
        qb = orm.QueryBuilder()
        qb.append(orm.Group, filters={"id": group.pk}, tag="g")
        qb.append(HamiltonianData, with_group="g", project="*")
        qb.order_by({HamiltonianData: {"id": "asc"}})
        nodes = qb.all(flat=True)
    else:
        nodes = sorted(group_or_nodes, key=lambda n: n.pk)
        if not all(isinstance(n, HamiltonianData) and n.is_stored for n in nodes):
            raise ValueError("stage_dataset: give a Group (or its label) or a list of stored HamiltonianData")
    if not nodes:
        raise ValueError("stage_dataset: no HamiltonianData to stage")
    return nodes, group


@calcfunction
def record_staged_dataset(index: orm.Dict, **hamiltonians) -> orm.RemoteData:
    """Provenance of a staged dataset: the HamiltonianData (inputs) -> the RemoteData of their shards."""
    data = index.get_dict()
    wanted = {e["uuid"] for e in data["structures"]}
    given = {node.uuid for node in hamiltonians.values()}
    if wanted != given:
        raise ValueError("the index does not list exactly the given HamiltonianData")
    computer = orm.load_computer(uuid=data["computer_uuid"])
    return orm.RemoteData(computer=computer, remote_path=data["remote_path"])


def _dataset_hash(uuids, remote_path: str, computer, shard_size: int) -> str:
    text = json.dumps([sorted(uuids), remote_path, computer.uuid, shard_size])
    return hashlib.sha256(text.encode()).hexdigest()


def stage_dataset(group_or_nodes, computer, remote_dir, shard_size: int = 500, progress=None) -> orm.RemoteData:
    """Pack ``group_or_nodes`` (Group, group label or HamiltonianData list) into shards in ``remote_dir`` on
    ``computer`` (absolute path; created) and return the ``RemoteData`` to give ``DeepHTrainCalculation``
    as ``dataset``. Idempotent: the same nodes, folder and shard size return the earlier RemoteData."""
    from aiida_deeph.data.stats import export_group, node_rows, write_shards

    if isinstance(computer, str):
        computer = orm.load_computer(computer)
    remote_dir = str(remote_dir).rstrip("/") or "/"
    if not os.path.isabs(remote_dir):
        raise ValueError(f"remote_dir must be an absolute path on {computer.label}: {remote_dir}")
    nodes, group = _collect(group_or_nodes)
    digest = _dataset_hash([n.uuid for n in nodes], remote_dir, computer, shard_size)
    qb = orm.QueryBuilder().append(orm.RemoteData, filters={f"extras.{EXTRA_HASH}": digest}, project="*")
    for existing in qb.all(flat=True):
        if existing.computer.uuid == computer.uuid:
            return existing

    with tempfile.TemporaryDirectory(prefix="deeph-stage-") as tmp:
        local = Path(tmp)
        if group is not None and len(nodes) == group.count():
            index = export_group(group.label, local, fmt="packed", shard_size=shard_size, progress=progress)
        else:
            entries = write_shards(node_rows(nodes), local, shard_size, progress=progress)
            index = {"format": "packed", "group": None, "num_structures": len(nodes), "shard_size": shard_size,
                     "num_shards": len({e["shard"] for e in entries}), "structures": entries}
            (local / "index.json").write_text(json.dumps(index, indent=2))
        files = sorted(p.name for p in local.iterdir() if p.is_file())
        with computer.get_transport() as transport:
            transport.makedirs(remote_dir, ignore_existing=True)
            for name in files:
                transport.put(str(local / name), f"{remote_dir}/{name}")

    index = dict(index)
    index.update(remote_path=remote_dir, computer_uuid=computer.uuid, computer=computer.label, files=files)
    hamiltonians = {f"n{node.pk}": node for node in nodes}
    remote = record_staged_dataset(index=orm.Dict(index), **hamiltonians)
    basis, elements = {}, set()
    for node in nodes:
        basis.update(node.base.attributes.get("basis", {}) or {})
        elements.update(node.base.attributes.get("elements", []))
    remote.base.extras.set_many({
        EXTRA_HASH: digest, "num_structures": len(nodes), "elements": sorted(elements), "basis": basis,
        "shards": [f for f in files if f.endswith(".h5")], "group": group.label if group is not None else None,
    })
    return remote
