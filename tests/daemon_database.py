"""Helper of test_database_daemon.py (run as a script in its own AIIDA_PATH): the DatabaseWorkChain with
``submit`` and a daemon (AiiDA's ZeroMQ broker), the daemon stopped while the work chain is waiting on its
children, `verdi process repair`, and the daemon started again. Prints one JSON line with what the test checks.

    python tests/daemon_database.py CORPUS_DIR MP_ID [MP_ID ...]
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def wait_for(predicate, timeout, what):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def main(corpus: str, ids: list) -> None:
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config
    from aiida.plugins import BrokerFactory

    tmp = Path(os.environ["AIIDA_PATH"])
    config = get_config(create=True)
    profile = create_profile(config, name="daemon-test", email="test@localhost", storage_backend="core.sqlite_dos",
                             storage_config={"filepath": str(tmp / "storage")}, broker_backend="core.zeromq",
                             broker_config=BrokerFactory("core.zeromq").get_default_config())
    config.set_option("runner.poll.interval", 1, scope=profile.name)
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    load_profile(profile.name, allow_switch=True)

    from aiida import orm
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client
    from pymatgen.core import Structure

    from aiida_deeph.calculations.openmx import OpenmxCalculation
    from aiida_deeph.replay.standin import write_replay_executable
    from aiida_deeph.workflows.database import DatabaseWorkChain

    computer = orm.Computer(label="localhost", hostname="localhost", transport_type="core.local",
                            scheduler_type="core.direct", workdir=str(tmp / "work")).store()
    computer.configure(safe_interval=0.0)
    computer.set_minimum_job_poll_interval(0.0)
    exe = write_replay_executable(tmp / "openmx", [corpus])
    code = orm.InstalledCode(label="openmx-replay", computer=computer, filepath_executable=str(exe),
                             default_calc_job_plugin="deeph.openmx").store()
    group = orm.Group(label="daemon-structures").store()
    for mp_id in ids:
        meta = json.loads((Path(corpus) / mp_id / "meta.json").read_text())
        s = orm.StructureData(pymatgen=Structure.from_dict(meta["structure"]))
        s.base.extras.set("mp_id", mp_id)
        group.add_nodes(s.store())

    client = get_daemon_client()
    client.start_daemon(number_workers=1)
    node = submit(DatabaseWorkChain, code=code, source=orm.Str("group"), structure_group=orm.Str(group.label),
                  group_label=orm.Str("daemon-db"), max_concurrent=orm.Int(2))

    def children():
        return [c for c in orm.load_node(node.pk).called if isinstance(c, orm.WorkflowNode)]

    # stop the daemon once a first child has ended and the work chain still waits on others
    wait_for(lambda: any(c.is_terminated for c in children()), 300, "a first child to end")
    client.stop_daemon(wait=True)
    interrupted = {"terminated": orm.load_node(node.pk).is_terminated,
                   "children_at_stop": len(children()),
                   "ended_at_stop": sum(c.is_terminated for c in children())}
    # what a user does before restarting: AiiDA 2.9's ZeroMQ broker can lose the task of a process that was
    # being handed to a worker as it stopped (the process then stays 'Created'); `verdi process repair`
    # (daemon stopped) re-creates such tasks
    repair = subprocess.run(["verdi", "-p", profile.name, "process", "repair", "--force"],
                            capture_output=True, text=True, timeout=120)
    interrupted["repair"] = (repair.stdout + repair.stderr).strip().splitlines()[-1:] if repair.returncode == 0 else \
        f"verdi process repair failed: {repair.stderr[-500:]}"
    client.start_daemon(number_workers=1)
    wait_for(lambda: orm.load_node(node.pk).is_terminated, 600, "the database work chain to end")
    client.stop_daemon(wait=True)

    node = orm.load_node(node.pk)
    summary = node.outputs.summary.get_dict() if "summary" in node.outputs else {}
    print(json.dumps({
        **interrupted,
        "exit_status": node.exit_status,
        "num_done": summary.get("num_done"),
        "group_count": orm.load_group("daemon-db").count(),
        "children": len(children()),
        "labels": sorted(c.label for c in children()),
        "calculations": orm.QueryBuilder().append(OpenmxCalculation).count(),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
