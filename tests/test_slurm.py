"""A real CalcJob through AiiDA's Slurm scheduler on a local single-node Slurm, and through core.direct.

Slurm is started by ``scripts/slurm-local.sh`` (sourced by ``scripts/test.sh``; root only). Without it
the Slurm tests skip with the reason, except in CI (``CI`` set), where they fail: there they must run.
"""
from __future__ import annotations

import os
import subprocess

import pytest


def _bash_add_code(computer, label):
    """``/bin/bash`` as the ``core.arithmetic.add`` code: the CalcJob feeds it ``echo $((x + y))`` on stdin."""
    from aiida.common.exceptions import NotExistent
    from aiida.orm import InstalledCode, load_code

    try:
        return load_code(f"{label}@{computer.label}")
    except NotExistent:
        return InstalledCode(label=label, computer=computer, filepath_executable="/bin/bash",
                             default_calc_job_plugin="core.arithmetic.add").store()


def _run_add(code, x, y):
    from aiida.engine import run_get_node
    from aiida.orm import Int

    builder = code.get_builder()
    builder.x = Int(x)
    builder.y = Int(y)
    builder.metadata.options.max_wallclock_seconds = 120
    return run_get_node(builder)


@pytest.mark.slurm
def test_arithmetic_add_through_slurm(slurm_computer):
    code = _bash_add_code(slurm_computer, "bash-add")
    results, node = _run_add(code, 3, 4)

    assert node.is_finished_ok, (node.exit_status, node.exit_message, node.get_scheduler_stderr())
    assert results["sum"].value == 7
    job_id = node.get_job_id()
    assert job_id and job_id.isdigit(), job_id
    # The job went through Slurm: slurmctld knows it (kept MinJobAge=300 s after it ends) and it completed.
    info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    assert info.returncode == 0, info.stderr
    assert "JobState=COMPLETED" in info.stdout, info.stdout
    assert f"WorkDir={node.get_remote_workdir()}" in info.stdout
    script = subprocess.run(["cat", os.path.join(node.get_remote_workdir(), "_aiidasubmit.sh")],
                            capture_output=True, text=True, check=True).stdout
    assert "#SBATCH" in script


def test_arithmetic_add_through_direct_scheduler(aiida_profile, aiida_localhost):
    assert aiida_localhost.scheduler_type == "core.direct"
    code = _bash_add_code(aiida_localhost, "bash-add")
    results, node = _run_add(code, 5, 6)

    assert node.is_finished_ok, (node.exit_status, node.exit_message, node.get_scheduler_stderr())
    assert results["sum"].value == 11
    assert node.get_job_id()  # the direct scheduler's job id is the process id of the submit script
