"""The DatabaseWorkChain through `submit` and a daemon (ZeroMQ broker), surviving a daemon restart."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import corpus_dir


@pytest.mark.slow
def test_database_workchain_with_daemon_survives_a_restart(tmp_path):
    # replays wait 0.02 x the recorded wall time (0.2-2.6 s) so the daemon can be stopped mid-run
    ids = ["mp-10044", "mp-632172", "mp-684609", "mp-79", "mp-30", "mp-21"]
    env = dict(os.environ, AIIDA_PATH=str(tmp_path), AIIDA_DEEPH_REPLAY_TIME_SCALE="0.02",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("daemon_database.py")), str(corpus_dir()), *ids],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the daemon was stopped while the work chain was waiting, with structures still to run
    assert result["terminated"] is False and result["ended_at_stop"] < len(ids), result
    # after the restart it finished every structure, each computed exactly once
    assert result["exit_status"] == 0 and result["num_done"] == len(ids), result
    assert result["group_count"] == len(ids)
    assert result["children"] == result["calculations"] == len(ids)
    assert result["labels"] == sorted(ids)
