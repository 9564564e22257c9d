"""OpenMX 3.9 ``.Band`` files (``Band.dispersion on``). Pure Python (numpy + stdlib), no aiida.

Layout (docs/openmx.md): line 1 ``nbands spin ChemP(Ha)``; line 2 rtv (9 numbers, 1/Bohr, 2*pi
included, rows = reciprocal vectors); line 3 the number of paths; one line per path
``n k1(3) k2(3) label1 label2``; then for each k-point (and each spin) ``n k1 k2 k3`` followed by
``n`` eigenvalues in Hartree.
"""
from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np

from aiida_deeph.core.constants import BOHR_TO_ANGSTROM, HARTREE_TO_EV

__all__ = ["OpenmxBandError", "read_band"]


class OpenmxBandError(ValueError):
    """A ``.Band`` file that cannot be read."""


def _text_of(path_or_text) -> tuple:
    if isinstance(path_or_text, bytes):
        return path_or_text.decode("latin-1"), "<bytes>"
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and len(path_or_text) < 4096
    ):
        path = Path(path_or_text)
        if not path.is_file():
            raise OpenmxBandError(f"{path}: no such .Band file")
        if path.suffix == ".xz":
            with lzma.open(path, "rt", encoding="latin-1") as handle:
                return handle.read(), str(path)
        return path.read_text(encoding="latin-1"), str(path)
    if isinstance(path_or_text, str):
        return path_or_text, "<text>"
    raise OpenmxBandError(f"read_band expects a path or the file text, got {type(path_or_text).__name__}")


def _kpath_lines(lines, name: str) -> list:
    """The k-path segments of a .Band header: ``{'npoints', 'start', 'end', 'labels'}`` each."""
    kpath = []
    for ln in lines:
        tok = ln.split()
        try:
            kpath.append({"npoints": int(tok[0]), "start": [float(x) for x in tok[1:4]],
                          "end": [float(x) for x in tok[4:7]],
                          "labels": (tok[7], tok[8]) if len(tok) >= 9 else ("", "")})
        except (ValueError, IndexError):
            raise OpenmxBandError(f"{name}: unreadable k-path line {ln!r}") from None
    return kpath


def _kpoint_records(tokens, name: str) -> tuple:
    """(k-points, eigenvalue lists) of the records ``n k1 k2 k3 e_1 .. e_n`` that follow the header."""
    kpts, eigs = [], []
    pos = 0
    try:
        while pos < len(tokens):
            n = int(tokens[pos])
            k = [float(x) for x in tokens[pos + 1:pos + 4]]
            vals = [float(x) for x in tokens[pos + 4:pos + 4 + n]]
            if len(k) != 3 or len(vals) != n:
                raise OpenmxBandError(f"{name}: truncated k-point record at token {pos}")
            kpts.append(k)
            eigs.append(vals)
            pos += 4 + n
    except ValueError:
        raise OpenmxBandError(f"{name}: unreadable k-point record at token {pos}") from None
    return kpts, eigs


def read_band(path_or_text) -> dict:
    """Read a ``.Band`` file (path, ``.xz`` path, or its text).

    Returns ``nbands``, ``spin`` (SpinP_switch: 0 or 1), ``nspin``, ``fermi_energy_hartree``,
    ``fermi_energy`` (eV), ``rtv`` (3, 3) 1/Bohr and ``reciprocal_cell`` (3, 3) 1/Angstrom,
    ``kpath`` (list of ``{'npoints', 'start', 'end', 'labels'}``), ``kpoints`` (nk, 3) fractional,
    ``segment_index`` (nk,) path index of each k, ``eigenvalues_hartree`` / ``eigenvalues`` (eV):
    (nk, nbands) without spin, (2, nk, nbands) with spin.
    """
    text, name = _text_of(path_or_text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 3:
        raise OpenmxBandError(f"{name}: too short for an OpenMX .Band file ({len(lines)} lines)")
    try:
        head = lines[0].split()
        nbands, spin, chemp = int(head[0]), int(head[1]), float(head[2])
        rtv = np.array([float(x) for x in lines[1].split()[:9]]).reshape(3, 3)
        npath = int(lines[2].split()[0])
    except (ValueError, IndexError):
        raise OpenmxBandError(f"{name}: unreadable header (nbands spin ChemP / rtv / number of paths)") from None
    if spin not in (0, 1) or nbands <= 0 or npath < 0:
        raise OpenmxBandError(f"{name}: header nbands={nbands} spin={spin} paths={npath} not supported")
    if len(lines) < 3 + npath:
        raise OpenmxBandError(f"{name}: file ends inside the {npath} k-path lines")
    kpath = _kpath_lines(lines[3:3 + npath], name)
    nspin = spin + 1
    kpts, eigs = _kpoint_records(" ".join(lines[3 + npath:]).split(), name)
    if not eigs:
        raise OpenmxBandError(f"{name}: no k-point records")
    if len({len(e) for e in eigs}) != 1:
        raise OpenmxBandError(f"{name}: k-points with different numbers of bands")
    if len(eigs) % nspin:
        raise OpenmxBandError(f"{name}: {len(eigs)} records is not a multiple of {nspin} spins")
    expected = sum(p["npoints"] for p in kpath)
    nk = len(eigs) // nspin
    if kpath and nk != expected:
        raise OpenmxBandError(f"{name}: {nk} k-points, the paths announce {expected}")
    arr = np.array(eigs, dtype=float)
    kp = np.array(kpts, dtype=float)
    if nspin == 2:
        arr = arr.reshape(nk, 2, -1).transpose(1, 0, 2).copy()
        kp = kp[::2].copy()
    seg = np.concatenate([np.full(p["npoints"], i) for i, p in enumerate(kpath)]) if kpath else np.zeros(nk, int)
    return {
        "nbands": nbands,
        "nbands_file": int(arr.shape[-1]),
        "spin": spin,
        "nspin": nspin,
        "fermi_energy_hartree": chemp,
        "fermi_energy": chemp * HARTREE_TO_EV,
        "rtv": rtv,
        "reciprocal_cell": rtv / BOHR_TO_ANGSTROM,
        "kpath": kpath,
        "kpoints": kp,
        "segment_index": seg.astype(int),
        "eigenvalues_hartree": arr,
        "eigenvalues": arr * HARTREE_TO_EV,
    }
