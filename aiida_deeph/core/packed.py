"""The project's packed Hamiltonian format (pure Python: numpy + h5py, no aiida).

One structure = atom pairs + block offsets + flat entries:

- ``atom_pairs`` (P, 5) int64 ``[R1, R2, R3, i, j]``, 0-based atoms, sorted by (i, j, R1, R2, R3);
  block p is ``<i, cell 0 | H | j, cell R>`` so that ``H(k) = sum_R exp(+2 pi i k.R) H(R)``
  with k fractional in the reciprocal basis of ``cell``.
- ``offsets`` (P + 1,) int64: block p is ``entries[offsets[p]:offsets[p+1]]`` reshaped row-major
  to ``(norb(i), norb(j))``.
- ``hamiltonian`` / ``overlap`` / ``density_matrix``: flat float64 entries (H in eV), any may be None.
- ``position_matrix`` (optional): (E, 3) float64, ``<i, 0 | r | j, R>`` in Angstrom, absolute Cartesian
  (OpenMX's bra-atom-relative ``OLPpo`` plus ``tau_i S``, as DeepH-dock's ``position_matrix.h5``).
- Orbitals inside an atom in OpenMX order (l outer, then zeta, then m; p = x, y, z;
  d = 3z2-r2, x2-y2, xy, xz, yz). Conversions to other orders happen at the edges (``dock.py``).

On disk (HDF5, ``format = "aiida-deeph-packed"``, ``format_version = 1``) one file holds one or many
structures, each a group ``/structures/<name>`` with a handful of datasets: never one dataset per block.
Files are written to a temporary name and renamed, so a failed write leaves nothing behind.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .elements import formula_of, symbol_to_z, z_to_symbol
from .files import atomic_path

FORMAT_NAME = "aiida-deeph-packed"
ARRAY_NAMES = ("hamiltonian", "overlap", "density_matrix", "position_matrix")  # the optional per-entry arrays
FORMAT_VERSION = 1

class PackedFormatError(ValueError):
    """A packed file or array set that is not valid."""


def _orbital_count(ls) -> int:
    return int(sum(2 * l + 1 for l in ls))


@dataclass
class PackedHamiltonian:
    """H, S (and optionally the density matrix) of one structure in the packed layout."""

    cell: np.ndarray                  # (3, 3) Angstrom, rows are lattice vectors
    positions: np.ndarray             # (N, 3) Cartesian Angstrom
    species: list                     # element symbol per atom
    orbital_ls: dict                  # element -> list of l (OpenMX order), e.g. {"Si": [0,0,1,1,2]}
    atom_pairs: np.ndarray            # (P, 5) int64
    offsets: np.ndarray               # (P + 1,) int64
    hamiltonian: np.ndarray | None = None   # (E,) float64, eV
    overlap: np.ndarray | None = None       # (E,) float64
    density_matrix: np.ndarray | None = None
    position_matrix: np.ndarray | None = None  # (E, 3) Angstrom, absolute Cartesian <i,0|r|j,R>
    fermi_energy_eV: float | None = None
    num_electrons: float | None = None
    meta: dict = field(default_factory=dict)  # free-form: mp_id, source, basis names, ...

    # ------------------------------------------------------------------ construction helpers
    def __post_init__(self):
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.species = [str(s) for s in self.species]
        self.orbital_ls = {str(k): [int(l) for l in v] for k, v in self.orbital_ls.items()}
        self.atom_pairs = np.asarray(self.atom_pairs, dtype=np.int64).reshape(-1, 5)
        self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
        for name in ("hamiltonian", "overlap", "density_matrix"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.float64).reshape(-1))
        if self.position_matrix is not None:
            self.position_matrix = np.asarray(self.position_matrix, dtype=np.float64).reshape(-1, 3)

    @staticmethod
    def offsets_for(atom_pairs: np.ndarray, norb_per_atom: np.ndarray) -> np.ndarray:
        sizes = norb_per_atom[atom_pairs[:, 3]] * norb_per_atom[atom_pairs[:, 4]]
        offsets = np.zeros(len(atom_pairs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return offsets

    # ------------------------------------------------------------------ derived quantities
    @property
    def num_atoms(self) -> int:
        return len(self.species)

    @property
    def num_pairs(self) -> int:
        return len(self.atom_pairs)

    @property
    def num_entries(self) -> int:
        return int(self.offsets[-1])

    @property
    def elements(self) -> list:
        """Distinct elements in order of first appearance."""
        return list(dict.fromkeys(self.species))

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.array([symbol_to_z(s) for s in self.species], dtype=np.int64)

    @property
    def norb_per_atom(self) -> np.ndarray:
        return np.array([_orbital_count(self.orbital_ls[s]) for s in self.species], dtype=np.int64)

    @property
    def num_orbitals(self) -> int:
        return int(self.norb_per_atom.sum())

    @property
    def formula(self) -> str:
        return formula_of(self.species)

    def block_shape(self, p: int) -> tuple:
        norb = self.norb_per_atom
        return int(norb[self.atom_pairs[p, 3]]), int(norb[self.atom_pairs[p, 4]])

    def block(self, p: int, which: str = "hamiltonian") -> np.ndarray:
        data = getattr(self, which)
        return data[self.offsets[p]:self.offsets[p + 1]].reshape(self.block_shape(p))

    def pair_index(self) -> dict:
        """Map (R1, R2, R3, i, j) -> pair row."""
        return {tuple(int(x) for x in row): p for p, row in enumerate(self.atom_pairs)}

    def pair_distances(self) -> np.ndarray:
        """Distance |r_j + R - r_i| (Angstrom) of every pair."""
        R = self.atom_pairs[:, :3].astype(np.float64) @ self.cell
        d = self.positions[self.atom_pairs[:, 4]] + R - self.positions[self.atom_pairs[:, 3]]
        return np.linalg.norm(d, axis=1)

    # ------------------------------------------------------------------ validation / ordering
    def validate(self) -> None:
        n = self.num_atoms
        if self.positions.shape != (n, 3):
            raise PackedFormatError(f"positions has shape {self.positions.shape}, expected ({n}, 3)")
        missing = sorted(set(self.species) - set(self.orbital_ls))
        if missing:
            raise PackedFormatError(f"no orbital l list for element(s) {', '.join(missing)}")
        if len(self.atom_pairs):
            ij = self.atom_pairs[:, 3:]
            if ij.min() < 0 or ij.max() >= n:
                raise PackedFormatError("atom_pairs refer to atoms outside the structure")
        expected = self.offsets_for(self.atom_pairs, self.norb_per_atom)
        if self.offsets.shape != expected.shape or not np.array_equal(self.offsets, expected):
            raise PackedFormatError("block offsets do not match the atom pairs and orbital counts")
        for name in ("hamiltonian", "overlap", "density_matrix"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != self.num_entries:
                raise PackedFormatError(f"{name} has {value.shape[0]} entries, expected {self.num_entries}")
        if self.position_matrix is not None and self.position_matrix.shape != (self.num_entries, 3):
            raise PackedFormatError(
                f"position_matrix has shape {self.position_matrix.shape}, expected ({self.num_entries}, 3)")
        if len({tuple(r) for r in self.atom_pairs.tolist()}) != self.num_pairs:
            raise PackedFormatError("duplicate atom pairs")

    def sorted(self) -> PackedHamiltonian:
        """Return a copy with pairs in canonical order (i, j, R1, R2, R3)."""
        ap = self.atom_pairs
        order = np.lexsort((ap[:, 2], ap[:, 1], ap[:, 0], ap[:, 4], ap[:, 3]))
        return self.reorder_pairs(order)

    def reorder_pairs(self, order: np.ndarray) -> PackedHamiltonian:
        order = np.asarray(order, dtype=np.int64)
        ap = self.atom_pairs[order]
        offsets = self.offsets_for(ap, self.norb_per_atom)
        gather = entry_gather_index(self.offsets, order)

        def take(arr):
            return None if arr is None else arr[gather]

        return PackedHamiltonian(
            cell=self.cell.copy(), positions=self.positions.copy(), species=list(self.species),
            orbital_ls={k: list(v) for k, v in self.orbital_ls.items()}, atom_pairs=ap, offsets=offsets,
            hamiltonian=take(self.hamiltonian), overlap=take(self.overlap),
            density_matrix=take(self.density_matrix), position_matrix=take(self.position_matrix),
            fermi_energy_eV=self.fermi_energy_eV, num_electrons=self.num_electrons, meta=dict(self.meta),
        )

    # ------------------------------------------------------------------ k space
    def entry_rows_cols(self) -> tuple:
        """Global (row, col) orbital index and pair index of every flat entry (int64 arrays)."""
        norb = self.norb_per_atom
        first = np.concatenate([[0], np.cumsum(norb)[:-1]])
        sizes = np.diff(self.offsets)
        pair_of_entry = np.repeat(np.arange(self.num_pairs), sizes)
        local = np.arange(self.num_entries) - self.offsets[:-1][pair_of_entry]
        ncol = norb[self.atom_pairs[pair_of_entry, 4]]
        rows = first[self.atom_pairs[pair_of_entry, 3]] + local // ncol
        cols = first[self.atom_pairs[pair_of_entry, 4]] + local % ncol
        return rows, cols, pair_of_entry

    def matrix_at_k(self, k, which: str = "hamiltonian", _cache: dict | None = None) -> np.ndarray:
        """Dense complex matrix M(k) = sum_R exp(+2 pi i k.R) M(R), k fractional."""
        data = getattr(self, which)
        if data is None:
            raise PackedFormatError(f"this Hamiltonian holds no {which}")
        if _cache is not None and "rc" in _cache:
            rows, cols, pair_of_entry = _cache["rc"]
        else:
            rows, cols, pair_of_entry = self.entry_rows_cols()
            if _cache is not None:
                _cache["rc"] = (rows, cols, pair_of_entry)
        n = self.num_orbitals
        phase = np.exp(2j * np.pi * (self.atom_pairs[:, :3] @ np.asarray(k, dtype=np.float64)))
        weights = data * phase[pair_of_entry]
        flat = rows * n + cols
        re = np.bincount(flat, weights=weights.real, minlength=n * n)
        im = np.bincount(flat, weights=weights.imag, minlength=n * n)
        return (re + 1j * im).reshape(n, n)

    # ------------------------------------------------------------------ I/O
    def write_group(self, group, compression: str | None = "gzip", compression_opts=4) -> None:
        """Write into an open h5py group."""
        kw = {}
        if compression:
            kw = {"compression": compression, "shuffle": True}
            if compression == "gzip":
                kw["compression_opts"] = compression_opts
        group.create_dataset("cell", data=self.cell)
        group.create_dataset("positions", data=self.positions)
        group.create_dataset("atomic_numbers", data=self.atomic_numbers.astype(np.int32))
        group.create_dataset("atom_pairs", data=self.atom_pairs.astype(np.int32), **(kw if self.num_pairs > 64 else {}))
        group.create_dataset("offsets", data=self.offsets, **(kw if self.num_pairs > 64 else {}))
        for name in ARRAY_NAMES:
            value = getattr(self, name)
            if value is not None:
                group.create_dataset(name, data=value, **(kw if value.size > 1024 else {}))
        group.attrs["orbital_ls"] = json.dumps(self.orbital_ls)
        group.attrs["orbital_order"] = "openmx"
        group.attrs["energy_unit"] = "eV"
        group.attrs["length_unit"] = "angstrom"
        group.attrs["fermi_energy_eV"] = np.nan if self.fermi_energy_eV is None else float(self.fermi_energy_eV)
        group.attrs["num_electrons"] = np.nan if self.num_electrons is None else float(self.num_electrons)
        group.attrs["meta"] = json.dumps(self.meta)

    @classmethod
    def read_group(cls, group, load=ARRAY_NAMES) -> PackedHamiltonian:
        species = [z_to_symbol(z) for z in group["atomic_numbers"][()]]

        def maybe(name):
            return group[name][()] if (name in load and name in group) else None

        fermi = float(group.attrs["fermi_energy_eV"])
        nel = float(group.attrs["num_electrons"])
        order = group.attrs.get("orbital_order", "openmx")
        if order != "openmx":
            raise PackedFormatError(f"unsupported orbital order {order!r} in packed group {group.name}")
        return cls(
            cell=group["cell"][()], positions=group["positions"][()], species=species,
            orbital_ls=json.loads(group.attrs["orbital_ls"]), atom_pairs=group["atom_pairs"][()],
            offsets=group["offsets"][()], hamiltonian=maybe("hamiltonian"), overlap=maybe("overlap"),
            density_matrix=maybe("density_matrix"), position_matrix=maybe("position_matrix"),
            fermi_energy_eV=None if np.isnan(fermi) else fermi,
            num_electrons=None if np.isnan(nel) else nel,
            meta=json.loads(group.attrs.get("meta", "{}")),
        )

    def save(self, path, name: str = "0", compression: str | None = "gzip") -> None:
        """Write a one-structure packed file atomically."""
        write_packed(path, {name: self}, compression=compression)

    @classmethod
    def load(cls, path, name: str | None = None, **kw) -> PackedHamiltonian:
        with PackedFile(path) as pf:
            names = pf.names()
            if name is None:
                if len(names) != 1:
                    raise PackedFormatError(f"{path} holds {len(names)} structures; name one of them")
                name = names[0]
            return pf.read(name, **kw)

    def copy(self) -> PackedHamiltonian:
        return self.reorder_pairs(np.arange(self.num_pairs))


def bra_position_overlap(overlap: np.ndarray, atom_pairs: np.ndarray, offsets: np.ndarray,
                         positions: np.ndarray) -> np.ndarray:
    """``tau_i S`` per entry (E, 3): what turns the bra-relative ``<i,0|r - tau_i|j,R>`` (OpenMX's OLPpo)
    into the absolute ``<i,0|r|j,R>`` of ``position_matrix``."""
    pair_of_entry = np.repeat(np.arange(len(atom_pairs)), np.diff(offsets))
    return overlap[:, None] * positions[atom_pairs[pair_of_entry, 3]]


def entry_gather_index(offsets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Flat entry indices that gather the blocks of ``order`` (pair rows) contiguously."""
    starts = offsets[:-1][order]
    sizes = (offsets[1:] - offsets[:-1])[order]
    if len(sizes) == 0:
        return np.zeros(0, dtype=np.int64)
    new_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.repeat(starts - new_starts, sizes) + np.arange(int(sizes.sum()))


def pairs_gather_index(source_pairs: np.ndarray, source_offsets: np.ndarray, target_pairs: np.ndarray) -> np.ndarray:
    """Flat entry indices that bring entries stored in ``source_pairs`` order (blocks at ``source_offsets``)
    into the order of ``target_pairs`` (rows (R1, R2, R3, i, j) of the same pair set); KeyError for a target
    pair the source lacks."""
    index = {tuple(int(x) for x in row): p for p, row in enumerate(np.asarray(source_pairs).tolist())}
    order = np.array([index[tuple(int(x) for x in row)] for row in np.asarray(target_pairs).tolist()], dtype=np.int64)
    return entry_gather_index(np.asarray(source_offsets), order)


def _check_header(handle, path) -> None:
    fmt = handle.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT_NAME:
        raise PackedFormatError(f"{path} is not an aiida-deeph packed file (format attribute {fmt!r})")
    version = int(handle.attrs.get("format_version", -1))
    if version > FORMAT_VERSION or version < 1:
        raise PackedFormatError(
            f"{path} has packed format version {version}; this aiida-deeph reads versions 1..{FORMAT_VERSION}"
        )


def write_packed(path, structures, compression: str | None = "gzip") -> None:
    """Write ``{name: PackedHamiltonian}`` (or an iterable of (name, PackedHamiltonian)) atomically.

    Structures are written one at a time, so an iterator keeps memory bounded.
    """
    import h5py

    path = os.fspath(path)
    items = structures.items() if isinstance(structures, dict) else structures
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        count = 0
        handle.attrs["format"] = FORMAT_NAME
        handle.attrs["format_version"] = FORMAT_VERSION
        group = handle.create_group("structures")
        for name, ham in items:
            ham.validate()
            ham.write_group(group.create_group(str(name)), compression=compression)
            count += 1
        handle.attrs["num_structures"] = count


class PackedFile:
    """Read access to a packed file; structures are loaded one at a time (streaming)."""

    def __init__(self, path):
        import h5py

        # ``path`` may also be a binary file-like object (e.g. a stream from an AiiDA repository).
        self.path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
        try:
            self._h5 = h5py.File(path if not isinstance(path, os.PathLike) else self.path, "r")
        except OSError as exc:
            raise PackedFormatError(f"cannot open packed file {self.path}: {exc}") from None
        try:
            _check_header(self._h5, self.path)
        except Exception:
            self._h5.close()
            raise

    def names(self) -> list:
        return list(self._h5["structures"].keys())

    def __len__(self) -> int:
        return len(self._h5["structures"])

    def read(self, name: str, load=ARRAY_NAMES) -> PackedHamiltonian:
        try:
            group = self._h5["structures"][name]
        except KeyError:
            raise PackedFormatError(f"{self.path} has no structure {name!r}") from None
        return PackedHamiltonian.read_group(group, load=load)

    def __iter__(self) -> Iterator:
        for name in self.names():
            yield name, self.read(name)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
