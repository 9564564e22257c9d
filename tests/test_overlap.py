"""Overlap S and atom pairs from the PAO files (aiida_deeph.overlap) against real OpenMX output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from aiida_deeph.core.constants import HARTREE_TO_EV
from aiida_deeph.io.openmx import scfout_to_packed
from aiida_deeph.io.scfout import read_scfout
from aiida_deeph.overlap import OverlapError, compute_overlap, find_pairs, load_basis_functions, read_pao
from aiida_deeph.overlap.pao import parse_pao_text
from aiida_deeph.overlap.twocenter import PairOverlap

from .conftest import corpus_dir, corpus_ids, shared_dir

PAO_DIR = shared_dir() / "openmx-data" / "PAO"
CORPUS = corpus_ids()
BAND_IDS = ["mp-92", "mp-2534", "mp-4280", "mp-7000", "mp-28369"]  # Si, GaAs, GaCuO2, SiO2 (9 atoms), Ge2H6Cl2

pytestmark = pytest.mark.skipif(not PAO_DIR.is_dir() or not CORPUS, reason="shared PAO files / corpus not found")


@pytest.fixture(scope="module")
def openmx_runs():
    cache = {}

    def get(mp):
        if mp not in cache:
            scf = read_scfout(corpus_dir() / mp / "openmx.scfout.xz", load_density_matrix=False)
            cache[mp] = scfout_to_packed(scf)
        return cache[mp]

    return get


def ours(ham):
    return compute_overlap(ham.cell, ham.positions, ham.species, basis_table="corpus", pao_dir=PAO_DIR)


# ---------------------------------------------------------------------- PAO reader
def test_pao_reader_si():
    pao = read_pao(PAO_DIR, "Si7.0")
    assert pao.r.shape == (500,) and pao.cutoff_bohr == 7.0
    assert sorted(pao.radial) == [0, 1, 2, 3] and pao.num_radial(0) == 15
    f = pao.select("Si7.0-s2p2d1")
    assert f.shells == ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0)) and f.num_orbitals == 13
    # radial functions vanish beyond the cutoff and are normalised (int R^2 r^2 dr = 1)
    assert np.all(f.values[:, pao.r > 7.0 + 1e-9] == 0.0)
    from scipy.integrate import simpson

    norms = simpson(f.values ** 2 * pao.r ** 2, x=pao.r)
    assert np.allclose(norms, 1.0, atol=2e-3)


def test_pao_reader_plain_file(tmp_path):
    import lzma

    text = lzma.open(PAO_DIR / "H6.0.pao.xz", "rt").read()
    (tmp_path / "H6.0.pao").write_text(text)
    a = read_pao(tmp_path, "H6.0")
    b = read_pao(PAO_DIR, "H6.0")
    assert np.array_equal(a.radial[0], b.radial[0])


# ---------------------------------------------------------------------- against OpenMX
@pytest.mark.parametrize("mp", CORPUS)
def test_pairs_and_overlap_match_openmx(mp, openmx_runs):
    ref = openmx_runs(mp)
    got = ours(ref)
    assert got.hamiltonian is None and got.meta["source"] == "PAO overlap"
    # identical atom-pair sets (both directions, images, i == j with R != 0, on-site), same order
    assert np.array_equal(got.atom_pairs, ref.atom_pairs)
    assert np.array_equal(got.offsets, ref.offsets)
    assert got.orbital_ls == ref.orbital_ls
    err = np.abs(got.overlap - ref.overlap).max()
    assert err < 1e-6, f"{mp}: max |dS| = {err:.2e}"   # issue asks 1e-4; OpenMX's grids give ~1e-9
    assert got.num_electrons == pytest.approx(ref.num_electrons)


def test_onsite_si_reproduces_openmx_discretisation(openmx_runs):
    got = ours(openmx_runs("mp-92"))
    p = got.pair_index()[(0, 0, 0, 0, 0)]
    blk = got.block(p, "overlap")
    assert blk[0, 0] == pytest.approx(0.99999984, abs=2e-8)
    assert blk[1, 1] == pytest.approx(0.99998819, abs=2e-8)


def _read_band(path):
    lines = path.read_text().split("\n")
    nband, _, chemp = lines[0].split()
    nband, chemp = int(nband), float(chemp)
    npath = int(lines[2].split()[0])
    i = 3 + npath
    ks, eigs = [], []
    while i + 1 < len(lines) and lines[i].strip():
        head = lines[i].split()
        ks.append([float(x) for x in head[1:4]])
        eigs.append([float(x) for x in lines[i + 1].split()][:int(head[0])])
        i += 2
    return np.array(ks), np.array(eigs) * HARTREE_TO_EV, chemp * HARTREE_TO_EV


@pytest.mark.parametrize("mp", BAND_IDS)
def test_bands_with_our_overlap(mp, openmx_runs):
    from scipy.linalg import eigh

    band = corpus_dir() / mp / "openmx.Band"
    if not band.is_file():
        pytest.skip("no .Band file")
    ref = openmx_runs(mp)
    got = ours(ref)
    ks, eref, ef = _read_band(band)
    worst = 0.0
    for k, e in zip(ks[::3], eref[::3]):
        hk = ref.matrix_at_k(k, "hamiltonian")
        sk = got.matrix_at_k(k, "overlap")
        w = eigh(hk, sk, eigvals_only=True)
        sel = e < ef + 5.0
        worst = max(worst, np.abs(w[: len(e)][sel] - e[sel]).max())
    assert worst < 1e-3, f"{mp}: bands differ by {worst * 1e3:.3f} meV"


@pytest.mark.parametrize("mp", ["mp-92", "mp-28369", "mp-7000", "mp-1094437"])
def test_overlap_at_k_positive_definite(mp, openmx_runs):
    got = ours(openmx_runs(mp))
    rng = np.random.default_rng(0)
    for k in [np.zeros(3), np.array([0.5, 0.5, 0.5])] + list(rng.random((3, 3))):
        sk = got.matrix_at_k(k, "overlap")
        assert np.abs(sk - sk.conj().T).max() < 1e-12
        assert np.linalg.eigvalsh(sk).min() > 0


def test_hermiticity_between_directions(openmx_runs):
    got = ours(openmx_runs("mp-28369"))
    idx = got.pair_index()
    for p, (r1, r2, r3, i, j) in enumerate(got.atom_pairs.tolist()):
        q = idx[(-r1, -r2, -r3, j, i)]
        assert np.abs(got.block(p, "overlap") - got.block(q, "overlap").T).max() < 1e-12


def test_all_table_elements_together():
    """All 24 elements of the corpus basis table in one cell: every element pair, S(k) > 0, S^T symmetry."""
    from aiida_deeph.core.basis import load_basis_table

    els = sorted(load_basis_table("corpus").elements)
    assert len(els) == 24
    grid = np.array([[a, b, c] for a in range(3) for b in range(3) for c in range(3)])[: len(els)]
    cell = np.eye(3) * 3 * 2.3
    pos = grid * 2.3 + np.random.default_rng(1).uniform(-0.1, 0.1, size=grid.shape)
    got = compute_overlap(cell, pos, els, pao_dir=PAO_DIR)
    assert got.num_orbitals == sum(load_basis_table("corpus").pao(e).num_orbitals for e in els)
    for k in (np.zeros(3), np.array([0.25, 0.5, 0.0])):
        sk = got.matrix_at_k(k, "overlap")
        assert np.abs(sk - sk.conj().T).max() < 1e-12
        assert np.linalg.eigvalsh(sk).min() > 0
    for p in np.nonzero((got.atom_pairs[:, 3] == got.atom_pairs[:, 4]) & np.all(got.atom_pairs[:, :3] == 0, 1))[0]:
        blk = got.block(p, "overlap")
        assert np.abs(np.diag(blk) - 1).max() < 1e-2  # near-normalised (As p: 0.9947, as in OpenMX)


# ---------------------------------------------------------------------- rotations
def _orbitals(l, u):
    """OpenMX's real orbitals (independent of the module): p = x, y, z; d = 3z2-r2, x2-y2, xy, xz, yz."""
    x, y, z = u.T
    if l == 0:
        return np.ones((len(u), 1))
    if l == 1:
        return np.stack([x, y, z], 1)
    return np.stack([(3 * z * z - 1) / (2 * np.sqrt(3)), (x * x - y * y) / 2, x * y, x * z, y * z], 1)


def _wigner_openmx(l, Q):
    """D with Y(Q u) = D Y(u) for OpenMX's orbitals of angular momentum l (derived numerically)."""
    rng = np.random.default_rng(l)
    u = rng.normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    A = _orbitals(l, u)
    B = _orbitals(l, u @ Q.T)
    D = np.linalg.lstsq(A, B, rcond=None)[0].T
    assert np.allclose(D @ D.T, np.eye(2 * l + 1), atol=1e-10)
    return D


def _atom_D(ls, Q):
    from scipy.linalg import block_diag

    return block_diag(*[_wigner_openmx(l, Q) for l in ls])


def test_rotated_structure_gives_rotated_blocks(openmx_runs):
    from scipy.spatial.transform import Rotation

    ref = openmx_runs("mp-4280")  # GaCuO2: Ga s3p2d2, Cu s3p2d1, O s2p2d1
    Q = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
    a = ours(ref)
    b = compute_overlap(ref.cell @ Q.T, ref.positions @ Q.T, ref.species, pao_dir=PAO_DIR)
    assert np.array_equal(a.atom_pairs, b.atom_pairs)
    D = {el: _atom_D(ls, Q) for el, ls in a.orbital_ls.items()}
    worst = 0.0
    for p, (_, _, _, i, j) in enumerate(a.atom_pairs.tolist()):
        expect = D[a.species[i]] @ a.block(p, "overlap") @ D[a.species[j]].T
        worst = max(worst, np.abs(b.block(p, "overlap") - expect).max())
    assert worst < 1e-10


def test_two_atom_blocks_along_axes():
    """Signs: s on atom A, p_z on atom B above A gives a negative overlap (p_z points away)."""
    f = load_basis_functions(PAO_DIR, "H6.0-s2p1")
    po = PairOverlap(f, f)
    blk = po.blocks(np.array([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]))
    s0, pz = 0, 2 + 2  # s1, s2, then px, py, pz
    assert blk[0, s0, pz] < 0 and abs(blk[0, s0, 2]) < 1e-14  # <s|px> = 0 along z
    assert blk[1, s0, 2] < 0 and abs(blk[1, s0, pz]) < 1e-14


# ---------------------------------------------------------------------- pairs
def test_find_pairs_scales_and_matches_bruteforce():
    rng = np.random.default_rng(3)
    cell = np.diag([5.0, 6.0, 7.0]) + rng.normal(scale=0.5, size=(3, 3))
    grid = np.array([[a, b, c] for a in range(3) for b in range(2) for c in range(2)]) / [3.0, 2.0, 2.0]
    pos = (grid + rng.uniform(-0.05, 0.05, size=grid.shape)) @ cell  # 12 atoms, none overlapping
    rc = rng.choice([6.0, 7.0, 9.0], size=12)
    pairs, vec = find_pairs(cell, pos, rc)
    # brute force over a generous image range
    from aiida_deeph.core.constants import BOHR_TO_ANGSTROM

    expect = set()
    rng_n = range(-6, 7)
    for n1 in rng_n:
        for n2 in rng_n:
            for n3 in rng_n:
                d = pos[None, :, :] + np.array([n1, n2, n3]) @ cell - pos[:, None, :]
                dist = np.linalg.norm(d, axis=2) / BOHR_TO_ANGSTROM
                for i, j in zip(*np.nonzero(dist < rc[:, None] + rc[None, :])):
                    expect.add((n1, n2, n3, int(i), int(j)))
    assert {tuple(r) for r in pairs.tolist()} == expect
    R = pairs[:, :3] @ cell
    assert np.allclose(vec, pos[pairs[:, 4]] + R - pos[pairs[:, 3]])


def test_supercell_consistent_with_primitive(openmx_runs):
    ref = openmx_runs("mp-2534")  # GaAs
    prim = ours(ref)
    sc = np.diag([2, 2, 2])
    cell = sc @ ref.cell
    shifts = np.array([[a, b, c] for a in range(2) for b in range(2) for c in range(2)]) @ ref.cell
    pos = (ref.positions[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    species = ref.species * 8
    big = compute_overlap(cell, pos, species, pao_dir=PAO_DIR)
    assert big.num_pairs == 8 * prim.num_pairs
    # every block equals the primitive block of the same bond vector
    d_prim = {}
    for p, (r1, r2, r3, i, j) in enumerate(prim.atom_pairs.tolist()):
        v = ref.positions[j] + np.array([r1, r2, r3]) @ ref.cell - ref.positions[i]
        d_prim[(i, j, tuple(np.round(v, 6)))] = p
    for q in range(0, big.num_pairs, 37):
        r1, r2, r3, i, j = big.atom_pairs[q]
        v = pos[j] + np.array([r1, r2, r3]) @ cell - pos[i]
        p = d_prim[(i % 2, j % 2, tuple(np.round(v, 6)))]
        assert np.abs(big.block(q, "overlap") - prim.block(p, "overlap")).max() < 1e-12


# ---------------------------------------------------------------------- bad input
def test_error_missing_pao_file(tmp_path):
    with pytest.raises(OverlapError, match=r"Si7\.0\.pao.*not found in .*"):
        compute_overlap(np.eye(3) * 5, [[0, 0, 0]], ["Si"], pao_dir=tmp_path)


def test_error_element_without_basis():
    with pytest.raises(OverlapError, match="element Fe has no basis"):
        compute_overlap(np.eye(3) * 5, [[0, 0, 0]], ["Fe"], pao_dir=PAO_DIR)


def test_error_overlapping_atoms():
    with pytest.raises(OverlapError, match="closer than 0.5 A"):
        compute_overlap(np.eye(3) * 5, [[0, 0, 0], [0.2, 0.1, 0]], ["Si", "Si"], pao_dir=PAO_DIR)
    with pytest.raises(OverlapError, match="image"):  # an atom and its own periodic image
        compute_overlap(np.eye(3) * 0.4, [[0, 0, 0]], ["H"], pao_dir=PAO_DIR)


def test_error_basis_asks_too_many_radial_functions():
    with pytest.raises(OverlapError, match="asks for 16 s radial functions but PAO file Si7.0.pao.xz has 15"):
        compute_overlap(np.eye(3) * 5, [[0, 0, 0]], ["Si"], pao_dir=PAO_DIR, basis={"Si": "Si7.0-s16p2d1"})
    with pytest.raises(OverlapError, match="asks for 20 d radial functions but PAO file Al7.0.pao.xz has 15"):
        load_basis_functions(PAO_DIR, "Al7.0-s2p2d20")


def test_error_not_a_pao_file():
    with pytest.raises(OverlapError, match="no <pseudo.atomic.orbitals"):
        parse_pao_text("hello\nworld\n", name="X", path="X.pao")


def test_errors_are_one_line(tmp_path):
    for call in (
        lambda: compute_overlap(np.eye(3) * 5, [[0, 0, 0]], ["Si"], pao_dir=tmp_path),
        lambda: compute_overlap(np.eye(3) * 5, [[0, 0, 0]], ["Fe"], pao_dir=PAO_DIR),
        lambda: compute_overlap(np.eye(3) * 5, [[0, 0, 0], [0, 0, 0.1]], ["H", "H"], pao_dir=PAO_DIR),
    ):
        with pytest.raises(OverlapError) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- CLI
def test_cli_writes_dock_folder(tmp_path, openmx_runs, capsys):
    pytest.importorskip("pymatgen")
    from aiida_deeph.cli.main import main
    from aiida_deeph.io.dock import read_dock

    mp = "mp-1943"  # Ga4Se4
    out = tmp_path / "dock"
    rc = main(["overlap", "--structure", str(corpus_dir() / mp / "meta.json"), "--pao-dir", str(PAO_DIR),
               "--output", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["POSCAR", "info.json", "overlap.h5"]
    info = json.loads((out / "info.json").read_text())
    assert info["orthogonal_basis"] is False and info["atoms_quantity"] == 8
    back = read_dock(out)
    assert back.hamiltonian is None
    # the dock folder read back equals OpenMX's S (pymatgen positions agree with the input to 1e-8 A)
    ref = openmx_runs(mp)
    assert np.array_equal(back.atom_pairs, ref.atom_pairs)
    assert np.abs(back.overlap - ref.overlap).max() < 1e-6

    # POSCAR input too
    rc = main(["overlap", "--structure", str(out / "POSCAR"), "--pao-dir", str(PAO_DIR),
               "--output", str(tmp_path / "dock2"), "--quiet"])
    assert rc == 0


def test_cli_one_line_errors(tmp_path, capsys):
    from aiida_deeph.cli.main import main

    rc = main(["overlap", "--structure", str(corpus_dir() / "mp-92" / "meta.json"), "--pao-dir", str(tmp_path),
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Si7.0.pao" in err
    assert not (tmp_path / "out").exists()
    rc = main(["overlap", "--structure", str(corpus_dir() / "mp-92" / "meta.json"), "--pao-dir", str(PAO_DIR),
               "--basis", "no-such-protocol", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "no-such-protocol" in err
    rc = main(["overlap", "--structure", str(tmp_path / "missing.cif"), "--pao-dir", str(PAO_DIR),
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "missing.cif" in err


def test_read_structure_poscar_without_pymatgen_equals_pymatgen(tmp_path):
    """POSCARs are read by the project's own parser (no pymatgen import in the CLI); same numbers."""
    from pymatgen.core import Structure

    from aiida_deeph.overlap.compute import read_structure

    meta = json.loads((corpus_dir() / "mp-10182" / "meta.json").read_text())
    st = Structure.from_dict(meta["structure"])
    path = tmp_path / "POSCAR"
    st.to(filename=str(path), fmt="poscar")
    cell, pos, species = read_structure(path)
    ref = Structure.from_file(str(path))
    np.testing.assert_allclose(cell, ref.lattice.matrix, atol=1e-12)
    np.testing.assert_allclose(pos, ref.cart_coords, atol=1e-9)
    assert species == [s.specie.symbol for s in ref]
