"""Helpers shared by the property subcommands (bands, dos, optics): input folders, JSON outputs, the one-line report (figures: physics.plots)."""
from __future__ import annotations

from pathlib import Path

from .errors import CliError


def load_hs(folder, purpose: str, extra=()):
    """A DeepH-dock folder's H and S (and ``extra`` arrays), with one-line errors naming what is missing;
    ``purpose`` ('bands need', 'the DOS needs', ...) says what needs them."""
    from ..io.dock import is_dock_folder, read_dock

    folder = Path(folder)
    if not folder.is_dir():
        raise CliError(f"input folder {folder} not found")
    if not (folder / "hamiltonian.h5").is_file():
        raise CliError(f"{folder} has no hamiltonian.h5: {purpose} H and S (an overlap-only folder from "
                       "`aiida-deeph overlap` must first go through `aiida-deeph predict`)")
    if not (folder / "overlap.h5").is_file():
        raise CliError(f"{folder} has no overlap.h5: {purpose} H and S")
    if not is_dock_folder(folder):
        raise CliError(f"{folder} is not a DeepH-dock folder (POSCAR, info.json, overlap.h5, hamiltonian.h5)")
    return read_dock(folder, load=("hamiltonian", "overlap") + tuple(extra))


def write_json(path, payload) -> Path:
    """Write ``payload`` as JSON through a temporary sibling and a rename (never a half-written file)."""
    from aiida_deeph.core.files import write_json_atomic

    return write_json_atomic(path, payload, indent=1, allow_nan=False)


def report(line: str, args, out: Path) -> None:
    """The one-line success message, unless ``--quiet``: ``line; written to OUT [and PLOT]``."""
    if not args.quiet:
        plot = getattr(args, "plot", None)
        print(f"{line}; written to {out}" + (f" and {plot}" if plot else ""))
