"""Overlap S of a structure from the PAO files, in AiiDA: ``compute_overlap_node`` (a calcfunction).

``structure`` (StructureData) + ``pao_dir`` (Str: a folder of ``.pao`` / ``.pao.xz`` files, read
where AiiDA runs this function, i.e. on the daemon's machine) + optional ``basis`` (Dict like the
``basis`` input of OpenmxCalculation: ``{'name': ..., 'elements': {el: {'pao', 'vps', 'valence'}}}``,
or ``{'name': 'corpus'}`` for a named basis table; default the corpus table) -> a HamiltonianData
with S only (``source`` 'PAO overlap'), linked to its inputs by the calcfunction's provenance.
No DFT: seconds for cells where an OpenMX run stopped after one SCF step takes a minute.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_deeph.data.hamiltonian import HamiltonianData

EXIT_BAD_INPUT = 300  # a missing PAO file, an element without a basis, overlapping atoms, ...


def structure_arrays(structure: orm.StructureData) -> tuple:
    """(cell (3, 3) Angstrom rows, Cartesian positions (N, 3) Angstrom, element symbols) of a StructureData."""
    import numpy as np

    kinds = {kind.name: kind for kind in structure.kinds}
    species = []
    for site in structure.sites:
        kind = kinds[site.kind_name]
        if len(kind.symbols) != 1 or kind.has_vacancies:
            raise ValueError(f"kind {kind.name!r} is an alloy or has vacancies: no PAO basis for it")
        species.append(kind.symbols[0])
    cell = np.array(structure.cell, dtype=float)
    positions = np.array([site.position for site in structure.sites], dtype=float)
    return cell, positions, species


def basis_table_from_dict(basis: dict | None):
    """A :class:`BasisTable` from OpenmxCalculation's ``basis`` dictionary (None: the corpus table)."""
    from aiida_deeph.core.basis import BasisTable, load_basis_table

    if not basis:
        return load_basis_table("corpus")
    if "elements" not in basis:
        return load_basis_table(str(basis.get("name", "corpus")))
    return BasisTable(name=str(basis.get("name", "custom")), elements=dict(basis["elements"]))


@calcfunction
def compute_overlap_node(structure: orm.StructureData, pao_dir: orm.Str, basis: orm.Dict | None = None,
                         position_matrix: orm.Bool | None = None):
    """S and the OpenMX atom pairs of ``structure`` from the PAO files in ``pao_dir`` -> HamiltonianData (S only).

    The node's meta carries ``structure_uuid`` and, from the structure's extras, ``mp_id``; its
    attributes (``source`` 'PAO overlap', ``basis``, ``num_electrons`` from the basis table's
    valence, ...) are those of every HamiltonianData. Bad input (a missing PAO file, an element
    without a basis, atoms closer than 0.5 Angstrom, ...) returns exit code 300 with the message.
    ``position_matrix`` True: the node also holds ``<i,0|r|j,R>`` (two-centre integrals of r from the
    same PAO files), which ``compute_optics`` needs for a predicted Hamiltonian.
    """
    from aiida_deeph.core.basis import BasisError
    from aiida_deeph.overlap import OverlapError, compute_overlap

    try:
        table = basis_table_from_dict(None if basis is None else basis.get_dict())
        cell, positions, species = structure_arrays(structure)
        meta = {"structure_uuid": structure.uuid, "pao_dir": str(pao_dir.value)}
        mp_id = structure.base.extras.get("mp_id", None)
        if mp_id is not None:
            meta["mp_id"] = mp_id
        packed = compute_overlap(cell, positions, species, basis_table=table, pao_dir=pao_dir.value, meta=meta,
                                 position_matrix=bool(position_matrix.value) if position_matrix is not None else False)
    except (OverlapError, BasisError, ValueError, OSError) as exc:
        return ExitCode(EXIT_BAD_INPUT, f"cannot compute the overlap: {exc}")
    packed.meta["source"] = "PAO overlap"
    return HamiltonianData(packed)
