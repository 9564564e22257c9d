"""Benchmark: AiiDA overhead per structure of the DatabaseWorkChain (replay stand-in, SQLite, no daemon).

    python benchmarks/bench_database.py [--sizes 10 67] [--max-concurrent 8]

For each size N: a fresh group of N corpus structures (StructureData exactly as computed), one
DatabaseWorkChain run through `run()` with the replay stand-in as the OpenMX code. The replay's own
time (what a DFT code would take here: decompressing and copying recorded files) is measured
separately by running the stand-in directly on the same inputs, and subtracted:
overhead per structure = (wall - replay time) / N.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_profile(tmp: Path):
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    profile = create_profile(config, name="bench-db", email="bench@localhost", storage_backend="core.sqlite_dos",
                             storage_config={"filepath": str(tmp / "storage")})
    config.set_option("runner.poll.interval", 1, scope=profile.name)
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    return load_profile(profile.name, allow_switch=True)


def main():
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=str(here.parent / "shared" / "openmx-corpus"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 67])
    parser.add_argument("--max-concurrent", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-db-"))
    os.environ["AIIDA_PATH"] = str(tmp)
    make_profile(tmp)

    from aiida import orm
    from aiida.engine import run_get_node
    from pymatgen.core import Structure

    from aiida_deeph.testing.replay import write_replay_executable
    from aiida_deeph.workflows.database import DatabaseWorkChain

    computer = orm.Computer(label="localhost", hostname="localhost", transport_type="core.local",
                            scheduler_type="core.direct", workdir=str(tmp / "work")).store()
    computer.configure()
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

    # replay time alone: the stand-in run directly on each recorded input
    t0 = time.perf_counter()
    for _, run in structures:
        work = Path(tempfile.mkdtemp(dir=tmp))
        (work / "aiida.dat").write_text((run / "openmx.dat").read_text())
        subprocess.run([str(exe), "aiida.dat"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    replay_per = (time.perf_counter() - t0) / len(structures)

    print(f"replay stand-in alone: {replay_per:.3f} s per structure")
    print(f"{'N':>4s} {'wall s':>8s} {'per structure':>14s} {'overhead/structure':>19s} {'done':>5s}")
    for n in args.sizes:
        n = min(n, len(structures))
        group = orm.Group(label=f"bench-structures-{n}").store()
        group.add_nodes([s for s, _ in structures[:n]])
        t0 = time.perf_counter()
        results, node = run_get_node(DatabaseWorkChain, code=code, source=orm.Str("group"),
                                     structure_group=orm.Str(group.label), group_label=orm.Str(f"bench-db-{n}"),
                                     max_concurrent=orm.Int(args.max_concurrent))
        wall = time.perf_counter() - t0
        done = results["summary"]["num_done"]
        print(f"{n:4d} {wall:8.1f} {wall / n:14.2f} {(wall - replay_per * n) / n:19.2f} {done:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
