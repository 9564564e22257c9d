"""Band solver and ``aiida-deeph bands``: OpenMX's .Band reproduced, Fermi level, gaps, k-paths,
sparse shift-invert vs dense, ill-conditioned S and bad input (pure: no aiida)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aiida_deeph.core.lattice import cartesian_to_fractional
from aiida_deeph.core.packed import PackedHamiltonian
from aiida_deeph.io.dock import write_dock
from aiida_deeph.io.openmx import load_openmx_run, read_text
from aiida_deeph.io.openmx_band import read_band
from aiida_deeph.io.openmx_out import parse_out_eigenvalues
from aiida_deeph.physics.bands import band_energies, band_energies_window, fermi_level, solve_bands
from aiida_deeph.physics.fermi import BandsError, band_gap, monkhorst_pack
from aiida_deeph.physics.kpath import KpathError, auto_kpath, read_kpoints_file, write_kpoints_file
from aiida_deeph.physics.supercell import supercell

from .conftest import corpus_dir, corpus_ids_with_band

# a metal, a small-gap and a wide-gap semiconductor, an 8-atom cell, a 9-atom oxide
BAND_CASES = [m for m in ("mp-22297", "mp-2534", "mp-1943", "mp-7000", "mp-79") if m in corpus_ids_with_band()]
_CACHE: dict = {}


def corpus_ham(mp_id) -> PackedHamiltonian:
    if mp_id not in _CACHE:
        _CACHE[mp_id] = load_openmx_run(corpus_dir() / mp_id)
    return _CACHE[mp_id].copy()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aiida_deeph.cli.main", "bands", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def duplicate_atom(ham: PackedHamiltonian, a: int, shift=(0.0, 0.0, 0.0)) -> PackedHamiltonian:
    """``ham`` plus a copy of atom ``a`` carrying exactly the same basis functions: S(k) becomes singular."""
    new = ham.num_atoms
    rows, blocks = [], []
    for p, (r1, r2, r3, i, j) in enumerate(ham.atom_pairs.tolist()):
        for ii in ([i, new] if i == a else [i]):
            for jj in ([j, new] if j == a else [j]):
                rows.append([r1, r2, r3, ii, jj])
                blocks.append(p)
    blocks = np.array(blocks)
    species = list(ham.species) + [ham.species[a]]
    norb = np.array([sum(2 * l + 1 for l in ham.orbital_ls[s]) for s in species])
    pairs = np.array(rows, dtype=np.int64)
    offsets = PackedHamiltonian.offsets_for(pairs, norb)
    gather = np.concatenate([np.arange(ham.offsets[p], ham.offsets[p + 1]) for p in blocks])
    out = PackedHamiltonian(
        cell=ham.cell, positions=np.vstack([ham.positions, ham.positions[a] + np.asarray(shift)]), species=species,
        orbital_ls=ham.orbital_ls, atom_pairs=pairs, offsets=offsets, hamiltonian=ham.hamiltonian[gather],
        overlap=ham.overlap[gather], fermi_energy_eV=ham.fermi_energy_eV, num_electrons=ham.num_electrons,
    )
    out.validate()
    return out.sorted()


# ---------------------------------------------------------------------- the CLI against OpenMX's .Band
@pytest.mark.parametrize("mp_id", BAND_CASES)
def test_cli_reproduces_openmx_band(mp_id, tmp_path):
    ham = corpus_ham(mp_id)
    band = read_band(corpus_dir() / mp_id / "openmx.Band")
    folder = write_dock(ham, tmp_path / mp_id)
    kfile = tmp_path / "k.txt"
    write_kpoints_file(kfile, band["kpoints"], comment=f"{mp_id} .Band k-points")
    out = tmp_path / "bands.json"
    proc = run_cli("--input", folder, "--kpoints", kfile, "--output", out, "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    eig = np.array(data["eigenvalues_eV"], dtype=float)
    ref = band["eigenvalues"]
    assert eig.shape == (len(ref), ham.num_orbitals) and ref.shape[1] <= eig.shape[1]
    assert np.all(np.diff(eig, axis=1) >= -1e-12)
    assert np.abs(eig[:, : ref.shape[1]] - ref).max() < 1e-4
    np.testing.assert_allclose(np.array(data["kpoints"]), band["kpoints"], atol=1e-12)
    assert data["fermi_source"] == "info.json"
    assert abs(data["fermi_energy_eV"] - band["fermi_energy"]) < 1e-6
    assert data["dropped_s_eigenvectors"] == 0 and data["min_s_eigenvalue"] > 1e-7
    assert data["solver"] == "dense"
    assert data["band_gap_path_eV"] == pytest.approx(band_gap(ref, band["fermi_energy"])["gap_eV"], abs=1e-4)
    assert data["band_gap_eV"] <= data["band_gap_path_eV"] + 1e-9 and data["gap_over"].endswith("k-mesh")


def test_cli_auto_kpath_and_fermi_from_electron_count(tmp_path):
    mp_id = "mp-2534"  # GaAs: zinc blende, small gap
    ham = corpus_ham(mp_id)
    ham.fermi_energy_eV = None  # as a predicted Hamiltonian without a Fermi level
    ham.num_electrons = None    # electrons from the basis table's valence
    folder = write_dock(ham, tmp_path / mp_id)
    out = tmp_path / "bands.json"
    proc = run_cli("--input", folder, "--kpath", "auto", "--output", out, "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["fermi_source"] == "electron count"
    assert data["fermi_level"]["num_electrons"] == 28.0
    assert data["fermi_level"]["kmesh"] == [7, 7, 7]
    ef_openmx = corpus_ham(mp_id).fermi_energy_eV
    assert abs(data["fermi_energy_eV"] - ef_openmx) < 3e-3
    labels = dict((i, lab) for i, lab in data["labels"])
    assert labels[0] == "GAMMA" and set(labels.values()) >= {"GAMMA", "X", "L"}
    k = np.array(data["kpoints"])
    assert np.allclose(k[0], 0.0)
    eig = np.array(data["eigenvalues_eV"])
    assert eig.shape == (len(k), ham.num_orbitals)
    # the path's eigenvalues straight from the solver
    np.testing.assert_allclose(eig[::20], band_energies(corpus_ham(mp_id), k[::20], threads=1).eigenvalues, atol=1e-9)
    assert 0.1 < data["band_gap_eV"] < 1.0 and data["band_gap_path"]["direct"]


# ---------------------------------------------------------------------- Fermi level and gaps
def test_monkhorst_pack_is_openmx_mesh():
    for mp_id in ("mp-10172", "mp-1700"):  # 7x7x4 and 8x8x8
        text = read_text(corpus_dir() / mp_id / "openmx.out.xz")
        kpts, _ = parse_out_eigenvalues(text)
        grid = [int(x) for x in (corpus_dir() / mp_id / "openmx.dat").read_text().split("scf.Kgrid")[1].split()[:3]]
        ours, weights = monkhorst_pack(grid)
        assert len(ours) == len(kpts) and abs(weights.sum() - 1) < 1e-12
        key = lambda arr: {tuple(np.round(x, 5)) for x in arr}  # noqa: E731
        assert key(ours) | key(-ours) == key(kpts) | key(-kpts)
        full, _ = monkhorst_pack(grid, time_reversal=False)
        assert len(full) == np.prod(grid) and np.isclose(full.min(), -0.5 + 1 / (2 * max(grid)), atol=1e-5)


@pytest.mark.parametrize("mp_id", ["mp-134", "mp-30", "mp-79", "mp-10683", "mp-22297"])
def test_fermi_level_metals_match_openmx(mp_id):
    ham = corpus_ham(mp_id)
    res = fermi_level(ham, threads=1)
    assert res["is_metal"]
    assert abs(res["fermi_energy_eV"] - ham.fermi_energy_eV) < 2e-3, res


@pytest.mark.parametrize("mp_id", ["mp-1700", "mp-2534", "mp-22862"])
def test_fermi_level_insulators_in_the_gap(mp_id):
    ham = corpus_ham(mp_id)
    ef_openmx = ham.fermi_energy_eV
    ham.num_electrons = None
    res = fermi_level(ham, threads=1)
    assert res["electrons_source"].startswith("basis table")
    assert res["num_electrons"] == corpus_ham(mp_id).num_electrons
    assert not res["is_metal"] and res["gap_eV"] > 0.2
    assert res["vbm_eV"] < res["fermi_energy_eV"] < res["cbm_eV"]
    assert res["vbm_eV"] < ef_openmx < res["cbm_eV"]  # OpenMX's own level lies in the same gap


def test_fermi_level_wide_gap_is_mid_gap():
    """In a wide gap the bisection's count is flat: the level must be the intrinsic one, not the VBM or CBM."""
    from aiida_deeph.physics.fermi import fermi_from_eigenvalues

    assert fermi_from_eigenvalues(np.array([[-1.0, 1.0]]), [1.0], 2.0) == pytest.approx(0.0, abs=1e-12)
    assert fermi_from_eigenvalues(np.array([[-3.0, 4.0]]), [1.0], 2.0) == pytest.approx(0.5, abs=1e-12)
    # twice as many conduction states: mu = mid-gap - kT/2 ln 2
    kt = 8.617333262e-5 * 300.0
    mu = fermi_from_eigenvalues(np.array([[-1.0, 1.0, 1.0]]), [1.0], 2.0)
    assert mu == pytest.approx(-0.5 * kt * np.log(2.0), abs=1e-9)
    mp_id = "mp-22862"  # NaCl: DFT gap ~5 eV
    res = fermi_level(corpus_ham(mp_id), threads=1)
    mid = 0.5 * (res["vbm_eV"] + res["cbm_eV"])
    assert res["gap_eV"] > 4.0 and abs(res["fermi_energy_eV"] - mid) < 0.1, res


def test_band_gap_cases():
    g = band_gap(np.array([[-2.0, -0.5, 1.0, 2.0], [-2.5, -1.0, 0.8, 3.0]]), 0.0)
    assert not g["is_metal"] and g["gap_eV"] == pytest.approx(1.3) and not g["direct"]
    assert (g["vbm_k_index"], g["cbm_k_index"]) == (0, 1) and g["direct_gap_eV"] == pytest.approx(1.5)
    g = band_gap(np.array([[-2.0, -1.0, 1.0], [-2.0, -0.5, 0.8]]), 0.0)
    assert g["direct"] and g["gap_eV"] == pytest.approx(1.3) and g["vbm_k_index"] == g["cbm_k_index"] == 1
    g = band_gap(np.array([[-2.0, -1.0, 1.0], [-2.0, 0.2, 0.8]]), 0.0)  # a band crosses E_F
    assert g["is_metal"] and g["gap_eV"] == 0.0
    g = band_gap(np.array([[-2.0, -1.0, np.nan], [-2.0, -0.9, 0.8]]), 0.0)  # NaN (dropped) ignored
    assert not g["is_metal"] and g["gap_eV"] == pytest.approx(1.7)


# ---------------------------------------------------------------------- supercells, sparse vs dense
def test_supercell_folds_exactly_and_sparse_window_equals_dense():
    ham = corpus_ham("mp-10683")  # Ca, 1 atom, 14 orbitals -> 27 atoms, 378 orbitals
    big = supercell(ham, (3, 3, 3))
    big.validate()
    assert big.num_atoms == 27 and big.num_orbitals == 27 * ham.num_orbitals
    assert big.num_pairs == 27 * ham.num_pairs and big.num_electrons == 27 * ham.num_electrons
    folded = np.array([[a / 3, b / 3, c / 3] for a in range(3) for b in range(3) for c in range(3)])
    small = np.sort(band_energies(ham, folded + [0.03, 0.06, 0.09], threads=1).eigenvalues.ravel())
    kbig = np.array([[0.09, 0.18, 0.27]])
    dense = band_energies(big, kbig, threads=1).eigenvalues[0]
    np.testing.assert_allclose(dense, small, atol=1e-9)

    ef = ham.fermi_energy_eV
    win = band_energies_window(big, kbig, emin=ef - 1.5, emax=ef + 1.5, solver="sparse", threads=1)
    ref = dense[(dense >= ef - 1.5) & (dense <= ef + 1.5)]
    assert win.solver == "sparse" and len(ref) > 10
    assert len(win.eigenvalues[0]) == len(ref)
    assert np.abs(win.eigenvalues[0] - ref).max() < 1e-8

    nb = band_energies_window(big, kbig, num_bands=12, sigma=ef, solver="sparse", threads=1)
    i = np.searchsorted(dense, ef, side="right")
    assert np.abs(nb.eigenvalues[0] - dense[i - 6:i + 6]).max() < 1e-8
    dn = band_energies_window(big, kbig, num_bands=12, sigma=ef, solver="dense", threads=1)
    assert np.abs(dn.eigenvalues[0] - nb.eigenvalues[0]).max() < 1e-8

    # automatic choice by orbital count
    res, solver = solve_bands(big, kbig, num_bands=12, dense_max_orbitals=100)
    assert solver == "sparse"
    res, solver = solve_bands(big, kbig)
    assert solver == "dense" and len(res.eigenvalues[0]) == big.num_orbitals


# ---------------------------------------------------------------------- ill-conditioned S, bad input
def test_near_singular_overlap_is_reported_not_fatal(tmp_path):
    ham = corpus_ham("mp-2534")
    dup = duplicate_atom(ham, 0, shift=(1e-6, 0.0, 0.0))
    k = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    ref = band_energies(ham, k, threads=1).eigenvalues
    res = band_energies(dup, k, threads=1)
    norb0 = ham.norb_per_atom[0]
    assert np.all(res.dropped == norb0) and res.min_s_eigenvalue < 1e-7
    finite = res.eigenvalues[:, : ham.num_orbitals]
    assert np.all(np.isnan(res.eigenvalues[:, ham.num_orbitals:]))
    assert np.abs(finite - ref).max() < 1e-5
    # the sparse solver detects it (inertia of S - t) and falls back to the orthogonalised dense solve
    win = band_energies_window(dup, k[1:], num_bands=8, solver="sparse", threads=1)
    assert win.dropped[0] == norb0
    ef = ham.fermi_energy_eV
    i = np.searchsorted(ref[1], ef, side="right")
    assert np.abs(win.eigenvalues[0] - ref[1][i - 4:i + 4]).max() < 1e-5
    # and the CLI says so in its JSON
    folder = write_dock(dup, tmp_path / "dup")
    kfile = tmp_path / "k.txt"
    write_kpoints_file(kfile, k)
    from aiida_deeph.cli.main import main

    assert main(["bands", "--input", str(folder), "--kpoints", str(kfile), "--output", str(tmp_path / "b.json"),
                 "--quiet", "--threads", "1"]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["dropped_s_eigenvectors"] == norb0 and data["min_s_eigenvalue"] < 1e-7
    assert data["eigenvalues_eV"][0][-1] is None


def test_nan_input_is_a_clear_error(tmp_path, capsys):
    ham = corpus_ham("mp-2534")
    ham.hamiltonian[7] = np.nan
    with pytest.raises(BandsError, match="NaN/Inf"):
        band_energies(ham, [[0, 0, 0]])
    with pytest.raises(BandsError, match="NaN/Inf"):
        band_energies_window(ham, [[0, 0, 0]], num_bands=4)
    folder = write_dock(ham, tmp_path / "nan")
    from aiida_deeph.cli.main import main

    assert main(["bands", "--input", str(folder), "--output", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN/Inf" in err and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()


def test_missing_hamiltonian_is_a_clear_error(tmp_path, capsys):
    folder = write_dock(corpus_ham("mp-2534"), tmp_path / "s-only", include=("overlap",))
    from aiida_deeph.cli.main import main

    assert main(["bands", "--input", str(folder), "--output", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hamiltonian.h5" in err
    bad = tmp_path / "k.txt"
    bad.write_text("0 0 0\n0.5 x 0\n")
    full = write_dock(corpus_ham("mp-2534"), tmp_path / "full")
    assert main(["bands", "--input", str(full), "--kpoints", str(bad), "--output", str(tmp_path / "b.json")]) == 1
    assert "k.txt:2" in capsys.readouterr().err


# ---------------------------------------------------------------------- k-paths
def test_read_kpoints_file(tmp_path):
    path = tmp_path / "k.txt"
    path.write_text("# a path\n0 0 0   # Gamma\n\n0.5 0.0 0.0 1.0 X\n  0.5 0.5 0\n")
    np.testing.assert_array_equal(read_kpoints_file(path), [[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0]])
    path.write_text("# nothing\n")
    with pytest.raises(KpathError, match="no k-points"):
        read_kpoints_file(path)
    with pytest.raises(KpathError, match="not found"):
        read_kpoints_file(tmp_path / "missing.txt")


@pytest.mark.parametrize("mp_id", ["mp-1700", "mp-92", "mp-1943"])
def test_auto_kpath_is_in_the_input_cells_basis(mp_id):
    """seekpath's (rotated, re-based) standardized path converted to the input cell: checked against
    seekpath's own original-cell coordinates and by re-basing H(R) onto the standardized cell."""
    import seekpath

    ham = corpus_ham(mp_id)
    path = auto_kpath(ham.cell, ham.positions, ham.species)
    k = path["kpoints"]
    assert np.allclose(k[0], 0.0) and path["labels"][0] == (0, "GAMMA")
    frac = ham.positions @ np.linalg.inv(ham.cell)
    orig = seekpath.get_path_orig_cell((ham.cell, frac, ham.atomic_numbers.tolist()))
    for index, label in path["labels"]:
        np.testing.assert_allclose(k[index], orig["point_coords"][label], atol=1e-10)
    np.testing.assert_allclose(cartesian_to_fractional(path["kpoints_cartesian"], ham.cell), k, atol=1e-12)
    # Re-base onto seekpath's primitive cell (un-rotated): A' = M A with M integer unimodular; then
    # R' = R M^-1 and H'(k') at seekpath's own fractional k' must equal H(k) at our converted k.
    a_std = path["primitive_lattice"] @ path["rotation_matrix"]
    m = a_std @ np.linalg.inv(ham.cell)
    mi = np.rint(m)
    assert np.allclose(m, mi, atol=1e-6) and abs(abs(np.linalg.det(mi)) - 1) < 1e-9
    rebased = ham.copy()
    rebased.cell = a_std
    rebased.atom_pairs[:, :3] = np.rint(ham.atom_pairs[:, :3] @ np.linalg.inv(mi)).astype(np.int64)
    pick = np.linspace(0, len(k) - 1, 5).astype(int)
    mine = band_energies(ham, k[pick], threads=1).eigenvalues
    theirs = band_energies(rebased, path["kpoints_standardized"][pick], threads=1).eigenvalues
    np.testing.assert_allclose(mine, theirs, atol=1e-8)
    # and a k-point shifted by a reciprocal lattice vector of the input cell is equivalent
    shifted = band_energies(ham, k[pick] + [1, -1, 2], threads=1).eigenvalues
    np.testing.assert_allclose(mine, shifted, atol=1e-8)


def test_batched_small_cell_solver_equals_per_k(monkeypatch):
    """The stacked all-k solver of small cells gives the per-k solver's eigenvalues, also where S(k)
    directions are dropped (those k-points fall back to the per-k path)."""
    import aiida_deeph.physics.bands as bands_mod

    ham = corpus_ham("mp-22862")          # 27 orbitals: batched by default
    k, _ = monkhorst_pack([4, 4, 4])
    for s_threshold in (1e-7, 5e-3):      # smallest S(k) eigenvalue ~1.9e-3: the second drops some
        batched = band_energies(ham, k, s_threshold=s_threshold)
        monkeypatch.setattr(bands_mod, "BATCHED_MAX_ORBITALS", 0)
        per_k = band_energies(ham, k, s_threshold=s_threshold, threads=1)
        monkeypatch.undo()
        np.testing.assert_array_equal(batched.dropped, per_k.dropped)
        np.testing.assert_allclose(batched.eigenvalues, per_k.eigenvalues, atol=1e-9, equal_nan=True)
    assert per_k.dropped.max() > 0
