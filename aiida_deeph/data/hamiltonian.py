"""``HamiltonianData``: H and S of one structure, stored as a compressed packed HDF5 file.

The arrays live in the node's repository (``hamiltonian.h5``, the project's packed format, see
``aiida_deeph.core.packed``); everything needed to query a dataset lives in attributes, so dataset
statistics never open a file.
"""
from __future__ import annotations

import os
import tempfile
from itertools import combinations_with_replacement

import numpy as np
from aiida.orm import Data

from aiida_deeph.core.packed import ARRAY_NAMES, FORMAT_VERSION, PackedFile, PackedHamiltonian

FILENAME = "hamiltonian.h5"


def element_pair_key(a: str, b: str) -> str:
    """'A-B' with A <= B alphabetically."""
    return "-".join(sorted((a, b)))


class HamiltonianData(Data):
    """A (DFT or predicted) Hamiltonian H and overlap S in the packed format, with queryable attributes.

    Attributes: ``format_version``, ``formula``, ``elements``, ``element_pairs`` (``'A-B'`` for every
    pair of elements joined by at least one stored atom pair), ``num_atoms``, ``num_orbitals``,
    ``num_pairs``, ``num_entries``, ``fermi_energy`` (eV), ``num_electrons``, ``basis`` (element ->
    OpenMX basis string), ``orbital_ls``, ``source`` ('DFT', 'model' or 'PAO overlap'), ``mp_id``,
    ``has_hamiltonian``, ``has_overlap``, ``has_density_matrix``, ``has_position_matrix``, ``file_size`` (bytes),
    ``scf_steps``, ``scf_converged``, ``cell`` and ``symbols`` (per atom), ``all_finite`` (no NaN/Inf
    in the stored arrays) and ``min_onsite_overlap_diagonal`` (smallest diagonal entry of the on-site
    overlap blocks, about 1 for normalized PAOs; None without S), so that sanity checks need no file.
    """

    def __init__(self, packed: PackedHamiltonian | None = None, *, compression: str | None = "gzip", **kwargs):
        super().__init__(**kwargs)
        if packed is not None:
            self.set_packed(packed, compression=compression)

    # ------------------------------------------------------------------ writing
    def set_packed(self, packed: PackedHamiltonian, compression: str | None = "gzip") -> None:
        """Store ``packed`` (validated, canonical pair order) in the repository and set the attributes."""
        packed = packed.sorted()
        packed.validate()
        fd, tmp = tempfile.mkstemp(suffix=".h5")
        os.close(fd)
        try:
            packed.save(tmp, name="structure", compression=compression)
            size = os.path.getsize(tmp)
            self.base.repository.put_object_from_file(tmp, FILENAME)
        finally:
            os.unlink(tmp)
        meta = packed.meta
        species = packed.species
        pair_elements = {element_pair_key(species[i], species[j]) for i, j in packed.atom_pairs[:, 3:].tolist()}
        attrs = {
            "format_version": FORMAT_VERSION,
            "formula": packed.formula,
            "elements": sorted(packed.elements),
            "element_pairs": sorted(pair_elements),
            "num_atoms": packed.num_atoms,
            "num_orbitals": packed.num_orbitals,
            "num_pairs": packed.num_pairs,
            "num_entries": packed.num_entries,
            "fermi_energy": packed.fermi_energy_eV,
            "num_electrons": packed.num_electrons,
            "basis": dict(meta.get("basis", {})),
            "orbital_ls": packed.orbital_ls,
            "source": meta.get("source", "DFT"),
            "mp_id": meta.get("mp_id"),
            "structure_uuid": meta.get("structure_uuid"),
            "has_hamiltonian": packed.hamiltonian is not None,
            "has_overlap": packed.overlap is not None,
            "has_density_matrix": packed.density_matrix is not None,
            "has_position_matrix": packed.position_matrix is not None,
            "file_size": size,
            "scf_steps": meta.get("scf_steps"),
            "scf_converged": meta.get("scf_converged"),
            "cell": packed.cell.tolist(),
            "symbols": list(species),
            "energy_unit": "eV",
            "orbital_order": "openmx",
            **array_checks(packed),
        }
        for key, value in attrs.items():
            self.base.attributes.set(key, value)

    # ------------------------------------------------------------------ reading
    def get_packed(self, load=ARRAY_NAMES) -> PackedHamiltonian:
        """The stored arrays as a :class:`PackedHamiltonian` (read straight from the repository stream)."""
        version = self.base.attributes.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise ValueError(f"HamiltonianData<{self.pk}> has format version {version}; upgrade aiida-deeph")
        with self.base.repository.open(FILENAME, "rb") as handle:
            with PackedFile(handle) as pf:
                return pf.read(pf.names()[0], load=load)

    def hk(self, k) -> np.ndarray:
        """Dense H(k) in eV at fractional ``k``."""
        return self.get_packed(load=("hamiltonian",)).matrix_at_k(k, "hamiltonian")

    def sk(self, k) -> np.ndarray:
        return self.get_packed(load=("overlap",)).matrix_at_k(k, "overlap")

    def export(self, folder, fmt: str = "dock"):
        """Write a DeepH-dock (``dock``) or DeepH-pack (``legacy``) folder, or a packed file (``packed``)."""
        from aiida_deeph.io.dock import write_dock, write_legacy

        packed = self.get_packed()
        if fmt == "dock":
            include = [n for n in ARRAY_NAMES if getattr(packed, n) is not None]
            return write_dock(packed, folder, include=tuple(include))
        if fmt == "legacy":
            return write_legacy(packed, folder)
        if fmt == "packed":
            packed.save(folder, name=str(self.base.attributes.get("mp_id") or self.uuid))
            return folder
        raise ValueError(f"unknown export format {fmt!r} (dock, legacy or packed)")

    # convenience properties
    @property
    def formula(self) -> str:
        return self.base.attributes.get("formula")

    @property
    def fermi_energy(self):
        return self.base.attributes.get("fermi_energy")

    @property
    def num_atoms(self) -> int:
        return self.base.attributes.get("num_atoms")

    @property
    def elements(self) -> list:
        return self.base.attributes.get("elements")

    @property
    def source(self) -> str:
        return self.base.attributes.get("source")


def array_checks(packed: PackedHamiltonian) -> dict:
    """``all_finite`` (no NaN/Inf in the arrays present) and ``min_onsite_overlap_diagonal`` (smallest
    diagonal entry of the on-site (R = 0, i = j) overlap blocks; None without S)."""
    arrays = [getattr(packed, name) for name in ARRAY_NAMES]
    checks = {"all_finite": all(bool(np.isfinite(a).all()) for a in arrays if a is not None),
              "min_onsite_overlap_diagonal": None}
    if packed.overlap is not None:
        pairs = packed.atom_pairs
        onsite = np.flatnonzero((pairs[:, 3] == pairs[:, 4]) & ~pairs[:, :3].any(axis=1))
        if onsite.size:
            checks["min_onsite_overlap_diagonal"] = float(
                min(np.diag(packed.block(int(p), "overlap")).min() for p in onsite))
    return checks


def all_element_pairs(elements) -> list:
    return [element_pair_key(a, b) for a, b in combinations_with_replacement(sorted(elements), 2)]
