"""Physics as tests: eigenvalues rebuilt from parsed H/S equal OpenMX's own.

For every corpus run with an ``openmx.Band`` file the DeepH-dock folder written by the converter is
read back by a small independent reader (h5py + numpy only, dock orbital order, no aiida-deeph code)
and by our own reader; both must reproduce OpenMX's band eigenvalues at full-precision k.
"""
import json

import h5py
import numpy as np
import pytest
import scipy.linalg as sla

from aiida_deeph.core.constants import HARTREE_TO_EV
from aiida_deeph.io.dock import read_dock, write_dock
from aiida_deeph.io.openmx import load_openmx_run, read_text
from aiida_deeph.io.openmx_band import read_band
from aiida_deeph.io.openmx_out import parse_out_eigenvalues
from aiida_deeph.physics.bands import band_energies

from .conftest import corpus_dir, corpus_ids, corpus_ids_with_band


def independent_hk(folder, k):
    """H(k), S(k) straight from a DeepH-dock folder: sum_R exp(+2 pi i k.R) M(R)."""
    info = json.loads((folder / "info.json").read_text())
    lines = (folder / "POSCAR").read_text().split("\n")
    elements, counts = lines[5].split(), [int(c) for c in lines[6].split()]
    species = [e for e, c in zip(elements, counts) for _ in range(c)]
    norb = np.array([sum(2 * l + 1 for l in info["elements_orbital_map"][s]) for s in species])
    start = np.concatenate([[0], np.cumsum(norb)])
    assert info["orbits_quantity"] == start[-1] and info["atoms_quantity"] == len(species)
    out = []
    for name in ("hamiltonian.h5", "overlap.h5"):
        with h5py.File(folder / name, "r") as h5:
            pairs, bounds, shapes, entries = (h5[x][()] for x in ("atom_pairs", "chunk_boundaries", "chunk_shapes", "entries"))
        m = np.zeros((start[-1], start[-1]), dtype=complex)
        for (r1, r2, r3, i, j), b0, b1, shape in zip(pairs, bounds[:-1], bounds[1:], shapes):
            assert tuple(shape) == (norb[i], norb[j])
            m[start[i]:start[i + 1], start[j]:start[j + 1]] += np.exp(2j * np.pi * np.dot(k, (r1, r2, r3))) * entries[b0:b1].reshape(shape)
        out.append(m)
    return out


@pytest.mark.parametrize("mp_id", corpus_ids_with_band())
def test_band_eigenvalues_match_openmx(mp_id, tmp_path):
    run = corpus_dir() / mp_id
    ham = load_openmx_run(run)
    band = read_band(run / "openmx.Band")
    ref = band["eigenvalues"]
    folder = write_dock(ham, tmp_path / mp_id)

    # 1. our own path: dock folder -> packed -> H(k), S(k)
    back = read_dock(folder)
    ours = band_energies(back, band["kpoints"], threads=1)
    assert not ours.dropped.any()
    nb = ref.shape[1]
    diff = np.abs(ours.eigenvalues[:, :nb] - ref)
    ef = ham.fermi_energy_eV
    low = ref < ef + 50.0
    assert diff.max() < 1e-4, f"max |de| {diff.max():.2e} eV"
    assert diff[low].max() < 1e-5, f"max |de| below E_F+50 eV {diff[low].max():.2e} eV"
    assert abs(band["fermi_energy"] - ef) < 1e-9

    # 2. an independent reader of the dock folder, at a few k-points
    for idx in np.linspace(0, len(band["kpoints"]) - 1, 4).astype(int):
        hk, sk = independent_hk(folder, band["kpoints"][idx])
        e = sla.eigh(hk, sk, eigvals_only=True)[:nb]
        assert np.abs(e - ref[idx]).max() < 1e-4


@pytest.mark.parametrize("mp_id", corpus_ids())
def test_scf_eigenvalues_match_out(mp_id):
    """The .out SCF eigenvalues (k printed to 5 decimals) within 1 meV up to 10 eV above E_F."""
    run = corpus_dir() / mp_id
    ham = load_openmx_run(run)
    kpts, eig_ha = parse_out_eigenvalues(read_text(run / "openmx.out.xz"))
    ref = eig_ha * HARTREE_TO_EV
    # use a subset of k-points to keep the test fast
    sel = np.unique(np.linspace(0, len(kpts) - 1, min(len(kpts), 6)).astype(int))
    ours = band_energies(ham, kpts[sel], threads=1).eigenvalues[:, : ref.shape[1]]
    window = ref[sel] < ham.fermi_energy_eV + 10.0
    assert np.abs(ours - ref[sel])[window].max() < 1e-3
