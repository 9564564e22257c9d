"""Overlap matrix S and atom pairs of any structure from the PAO files (no DFT, no aiida)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.basis import BasisError, BasisTable, load_basis_table
from ..core.constants import ANGSTROM_TO_BOHR, BOHR_TO_ANGSTROM
from ..core.elements import symbol_to_z
from ..core.packed import PackedHamiltonian, bra_position_overlap
from .pairs import MIN_DISTANCE_ANGSTROM, find_pairs
from .pao import OverlapError, default_pao_dir, load_basis_functions
from .twocenter import OPENMX_GRIDS, TransformGrids, pair_dipole, pair_overlap


def _table(basis_table) -> BasisTable:
    if isinstance(basis_table, BasisTable):
        return basis_table
    try:
        return load_basis_table(str(basis_table))
    except BasisError as exc:
        raise OverlapError(str(exc)) from None


def resolve_basis(species, basis_table="corpus", basis: dict | None = None) -> dict:
    """Element -> basis string (``Si7.0-s2p2d1``) from the table, ``basis`` overriding it."""
    basis = dict(basis or {})
    table = None
    out = {}
    for el in dict.fromkeys(species):
        if el in basis:
            out[el] = basis[el]
            continue
        table = table or _table(basis_table)
        try:
            out[el] = table.entry(el)["pao"]
        except BasisError as exc:
            raise OverlapError(str(exc)) from None
    return out


def _checked_structure(cell, positions, species) -> tuple:
    """(cell (3, 3), positions (N, 3), species) as arrays, refusing mismatched, non-finite or unknown input."""
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    species = [str(s) for s in species]
    if len(species) != positions.shape[0]:
        raise OverlapError(f"{len(species)} species for {positions.shape[0]} positions")
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(positions)):
        raise OverlapError("cell or positions contain NaN/inf")
    for s in dict.fromkeys(species):
        try:
            symbol_to_z(s)
        except ValueError as exc:
            raise OverlapError(str(exc)) from None
    return cell, positions, species


def _valence(basis_table, funcs: dict, species) -> float | None:
    """The electron count of the basis table when it covers every element, else None."""
    try:
        table = _table(basis_table)
        if all(el in table.elements for el in funcs):
            return table.num_electrons(species)
    except (OverlapError, BasisError, KeyError, ValueError):
        pass
    return None


def _fill_overlaps(overlap, relative, offsets, pairs, vectors, species, funcs: dict, grids) -> None:
    """S blocks (and, with ``relative``, the bra-relative position blocks in Bohr) of every pair, in place."""
    norb_el = {el: f.num_orbitals for el, f in funcs.items()}
    el_index = {el: n for n, el in enumerate(funcs)}
    sp = np.array([el_index[s] for s in species], dtype=np.int64)
    ne = len(funcs)
    group = sp[pairs[:, 3]] * ne + sp[pairs[:, 4]]
    els = list(funcs)
    vec_bohr = vectors * ANGSTROM_TO_BOHR
    # One calculation per unordered element pair: S_BA(v) = S_AB(-v)^T, so the B-A pairs are
    # evaluated at -v with the A-B machinery (their distances coincide with the A-B ones).
    for a in range(ne):
        for b in range(a, ne):
            ea, eb = els[a], els[b]
            sel_ab = np.nonzero(group == a * ne + b)[0]
            sel_ba = np.nonzero(group == b * ne + a)[0] if b != a else np.zeros(0, dtype=np.int64)
            if sel_ab.size + sel_ba.size == 0:
                continue
            vecs = np.concatenate([vec_bohr[sel_ab], -vec_bohr[sel_ba]])
            blocks = pair_overlap(funcs[ea], funcs[eb], grids).blocks(vecs)
            size = norb_el[ea] * norb_el[eb]
            if sel_ab.size:
                idx = offsets[sel_ab][:, None] + np.arange(size)[None, :]
                overlap[idx] = blocks[: sel_ab.size].reshape(sel_ab.size, size)
            if sel_ba.size:
                idx = offsets[sel_ba][:, None] + np.arange(size)[None, :]
                overlap[idx] = blocks[sel_ab.size:].transpose(0, 2, 1).reshape(sel_ba.size, size)
            if relative is not None:
                _fill_dipoles(relative, offsets, sel_ab, sel_ba, vecs, blocks, funcs[ea], funcs[eb], grids)


def compute_overlap(cell, positions, species, basis_table="corpus", pao_dir=None, basis: dict | None = None,
                    grids: TransformGrids = OPENMX_GRIDS, min_distance: float = MIN_DISTANCE_ANGSTROM,
                    meta: dict | None = None, position_matrix: bool = False) -> PackedHamiltonian:
    """S (and the OpenMX atom pairs) of a structure, straight from the PAO files.

    ``cell`` (3, 3) Angstrom, rows are lattice vectors; ``positions`` (N, 3) Cartesian Angstrom;
    ``species`` element symbols; ``basis_table`` a protocol name (``corpus``), a JSON path or a
    :class:`BasisTable`; ``pao_dir`` a folder of ``<stem>.pao`` / ``<stem>.pao.xz`` files (default:
    ``$AIIDA_DEEPH_PAO_DIR`` or ``$OPENMX_DATA_PATH/PAO``); ``basis`` optional element -> basis
    string overrides. Returns a sorted :class:`PackedHamiltonian` with ``overlap`` only, or with
    ``overlap`` and ``position_matrix`` (``<i,0|r|j,R>``, Angstrom, absolute Cartesian, the two-centre
    integrals of r: what OpenMX computes on its real-space grid as OLPpo, plus ``tau_i S``) when
    ``position_matrix`` is true.
    """
    cell, positions, species = _checked_structure(cell, positions, species)
    if pao_dir is None:
        pao_dir = default_pao_dir()
        if pao_dir is None:
            raise OverlapError("no PAO folder given (pass pao_dir / --pao-dir, or set AIIDA_DEEPH_PAO_DIR)")
    names = resolve_basis(species, basis_table, basis)
    funcs = {el: load_basis_functions(pao_dir, name) for el, name in names.items()}
    rc = np.array([funcs[s].cutoff_bohr for s in species])
    pairs, vectors = find_pairs(cell, positions, rc, min_distance=min_distance, species=species)

    orbital_ls = {el: list(f.ls) for el, f in funcs.items()}
    norb_el = {el: f.num_orbitals for el, f in funcs.items()}
    norb = np.array([norb_el[s] for s in species], dtype=np.int64)
    offsets = PackedHamiltonian.offsets_for(pairs, norb)
    overlap = np.empty(int(offsets[-1]), dtype=np.float64)
    relative = np.empty((int(offsets[-1]), 3), dtype=np.float64) if position_matrix else None

    _fill_overlaps(overlap, relative, offsets, pairs, vectors, species, funcs, grids)
    num_electrons = None if basis else _valence(basis_table, funcs, species)
    info = {
        "source": "PAO overlap",
        "code": "aiida-deeph",
        "basis": dict(names),
        "basis_table": basis_table.name if isinstance(basis_table, BasisTable) else str(basis_table),
        "transform_grids": {"energy_cutoff_ry": grids.energy_cutoff_ry, "num_grid_k": grids.num_grid_k,
                            "num_grid_r": grids.num_grid_r},
    }
    info.update(meta or {})
    if position_matrix:
        relative *= BOHR_TO_ANGSTROM
        relative += bra_position_overlap(overlap, pairs, offsets, positions)
    ham = PackedHamiltonian(cell=cell, positions=positions, species=species, orbital_ls=orbital_ls,
                            atom_pairs=pairs, offsets=offsets, overlap=overlap, hamiltonian=None,
                            position_matrix=relative, num_electrons=num_electrons, meta=info)
    ham.validate()
    return ham


def _fill_dipoles(relative, offsets, sel_ab, sel_ba, vecs, overlap_blocks, fa, fb, grids) -> None:
    """Bra-relative position blocks (Bohr) of the A-B pairs ``sel_ab`` and B-A pairs ``sel_ba`` into
    ``relative`` (E, 3). ``vecs`` are the A-B vectors followed by the negated B-A vectors (Bohr), as for S.

    A B-A pair with vector v (bra B at 0, ket A at v) follows from the A-B machinery at u = -v:
    ``int phi_B(r) r phi_A(r - v) = D_AB(u)^T - u S_AB(u)^T`` (shift r by v).
    """
    dip = pair_dipole(fa, fb, grids).blocks(vecs)                  # (n, 3, nA, nB)
    na, nb = dip.shape[2], dip.shape[3]
    size = na * nb
    if sel_ab.size:
        idx = offsets[sel_ab][:, None] + np.arange(size)[None, :]
        relative[idx] = dip[: sel_ab.size].reshape(sel_ab.size, 3, size).transpose(0, 2, 1)
    if sel_ba.size:
        u = vecs[sel_ab.size:]
        d = dip[sel_ab.size:].transpose(0, 1, 3, 2) - u[:, :, None, None] * overlap_blocks[sel_ab.size:].transpose(0, 2, 1)[:, None]
        idx = offsets[sel_ba][:, None] + np.arange(size)[None, :]
        relative[idx] = d.reshape(sel_ba.size, 3, size).transpose(0, 2, 1)


def read_structure(path) -> tuple:
    """(cell (3,3) A, positions (N,3) Cartesian A, species) from POSCAR/CONTCAR, CIF or pymatgen JSON.

    A JSON file may hold a pymatgen ``Structure`` dict or an object with a ``structure`` key
    (as the corpus ``meta.json``). pymatgen is imported only here.
    """
    path = Path(path)
    if not path.is_file():
        raise OverlapError(f"structure file {path} not found")
    name = path.name.lower()
    if not name.endswith((".json", ".cif")):
        # plain VASP5 POSCAR: read it without importing pymatgen (~1 s of start-up in the CLI)
        from ..io.dock import DockFormatError, read_poscar

        try:
            cell, positions, species = read_poscar(path)
            if abs(np.linalg.det(cell)) > 1e-6 and all(sym.isalpha() and len(sym) <= 2 for sym in species):
                return cell, positions, list(species)
        except DockFormatError:
            pass        # VASP4, selective dynamics with odd flags, ...: pymatgen below
    try:
        from pymatgen.core import Structure
    except ImportError:  # pragma: no cover - pymatgen is a dependency of the CLI path
        Structure = None
    try:
        if name.endswith(".json"):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "structure" in data and isinstance(data["structure"], dict):
                data = data["structure"]
            if Structure is None:
                raise OverlapError("reading a JSON structure needs pymatgen")
            structure = Structure.from_dict(data)
        elif Structure is not None:
            structure = Structure.from_file(str(path))
        else:
            from ..io.dock import read_poscar

            cell, positions, species = read_poscar(path)
            return cell, positions, list(species)
    except OverlapError:
        raise
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds; report one line
        raise OverlapError(f"cannot read structure {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not structure.is_ordered:
        raise OverlapError(f"structure {path} is disordered (partial occupancies); give an ordered structure")
    species = [site.specie.symbol for site in structure]
    return structure.lattice.matrix.copy(), structure.cart_coords.copy(), species
