"""Benchmark of ``verdi data deeph stats`` on a large synthetic group (not a test).

Creates a temporary SQLite AiiDA profile, fills a group with N HamiltonianData nodes that carry
realistic attributes (24 elements, 1-150 atoms, element pairs, symbols, cell, basis, ...), and times
``collect_stats`` in-process, the ``verdi data deeph stats`` command end to end (subprocess, including
verdi's start-up), and ``--plot``.

Node creation modes:
- ``bulk`` (default): rows inserted with the storage backend's ``bulk_insert`` (what archive import
  uses), seconds for 12k nodes. The rows are what ``HamiltonianData.store()`` writes, minus the file.
- ``orm``: ``HamiltonianData()`` with attributes set by hand and a tiny repository file, ``store()``d
  one by one (PKs kept, not nodes), ~20 ms per node: use for a smaller N to cross-check.

    python benchmarks/bench_stats.py --num 12000
    python benchmarks/bench_stats.py --num 500 --mode orm
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from datetime import datetime, timezone
from itertools import combinations_with_replacement

ELEMENTS = "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Cu Zn Ga Ge As Se Br".split()


def synthetic_attributes(rng: random.Random, index: int) -> dict:
    nel = rng.choices([1, 2, 3, 4, 5], weights=[5, 35, 40, 15, 5])[0]
    elements = sorted(rng.sample(ELEMENTS, nel))
    num_atoms = max(nel, min(150, int(rng.lognormvariate(2.6, 0.8))))
    symbols = elements + [rng.choice(elements) for _ in range(num_atoms - nel)]
    pairs = sorted("-".join(sorted(p)) for p in combinations_with_replacement(elements, 2)
                   if p[0] != p[1] or symbols.count(p[0]) > 1 or rng.random() < 0.8)
    num_pairs = num_atoms * rng.randint(20, 80)
    num_orbitals = num_atoms * rng.choice([5, 8, 13])
    return {
        "format_version": 1,
        "formula": "".join(f"{e}{symbols.count(e)}" for e in elements),
        "elements": elements,
        "element_pairs": pairs,
        "num_atoms": num_atoms,
        "num_orbitals": num_orbitals,
        "num_pairs": num_pairs,
        "num_entries": num_pairs * rng.choice([25, 64, 169]),
        "fermi_energy": rng.uniform(-8, 2),
        "num_electrons": float(num_atoms * rng.randint(1, 8)),
        "basis": {e: f"{e}7.0-s2p2d1" for e in elements},
        "orbital_ls": {e: [0, 0, 1, 1, 2] for e in elements},
        "source": "DFT",
        "mp_id": f"mp-{100000 + index}",
        "has_hamiltonian": True,
        "has_overlap": True,
        "has_density_matrix": False,
        "file_size": rng.randint(50_000, 20_000_000),
        "scf_steps": rng.randint(8, 80),
        "scf_converged": True,
        "cell": [[rng.uniform(3, 12), 0.0, 0.0], [0.0, rng.uniform(3, 12), 0.0], [0.0, 0.0, rng.uniform(3, 12)]],
        "symbols": symbols,
        "energy_unit": "eV",
        "orbital_order": "openmx",
    }


def make_profile(workdir: str):
    from aiida.manage.configuration import create_profile, get_config, load_profile

    config = get_config(create=True)
    profile = create_profile(config, storage_backend="core.sqlite_dos",
                             storage_config={"filepath": os.path.join(workdir, "storage")},
                             name="bench-stats", email="bench@localhost", is_test_profile=True)
    profile.set_option("warnings.development_version", False)
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    return load_profile(profile.name, allow_switch=True)


def fill_bulk(group, num: int, rng: random.Random) -> None:
    from aiida import orm
    from aiida.manage import get_manager
    from aiida.orm.entities import EntityTypes as ET

    from aiida_deeph.data.hamiltonian import HamiltonianData

    backend = get_manager().get_profile_storage()
    user_id = orm.User.collection.get_default().pk
    node_type = HamiltonianData._plugin_type_string
    now = datetime.now(timezone.utc)
    batch = 2000
    for start in range(0, num, batch):
        rows = []
        for i in range(start, min(num, start + batch)):
            rows.append({
                "uuid": str(uuidlib.uuid4()), "node_type": node_type, "process_type": None,
                "label": "", "description": "", "ctime": now, "mtime": now,
                "attributes": synthetic_attributes(rng, i), "extras": {}, "repository_metadata": {},
                "dbcomputer_id": None, "user_id": user_id,
            })
        pks = backend.bulk_insert(ET.NODE, rows)
        backend.bulk_insert(ET.GROUP_NODE, [{"dbgroup_id": group.pk, "dbnode_id": pk} for pk in pks])


def fill_orm(group, num: int, rng: random.Random) -> None:
    from aiida import orm

    from aiida_deeph.data.hamiltonian import FILENAME, HamiltonianData

    pks = []
    for i in range(num):
        node = HamiltonianData()
        for key, value in synthetic_attributes(rng, i).items():
            node.base.attributes.set(key, value)
        node.base.repository.put_object_from_filelike(io.BytesIO(b"tiny"), FILENAME)
        pks.append(node.store().pk)
        if len(pks) == 500:
            group.add_nodes([orm.load_node(pk) for pk in pks])
            pks = []
    if pks:
        group.add_nodes([orm.load_node(pk) for pk in pks])


def add_failures(group, rng: random.Random, num_failed: int) -> None:
    from aiida import orm
    from aiida.common.links import LinkType

    from aiida_deeph.data.stats import DATABASE_PROCESS_TYPE, WORKCHAINS_EXTRA

    refs = []
    for _ in range(3):
        wf = orm.WorkflowNode()
        wf.process_type = DATABASE_PROCESS_TYPE
        wf.store()
        failed = [{"mp_id": f"mp-{900000 + rng.randint(0, num_failed)}", "reason": "SCF not converged"}
                  for _ in range(num_failed)]
        summary = orm.Dict({"failed": failed}).store()
        summary.base.links.add_incoming(wf, link_type=LinkType.RETURN, link_label="summary")
        refs.append(wf.uuid)
    group.base.extras.set(WORKCHAINS_EXTRA, refs)


def timed(fn, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=12000)
    parser.add_argument("--mode", choices=["bulk", "orm"], default="bulk")
    parser.add_argument("--failures", type=int, default=200, help="failed entries per fake DatabaseWorkChain")
    parser.add_argument("--keep", action="store_true", help="keep the temporary profile folder")
    parser.add_argument("--plot", default=None, help="also write the figure here (PNG)")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="bench-stats-")
    os.environ["AIIDA_PATH"] = workdir  # before aiida touches its configuration
    try:
        make_profile(workdir)
        from aiida import orm

        from aiida_deeph.data.stats import collect_stats, plot_stats

        rng = random.Random(12345)
        group = orm.Group(label="bench-stats").store()
        t0 = time.perf_counter()
        (fill_bulk if args.mode == "bulk" else fill_orm)(group, args.num, rng)
        fill_s = time.perf_counter() - t0
        add_failures(group, rng, args.failures)
        print(f"created {args.num} HamiltonianData nodes ({args.mode}) in {fill_s:.1f} s "
              f"({1000 * fill_s / max(args.num, 1):.2f} ms/node)")

        best, all_times, stats = timed(lambda: collect_stats("bench-stats"))
        assert stats["num_structures"] == args.num, stats["num_structures"]
        print(f"collect_stats (in process): best {best:.3f} s, runs {', '.join(f'{t:.3f}' for t in all_times)}")
        print(f"  {stats['num_structures']} structures, {len(stats['elements'])} elements, "
              f"{len(stats['element_pairs'])} element pairs, {stats['num_atom_pairs']:,} atom pairs, "
              f"{len(stats['failures'])} failures")

        plot_path = args.plot or os.path.join(workdir, "stats.png")
        best_plot, _, _ = timed(lambda: plot_stats(stats, plot_path), repeat=1)
        print(f"plot_stats: {best_plot:.3f} s -> {plot_path}")

        env = dict(os.environ, AIIDA_PATH=workdir)
        verdi = os.path.join(os.path.dirname(sys.executable), "verdi")
        for extra in ([], ["--json"]):
            t0 = time.perf_counter()
            proc = subprocess.run([verdi, "-p", "bench-stats", "data", "deeph", "stats", "bench-stats", *extra],
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr)
                raise SystemExit(f"verdi failed ({proc.returncode})")
            if extra:
                assert json.loads(proc.stdout)["num_structures"] == args.num
            print(f"verdi data deeph stats {' '.join(extra) or '(table)'}: {wall:.2f} s wall (incl. verdi start-up)")
        t0 = time.perf_counter()
        proc = subprocess.run([verdi, "-p", "bench-stats", "data", "deeph", "--help"], env=env, capture_output=True)
        print(f"verdi data deeph --help (start-up only): {time.perf_counter() - t0:.2f} s")
    finally:
        if args.keep:
            print(f"profile kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
