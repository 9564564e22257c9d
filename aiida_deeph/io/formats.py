"""Which Hamiltonian format a path holds: the one place that sniffs files (packed, DeepH-dock, OpenMX runs)."""
from __future__ import annotations

from pathlib import Path

from aiida_deeph.core.packed import FORMAT_NAME


def is_dock(folder) -> bool:
    """A DeepH-dock structure folder: ``POSCAR``, ``info.json`` and ``overlap.h5`` or ``hamiltonian.h5``."""
    folder = Path(folder)
    return (folder / "POSCAR").is_file() and (folder / "info.json").is_file() and (
        (folder / "overlap.h5").is_file() or (folder / "hamiltonian.h5").is_file())


def is_openmx_run(folder) -> bool:
    """An OpenMX run folder: a ``*.scfout`` (plain or ``.xz``)."""
    folder = Path(folder)
    return any(folder.glob("*.scfout")) or any(folder.glob("*.scfout.xz"))


def is_packed(path) -> bool:
    """An aiida-deeph packed HDF5 file (``.h5``/``.hdf5`` whose ``format`` attribute says so)."""
    import h5py

    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".h5", ".hdf5"):
        return False
    try:
        with h5py.File(path, "r") as handle:
            fmt = handle.attrs.get("format")
    except OSError:
        return False
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    return fmt == FORMAT_NAME
