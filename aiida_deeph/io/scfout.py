"""Reader of OpenMX 3.9 ``.scfout`` files (SCFOUT_VERSION 3), pure numpy.

Layout (SCF2File.c, raw fwrite, no record markers; see docs/openmx.md):
int32[6] header (atomnum, SpinP_switch + 4*version, Catomnum, Latomnum, Ratomnum, TCpyCell),
int32 order_max, atv (T+1)x4 f8, atv_ijk (T+1)x4 i4, Total_NumOrbs[N], FNAN[N], natn, ncn,
tv 3x4, rtv 3x4, Gxyz Nx4, then the block sets Hks (S+1), iHks (3 if S == 3), OLP, OLPpo (3*order_max),
OLPmo (3), DM (S+1), iDM (2), then solver, 10 doubles (ChemP, T, dipoles, Valence_Electrons,
Total_SpinS), and the input file text in 256-byte lines.

Both byte orders are read; version 0 (OpenMX 3.7/3.8) and spin-polarised files are refused with
a one-line error; the reader checks that it consumed the file exactly.
"""
from __future__ import annotations

import lzma
import os
from dataclasses import dataclass

import numpy as np

SUPPORTED_VERSION = 3


class ScfoutError(ValueError):
    """A .scfout file that cannot be read (truncated, foreign, unsupported)."""


@dataclass
class Scfout:
    atomnum: int
    spin: int                 # SpinP_switch (0: non-spin)
    version: int
    order_max: int
    atv: np.ndarray           # (T+1, 3) Bohr
    atv_ijk: np.ndarray       # (T+1, 3) int
    total_num_orbs: np.ndarray  # (N,)
    fnan: np.ndarray          # (N,)
    natn: list                # per atom int array (FNAN+1), 0-based neighbour atom
    ncn: list                 # per atom int array (FNAN+1), row of atv_ijk
    tv: np.ndarray            # (3, 3) Bohr, rows = lattice vectors
    rtv: np.ndarray           # (3, 3) Bohr^-1 (2 pi included)
    gxyz: np.ndarray          # (N, 3) Bohr
    hamiltonian: np.ndarray   # flat entries of Hks[0] (Hartree), block order (atom, neighbour)
    overlap: np.ndarray       # flat entries of OLP
    density_matrix: np.ndarray  # flat entries of DM[0]
    solver: int
    chemical_potential: float  # Hartree
    temperature: float
    valence_electrons: float
    total_spin: float
    input_text: str
    byteorder: str            # '<' or '>'
    # (3, E) Bohr: OLPpo[x/y/z][order 0] = <i|(r - tau_i)|j,R>, relative to the bra atom (None unless asked)
    position_matrix: np.ndarray | None = None

    def pairs(self) -> np.ndarray:
        """(P, 5) [R1, R2, R3, i, j] in the file's block order."""
        rows = []
        for a in range(self.atomnum):
            n = self.fnan[a] + 1
            R = self.atv_ijk[self.ncn[a]]
            rows.append(np.column_stack([R, np.full(n, a), self.natn[a]]))
        return np.concatenate(rows).astype(np.int64)


def _open_bytes(path) -> bytes:
    path = os.fspath(path)
    try:
        if path.endswith(".xz"):
            with lzma.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except lzma.LZMAError as exc:
        raise ScfoutError(f"{path}: corrupted xz compression ({exc})") from None
    except FileNotFoundError:
        raise ScfoutError(f"{path}: no such file") from None


class _Cursor:
    def __init__(self, buf: bytes, order: str, name: str):
        self.buf = buf
        self.pos = 0
        self.order = order
        self.name = name
        self.fields = []  # (offset, itemsize, count) of every read, for swap_byte_order


    def take(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(self.order + dtype)
        nbytes = dt.itemsize * count
        if count < 0 or self.pos + nbytes > len(self.buf):
            raise ScfoutError(
                f"{self.name}: truncated .scfout (needs more than its {len(self.buf)} bytes at offset {self.pos})"
            )
        out = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
        self.fields.append((self.pos, dt.itemsize, count))
        self.pos += nbytes
        return out.astype(dt.newbyteorder("="), copy=True) if self.order != "=" else out


def read_scfout(path, load_density_matrix: bool = True, load_position_matrix: bool = False) -> Scfout:
    """Read an OpenMX 3.9 .scfout (optionally ``.xz``-compressed)."""
    name = os.fspath(path)
    return _parse(_open_bytes(path), name, load_density_matrix, load_position_matrix)[0]


def swap_byte_order(buf: bytes) -> bytes:
    """The same .scfout with every number byte-swapped (as written on a machine of the other endianness)."""
    _, cursor = _parse(buf, "<bytes>", False)
    out = bytearray(buf)
    for offset, itemsize, count in cursor.fields:
        if itemsize == 1:
            continue
        arr = np.frombuffer(buf, dtype=f"u{itemsize}", count=count, offset=offset)
        out[offset:offset + itemsize * count] = arr.byteswap().tobytes()
    return bytes(out)


def _parse(buf: bytes, name: str, load_density_matrix: bool, load_position_matrix: bool = False):
    if len(buf) < 28:
        raise ScfoutError(f"{name}: too short to be an OpenMX .scfout ({len(buf)} bytes)")
    order = None
    for candidate in ("<", ">"):
        head = np.frombuffer(buf, dtype=candidate + "i4", count=6)
        if 0 <= head[1] <= 15 and 0 < head[0] < 10_000_000 and head[5] >= 0:
            order = candidate
            break
    if order is None:
        raise ScfoutError(f"{name}: not an OpenMX .scfout file (header does not parse in either byte order)")
    cur = _Cursor(buf, order, name)
    atomnum, sp_ver, _catom, _latom, _ratom, tcpycell = (int(x) for x in cur.take("i4", 6))
    spin, version = sp_ver % 4, sp_ver // 4
    if version == 0:
        raise ScfoutError(
            f"{name}: .scfout from OpenMX 3.7/3.8 (SCFOUT version 0) is not supported; rerun with OpenMX 3.9"
        )
    if version != SUPPORTED_VERSION:
        raise ScfoutError(f"{name}: unsupported SCFOUT version {version} (this reader supports version 3, OpenMX 3.9)")
    if spin != 0:
        raise ScfoutError(f"{name}: spin-polarised .scfout (SpinP_switch={spin}) is not supported (non-spin only)")
    order_max = int(cur.take("i4", 1)[0])
    if not 0 <= order_max < 100:
        raise ScfoutError(f"{name}: corrupted header (order_max={order_max})")
    ncell = tcpycell + 1
    atv = cur.take("f8", ncell * 4).reshape(ncell, 4)[:, 1:].copy()
    atv_ijk = cur.take("i4", ncell * 4).reshape(ncell, 4)[:, 1:].astype(np.int64)
    tno = cur.take("i4", atomnum).astype(np.int64)
    fnan = cur.take("i4", atomnum).astype(np.int64)
    if tno.min() <= 0 or tno.max() > 1000 or fnan.min() < 0 or fnan.max() > 100_000:
        raise ScfoutError(f"{name}: corrupted header (orbital or neighbour counts out of range)")
    natn = [cur.take("i4", int(f) + 1).astype(np.int64) - 1 for f in fnan]
    ncn = [cur.take("i4", int(f) + 1).astype(np.int64) for f in fnan]
    for a in range(atomnum):
        if natn[a].min() < 0 or natn[a].max() >= atomnum or ncn[a].min() < 0 or ncn[a].max() >= ncell:
            raise ScfoutError(f"{name}: corrupted neighbour list for atom {a + 1}")
    tv = cur.take("f8", 12).reshape(3, 4)[:, 1:].copy()
    rtv = cur.take("f8", 12).reshape(3, 4)[:, 1:].copy()
    gxyz = cur.take("f8", atomnum * 4).reshape(atomnum, 4)[:, 1:].copy()

    block_size = int(sum(int(tno[a]) * int(tno[natn[a]].sum()) for a in range(atomnum)))
    # Hks (spin+1), iHks (3 if spin == 3), OLP, OLPpo (3*order_max), OLPmo (3), DM (spin+1), iDM (2)
    n_h = spin + 1
    hks = cur.take("f8", block_size * n_h)[:block_size]
    if spin == 3:
        cur.take("f8", block_size * 3)
    olp = cur.take("f8", block_size)
    # OLPpo: for direction x, y, z: for order 1..order_max (r, r^2, ...); then OLPmo x, y, z
    olppo = cur.take("f8", block_size * 3 * order_max)
    if order_max >= 1:
        olppo = olppo.reshape(3, order_max, block_size)[:, 0]
    elif load_position_matrix:
        raise ScfoutError(f"{name}: the .scfout holds no position matrix (order_max = 0)")
    cur.take("f8", block_size * 3)
    dm = cur.take("f8", block_size * n_h)[:block_size]
    cur.take("f8", block_size * 2)
    solver = int(cur.take("i4", 1)[0])
    tail = cur.take("f8", 10)
    nlines = int(cur.take("i4", 1)[0])
    if nlines < 0 or cur.pos + 256 * nlines != len(buf):
        expected = cur.pos + 256 * max(nlines, 0)
        raise ScfoutError(
            f"{name}: size mismatch: file has {len(buf)} bytes, layout of a version-3 .scfout needs {expected} "
            "(truncated or not an OpenMX 3.9 .scfout)"
        )
    raw = cur.take("u1", 256 * nlines).tobytes()
    lines = [raw[i * 256:(i + 1) * 256].split(b"\0", 1)[0].decode("latin-1").rstrip("\n") for i in range(nlines)]
    return Scfout(
        atomnum=atomnum, spin=spin, version=version, order_max=order_max, atv=atv, atv_ijk=atv_ijk,
        total_num_orbs=tno, fnan=fnan, natn=natn, ncn=ncn, tv=tv, rtv=rtv, gxyz=gxyz,
        hamiltonian=np.array(hks), overlap=np.array(olp),
        density_matrix=np.array(dm) if load_density_matrix else None, solver=solver,
        chemical_potential=float(tail[0]), temperature=float(tail[1]), valence_electrons=float(tail[8]),
        total_spin=float(tail[9]), input_text="\n".join(lines), byteorder=order,
        position_matrix=np.array(olppo) if load_position_matrix else None,
    ), cur
