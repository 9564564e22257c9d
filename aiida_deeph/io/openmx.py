"""OpenMX run folder -> packed Hamiltonian (pure Python, no aiida)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aiida_deeph.core.basis import BasisError, parse_pao_basis
from aiida_deeph.core.constants import BOHR_TO_ANGSTROM, HARTREE_TO_EV

from ..core.elements import symbol_to_z
from ..core.packed import PackedHamiltonian, bra_position_overlap
from .openmx_input import parse_input
from .scfout import Scfout, ScfoutError, read_scfout


class OpenmxRunError(ValueError):
    """An OpenMX run folder that cannot be converted."""


def species_from_input(text: str) -> tuple:
    """(per-atom element symbols, {element: PAO basis string}, {element: VPS name}) from an input text."""
    params = parse_input(text)
    lower = {k.lower(): v for k, v in params.items()}
    try:
        species_rows = lower["definition.of.atomic.species"]
        atom_rows = lower["atoms.speciesandcoordinates"]
    except KeyError as exc:
        raise OpenmxRunError(f"OpenMX input text lacks the block <{exc.args[0]}>") from None
    label_to_element, pao_of, vps_of = {}, {}, {}
    for row in species_rows:
        label, pao, vps = row[0], row[1], row[2]
        element = vps.split("_")[0]
        try:
            symbol_to_z(element)
        except ValueError:
            raise OpenmxRunError(f"cannot tell the element of species {label!r} (VPS {vps!r})") from None
        label_to_element[label] = element
        if element in pao_of and pao_of[element] != pao:
            raise OpenmxRunError(f"element {element} appears with two bases ({pao_of[element]}, {pao}); not supported")
        pao_of[element] = pao
        vps_of[element] = vps
    try:
        symbols = [label_to_element[row[1]] for row in atom_rows]
    except KeyError as exc:
        raise OpenmxRunError(f"atom of undefined species {exc.args[0]!r} in the OpenMX input") from None
    return symbols, pao_of, vps_of


def scfout_to_packed(scf: Scfout, meta: dict | None = None) -> PackedHamiltonian:
    """Convert a parsed .scfout into the packed format (eV, Angstrom, OpenMX orbital order)."""
    symbols, pao_of, vps_of = species_from_input(scf.input_text)
    if len(symbols) != scf.atomnum:
        raise OpenmxRunError(f"input text lists {len(symbols)} atoms, the .scfout {scf.atomnum}")
    try:
        orbital_ls = {el: parse_pao_basis(pao).orbital_ls for el, pao in pao_of.items()}
    except BasisError as exc:
        raise OpenmxRunError(str(exc)) from None
    norb = np.array([sum(2 * l + 1 for l in orbital_ls[s]) for s in symbols])
    if not np.array_equal(norb, scf.total_num_orbs):
        raise OpenmxRunError("orbital counts from the basis names do not match the .scfout")
    pairs = scf.pairs()
    offsets = PackedHamiltonian.offsets_for(pairs, norb)
    ham = PackedHamiltonian(
        cell=scf.tv * BOHR_TO_ANGSTROM,
        positions=scf.gxyz * BOHR_TO_ANGSTROM,
        species=symbols,
        # element order of the input's species block, as DeepH-dock writes elements_orbital_map
        orbital_ls={el: orbital_ls[el] for el in pao_of if el in set(symbols)},
        atom_pairs=pairs,
        offsets=offsets,
        hamiltonian=scf.hamiltonian * HARTREE_TO_EV,
        overlap=scf.overlap,
        density_matrix=scf.density_matrix,
        position_matrix=None if scf.position_matrix is None else (
            scf.position_matrix.T * BOHR_TO_ANGSTROM
            + bra_position_overlap(scf.overlap, pairs, offsets, scf.gxyz * BOHR_TO_ANGSTROM)),
        fermi_energy_eV=scf.chemical_potential * HARTREE_TO_EV,
        num_electrons=scf.valence_electrons,
        meta={
            "source": "DFT",
            "code": "OpenMX 3.9",
            "basis": {el: pao_of[el] for el in dict.fromkeys(symbols)},
            "pseudopotentials": {el: vps_of[el] for el in dict.fromkeys(symbols)},
            "temperature_K": scf.temperature,
            **(meta or {}),
        },
    )
    ham = ham.sorted()
    ham.validate()
    return ham


def find_run_files(run_dir) -> dict:
    """Locate ``<name>.scfout``/``.out``/``.Band``/``.std`` (plain or .xz) in an OpenMX run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OpenmxRunError(f"{run_dir}: not a folder")
    found: dict = {}
    for suffix in ("scfout", "out", "Band", "std"):
        matches = sorted(run_dir.glob(f"*.{suffix}")) + sorted(run_dir.glob(f"*.{suffix}.xz"))
        if len({m.name.split('.')[0] for m in matches}) > 1:
            raise OpenmxRunError(f"{run_dir}: several *.{suffix} files ({', '.join(m.name for m in matches)})")
        if matches:
            found[suffix] = matches[0]
    return found


def read_text(path) -> str:
    import lzma

    path = os.fspath(path)
    if path.endswith(".xz"):
        with lzma.open(path, "rt", encoding="latin-1") as handle:
            return handle.read()
    with open(path, encoding="latin-1") as handle:
        return handle.read()


def load_openmx_run(run_dir, require_out: bool = True, load_density_matrix: bool = False,
                    load_position_matrix: bool = False) -> PackedHamiltonian:
    """Read an OpenMX run folder (``<name>.scfout`` and ``<name>.out``, optionally .xz) into packed form.

    ``load_position_matrix``: also OpenMX's position-operator overlaps (``position_matrix``, Angstrom,
    absolute Cartesian)."""
    files = find_run_files(run_dir)
    if "scfout" not in files:
        raise OpenmxRunError(f"{run_dir}: no .scfout file (was HS.fileout on?)")
    if require_out and "out" not in files:
        raise OpenmxRunError(f"{run_dir}: no .out file")
    meta: dict = {}
    if "out" in files:
        from .openmx_out import parse_out

        info = parse_out(read_text(files["out"]))
        meta["scf_converged"] = info.get("scf_converged")
        meta["scf_steps"] = info.get("scf_steps")
    try:
        scf = read_scfout(files["scfout"], load_density_matrix=load_density_matrix,
                          load_position_matrix=load_position_matrix)
    except ScfoutError:
        raise
    return scfout_to_packed(scf, meta=meta)
