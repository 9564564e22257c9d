"""Supercells of a Hamiltonian: tiling H(R), S(R) (and P(R)) of a cell onto a supercell is exact."""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.packed import PackedHamiltonian, bra_position_overlap


def supercell(ham: PackedHamiltonian, repeats) -> PackedHamiltonian:
    """Tile ``ham`` into an ``n1 x n2 x n3`` supercell, exactly (every block copied, no cutoff).

    Atom ``a`` of the cell at translation ``t`` becomes atom ``index(t) * N + a`` (t in row-major
    order over n1, n2, n3). Pair ``(R, i, j)`` from translation ``t`` lands on ``t + R = n R' + t'``:
    the supercell pair ``(R', (t, i), (t', j))`` with the same block. H(k_super) has the eigenvalues
    of H(k) at all k folding onto k_super.
    """
    n = np.array([int(x) for x in repeats], dtype=np.int64)
    if n.shape != (3,) or (n < 1).any():
        raise ValueError(f"supercell repeats must be three positive integers, got {repeats!r}")
    natom = ham.num_atoms
    trans = np.stack(np.meshgrid(np.arange(n[0]), np.arange(n[1]), np.arange(n[2]), indexing="ij"),
                     axis=-1).reshape(-1, 3)
    nt = len(trans)
    tindex = lambda t: (t[..., 0] * n[1] + t[..., 1]) * n[2] + t[..., 2]  # noqa: E731
    positions = (trans[:, None, :].astype(np.float64) @ ham.cell)[:, :, :] + ham.positions[None, :, :]
    species = list(ham.species) * nt
    ap = ham.atom_pairs
    target = trans[:, None, :] + ap[None, :, :3]            # (nt, P, 3)
    rnew = np.floor_divide(target, n)
    tnew = target - rnew * n
    inew = tindex(np.repeat(trans[:, None, :], len(ap), axis=1)) * natom + ap[None, :, 3]
    jnew = tindex(tnew) * natom + ap[None, :, 4]
    pairs = np.concatenate([rnew, inew[..., None], jnew[..., None]], axis=-1).reshape(-1, 5)
    norb = np.tile(ham.norb_per_atom, nt)
    offsets = PackedHamiltonian.offsets_for(pairs, norb)

    def tile(a):
        return None if a is None else np.tile(a, nt)

    position_matrix = None
    if ham.position_matrix is not None:
        # tile the bra-relative <i|r - tau_i|j,R> (translation invariant), then add tau_i' S for the images
        relative = ham.position_matrix - bra_position_overlap(ham.overlap, ap, ham.offsets, ham.positions)
        position_matrix = np.tile(relative, (nt, 1)) + bra_position_overlap(
            tile(ham.overlap), pairs, offsets, positions.reshape(-1, 3))
    meta = dict(ham.meta)
    meta["supercell"] = n.tolist()
    out = PackedHamiltonian(
        cell=ham.cell * n[:, None], positions=positions.reshape(-1, 3), species=species,
        orbital_ls={k: list(v) for k, v in ham.orbital_ls.items()}, atom_pairs=pairs, offsets=offsets,
        hamiltonian=tile(ham.hamiltonian), overlap=tile(ham.overlap), density_matrix=tile(ham.density_matrix),
        position_matrix=position_matrix, fermi_energy_eV=ham.fermi_energy_eV,
        num_electrons=None if ham.num_electrons is None else float(ham.num_electrons) * nt, meta=meta,
    )
    return out.sorted()
