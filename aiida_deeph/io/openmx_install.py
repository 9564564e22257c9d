"""Find a real OpenMX 3.9 install: the environment first, then the cache of ``scripts/install-openmx.sh``.

Rule (the same as the install script's):

1. ``$OPENMX_EXECUTABLE`` and ``$OPENMX_DATA_PATH`` (the ``DFT_DATA19`` folder with ``PAO/`` and ``VPS/``);
2. ``${XDG_CACHE_HOME:-~/.cache}/aiida-deeph/openmx-3.9/install.json``, written by the install script as
   its last step (``$AIIDA_DEEPH_OPENMX_PREFIX`` overrides that folder, like the script's ``--prefix``).

Pure Python (never imports aiida).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OpenmxInstall", "cache_prefix", "find_openmx", "locate_openmx"]

PREFIX_VAR = "AIIDA_DEEPH_OPENMX_PREFIX"
INSTALL_HINT = "build one with `bash scripts/install-openmx.sh` (about 4 minutes) or set OPENMX_EXECUTABLE and OPENMX_DATA_PATH"


@dataclass(frozen=True)
class OpenmxInstall:
    executable: str
    data_path: str
    origin: str  # 'environment' or the install.json it came from

    def describe(self) -> str:
        where = "OPENMX_EXECUTABLE/OPENMX_DATA_PATH" if self.origin == "environment" else self.origin
        return f"real OpenMX {self.executable} (DATA.PATH {self.data_path}; found via {where})"


def cache_prefix() -> Path:
    """The install script's default ``--prefix``."""
    if os.environ.get(PREFIX_VAR):
        return Path(os.environ[PREFIX_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aiida-deeph" / "openmx-3.9"


def _check(executable: str, data_path: str, origin: str) -> str | None:
    """Why this pair is not a usable install, or None."""
    exe = Path(executable)
    if not exe.is_file() or not os.access(exe, os.X_OK):
        return f"{origin}: {executable} is not an executable file"
    data = Path(data_path)
    missing = [sub for sub in ("PAO", "VPS") if not (data / sub).is_dir()]
    if missing:
        return f"{origin}: DATA.PATH {data_path} has no {' or '.join(m + '/' for m in missing)}"
    return None


def locate_openmx() -> tuple[OpenmxInstall | None, str]:
    """(install, '') or (None, why none was found: one line)."""
    exe, data = os.environ.get("OPENMX_EXECUTABLE"), os.environ.get("OPENMX_DATA_PATH")
    if exe:
        if not data:
            return None, "OPENMX_EXECUTABLE is set but OPENMX_DATA_PATH (the DFT_DATA19 folder) is not"
        why = _check(exe, data, "OPENMX_EXECUTABLE")
        return (None, why) if why else (OpenmxInstall(exe, data, "environment"), "")
    record = cache_prefix() / "install.json"
    if not record.is_file():
        return None, f"no OpenMX install found (OPENMX_EXECUTABLE unset, no {record}): {INSTALL_HINT}"
    try:
        info = json.loads(record.read_text())
        exe, data = str(info["executable"]), str(info["data_path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{record} is unreadable ({exc}): re-run scripts/install-openmx.sh"
    why = _check(exe, data, str(record))
    return (None, f"{why}: re-run scripts/install-openmx.sh") if why else (OpenmxInstall(exe, data, str(record)), "")


def find_openmx() -> OpenmxInstall | None:
    return locate_openmx()[0]
