"""Stand-in ``openmx`` executable that REPLAYS recorded OpenMX 3.9 runs (it computes nothing).

OpenMX cannot be installed from the registries this project reaches, so tests and the embedded
demo run this instead: it reads the input file, finds the recorded run with the same physics
(:func:`physics_key`) in the corpus named by ``$AIIDA_DEEPH_REPLAY_CORPUS`` (one or more folders,
separated by ``os.pathsep``, each a run folder or a folder of run folders), and copies the recorded
``.out`` / ``.scfout`` / ``.Band`` into the working folder under the input's ``System.Name``, writes
the recorded stdout to stdout, and says on stderr that it replayed (first line
``REPLAYED recorded OpenMX output of <folder>``). An input without a recording is an error (exit 1).
With ``$AIIDA_DEEPH_REPLAY_TIME_SCALE`` = f it first waits f x the recorded run's wall time, so that
replayed runs take as unequal times as the real ones (for benchmarks and scheduling tests).

Usage: ``python -m aiida_deeph.replay.standin INPUT.dat [-nt T]`` (``mpirun -np N`` may wrap it),
or an executable made by :func:`write_replay_executable`.

Pure Python (stdlib + the numpy-based io modules): never imports aiida.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from aiida_deeph.core.constants import BOHR_TO_ANGSTROM
from aiida_deeph.core.files import write_json_atomic
from aiida_deeph.io.openmx_input import OpenmxInputError, get_keyword, parse_input

__all__ = [
    "ENV_VAR",
    "ReplayError",
    "physics_key",
    "canonical_physics",
    "build_index",
    "load_index",
    "find_recording",
    "replay",
    "main",
    "write_replay_executable",
]

ENV_VAR = "AIIDA_DEEPH_REPLAY_CORPUS"
TIME_SCALE_VAR = "AIIDA_DEEPH_REPLAY_TIME_SCALE"
# "RUN:FILE": the replay of the recording in folder RUN waits until FILE exists (at most HOLD_MAX_S): tests of
# scheduling order, which then assert the order of events instead of racing wall-clock times
HOLD_VAR = "AIIDA_DEEPH_REPLAY_HOLD"
HOLD_MAX_S = 120.0
KEY_VERSION = 1
_OUTPUT_SUFFIXES = ("out", "scfout", "Band")

# keywords that do not change the physics of the run (lowercased; prefixes end with '.')
_IGNORED_KEYS = {"system.name", "system.currrentdirectory", "system.currentdirectory", "data.path"}
_IGNORED_PREFIXES = ("level.of.", "band.")
_STRUCTURE_KEYS = {
    "species.number",
    "definition.of.atomic.species",
    "atoms.number",
    "atoms.speciesandcoordinates",
    "atoms.speciesandcoordinates.unit",
    "atoms.unitvectors",
    "atoms.unitvectors.unit",
}


class ReplayError(RuntimeError):
    """No recording for an input, or a broken corpus."""


# ----------------------------------------------------------------------------------------------
# canonical physics of an input
# ----------------------------------------------------------------------------------------------
def _norm_token(token: str) -> str:
    try:
        value = float(token)
    except ValueError:
        return token.lower()
    if math.isfinite(value):
        if value == 0.0:
            value = 0.0  # -0.0 -> 0.0
        return repr(value)
    return token.lower()


def _norm_length(value: float) -> str:
    text = f"{value:.6f}"
    return "0.000000" if text == "-0.000000" else text


def canonical_physics(input_text: str) -> dict:
    """The canonical description hashed by :func:`physics_key` (useful to see why keys differ).

    Keeps: per-atom basis and pseudopotential, Cartesian positions and cell in Angstrom rounded to
    1e-6, initial populations, and every other keyword (lowercased, numbers normalized) except
    ``System.Name``, ``System.CurrrentDirectory``, ``DATA.PATH``, ``level.of.*`` and ``Band.*``.
    """
    params = parse_input(input_text)
    low = {k.lower(): v for k, v in params.items()}

    species_rows = low.get("definition.of.atomic.species")
    atoms_rows = low.get("atoms.speciesandcoordinates")
    cell_rows = low.get("atoms.unitvectors")
    if not species_rows or not atoms_rows or not cell_rows:
        raise OpenmxInputError(
            "input lacks <Definition.of.Atomic.Species, <Atoms.SpeciesAndCoordinates or <Atoms.UnitVectors"
        )
    species = {}
    for row in species_rows:
        if len(row) < 3:
            raise OpenmxInputError(f"species row {row!r} needs 'label PAO VPS'")
        species[row[0]] = (row[1], row[2])

    def unit_of(key, default="ang"):
        value = low.get(key)
        return (value[0] if value else default).lower()

    cell_unit = unit_of("atoms.unitvectors.unit")
    if cell_unit not in ("ang", "au"):
        raise OpenmxInputError(f"Atoms.UnitVectors.Unit {cell_unit!r} not supported (Ang or AU)")
    scale = BOHR_TO_ANGSTROM if cell_unit == "au" else 1.0
    try:
        cell = [[float(x) * scale for x in row[:3]] for row in cell_rows[:3]]
    except ValueError:
        raise OpenmxInputError("unreadable <Atoms.UnitVectors") from None
    if len(cell) != 3 or any(len(r) != 3 for r in cell):
        raise OpenmxInputError("<Atoms.UnitVectors needs 3 rows of 3 numbers")

    pos_unit = unit_of("atoms.speciesandcoordinates.unit")
    atoms = []
    for row in atoms_rows:
        if len(row) < 5:
            raise OpenmxInputError(f"atom row {row!r} needs 'index label x y z [up down]'")
        label = row[1]
        if label not in species:
            raise OpenmxInputError(f"atom of undefined species {label!r}")
        try:
            xyz = [float(x) for x in row[2:5]]
            pops = [_norm_token(p) for p in row[5:]]
        except ValueError:
            raise OpenmxInputError(f"unreadable atom row {row!r}") from None
        if pos_unit == "ang":
            cart = xyz
        elif pos_unit == "au":
            cart = [x * BOHR_TO_ANGSTROM for x in xyz]
        elif pos_unit == "frac":
            cart = [sum(xyz[i] * cell[i][j] for i in range(3)) for j in range(3)]
        else:
            raise OpenmxInputError(f"Atoms.SpeciesAndCoordinates.Unit {pos_unit!r} not supported")
        atoms.append([*species[label], *(_norm_length(x) for x in cart), *pops])

    keywords = {}
    for key, value in low.items():
        if key in _IGNORED_KEYS or key in _STRUCTURE_KEYS or key.startswith(_IGNORED_PREFIXES):
            continue
        if value and isinstance(value[0], list):
            keywords[key] = [[_norm_token(t) for t in row] for row in value]
        else:
            keywords[key] = [_norm_token(t) for t in value]
    return {
        "version": KEY_VERSION,
        "cell": [[_norm_length(x) for x in row] for row in cell],
        "atoms": atoms,
        "keywords": keywords,
    }


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def physics_key(input_text: str) -> str:
    """sha256 hex of :func:`canonical_physics` of an OpenMX input text."""
    return _hash(canonical_physics(input_text))


def _structure_key(canonical: dict) -> str:
    return _hash({"cell": canonical["cell"], "atoms": canonical["atoms"]})


# ----------------------------------------------------------------------------------------------
# corpus index
# ----------------------------------------------------------------------------------------------
def _roots(corpus_dirs) -> list:
    if corpus_dirs is None:
        return []
    if isinstance(corpus_dirs, (str, os.PathLike)):
        corpus_dirs = [p for p in str(corpus_dirs).split(os.pathsep) if p]
    return [Path(p).expanduser().resolve() for p in corpus_dirs]


def _run_inputs(roots: list, depth: int = 3) -> list:
    """All ``*.dat`` files of run folders under the roots (a root may itself be a run folder)."""
    found = []

    def walk(folder: Path, level: int):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        dats = [e for e in entries if e.is_file() and e.suffix == ".dat"]
        found.extend(dats)
        if level < depth:
            for e in entries:
                if e.is_dir() and not e.name.startswith("."):
                    walk(e, level + 1)

    for root in roots:
        if root.is_dir():
            walk(root, 0)
    return found


def _signature(dats: list) -> dict:
    sig = {}
    for dat in dats:
        try:
            st = dat.stat()
            sig[str(dat)] = [st.st_mtime_ns, st.st_size]
        except OSError:
            pass
    return sig


def _compute_index(dats: list) -> dict:
    keys, structures, bad = {}, {}, {}
    for dat in dats:
        try:
            canonical = canonical_physics(dat.read_text(encoding="latin-1"))
        except (OpenmxInputError, OSError, UnicodeError) as exc:
            bad[str(dat)] = str(exc)
            continue
        key = _hash(canonical)
        keys.setdefault(key, str(dat))  # first (sorted) recording wins
        structures.setdefault(_structure_key(canonical), []).append(str(dat))
    return {"keys": keys, "structures": structures, "unreadable": bad}


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/aiida-deeph/replay``: caches live outside the package and the corpus."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aiida-deeph" / "replay"


def _cache_path(roots: list) -> list:
    tag = hashlib.sha256("|".join(map(str, roots)).encode()).hexdigest()[:16]
    return [cache_dir() / f"index-{tag}.json", Path(tempfile.gettempdir()) / f"aiida_deeph_replay_{tag}.json"]


def load_index(corpus_dirs) -> dict:
    """Full index ``{'keys': {key: dat path}, 'structures': {...}, 'unreadable': {...}}``, cached.

    The cache (JSON) lives in the user's cache folder (:func:`cache_dir`), else in the temp folder; it is
    rebuilt when the set of recorded inputs, any input's mtime or size, or the key version changed
    (the keys depend only on the inputs; outputs are looked up at replay time).
    """
    roots = _roots(corpus_dirs)
    dats = _run_inputs(roots)
    signature = {"key_version": KEY_VERSION, "roots": list(map(str, roots)), "files": _signature(dats)}
    candidates = _cache_path(roots)
    for path in candidates:
        try:
            cached = json.loads(path.read_text())
            if cached.get("signature") == signature:
                return cached["index"]
        except (OSError, ValueError, KeyError, AttributeError):
            continue
    index = _compute_index(dats)
    for path in candidates:
        try:
            write_json_atomic(path, {"signature": signature, "index": index})
            break
        except OSError:
            continue
    return index


def build_index(corpus_dirs) -> dict:
    """``{physics_key: run folder}`` for every recorded run under ``corpus_dirs`` (path, list, or
    ``os.pathsep``-joined string)."""
    return {key: str(Path(dat).parent) for key, dat in load_index(corpus_dirs)["keys"].items()}


def _recorded_file(folder: Path, stem: str, suffix: str):
    for name in (f"{stem}.{suffix}", f"{stem}.{suffix}.xz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".xz":
        with lzma.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def _copy_out(src: Path, dst: Path):
    if src.suffix == ".xz":
        with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    else:
        shutil.copyfile(src, dst)


def find_recording(input_text: str, corpus_dirs) -> Path:
    """Path of the recorded ``.dat`` with the same physics; :class:`ReplayError` explains a miss."""
    canonical = canonical_physics(input_text)
    key = _hash(canonical)
    index = load_index(corpus_dirs)
    if key in index["keys"]:
        return Path(index["keys"][key])
    hint = ""
    same = index["structures"].get(_structure_key(canonical), [])
    if same:
        try:
            other = canonical_physics(Path(same[0]).read_text(encoding="latin-1"))["keywords"]
            mine = canonical["keywords"]
            diff = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
            hint = f"; the recording {Path(same[0]).parent} has the same structure but differs in: {', '.join(diff)}"
        except (OSError, OpenmxInputError):
            pass
    else:
        hint = "; no recording has this structure"
    n = len(index["keys"])
    raise ReplayError(
        f"no recorded OpenMX run matches this input (physics key {key[:12]}) among {n} recordings in "
        f"{os.pathsep.join(map(str, _roots(corpus_dirs)))}{hint}"
    )


def replay(input_path, corpus_dirs, workdir=None, stdout=None, stderr=None) -> int:
    """Replay the recording for ``input_path`` into ``workdir`` (default: the input's System.CurrrentDirectory
    relative to the current folder). Returns the exit code to use."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    input_path = Path(input_path)
    text = input_path.read_text(encoding="latin-1")
    dat = find_recording(text, corpus_dirs)
    folder = dat.parent
    print(f"REPLAYED recorded OpenMX output of {folder} (aiida-deeph replay stand-in; nothing was computed)",
          file=stderr, flush=True)
    params = parse_input(text)
    name_tokens = get_keyword(params, "System.Name") or ["default"]
    name = name_tokens[0]
    if workdir is None:
        cwd_tokens = get_keyword(params, "System.CurrrentDirectory") or ["./"]
        workdir = Path(cwd_tokens[0])
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    band_on = (get_keyword(params, "Band.dispersion") or ["off"])[0].lower() == "on"
    _hold(folder, stderr)
    _sleep_like_the_recording(folder, stderr)
    copied = []
    for suffix in _OUTPUT_SUFFIXES:
        if suffix == "Band" and not band_on:
            continue
        src = _recorded_file(folder, dat.stem, suffix)
        if src is not None:
            dst = workdir / f"{name}.{suffix}"
            _copy_out(src, dst)
            copied.append(dst.name)
    print(f"REPLAY: wrote {', '.join(copied) if copied else 'no output files (the recorded run left none)'}",
          file=stderr, flush=True)
    std = _recorded_file(folder, dat.stem, "std")
    data = _read_bytes(std) if std is not None else b""
    buffer = getattr(stdout, "buffer", None)
    if buffer is not None:
        stdout.flush()
        buffer.write(data)
        buffer.flush()
    else:
        stdout.write(data.decode("latin-1"))
        stdout.flush()
    return _recorded_returncode(folder, data)


def _hold(folder: Path, stderr) -> None:
    """With ``$AIIDA_DEEPH_REPLAY_HOLD`` = ``RUN:FILE`` and this recording in folder RUN, wait for FILE."""
    run, _, sentinel = os.environ.get(HOLD_VAR, "").partition(":")
    if not sentinel or folder.name != run:
        return
    print(f"REPLAY: holding {run} until {sentinel} exists (at most {HOLD_MAX_S:g} s)", file=stderr, flush=True)
    end = time.monotonic() + HOLD_MAX_S
    while not os.path.exists(sentinel) and time.monotonic() < end:
        time.sleep(0.05)


def _sleep_like_the_recording(folder: Path, stderr) -> None:
    """With ``$AIIDA_DEEPH_REPLAY_TIME_SCALE`` = f > 0, wait f x the recorded run's wall time (meta.json
    ``wall_s``): replays then take as unequal times as the real runs did (benchmarks, scheduling tests)."""
    try:
        scale = float(os.environ.get(TIME_SCALE_VAR, "0") or 0)
    except ValueError:
        scale = 0.0
    if scale <= 0:
        return
    try:
        wall = float(json.loads((folder / "meta.json").read_text()).get("wall_s") or 0)
    except (OSError, ValueError, TypeError):
        wall = 0.0
    if wall > 0:
        print(f"REPLAY: waiting {scale * wall:.2f} s ({TIME_SCALE_VAR}={scale:g} x recorded {wall:g} s)",
              file=stderr, flush=True)
        time.sleep(scale * wall)


def _recorded_returncode(folder: Path, std: bytes) -> int:
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            rc = json.loads(meta.read_text()).get("returncode")
            if isinstance(rc, int):
                return rc
        except (OSError, ValueError):
            pass
    from aiida_deeph.io.openmx_out import parse_stdout

    # a run killed by SIGKILL (scheduler walltime): the shell reports 128 + 9
    return 137 if parse_stdout(std.decode("latin-1")).get("killed") else 0


def _input_argument(argv: list):
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-nt", "-np"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return a
    return None


def main(argv=None) -> int:
    """Command line: ``openmx INPUT.dat [-nt T]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    input_arg = _input_argument(argv)
    if input_arg is None:
        print("REPLAY openmx stand-in: usage: openmx INPUT.dat [-nt THREADS]", file=sys.stderr)
        return 1
    corpus = os.environ.get(ENV_VAR)
    if not corpus:
        print(f"REPLAY openmx stand-in: set {ENV_VAR} to the folder(s) of recorded OpenMX runs", file=sys.stderr)
        return 1
    if not Path(input_arg).is_file():
        print(f"REPLAY openmx stand-in: input file {input_arg} not found", file=sys.stderr)
        return 1
    try:
        return replay(input_arg, corpus)
    except (ReplayError, OpenmxInputError, OSError) as exc:
        print(f"REPLAY openmx stand-in: ERROR: {exc}", file=sys.stderr)
        return 1


def write_replay_executable(path, corpus) -> Path:
    """Write an executable bash script running this replay with ``$AIIDA_DEEPH_REPLAY_CORPUS`` set
    (``corpus``: a folder or a list of folders). Usable as an AiiDA InstalledCode."""
    roots = _roots(corpus)
    for root in roots:
        if not root.is_dir():
            raise ReplayError(f"replay corpus folder {root} does not exist")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    corpus_value = os.pathsep.join(map(str, roots))
    script = (
        "#!/bin/bash\n"
        "# aiida-deeph stand-in for 'openmx': REPLAYS recorded OpenMX 3.9 outputs, computes nothing.\n"
        f"export {ENV_VAR}={shlex.quote(corpus_value)}\n"
        f"exec {shlex.quote(sys.executable)} -m aiida_deeph.replay.standin \"$@\"\n"
    )
    path.write_text(script)
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
