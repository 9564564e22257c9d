"""Graphs of Hamiltonians for DeepH-2 (numpy + torch tensors; runs in data-loader workers): the super-basis
map of the elements, the nodes and edges of a structure with their targets, batching and device moves."""
from __future__ import annotations

import numpy as np
import torch

from aiida_deeph.core.constants import BOHR_TO_ANGSTROM

from .config import ModelConfig
from .harmonics import ls_from_multiplicity, orbital_count, orbital_positions


def basis_metadata(ham) -> tuple:
    """(orbital_ls, cutoff radius per element in Angstrom) of a PackedHamiltonian (rc from meta['basis'])."""
    rc = {}
    basis = (ham.meta or {}).get("basis") or {}
    for el, name in basis.items():
        try:
            from aiida_deeph.core.basis import parse_pao_basis

            rc[el] = parse_pao_basis(name).cutoff_bohr * BOHR_TO_ANGSTROM
        except Exception:  # pragma: no cover - unknown naming: fall back to distances
            pass
    return {el: list(ls) for el, ls in ham.orbital_ls.items()}, rc


# ------------------------------------------------------------------------------------------------
# graph preparation (numpy; runs in data-loader workers)
# ------------------------------------------------------------------------------------------------
class BasisMap:
    """Element -> index and orbital positions in the super-basis; refuses unknown elements/bases."""

    def __init__(self, config: ModelConfig):
        self.elements = list(config.elements)
        self.index = {el: k for k, el in enumerate(self.elements)}
        self.mult = config.multiplicity
        self.ls = {el: [int(l) for l in config.orbital_ls[el]] for el in self.elements}
        self.nsuper = orbital_count(ls_from_multiplicity(self.mult))
        self.positions = {el: orbital_positions(self.ls[el], self.mult) for el in self.elements}

    def check(self, ham) -> None:
        for el in dict.fromkeys(ham.species):
            if el not in self.index:
                raise ValueError(f"element {el} is not known to this model (trained on {' '.join(self.elements)})")
            if [int(l) for l in ham.orbital_ls[el]] != self.ls[el]:
                raise ValueError(
                    f"element {el} has basis l = {list(ham.orbital_ls[el])}, the model was trained with {self.ls[el]}"
                )


def prepare_graph(ham, basis: BasisMap, with_targets: bool = True, with_kspace: bool = False) -> dict:
    """PackedHamiltonian -> dict of tensors for the model (one structure).

    ``with_kspace`` adds what the band loss (:func:`aiida_deeph.ml.loss.band_loss`) needs to build H(k)
    and S(k): each entry's row and column orbital (``entry_row``, ``entry_col``, within the structure),
    each pair's lattice vector ``pair_R``, ``num_orbitals`` and the Fermi level ``fermi`` (NaN if unknown).
    """
    basis.check(ham)
    ap = np.asarray(ham.atom_pairs, dtype=np.int64)
    P = len(ap)
    N = ham.num_atoms
    species_idx = np.array([basis.index[s] for s in ham.species], dtype=np.int64)
    onsite = (ap[:, 0] == 0) & (ap[:, 1] == 0) & (ap[:, 2] == 0) & (ap[:, 3] == ap[:, 4])
    edge_rows = np.nonzero(~onsite)[0]
    E = len(edge_rows)
    # reverse edge (j, i, -R) for symmetrisation
    key = {tuple(r): k for k, r in enumerate(ap[edge_rows].tolist())}
    rev = np.array([key.get((-r[0], -r[1], -r[2], r[4], r[3]), -1) for r in ap[edge_rows].tolist()], dtype=np.int64)
    # block id of every pair: on-site -> atom index (kind 0), hopping -> edge number (kind 1)
    pair_kind = (~onsite).astype(np.int64)
    pair_id = np.where(onsite, ap[:, 3], 0)
    pair_id[edge_rows] = np.arange(E)
    # flat entry -> (pair, row*ns+col in the super-basis block)
    ns = basis.nsuper
    norb = ham.norb_per_atom
    offsets = np.asarray(ham.offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    pair_of_entry = np.repeat(np.arange(P), sizes)
    local = np.arange(int(offsets[-1])) - offsets[:-1][pair_of_entry]
    ncol = norb[ap[pair_of_entry, 4]]
    row, col = local // ncol, local % ncol
    pos_list = [basis.positions[s] for s in ham.species]
    # vectorised: per atom positions padded
    maxn = max(len(p) for p in pos_list)
    pos_tab = np.zeros((N, maxn), dtype=np.int64)
    for a, p in enumerate(pos_list):
        pos_tab[a, :len(p)] = p
    entry_local = pos_tab[ap[pair_of_entry, 3], row] * ns + pos_tab[ap[pair_of_entry, 4], col]
    g = {
        "species": torch.from_numpy(species_idx),
        "pos": torch.from_numpy(np.array(ham.positions, dtype=np.float64)),
        "cell": torch.from_numpy(np.array(ham.cell, dtype=np.float64)),
        "edge_R": torch.from_numpy(ap[edge_rows, :3].copy()),
        "edge_dst": torch.from_numpy(ap[edge_rows, 3].copy()),
        "edge_src": torch.from_numpy(ap[edge_rows, 4].copy()),
        "edge_rev": torch.from_numpy(rev),
        "pair_kind": torch.from_numpy(pair_kind),
        "pair_id": torch.from_numpy(pair_id),
        "pair_i": torch.from_numpy(ap[:, 3].copy()),
        "pair_j": torch.from_numpy(ap[:, 4].copy()),
        "entry_pair": torch.from_numpy(pair_of_entry),
        "entry_local": torch.from_numpy(entry_local),
        "num_atoms": torch.tensor([N]),
        "num_edges": torch.tensor([E]),
        "num_pairs": torch.tensor([P]),
        "num_entries": torch.tensor([int(offsets[-1])]),
    }
    if with_kspace:
        first = np.concatenate([[0], np.cumsum(norb)[:-1]])
        g["entry_row"] = torch.from_numpy(first[ap[pair_of_entry, 3]] + row)
        g["entry_col"] = torch.from_numpy(first[ap[pair_of_entry, 4]] + col)
        g["pair_R"] = torch.from_numpy(ap[:, :3].copy())
        g["num_orbitals"] = torch.tensor([int(norb.sum())])
        fermi = ham.fermi_energy_eV
        g["fermi"] = torch.tensor([float(fermi) if fermi is not None and np.isfinite(fermi) else np.nan],
                                  dtype=torch.float64)
    if with_targets:
        if ham.hamiltonian is not None:
            g["H"] = torch.from_numpy(np.asarray(ham.hamiltonian, dtype=np.float64))
    if ham.overlap is not None:
        g["S"] = torch.from_numpy(np.asarray(ham.overlap, dtype=np.float64))
    return g


def collate_graphs(graphs: list) -> dict:
    """Concatenate prepared graphs into one batch (indices shifted; ``*_batch`` vectors added)."""
    if len(graphs) == 1:
        g = dict(graphs[0])
        g["cell"] = g["cell"][None]
        g["node_batch"] = torch.zeros(int(g["num_atoms"][0]), dtype=torch.long)
        g["edge_batch"] = torch.zeros(int(g["num_edges"][0]), dtype=torch.long)
        g["entry_batch"] = torch.zeros(int(g["num_entries"][0]), dtype=torch.long)
        return g
    out: dict = {}
    n_off = e_off = p_off = 0
    lists: dict = {k: [] for k in graphs[0]}
    nb, eb, xb = [], [], []
    for b, g in enumerate(graphs):
        N, E, P = int(g["num_atoms"][0]), int(g["num_edges"][0]), int(g["num_pairs"][0])
        for k, v in g.items():
            if k in ("edge_dst", "edge_src", "pair_i", "pair_j"):
                v = v + n_off
            elif k == "edge_rev":
                v = torch.where(v >= 0, v + e_off, v)
            elif k == "pair_id":
                v = torch.where(g["pair_kind"] == 1, v + e_off, v + n_off)
            elif k == "entry_pair":
                v = v + p_off
            elif k == "cell":
                v = v[None]
            lists[k].append(v)
        nb.append(torch.full((N,), b, dtype=torch.long))
        eb.append(torch.full((E,), b, dtype=torch.long))
        xb.append(torch.full((int(g["num_entries"][0]),), b, dtype=torch.long))
        n_off, e_off, p_off = n_off + N, e_off + E, p_off + P
    for k, v in lists.items():
        out[k] = torch.cat(v, 0)
    out["node_batch"], out["edge_batch"], out["entry_batch"] = torch.cat(nb), torch.cat(eb), torch.cat(xb)
    return out


def graph_to(g: dict, device=None, dtype=None) -> dict:
    out = {}
    for k, v in g.items():
        if torch.is_floating_point(v):
            out[k] = v.to(device=device, dtype=dtype or v.dtype)
        else:
            out[k] = v.to(device=device)
    return out


