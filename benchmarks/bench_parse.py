"""Benchmark: OpenMX .scfout -> stored HamiltonianData throughput, against just reading the bytes.

    python benchmarks/bench_parse.py [--corpus ../shared/openmx-corpus] [--repeat 3]

The corpus files are decompressed into a temporary folder first (xz is not part of the measurement).
Stages, each over all corpus files: (1) read the bytes; (2) parse (read_scfout + conversion to the
packed format, pairs sorted); (3) parse + HamiltonianData(...).store() in a temporary AiiDA profile
(SQLite, compressed HDF5 into the repository).
"""
import argparse
import lzma
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main():
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=str(here.parent / "shared" / "openmx-corpus"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AIIDA_PATH", tempfile.mkdtemp(prefix="bench-aiida-"))

    from aiida_deeph.io.openmx import scfout_to_packed
    from aiida_deeph.io.scfout import read_scfout

    tmp = Path(tempfile.mkdtemp(prefix="bench-scfout-"))
    files = []
    for run in sorted(Path(args.corpus).iterdir()):
        src = run / "openmx.scfout.xz"
        if src.is_file():
            dst = tmp / f"{run.name}.scfout"
            dst.write_bytes(lzma.open(src).read())
            files.append(dst)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} .scfout files, {total_mb:.1f} MB")

    def timed(fn):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    t_read = timed(lambda: [f.read_bytes() for f in files])
    t_parse = timed(lambda: [scfout_to_packed(read_scfout(f, load_density_matrix=False)) for f in files])

    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    profile = create_profile(config, name="bench", email="bench@localhost", storage_backend="core.sqlite_dos",
                             storage_config={"filepath": str(tmp / "storage")})
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    load_profile(profile.name, allow_switch=True)
    from aiida_deeph.data.hamiltonian import HamiltonianData

    t_store = timed(lambda: [HamiltonianData(scfout_to_packed(read_scfout(f, load_density_matrix=False))).store().pk
                             for f in files])
    n = len(files)
    print(f"{'stage':32s} {'seconds':>8s} {'MB/s':>8s} {'structures/s':>13s}")
    for name, t in (("read bytes", t_read), ("parse to packed", t_parse), ("parse + store HamiltonianData", t_store)):
        print(f"{name:32s} {t:8.3f} {total_mb / t:8.1f} {n / t:13.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
