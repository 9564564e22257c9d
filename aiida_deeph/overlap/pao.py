"""Reader of OpenMX pseudo-atomic-orbital files (DFT_DATA19 ``.pao`` / ``.pao.xz``); pure numpy.

A PAO file holds, after a header and ``<Contraction.coefficients...>`` blocks, the section
``PAO.Lmax`` / ``PAO.Mul`` and one block ``<pseudo.atomic.orbitals.L=l ... >`` per l whose rows are
``x  r  R_0(r) R_1(r) ... R_{Mul-1}(r)`` on a logarithmic grid (x = log r, r in Bohr). ``R`` is the
radial function itself (not r*R). A basis string such as ``Si7.0-s2p2d1`` selects the first 2
functions of l=0, the first 2 of l=1 and the first one of l=2 (as OpenMX does).
"""
from __future__ import annotations

import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.basis import BasisError, PaoBasis, parse_pao_basis


class OverlapError(ValueError):
    """Bad input to the overlap calculation (missing PAO file, bad basis, overlapping atoms...)."""


@dataclass(frozen=True)
class PaoFile:
    """All radial functions of one PAO file."""

    name: str               # file stem, e.g. 'Si7.0'
    path: str
    r: np.ndarray           # (M,) radial grid, Bohr
    radial: dict            # l -> (Mul, M) array of R_l,mul(r)
    cutoff_bohr: float      # rc from the file (radial.cutoff.pao) or its name

    @property
    def lmax(self) -> int:
        return max(self.radial) if self.radial else -1

    def num_radial(self, l: int) -> int:
        return self.radial[l].shape[0] if l in self.radial else 0

    def select(self, basis) -> PaoBasisFunctions:
        """The radial functions a basis string (or :class:`PaoBasis`) asks for."""
        if isinstance(basis, str):
            try:
                basis = parse_pao_basis(basis)
            except BasisError as exc:
                raise OverlapError(str(exc)) from None
        funcs = []
        for l, n in enumerate(basis.multiplicity):
            have = self.num_radial(l)
            if n > have:
                letter = "spdf"[l]
                raise OverlapError(
                    f"basis {basis.name} asks for {n} {letter} radial functions but PAO file "
                    f"{os.path.basename(self.path)} has {have}"
                )
            for mul in range(n):
                funcs.append((l, mul, self.radial[l][mul]))
        return PaoBasisFunctions(basis=basis, pao=self, shells=tuple((l, mul) for l, mul, _ in funcs),
                                 values=np.array([f for _, _, f in funcs]).reshape(len(funcs), len(self.r)))


@dataclass(frozen=True)
class PaoBasisFunctions:
    """The selected shells of one element: one radial function per (l, mul), OpenMX order."""

    basis: PaoBasis
    pao: PaoFile
    shells: tuple           # ((l, mul), ...), l outer then mul
    values: np.ndarray      # (nshell, M) on pao.r

    @property
    def ls(self) -> list:
        return [l for l, _ in self.shells]

    @property
    def cutoff_bohr(self) -> float:
        return float(self.basis.cutoff_bohr)

    @property
    def num_orbitals(self) -> int:
        return int(sum(2 * l + 1 for l in self.ls))


def _read_text(path: Path) -> str:
    if path.name.endswith(".xz"):
        with lzma.open(path, "rt", encoding="latin-1") as handle:
            return handle.read()
    return path.read_text(encoding="latin-1")


def parse_pao_text(text: str, name: str = "?", path: str = "?") -> PaoFile:
    lines = text.splitlines()
    radial: dict = {}
    cutoff = None
    mul_total = None
    i = 0
    n = len(lines)
    while i < n:
        stripped = lines[i].strip()
        if stripped.startswith("radial.cutoff.pao"):
            try:
                cutoff = float(stripped.split()[1])
            except (IndexError, ValueError):
                pass
        elif stripped.startswith("PAO.Mul"):
            mul_total = int(stripped.split()[1])
        elif stripped.startswith("<pseudo.atomic.orbitals.L="):
            l = int(stripped.split("=")[1])
            end_tag = f"pseudo.atomic.orbitals.L={l}>"
            rows = []
            i += 1
            while i < n and lines[i].strip() != end_tag:
                if lines[i].strip():
                    rows.append(lines[i].split())
                i += 1
            if i >= n:
                raise OverlapError(f"PAO file {path}: block pseudo.atomic.orbitals.L={l} is not closed")
            try:
                arr = np.array(rows, dtype=np.float64)
            except ValueError:
                raise OverlapError(f"PAO file {path}: unreadable numbers in block L={l}") from None
            radial[l] = arr
        i += 1
    if not radial:
        raise OverlapError(f"PAO file {path}: no <pseudo.atomic.orbitals.L=...> blocks (not a DFT_DATA19 PAO file?)")
    r = None
    out = {}
    for l, arr in sorted(radial.items()):
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise OverlapError(f"PAO file {path}: block L={l} has no radial functions")
        if r is None:
            r = arr[:, 1].copy()
        elif arr.shape[0] != r.shape[0] or not np.allclose(arr[:, 1], r, rtol=1e-12, atol=0):
            raise OverlapError(f"PAO file {path}: block L={l} uses a different radial grid")
        vals = arr[:, 2:].T.copy()
        if mul_total is not None:
            vals = vals[:mul_total]
        out[l] = vals
    if cutoff is None:
        try:
            cutoff = float(parse_pao_basis(f"{name}-s1").cutoff_bohr)
        except BasisError:
            cutoff = float(r[-1])
    return PaoFile(name=name, path=path, r=r, radial=out, cutoff_bohr=float(cutoff))


_CACHE: dict = {}


def find_pao_file(pao_dir, stem: str) -> Path:
    folder = Path(pao_dir)
    for candidate in (folder / f"{stem}.pao", folder / f"{stem}.pao.xz"):
        if candidate.is_file():
            return candidate
    if not folder.is_dir():
        raise OverlapError(f"PAO folder {folder} does not exist (looking for {stem}.pao)")
    raise OverlapError(f"PAO file {stem}.pao (or {stem}.pao.xz) not found in {folder}")


def read_pao(pao_dir, stem: str) -> PaoFile:
    """Read ``<pao_dir>/<stem>.pao`` or ``.pao.xz`` (cached by path and modification time)."""
    path = find_pao_file(pao_dir, stem)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = parse_pao_text(_read_text(path), name=stem, path=str(path))
    return _CACHE[key]


def load_basis_functions(pao_dir, basis) -> PaoBasisFunctions:
    """Radial functions of a basis string (``Si7.0-s2p2d1``) from the PAO folder."""
    if isinstance(basis, str):
        try:
            basis = parse_pao_basis(basis)
        except BasisError as exc:
            raise OverlapError(str(exc)) from None
    return read_pao(pao_dir, basis.pao_file).select(basis)


def default_pao_dir() -> str | None:
    """``$AIIDA_DEEPH_PAO_DIR`` or ``$OPENMX_DATA_PATH/PAO`` if set, else None."""
    env = os.environ.get("AIIDA_DEEPH_PAO_DIR")
    if env:
        return env
    data = os.environ.get("OPENMX_DATA_PATH")
    if data:
        return os.path.join(data, "PAO")
    return None
