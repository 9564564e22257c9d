"""Properties from H and S: position matrices from the .scfout, the density of states (issue 14)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from aiida_deeph.cli.main import main
from aiida_deeph.io.dock import read_dock, write_dock
from aiida_deeph.io.openmx import load_openmx_run
from aiida_deeph.physics.bands import band_energies
from aiida_deeph.physics.dos import DosError, density_of_states, integrated
from aiida_deeph.physics.kspace import KSpaceError, gamma_mesh
from aiida_deeph.physics.supercell import supercell

from .conftest import corpus_dir


def _run(mp_id, **kw):
    return load_openmx_run(corpus_dir() / mp_id, **kw)


@pytest.fixture(scope="module")
def nacl():
    return _run("mp-22862", load_position_matrix=True)


def _hermiticity_error(ham) -> tuple:
    """max |P_ij(R) - P_ji(-R) - R S_ji(-R)| (what <i,0|r|j,R> = <j,R|r|i,0> demands) and max |P|."""
    index = ham.pair_index() if callable(ham.pair_index) else ham.pair_index
    worst = 0.0
    for p, (r1, r2, r3, i, j) in enumerate(ham.atom_pairs):
        q = index[(-r1, -r2, -r3, j, i)]
        rcart = np.array([r1, r2, r3]) @ ham.cell
        a = ham.position_matrix[ham.offsets[p]:ham.offsets[p + 1]].reshape(*ham.block_shape(p), 3)
        b = ham.position_matrix[ham.offsets[q]:ham.offsets[q + 1]].reshape(*ham.block_shape(q), 3).transpose(1, 0, 2)
        s = ham.overlap[ham.offsets[q]:ham.offsets[q + 1]].reshape(ham.block_shape(q)).T
        worst = max(worst, float(np.abs(a - b - rcart * s[..., None]).max()))
    return worst, float(np.abs(ham.position_matrix).max())


def test_position_matrix_is_the_absolute_hermitian_r(nacl):
    """OpenMX's OLPpo is bra-relative; made absolute (+ tau_i S) it obeys <i,0|r|j,R> = <j,R|r|i,0>, to the
    accuracy of OpenMX's real-space grid (measured 4e-4 A); the bra-relative values would miss by tau."""
    assert nacl.position_matrix.shape == (nacl.num_entries, 3)
    worst, scale = _hermiticity_error(nacl)
    assert worst < 2e-3 and scale > 1.0
    # on-site diagonal <i|r|i> is the atom's position (a centred, normalised orbital)
    onsite = next(p for p, r in enumerate(nacl.atom_pairs) if r[3] == r[4] == 1 and not r[:3].any())
    block = nacl.position_matrix[nacl.offsets[onsite]:nacl.offsets[onsite + 1]].reshape(*nacl.block_shape(onsite), 3)
    np.testing.assert_allclose(block[0, 0], nacl.positions[1], atol=2e-3)


def test_position_matrix_survives_dock_packed_and_supercell(nacl, tmp_path):
    write_dock(nacl, tmp_path / "dock", include=("hamiltonian", "overlap", "position_matrix"))
    back = read_dock(tmp_path / "dock")
    np.testing.assert_array_equal(back.position_matrix, nacl.position_matrix)
    nacl.save(tmp_path / "p.h5")
    np.testing.assert_array_equal(type(nacl).load(tmp_path / "p.h5").position_matrix, nacl.position_matrix)
    big = supercell(nacl, (2, 1, 1))
    worst, _ = _hermiticity_error(big)
    assert worst < 2e-3
    # bra atom in image t (t * a1 from home): the same block shifted by t a1 S
    index = big.pair_index() if callable(big.pair_index) else big.pair_index
    natom = nacl.num_atoms
    for p0 in range(0, nacl.num_pairs, 7):
        r1, r2, r3, i, j = (int(x) for x in nacl.atom_pairs[p0])
        for t in (0, 1):
            target = t + r1
            q = index[(target // 2, r2, r3, t * natom + i, (target % 2) * natom + j)]
            want = (nacl.position_matrix[nacl.offsets[p0]:nacl.offsets[p0 + 1]]
                    + t * nacl.overlap[nacl.offsets[p0]:nacl.offsets[p0 + 1], None] * nacl.cell[0])
            np.testing.assert_allclose(big.position_matrix[big.offsets[q]:big.offsets[q + 1]], want, atol=1e-12)


def test_convert_position_matrix_cli(tmp_path, capsys):
    out = tmp_path / "si"
    assert main(["convert", "openmx", str(corpus_dir() / "mp-1550"), str(out), "--position-matrix"]) == 0
    import h5py

    with h5py.File(out / "position_matrix.h5") as h5:
        assert h5["entries"].shape[0] == 3 and h5["atom_pairs"].shape[1] == 5
    assert main(["convert", "openmx", str(corpus_dir() / "mp-1550"), str(tmp_path / "leg"), "--format", "legacy",
                 "--position-matrix"]) != 0
    assert "not in 'legacy'" in capsys.readouterr().err


PAO_DIR = corpus_dir().parent / "openmx-data" / "PAO"


@pytest.mark.parametrize("mp_id", ["mp-22862", "mp-2534"])          # NaCl; GaAs (d shells on both atoms)
def test_position_matrix_from_the_pao_files_matches_openmx(mp_id):
    """P(R) without DFT (two-centre integrals of r, as for S) against OpenMX's OLPpo (real-space grid):
    the same to OpenMX's grid error, and hermitian to the radial quadrature's error (4e-7 A), 1000x closer
    than OpenMX's own values (4e-4 A)."""
    from aiida_deeph.core.packed import entry_gather_index
    from aiida_deeph.overlap import compute_overlap

    ref = _run(mp_id, load_position_matrix=True)
    ours = compute_overlap(ref.cell, ref.positions, ref.species, pao_dir=PAO_DIR, position_matrix=True)
    index = ours.pair_index()
    gather = entry_gather_index(ours.offsets, np.array([index[tuple(r)] for r in ref.atom_pairs.tolist()]))
    diff = np.abs(ours.position_matrix[gather] - ref.position_matrix)
    assert diff.max() < 5e-4 and diff.mean() < 1e-5           # measured 3.1e-4 / 3.8e-6 A (NaCl)
    np.testing.assert_allclose(ours.overlap[gather], ref.overlap, atol=1e-8)
    mine, openmx = _hermiticity_error(ours)[0], _hermiticity_error(ref)[0]
    assert mine < 2e-6 and mine < 1e-2 * openmx
    # a wrong sign or a missing tau_i S would be off by ~1 A
    assert np.abs(ref.position_matrix).max() > 1.0


def test_optics_of_a_pao_position_matrix_equals_openmx(alp, tmp_path, capsys):
    """`overlap --position-matrix` gives predicted Hamiltonians a chi(omega): on the DFT H of AlP, eps_inf
    with P from the PAO files equals eps_inf with OpenMX's P."""
    import h5py

    from aiida_deeph.physics.optics import susceptibility

    write_dock(alp, tmp_path / "dft", include=("hamiltonian", "overlap"))
    assert main(["overlap", "--structure", str(tmp_path / "dft" / "POSCAR"), "--pao-dir", str(PAO_DIR),
                 "--position-matrix", "--output", str(tmp_path / "s")]) == 0
    assert "position matrix" in capsys.readouterr().out
    with h5py.File(tmp_path / "s" / "position_matrix.h5") as h5:
        assert h5["entries"].shape[0] == 3
    pao = read_dock(tmp_path / "s", load=("overlap", "position_matrix"))
    ham = read_dock(tmp_path / "dft")
    assert ham.pair_index() == pao.pair_index()
    ham.position_matrix = pao.position_matrix
    ours = susceptibility(ham, (6, 6, 6), num_omega=2)["eps_inf"]
    theirs = susceptibility(alp, (6, 6, 6), num_omega=2)["eps_inf"]
    assert abs(ours - theirs) < 1e-3 * theirs


# ---------------------------------------------------------------------------------------------- DOS
def _reference_gaussian_dos(ham, mesh, egrid, sigma):
    """Independent: band_energies (the band solver) on the Gamma mesh, normalised Gaussians summed by numpy."""
    e = band_energies(ham, gamma_mesh(mesh)).eigenvalues
    g = np.exp(-0.5 * ((egrid[None, :] - e.reshape(-1, 1)) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    return 2.0 * g.sum(axis=0) / len(e)


@pytest.mark.parametrize("mp_id", ["mp-22862", "mp-134"])   # NaCl (insulator), Al (metal)
def test_gaussian_dos_matches_independent_sum_and_counts_electrons(mp_id):
    ham = _run(mp_id)
    e_lo = float(band_energies(ham, [[0, 0, 0]]).eigenvalues.min()) - 2.0
    grid = (e_lo, ham.fermi_energy_eV + 2.0, 1201)
    res = density_of_states(ham, mesh=(5, 5, 5), sigma=0.15, grid=grid)
    egrid = np.asarray(res["energy_eV"])
    np.testing.assert_allclose(res["total"], _reference_gaussian_dos(ham, (5, 5, 5), egrid, 0.15), atol=1e-10)
    # integrated DOS up to E_F equals the electron count
    assert abs(integrated(res) + res["states_below_grid"] - ham.num_electrons) < 5e-3
    assert res["states_below_grid"] < 1e-3
    # projections (Mulliken) add up to the total
    psum = sum(np.asarray(v) for by_l in res["projected"].values() for v in by_l.values())
    np.testing.assert_allclose(psum, res["total"], atol=1e-9 * max(res["total"]))
    assert set(res["projected"]) == set(ham.species)


def test_tetrahedron_dos_counts_electrons_and_tracks_gaussian():
    ham = _run("mp-134")   # fcc Al, a metal
    lo = float(band_energies(ham, [[0, 0, 0]]).eigenvalues.min()) - 1.0
    tet = density_of_states(ham, mesh=(8, 8, 8), method="tetrahedron", grid=(lo, ham.fermi_energy_eV + 3, 1501))
    assert abs(integrated(tet) + tet["states_below_grid"] - ham.num_electrons) < 5e-3
    assert abs(tet["fermi_energy_eV"] - ham.fermi_energy_eV) < 0.15     # OpenMX's E_F, on another mesh
    gau = density_of_states(ham, mesh=(8, 8, 8), sigma=0.3, grid=(lo, ham.fermi_energy_eV + 3, 1501))
    # the two methods count the same states up to any energy, within the broadening's blur
    step = tet["energy_eV"][1] - tet["energy_eV"][0]
    assert np.abs(np.cumsum(np.asarray(tet["total"]) - np.asarray(gau["total"])) * step).max() < 0.1


def test_dos_bad_input():
    ham = _run("mp-1550")
    with pytest.raises(DosError, match="too coarse for the tetrahedron"):
        density_of_states(ham, mesh=(2, 4, 4), method="tetrahedron")
    with pytest.raises(DosError, match="sigma must be positive"):
        density_of_states(ham, mesh=(2, 2, 2), sigma=0.0)
    with pytest.raises(DosError, match="EMIN < EMAX"):
        density_of_states(ham, mesh=(2, 2, 2), grid=(1.0, 0.0, 10))
    broken = ham.copy()
    broken.overlap = -broken.overlap
    with pytest.raises(KSpaceError, match="not positive definite"):
        density_of_states(broken, mesh=(2, 2, 2))


def test_dos_cli_writes_json_and_plot(tmp_path, capsys):
    folder = tmp_path / "alp"
    write_dock(_run("mp-1550"), folder)
    out = tmp_path / "dos.json"
    assert main(["dos", "--input", str(folder), "--mesh", "4", "4", "4", "--sigma", "0.2", "--output", str(out),
                 "--plot", str(tmp_path / "dos.png")]) == 0
    res = json.loads(out.read_text())
    for key in ("energy_eV", "fermi_energy_eV", "total", "projected"):
        assert key in res
    assert set(res["projected"]) == {"Al", "P"} and set(res["projected"]["P"]) == {"s", "p", "d"}
    assert (tmp_path / "dos.png").stat().st_size > 10_000
    assert "states below E_F" in capsys.readouterr().out
    assert main(["dos", "--input", str(tmp_path / "none"), "--output", str(out)]) == 1
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- optics
@pytest.fixture(scope="module")
def alp():
    return _run("mp-1550", load_position_matrix=True)   # zincblende AlP, an insulator (PBE gap 1.7 eV)


def _moved_atom(ham, atom, n):
    """The same crystal with ``atom`` moved by the lattice vector n (its home cell relabelled)."""
    from aiida_deeph.core.packed import PackedHamiltonian

    shift = np.zeros((ham.num_atoms, 3), dtype=np.int64)
    shift[atom] = n
    ap = ham.atom_pairs.copy()
    ap[:, :3] += shift[ap[:, 3]] - shift[ap[:, 4]]
    pair_of_entry = np.repeat(np.arange(ham.num_pairs), np.diff(ham.offsets))
    return PackedHamiltonian(
        cell=ham.cell, positions=ham.positions + shift @ ham.cell, species=ham.species, orbital_ls=ham.orbital_ls,
        atom_pairs=ap, offsets=ham.offsets, hamiltonian=ham.hamiltonian, overlap=ham.overlap,
        position_matrix=ham.position_matrix + ham.overlap[:, None] * (shift[ap[pair_of_entry, 3]] @ ham.cell),
        num_electrons=ham.num_electrons, fermi_energy_eV=ham.fermi_energy_eV).sorted()


def test_chi_is_isotropic_and_gauge_invariant_for_a_cubic_insulator(alp):
    from aiida_deeph.physics.optics import susceptibility

    res = susceptibility(alp, (6, 6, 6), num_omega=41, omega_max=8.0)
    chi0 = np.asarray(res["chi0"])
    assert np.abs(chi0 - np.diag(np.diag(chi0))).max() < 0.02 * chi0[0, 0]          # cubic: isotropic
    assert np.ptp(np.diag(chi0)) < 0.01 * chi0[0, 0]
    assert 6.0 < res["eps_inf"] < 12.0
    # the same crystal with one atom moved by a lattice vector: same chi (tau_i S in P and the Bloch gauge)
    moved = susceptibility(_moved_atom(alp, 1, (1, 0, -1)), (6, 6, 6), num_omega=41, omega_max=8.0)
    np.testing.assert_allclose(moved["chi0"], res["chi0"], atol=1e-7)
    np.testing.assert_allclose(moved["chi"]["imag"], res["chi"]["imag"], atol=1e-7)
    # ...which a bra-relative position matrix (OpenMX's raw OLPpo) would not give
    pair_of_entry = np.repeat(np.arange(alp.num_pairs), np.diff(alp.offsets))
    relative = alp.copy()
    relative.position_matrix = alp.position_matrix - alp.overlap[:, None] * alp.positions[alp.atom_pairs[pair_of_entry, 3]]
    assert abs(susceptibility(relative, (6, 6, 6), num_omega=2)["eps_inf"] - res["eps_inf"]) > 0.1
    # and the position-matrix term is not small: dH/dk - E dS/dk alone gives another answer
    no_a = alp.copy()
    no_a.position_matrix = np.zeros_like(alp.position_matrix)
    assert abs(susceptibility(no_a, (6, 6, 6), num_omega=2)["eps_inf"] - res["eps_inf"]) > 0.1


def test_chi_static_limit_and_kramers_kronig(alp):
    """Re chi(0) at small eta is chi0; and chi0 = (2/pi) int Im chi(w) / w dw (Kramers-Kronig)."""
    from aiida_deeph.physics.optics import susceptibility

    res = susceptibility(alp, (4, 4, 4), eta=0.02, omega_max=40.0, num_omega=16001)
    w = np.asarray(res["omega_eV"])
    im = np.asarray(res["chi"]["imag"])[:, 0, 0]
    chi0 = res["chi0"][0][0]
    assert abs(res["chi"]["real"][0][0][0] - chi0) < 2e-3 * chi0
    kk = 2.0 / np.pi * np.trapezoid(im[1:] / w[1:], w[1:])
    assert abs(kk - chi0) < 0.02 * chi0


def test_optics_bad_input_and_cli(alp, tmp_path, capsys):
    from aiida_deeph.physics.optics import OpticsError, susceptibility

    with pytest.raises(OpticsError, match="no whole number of bands"):
        susceptibility(_run("mp-134", load_position_matrix=True), (4, 4, 4))      # Al
    with pytest.raises(OpticsError, match="is a metal on the"):
        susceptibility(_run("mp-92", load_position_matrix=True), (4, 4, 4))       # metallic Si polymorph
    with pytest.raises(OpticsError, match="no position matrix"):
        susceptibility(_run("mp-1550"), (4, 4, 4))
    folder = tmp_path / "alp"
    write_dock(alp, folder, include=("hamiltonian", "overlap", "position_matrix"))
    out = tmp_path / "chi.json"
    assert main(["optics", "--input", str(folder), "--mesh", "4", "4", "4", "--num-omega", "51", "--output", str(out),
                 "--plot", str(tmp_path / "chi.png")]) == 0
    res = json.loads(out.read_text())
    assert {"omega_eV", "chi", "chi0", "eps_inf"} <= set(res)
    assert np.asarray(res["chi"]["real"]).shape == (51, 3, 3)
    assert "eps_inf" in capsys.readouterr().out and (tmp_path / "chi.png").is_file()
    write_dock(alp, tmp_path / "bare")
    assert main(["optics", "--input", str(tmp_path / "bare"), "--output", str(out)]) == 1
    assert "--position-matrix" in capsys.readouterr().err
