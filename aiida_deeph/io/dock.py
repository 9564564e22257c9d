"""DeepH-dock and legacy DeepH-pack folders <-> packed Hamiltonian (pure Python, no aiida).

DeepH-dock folder (one structure): ``POSCAR`` (Cartesian, Angstrom, atoms grouped by species),
``info.json``, ``overlap.h5`` and optionally ``hamiltonian.h5`` / ``density_matrix.h5`` /
``position_matrix.h5``, each with datasets ``atom_pairs`` (P, 5) ``[R1, R2, R3, i, j]`` (0-based),
``chunk_boundaries`` (P + 1), ``chunk_shapes`` (P, 2) and ``entries`` (flat float64; (3, E) for the
position matrix: x, y, z of ``<i, 0 | r | j, R>`` in Angstrom, absolute Cartesian). Orbitals inside a block in real-harmonic
order m = -l..l (OpenMX's p indexed by [1, 2, 0], d by [2, 4, 0, 3, 1]; no sign changes).
See docs/deeph-dock-format.md.

Legacy DeepH-pack folder: ``element.dat``, ``site_positions.dat`` (3 x N), ``lat.dat`` (columns are
lattice vectors), ``rlat.dat``, ``orbital_types.dat``, ``info.json`` {fermi_level, isspinful},
``R_list.dat``, ``hamiltonians.h5`` / ``overlaps.h5`` with one dataset per block keyed
``"[R1, R2, R3, i, j]"`` (1-based atoms); OpenMX orbital order; eV.

Writers write into a temporary sibling folder and rename it into place: a failure leaves nothing.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..core.elements import symbol_to_z, z_to_symbol
from ..core.packed import ARRAY_NAMES, PackedHamiltonian, pairs_gather_index

DOCK_FORMAT_VERSION = 1  # our own marker inside info.json ("aiida_deeph" section)

# OpenMX -> real-harmonic (m = -l..l) order inside one shell of angular momentum l.
OPENMX_TO_WIKI = {0: [0], 1: [1, 2, 0], 2: [2, 4, 0, 3, 1]}


class DockFormatError(ValueError):
    """A DeepH-dock or legacy folder that cannot be read or written."""


# ---------------------------------------------------------------------- helpers
def atom_orbital_permutation(ls) -> np.ndarray:
    """Index array ``perm`` so that ``wiki_block = openmx_block[perm]`` for one atom with shells ``ls``."""
    perm, start = [], 0
    for l in ls:
        if l not in OPENMX_TO_WIKI:
            raise DockFormatError(f"orbital l={l} not supported (l <= 2)")
        perm.extend(start + np.array(OPENMX_TO_WIKI[l]))
        start += 2 * l + 1
    return np.array(perm, dtype=np.int64)


def permute_orbitals(ham: PackedHamiltonian, arrays: dict, inverse: bool = False) -> dict:
    """Reorder the orbitals of every block of the flat ``arrays`` between OpenMX and dock order."""
    perms = {}
    for el, ls in ham.orbital_ls.items():
        p = atom_orbital_permutation(ls)
        perms[el] = np.argsort(p) if inverse else p
    norb = ham.norb_per_atom
    species = ham.species
    # Build one gather index over all entries: group pairs by (species_i, species_j).
    gather = np.empty(ham.num_entries, dtype=np.int64)
    pair_species = [(species[i], species[j]) for i, j in ham.atom_pairs[:, 3:]]
    groups: dict = {}
    for p, key in enumerate(pair_species):
        groups.setdefault(key, []).append(p)
    for (si, sj), plist in groups.items():
        plist = np.array(plist)
        ni, nj = norb[ham.atom_pairs[plist[0], 3]], norb[ham.atom_pairs[plist[0], 4]]
        local = (perms[si][:, None] * nj + perms[sj][None, :]).reshape(-1)
        gather[(ham.offsets[plist][:, None] + np.arange(ni * nj)[None, :]).reshape(-1)] = (
            ham.offsets[plist][:, None] + local[None, :]
        ).reshape(-1)
    return {k: (None if v is None else v[gather]) for k, v in arrays.items()}


def grouped_atom_order(species) -> np.ndarray:
    """Stable order of atoms that groups them by species, species in order of first appearance."""
    first = {s: n for n, s in enumerate(dict.fromkeys(species))}
    return np.array(sorted(range(len(species)), key=lambda a: (first[species[a]], a)), dtype=np.int64)


def reorder_atoms(ham: PackedHamiltonian, new_to_old: np.ndarray) -> PackedHamiltonian:
    """Renumber atoms: new atom n is old atom ``new_to_old[n]``; pairs re-sorted canonically."""
    new_to_old = np.asarray(new_to_old, dtype=np.int64)
    old_to_new = np.empty_like(new_to_old)
    old_to_new[new_to_old] = np.arange(len(new_to_old))
    ap = ham.atom_pairs.copy()
    ap[:, 3] = old_to_new[ap[:, 3]]
    ap[:, 4] = old_to_new[ap[:, 4]]
    out = PackedHamiltonian(
        cell=ham.cell.copy(), positions=ham.positions[new_to_old].copy(),
        species=[ham.species[a] for a in new_to_old], orbital_ls=dict(ham.orbital_ls),
        atom_pairs=ap, offsets=ham.offsets.copy(), hamiltonian=ham.hamiltonian, overlap=ham.overlap,
        density_matrix=ham.density_matrix, position_matrix=ham.position_matrix,
        fermi_energy_eV=ham.fermi_energy_eV, num_electrons=ham.num_electrons, meta=dict(ham.meta),
    )
    return out.sorted()


def _atomic_write_dir(folder: Path, writer) -> None:
    folder = Path(folder)
    parent = folder.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=parent))
    try:
        writer(tmp)
        if folder.exists():
            if not folder.is_dir():
                raise DockFormatError(f"{folder} exists and is not a folder")
            backup = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-", dir=parent))
            backup.rmdir()
            folder.rename(backup)
            tmp.rename(folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_poscar(path, cell, positions, species, comment="aiida-deeph") -> None:
    elements = list(dict.fromkeys(species))
    counts = [species.count(e) for e in elements]
    grouped = [s for s in species]
    if grouped != [e for e, c in zip(elements, counts) for _ in range(c)]:
        raise DockFormatError("POSCAR needs atoms grouped by species")
    lines = [comment, "1.0"]
    lines += ["  " + " ".join(f"{x:22.16f}" for x in row) for row in np.asarray(cell)]
    lines += ["  " + " ".join(elements), "  " + " ".join(str(c) for c in counts), "Cartesian"]
    lines += ["  " + " ".join(f"{x:22.16f}" for x in row) for row in np.asarray(positions)]
    Path(path).write_text("\n".join(lines) + "\n")


def read_poscar(path) -> tuple:
    """(cell, Cartesian positions, species) from a VASP5 POSCAR (Cartesian or Direct)."""
    lines = [l.strip() for l in Path(path).read_text().splitlines()]
    try:
        scale = float(lines[1].split()[0])
        cell = np.array([[float(x) for x in lines[i].split()[:3]] for i in (2, 3, 4)]) * scale
        elements = lines[5].split()
        counts = [int(x) for x in lines[6].split()]
        mode_line = 7
        if lines[mode_line].lower().startswith("s"):
            mode_line += 1
        cartesian = lines[mode_line].lower()[0] in "ck"
        n = sum(counts)
        coords = np.array([[float(x) for x in lines[mode_line + 1 + a].split()[:3]] for a in range(n)])
    except (IndexError, ValueError) as exc:
        raise DockFormatError(f"{path}: not a readable VASP5 POSCAR ({exc})") from None
    positions = coords * scale if cartesian else coords @ cell
    species = [e for e, c in zip(elements, counts) for _ in range(c)]
    return cell, positions, species


# ---------------------------------------------------------------------- DeepH-dock
_DOCK_FILES = {"hamiltonian": "hamiltonian.h5", "overlap": "overlap.h5", "density_matrix": "density_matrix.h5",
               "position_matrix": "position_matrix.h5"}


def write_dock(ham: PackedHamiltonian, folder, include=("hamiltonian", "overlap")) -> Path:
    """Write one structure as a DeepH-dock folder (``folder`` is the structure folder itself)."""
    import h5py

    ham.validate()
    order = grouped_atom_order(ham.species)
    grouped = reorder_atoms(ham, order) if not np.array_equal(order, np.arange(ham.num_atoms)) else ham.sorted()
    arrays = permute_orbitals(grouped, {k: getattr(grouped, k) for k in include})
    norb = grouped.norb_per_atom
    shapes = np.column_stack([norb[grouped.atom_pairs[:, 3]], norb[grouped.atom_pairs[:, 4]]]).astype(np.int64)
    info = {
        "atoms_quantity": grouped.num_atoms,
        "orbits_quantity": grouped.num_orbitals,
        "orthogonal_basis": False,
        "spinful": False,
        "fermi_energy_eV": grouped.fermi_energy_eV,
        "elements_orbital_map": {el: ls for el, ls in grouped.orbital_ls.items() if el in set(grouped.species)},
        # total valence electrons: DeepH-dock's optional key (its find-fermi uses it) and ours
        "occupation": grouped.num_electrons,
        "electrons_quantity": grouped.num_electrons,
        "aiida_deeph": {
            "format_version": DOCK_FORMAT_VERSION,
            "original_atom_order": order.tolist(),
            "meta": grouped.meta,
        },
    }

    def writer(tmp: Path):
        write_poscar(tmp / "POSCAR", grouped.cell, grouped.positions, grouped.species,
                     comment=str(grouped.meta.get("mp_id") or grouped.formula))
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        for name in include:
            data = arrays[name]
            if data is None:
                continue
            with h5py.File(tmp / _DOCK_FILES[name], "w") as h5:
                h5.create_dataset("atom_pairs", data=grouped.atom_pairs.astype(np.int64))
                h5.create_dataset("chunk_boundaries", data=grouped.offsets.astype(np.int64))
                h5.create_dataset("chunk_shapes", data=shapes)
                # the position matrix is (E, 3) inside, (3, E) in DeepH-dock's position_matrix.h5
                h5.create_dataset("entries", data=np.ascontiguousarray(data.T if data.ndim == 2 else data,
                                                                       dtype=np.float64))

    _atomic_write_dir(Path(folder), writer)
    return Path(folder)


def read_dock(folder, load=ARRAY_NAMES, restore_order: bool = True) -> PackedHamiltonian:
    """Read a DeepH-dock folder into packed form (OpenMX orbital order).

    With ``restore_order`` the atom order recorded by aiida-deeph (if any) is restored, so that
    packed -> dock -> packed is exact.
    """
    import h5py

    folder = Path(folder)
    if not (folder / "POSCAR").is_file() or not (folder / "info.json").is_file():
        raise DockFormatError(f"{folder}: not a DeepH-dock folder (needs POSCAR and info.json)")
    cell, positions, species = read_poscar(folder / "POSCAR")
    try:
        info = json.loads((folder / "info.json").read_text())
        orbital_ls = {el: [int(l) for l in ls] for el, ls in info["elements_orbital_map"].items()}
    except (json.JSONDecodeError, KeyError) as exc:
        raise DockFormatError(f"{folder}/info.json: unreadable ({exc})") from None
    if info.get("spinful"):
        raise DockFormatError(f"{folder}: spinful Hamiltonians are not supported")
    arrays, atom_pairs, offsets = {}, None, None
    # with nothing (or nothing present) to load, the pair set still comes from overlap.h5 or hamiltonian.h5
    pairs_only = not any((folder / _DOCK_FILES[n]).is_file() for n in load if n in _DOCK_FILES)
    for name in ("overlap", "hamiltonian", "density_matrix", "position_matrix"):
        path = folder / _DOCK_FILES[name]
        wanted = name in load or (pairs_only and atom_pairs is None and name in ("overlap", "hamiltonian"))
        if not wanted or not path.is_file():
            continue
        with h5py.File(path, "r") as h5:
            ap = h5["atom_pairs"][()].astype(np.int64)
            cb = h5["chunk_boundaries"][()].astype(np.int64)
            if name not in load:
                atom_pairs, offsets = ap, cb
                continue
            entries = h5["entries"][()].astype(np.float64)
        if name == "position_matrix":
            if entries.ndim != 2 or entries.shape[0] != 3:
                raise DockFormatError(f"{path}: entries has shape {entries.shape}, expected (3, E)")
            entries = entries.T
        if atom_pairs is None:
            atom_pairs, offsets = ap, cb
        elif not (np.array_equal(ap, atom_pairs) and np.array_equal(cb, offsets)):
            # Same pair set in another order: bring this file into the first file's order.
            try:
                entries = entries[pairs_gather_index(ap, cb, atom_pairs)]
            except KeyError:
                raise DockFormatError(f"{folder}: atom_pairs differ between the .h5 files") from None
        arrays[name] = entries
    if atom_pairs is None:
        raise DockFormatError(f"{folder}: neither overlap.h5 nor hamiltonian.h5 found")
    extra = info.get("aiida_deeph", {})
    ham = PackedHamiltonian(
        cell=cell, positions=positions, species=species,
        orbital_ls={el: ls for el, ls in orbital_ls.items() if el in set(species)},
        atom_pairs=atom_pairs, offsets=offsets, fermi_energy_eV=info.get("fermi_energy_eV"),
        num_electrons=info.get("electrons_quantity", info.get("occupation")), meta=dict(extra.get("meta", {})),
    )
    if not np.array_equal(PackedHamiltonian.offsets_for(atom_pairs, ham.norb_per_atom), offsets):
        raise DockFormatError(f"{folder}: chunk_boundaries do not match the orbital counts of info.json")
    arrays = permute_orbitals(ham, arrays, inverse=True)
    for name, value in arrays.items():
        setattr(ham, name, value)
    ham.validate()
    order = extra.get("original_atom_order")
    if restore_order and order is not None and len(order) == ham.num_atoms:
        back = np.argsort(np.asarray(order))
        return reorder_atoms(ham, back)
    return ham.sorted()


# ---------------------------------------------------------------------- legacy DeepH-pack
def write_legacy(ham: PackedHamiltonian, folder) -> Path:
    """Write one structure as a legacy DeepH-pack folder (OpenMX orbital order, eV, 1-based atoms)."""
    import h5py

    ham.validate()

    def writer(tmp: Path):
        np.savetxt(tmp / "element.dat", ham.atomic_numbers, fmt="%d")
        np.savetxt(tmp / "site_positions.dat", ham.positions.T, fmt="%.16e")
        np.savetxt(tmp / "lat.dat", ham.cell.T, fmt="%.16e")
        np.savetxt(tmp / "rlat.dat", 2 * np.pi * np.linalg.inv(ham.cell), fmt="%.16e")
        with open(tmp / "orbital_types.dat", "w") as handle:
            for s in ham.species:
                handle.write("  ".join(str(l) for l in ham.orbital_ls[s]) + "\n")
        R = np.unique(ham.atom_pairs[:, :3], axis=0)
        np.savetxt(tmp / "R_list.dat", R, fmt="%d")
        info = {"fermi_level": ham.fermi_energy_eV, "isspinful": False,
                "aiida_deeph": {"format_version": DOCK_FORMAT_VERSION, "num_electrons": ham.num_electrons,
                                "meta": ham.meta}}
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        for name, fname in (("hamiltonian", "hamiltonians.h5"), ("overlap", "overlaps.h5"),
                            ("density_matrix", "density_matrixs.h5")):
            data = getattr(ham, name)
            if data is None:
                continue
            with h5py.File(tmp / fname, "w") as h5:
                for p, row in enumerate(ham.atom_pairs):
                    key = f"[{row[0]}, {row[1]}, {row[2]}, {row[3] + 1}, {row[4] + 1}]"
                    h5.create_dataset(key, data=data[ham.offsets[p]:ham.offsets[p + 1]].reshape(ham.block_shape(p)))

    _atomic_write_dir(Path(folder), writer)
    return Path(folder)


def read_legacy(folder) -> PackedHamiltonian:
    import h5py

    folder = Path(folder)
    try:
        z = np.atleast_1d(np.loadtxt(folder / "element.dat", dtype=np.int64))
        positions = np.loadtxt(folder / "site_positions.dat").reshape(3, -1).T
        cell = np.loadtxt(folder / "lat.dat").reshape(3, 3).T
        orbital_lines = (folder / "orbital_types.dat").read_text().splitlines()
        info = json.loads((folder / "info.json").read_text())
    except (OSError, ValueError) as exc:
        raise DockFormatError(f"{folder}: not a readable legacy DeepH folder ({exc})") from None
    species = [z_to_symbol(x) for x in z]
    orbital_ls = {}
    for s, line in zip(species, orbital_lines):
        orbital_ls.setdefault(s, [int(x) for x in line.split()])
    rows, blocks = {}, {}
    for name, fname in (("hamiltonian", "hamiltonians.h5"), ("overlap", "overlaps.h5"),
                        ("density_matrix", "density_matrixs.h5")):
        if not (folder / fname).is_file():
            continue
        with h5py.File(folder / fname, "r") as h5:
            blocks[name] = {tuple(json.loads(k)): h5[k][()] for k in h5.keys()}
    if not blocks:
        raise DockFormatError(f"{folder}: no hamiltonians.h5 or overlaps.h5")
    keys = sorted(next(iter(blocks.values())).keys(), key=lambda r: (r[3], r[4], r[0], r[1], r[2]))
    atom_pairs = np.array([[r[0], r[1], r[2], r[3] - 1, r[4] - 1] for r in keys], dtype=np.int64)
    extra = info.get("aiida_deeph", {})
    ham = PackedHamiltonian(cell=cell, positions=positions, species=species, orbital_ls=orbital_ls,
                            atom_pairs=atom_pairs, offsets=np.zeros(len(keys) + 1),
                            fermi_energy_eV=info.get("fermi_level"), num_electrons=extra.get("num_electrons"),
                            meta=dict(extra.get("meta", {})))
    ham.offsets = PackedHamiltonian.offsets_for(atom_pairs, ham.norb_per_atom)
    for name, table in blocks.items():
        try:
            rows[name] = np.concatenate([np.asarray(table[k], dtype=np.float64).reshape(-1) for k in keys])
        except KeyError:
            raise DockFormatError(f"{folder}: the .h5 files hold different blocks") from None
        setattr(ham, name, rows[name])
    ham.validate()
    return ham


def write_hamiltonian_like(input_folder: Path, out_folder: Path, ham_pred) -> None:
    """Write ``out_folder/hamiltonian.h5`` from ``ham_pred`` with the exact atom_pairs order, chunk_boundaries and
    chunk_shapes of ``input_folder/overlap.h5`` (a prediction on exactly the input's pairs)."""
    import h5py

    with h5py.File(input_folder / "overlap.h5", "r") as h5:
        ap_in = h5["atom_pairs"][()].astype(np.int64)
        cb_in = h5["chunk_boundaries"][()].astype(np.int64)
        shapes_in = h5["chunk_shapes"][()] if "chunk_shapes" in h5 else None
    arrays = permute_orbitals(ham_pred, {"hamiltonian": ham_pred.hamiltonian})
    try:
        entries = arrays["hamiltonian"][pairs_gather_index(ham_pred.atom_pairs, ham_pred.offsets, ap_in)]
    except KeyError:
        raise ValueError(f"{input_folder}: atom_pairs of overlap.h5 do not match the structure read") from None
    if len(entries) != cb_in[-1]:
        raise ValueError(f"{input_folder}: chunk_boundaries of overlap.h5 do not match the orbital counts")
    from aiida_deeph.core.files import atomic_path

    with atomic_path(out_folder / "hamiltonian.h5") as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("atom_pairs", data=ap_in)
        h5.create_dataset("chunk_boundaries", data=cb_in)
        if shapes_in is not None:
            h5.create_dataset("chunk_shapes", data=shapes_in)
        h5.create_dataset("entries", data=entries.astype(np.float64))


def write_prediction_info(src: Path, dst: Path) -> None:
    """The input's info.json without its Fermi level: a DFT Fermi level does not belong to the prediction
    (the model's H has its own energy zero, H + dmu S); ``aiida-deeph bands`` then finds it from the electron
    count. The source of H is recorded (``aiida_deeph.meta.source``)."""

    info = json.loads(src.read_text())
    info.pop("fermi_energy_eV", None)
    extra = info.setdefault("aiida_deeph", {})
    extra["meta"] = dict(extra.get("meta", {}), source="DeepH-2 prediction")
    from aiida_deeph.core.files import write_json_atomic

    write_json_atomic(dst, info)


def is_dock_folder(path) -> bool:
    """A DeepH-dock structure folder (:func:`aiida_deeph.io.formats.is_dock`)."""
    from .formats import is_dock

    return is_dock(path)


__all__ = [
    "write_dock", "read_dock", "write_hamiltonian_like", "write_prediction_info", "write_legacy", "read_legacy", "is_dock_folder", "DockFormatError",
    "atom_orbital_permutation", "grouped_atom_order", "reorder_atoms", "symbol_to_z",
]
