"""Record real OpenMX 3.9 runs for the replay stand-in (:mod:`aiida_deeph.replay.standin`).

A recording is a folder ``NAME/`` with ``openmx.dat`` (the input exactly as today's input writer
makes it for the protocol), ``openmx.out.xz``, ``openmx.std.xz``, ``openmx.scfout.xz``, ``openmx.Band``
(when the band path was on) and ``meta.json`` (structure, protocol, k-grid, wall time, OpenMX used).
When the input writer changes, :func:`record_structures` (``aiida-deeph record-openmx --refresh DIR``)
re-runs the real OpenMX on the recordings' own structures, so that the replay matches again.

Pure Python (numpy/pymatgen through the io modules): never imports aiida.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from aiida_deeph.io.openmx_input import get_keyword, write_input_from_protocol
from aiida_deeph.io.openmx_install import OpenmxInstall
from aiida_deeph.io.protocols import recursive_merge

__all__ = ["RecordError", "record_run", "record_structures", "recording_structures", "input_for"]

SYSTEM_NAME = "openmx"


class RecordError(RuntimeError):
    """A real run that could not be recorded (one line: why)."""


def input_for(structure, protocol: str = "moderate", data_path: str = "/replay/DFT_DATA19", band_kpath=True,
              overrides: dict | None = None) -> str:
    """The OpenMX input that :class:`OpenmxCalculation` writes for a pymatgen ``structure`` and ``protocol``
    (same writer, same protocol file; ``System.Name openmx``)."""
    merged = recursive_merge({"parameters": {"HS.fileout": "on"}}, overrides or {})
    return write_input_from_protocol(
        structure.lattice.matrix, [site.specie.symbol for site in structure], structure.cart_coords,
        protocol=protocol, overrides=merged, system_name=SYSTEM_NAME, data_path=data_path, band_kpath=band_kpath,
    )


def _xz(src: Path, dst: Path) -> None:
    from aiida_deeph.core.files import atomic_path

    with atomic_path(dst) as tmp, open(src, "rb") as fin, lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as fout:
        shutil.copyfileobj(fin, fout)


def record_run(input_text: str, name: str, out_dir, install: OpenmxInstall, meta: dict | None = None,
               mpiprocs: int = 1, timeout: float = 3600) -> Path:
    """Run the real OpenMX on ``input_text`` (its DATA.PATH set to the install's) and write the recording
    ``out_dir/name``. The recorded ``openmx.dat`` keeps the input as given (the replay ignores DATA.PATH).
    An existing recording of that name is replaced only once the new one is complete."""
    from aiida_deeph.io.openmx_input import format_input, parse_input

    out_dir = Path(out_dir)
    params = parse_input(input_text)
    for key in [k for k in params if k.lower() == "data.path"]:
        del params[key]
    params["DATA.PATH"] = install.data_path
    with tempfile.TemporaryDirectory(prefix=f"aiida-deeph-record-{name}-") as tmp:
        work = Path(tmp)
        (work / "openmx.dat").write_text(format_input(params))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        cmd = [install.executable, "openmx.dat"]
        if mpiprocs > 1:
            cmd = ["mpirun", "-np", str(mpiprocs), *cmd]
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RecordError(f"{name}: OpenMX ran past {timeout:.0f} s") from None
        wall = time.time() - start
        std = proc.stdout.decode("utf8", "replace")
        (work / "openmx.std").write_text(std)
        if "The calculation was normally finished." not in std:
            last = [line for line in std.splitlines() if line.strip()][-1:] or ["(no output)"]
            raise RecordError(f"{name}: OpenMX did not finish normally (exit {proc.returncode}): {last[0].strip()}")
        for suffix in ("out", "scfout"):
            if not (work / f"{SYSTEM_NAME}.{suffix}").is_file():
                raise RecordError(f"{name}: OpenMX wrote no {SYSTEM_NAME}.{suffix}")
        stage = out_dir / f".{name}.recording"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        (stage / "openmx.dat").write_text(input_text)
        for suffix in ("out", "std", "scfout"):
            _xz(work / f"openmx.{suffix}", stage / f"openmx.{suffix}.xz")
        if (work / "openmx.Band").is_file():
            shutil.copyfile(work / "openmx.Band", stage / "openmx.Band")
        kgrid = get_keyword(params, "scf.Kgrid")
        info = {**(meta or {}), "returncode": proc.returncode, "wall_s": round(wall, 1), "mpiprocs": mpiprocs,
                "kgrid": [int(x) for x in kgrid] if isinstance(kgrid, list) else kgrid,
                "scfout_bytes": (work / "openmx.scfout").stat().st_size,
                "recorded_with": {"openmx": install.executable, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
        (stage / "meta.json").write_text(json.dumps(info, indent=1))
        final = out_dir / name
        old = out_dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        stage.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    return final


def recording_structures(folder) -> dict:
    """{name: (pymatgen Structure, meta)} of the recordings in ``folder`` (from their meta.json)."""
    from pymatgen.core import Structure

    found = {}
    for meta_file in sorted(Path(folder).glob("*/meta.json")):
        meta = json.loads(meta_file.read_text())
        if "structure" in meta:
            found[meta_file.parent.name] = (Structure.from_dict(meta["structure"]), meta)
    return found


def record_structures(structures: dict, out_dir, install: OpenmxInstall, protocol: str = "moderate",
                      band_kpath=True, mpiprocs: int = 1, log=print) -> list:
    """Record ``{name: (structure, meta)}``; returns the recording folders. Stops at the first failure."""
    done = []
    for name, (structure, meta) in structures.items():
        text = input_for(structure, protocol=protocol, band_kpath=band_kpath)
        keep = {k: v for k, v in (meta or {}).items()
                if k not in ("returncode", "wall_s", "kgrid", "scfout_bytes", "recorded_with", "mpiprocs")}
        keep.update({"material_id": keep.get("material_id", name), "formula": structure.composition.reduced_formula,
                     "nsites": len(structure), "structure": structure.as_dict(), "protocol": protocol})
        folder = record_run(text, name, out_dir, install, meta=keep, mpiprocs=mpiprocs)
        log(f"recorded {name} ({keep['formula']}, {len(structure)} atoms) in "
            f"{json.loads((folder / 'meta.json').read_text())['wall_s']} s -> {folder}")
        done.append(folder)
    return done
