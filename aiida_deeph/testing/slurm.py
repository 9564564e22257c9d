"""Helpers for running CalcJobs through a real local Slurm in tests (see ``scripts/slurm-local.sh``).

``scripts/slurm-local.sh`` (sourced by ``scripts/test.sh``) starts a single-node Slurm on localhost when
it can (root + apt-get) and exports ``AIIDA_DEEPH_SLURM=1``, or ``AIIDA_DEEPH_SLURM=0`` together with
``AIIDA_DEEPH_SLURM_REASON``. :func:`slurm_available` reads that and checks that ``sinfo`` answers;
:func:`setup_slurm_computer` makes an AiiDA computer (``core.local`` transport, ``core.slurm`` scheduler)
that submits to it.

aiida is imported lazily, inside the functions that need it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

__all__ = ("slurm_available", "setup_slurm_computer", "SLURM_ENV", "SLURM_REASON_ENV")

SLURM_ENV = "AIIDA_DEEPH_SLURM"
SLURM_REASON_ENV = "AIIDA_DEEPH_SLURM_REASON"

#: ``sinfo`` node states (``%t``) in which a job can run; a ``*``/``~``/``#``... suffix means it cannot.
_USABLE_STATES = {"idle", "mix", "alloc", "comp"}


def slurm_available(timeout: float = 10.0) -> tuple[bool, str]:
    """Whether a Slurm cluster is usable from here, and why not.

    ``AIIDA_DEEPH_SLURM=0`` means no (the reason is ``AIIDA_DEEPH_SLURM_REASON``, as written by
    ``scripts/slurm-local.sh``). Otherwise (``1`` or unset) ``sinfo`` must answer within ``timeout``
    seconds and show at least one node in a usable state (idle, mixed, allocated or completing).

    :return: ``(True, description)`` or ``(False, reason)``.
    """
    flag = os.environ.get(SLURM_ENV, "").strip()
    reason = os.environ.get(SLURM_REASON_ENV, "").strip()
    if flag == "0":
        return False, f"no local Slurm: {reason or f'{SLURM_ENV}=0'}"
    hint = "" if flag else " (run the tests via scripts/test.sh, which starts a local Slurm when run as root)"
    if shutil.which("sinfo") is None:
        return False, f"no local Slurm: `sinfo` not found{hint}"
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %t"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"no local Slurm: `sinfo` failed: {exc}{hint}"
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        return False, f"no local Slurm: `sinfo` exited {result.returncode}: {message[-1] if message else ''}{hint}"
    nodes = [line.split() for line in result.stdout.splitlines() if line.strip()]
    usable = [node for node in nodes if len(node) == 2 and node[1] in _USABLE_STATES]
    if not usable:
        states = ", ".join(" ".join(node) for node in nodes) or "no nodes"
        return False, f"no local Slurm: no usable node ({states}){hint}"
    return True, "Slurm nodes: " + ", ".join(" ".join(node) for node in usable)


def setup_slurm_computer(
    label: str = "localhost-slurm",
    workdir: str | None = None,
    *,
    poll_interval: float = 0.5,
    mpiprocs_per_machine: int = 1,
    description: str = "Local single-node Slurm (tests)",
):
    """Get or create (stored and configured) an AiiDA computer submitting to the local Slurm.

    ``core.local`` transport, ``core.slurm`` scheduler, ``default_mpiprocs_per_machine`` 1 and a short
    minimum scheduler poll interval so that CalcJobs finish in seconds. ``workdir`` defaults to a new
    temporary folder (it must be visible to slurmd: on one machine any local path is).

    A computer with this label that already exists is reused (and re-configured / re-tuned); it must use
    the ``core.slurm`` scheduler.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.Computer.collection.get(label=label)
    except NotExistent:
        computer = None
    if computer is not None:
        if computer.scheduler_type != "core.slurm":
            raise ValueError(f"computer {label!r} exists with scheduler {computer.scheduler_type!r}, not core.slurm")
    else:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="aiida-deeph-slurm-")
        os.makedirs(workdir, exist_ok=True)
        computer = orm.Computer(
            label=label,
            description=description,
            hostname="localhost",
            workdir=str(workdir),
            transport_type="core.local",
            scheduler_type="core.slurm",
        ).store()
    computer.set_default_mpiprocs_per_machine(mpiprocs_per_machine)
    computer.set_minimum_job_poll_interval(poll_interval)
    if not computer.is_configured:
        computer.configure(safe_interval=0.0)
    return computer
