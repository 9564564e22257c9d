"""Benchmark: AiiDA overhead per structure of the DatabaseWorkChain (replay stand-in, SQLite, no daemon).

    python benchmarks/bench_database.py [--sizes 10 67] [--max-concurrent 8] [--daemon W] [--broker] [--timeline]

For each size N: a fresh group of N corpus structures (StructureData exactly as computed), one
DatabaseWorkChain run through `run()` with the replay stand-in as the OpenMX code. The replay's own
time (what a DFT code would take here: decompressing and copying recorded files) is measured
separately by running the stand-in directly on the same inputs, and subtracted:
overhead per structure = (wall - replay time) / N. Also printed: the CPU time of this process (the AiiDA
engine and the plugin's code; the replay runs in other processes) per structure.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(daemon: bool = False) -> float:
    """User + system CPU seconds of this process (not of its children), or of the running daemon workers."""
    if not daemon:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "bench-db" in cmd and "daemon" in cmd and "worker" in cmd:
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def make_profile(tmp: Path, broker: bool = False, name: str = "bench-db"):
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    kw = {}
    if broker:   # AiiDA 2.9's built-in ZeroMQ broker (no RabbitMQ): daemon + submit
        from aiida.plugins import BrokerFactory

        kw = {"broker_backend": "core.zeromq", "broker_config": BrokerFactory("core.zeromq").get_default_config()}
    profile = create_profile(config, name=name, email="bench@localhost", storage_backend="core.sqlite_dos",
                             storage_config={"filepath": str(tmp / "storage")}, **kw)
    config.set_option("runner.poll.interval", 1, scope=profile.name)
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    return load_profile(profile.name, allow_switch=True)


def timeline(root) -> None:
    """Per OpenmxBaseWorkChain: seconds from the database work chain's start to the child's creation, to its
    calculation's creation, to the calculation's last change (parsed) and to the child's last change."""
    from aiida import orm

    t0 = root.ctime
    rows = []
    for wc in root.called:
        if not isinstance(wc, orm.WorkflowNode):
            continue
        calcs = [c for c in wc.called if isinstance(c, orm.CalcJobNode)]
        if not calcs:
            continue
        c = calcs[0]
        rows.append([(x - t0).total_seconds() for x in (wc.ctime, c.ctime, c.mtime, wc.mtime)])
    rows.sort()
    print("  child created | calc created | calc done | child done (s from start)")
    for r in rows:
        print("  " + " | ".join(f"{x:7.2f}" for x in r))
    print(f"  end of database work chain: {(root.mtime - t0).total_seconds():.2f} s")


def main():
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=str(here.parent / "shared" / "openmx-corpus"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 67])
    parser.add_argument("--daemon", type=int, default=0, metavar="W",
                        help="submit to a daemon with W workers (ZeroMQ broker) instead of run() in this process")
    parser.add_argument("--broker", action="store_true", help="profile with the ZeroMQ broker also for run()")
    parser.add_argument("--timeline", action="store_true", help="print where the time of each child went")
    parser.add_argument("--login-shell", action="store_true", help="use a login shell for transport commands (verdi presto's default)")
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.0, metavar="F",
                        help="replays wait F x the recorded OpenMX wall time (unequal run times, as in production); "
                             "then the wall time is compared with the sum of the waits over max-concurrent slots")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-db-"))
    os.environ["AIIDA_PATH"] = str(tmp)
    # the daemon is started with `verdi` and itself looks for it on PATH: use this interpreter's
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    make_profile(tmp, broker=bool(args.daemon) or args.broker)

    from aiida import orm
    from aiida.engine import run_get_node
    from pymatgen.core import Structure

    from aiida_deeph.replay.standin import write_replay_executable
    from aiida_deeph.workflows.database import DatabaseWorkChain

    computer = orm.Computer(label="localhost", hostname="localhost", transport_type="core.local",
                            scheduler_type="core.direct", workdir=str(tmp / "work")).store()
    computer.configure(use_login_shell=args.login_shell, safe_interval=0.0)   # a login shell costs ~0.13 s per command
    computer.set_minimum_job_poll_interval(0.0)
    exe = write_replay_executable(tmp / "openmx", [args.corpus])
    code = orm.InstalledCode(label="openmx-replay", computer=computer, filepath_executable=str(exe),
                             default_calc_job_plugin="deeph.openmx").store()
    runs = sorted(p for p in Path(args.corpus).iterdir() if (p / "meta.json").is_file())
    structures = []
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        s = orm.StructureData(pymatgen=Structure.from_dict(meta["structure"]))
        s.base.extras.set("mp_id", meta["material_id"])
        structures.append((s.store(), run))

    # replay time alone: the stand-in run directly on each recorded input (before the waits of --time-scale)
    t0 = time.perf_counter()
    for _, run in structures:
        work = Path(tempfile.mkdtemp(dir=tmp))
        (work / "aiida.dat").write_text((run / "openmx.dat").read_text())
        subprocess.run([str(exe), "aiida.dat"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    replay_per = (time.perf_counter() - t0) / len(structures)
    if args.time_scale > 0:
        os.environ["AIIDA_DEEPH_REPLAY_TIME_SCALE"] = str(args.time_scale)

    print(f"replay stand-in alone: {replay_per:.3f} s per structure")
    if args.daemon:
        subprocess.run(["verdi", "-p", "bench-db", "daemon", "start", str(args.daemon)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"daemon with {args.daemon} workers (ZeroMQ broker), submit(); engine CPU = the workers' CPU")
    else:
        print("run() in this process (verdi run), no daemon")
    print(f"{'N':>4s} {'wall s':>8s} {'per structure':>14s} {'overhead/structure':>19s} {'engine CPU/structure':>21s} "
          f"{'done':>5s}")
    for n in args.sizes:
        n = min(n, len(structures))
        group = orm.Group(label=f"bench-structures-{n}").store()
        group.add_nodes([s for s, _ in structures[:n]])
        inputs = dict(code=code, source=orm.Str("group"), structure_group=orm.Str(group.label),
                      group_label=orm.Str(f"bench-db-{n}"), max_concurrent=orm.Int(args.max_concurrent))
        t0 = time.perf_counter()
        cpu0 = cpu_seconds(bool(args.daemon))
        if args.daemon:
            from aiida.engine import submit

            node = submit(DatabaseWorkChain, **inputs)
            while not node.is_terminated:
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            results = node.outputs
        else:
            results, node = run_get_node(DatabaseWorkChain, **inputs)
            wall = time.perf_counter() - t0
        cpu = (cpu_seconds(bool(args.daemon)) - cpu0) / n
        done = results["summary"]["num_done"]
        print(f"{n:4d} {wall:8.1f} {wall / n:14.2f} {(wall - replay_per * n) / n:19.2f} {cpu:21.2f} {done:5d}")
        if args.time_scale > 0:
            waits = [args.time_scale * json.loads((r / "meta.json").read_text())["wall_s"] for _, r in structures[:n]]
            bound = max(sum(waits) / args.max_concurrent, max(waits))
            print(f"     waits: {sum(waits):.1f} s in all, longest {max(waits):.1f} s; no-overhead lower bound of the "
                  f"wall time with {args.max_concurrent} slots {bound:.1f} s (wall / bound {wall / bound:.2f})")
        if args.timeline:
            timeline(node)
    if args.daemon:
        subprocess.run(["verdi", "-p", "bench-db", "daemon", "stop"], stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
