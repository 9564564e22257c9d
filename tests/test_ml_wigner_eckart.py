"""Harmonics conventions and the Wigner-Eckart layer, checked on real DFT blocks."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from aiida_deeph.ml.harmonics import (  # noqa: E402
    _openmx_functions,
    atom_wigner_D,
    float64_default,
    openmx_from_e3nn,
    openmx_wigner_D,
    orbital_positions,
)
from aiida_deeph.ml.wigner_eckart import PairBasis, irreps_to_sub_block, sub_block_to_irreps  # noqa: E402

from .conftest import load_corpus, random_rotation  # noqa: E402


@pytest.mark.parametrize("l", [0, 1, 2])
def test_openmx_basis_orthogonal_and_covariant(l):
    U = openmx_from_e3nn(l)
    assert np.allclose(U @ U.T, np.eye(2 * l + 1), atol=1e-12)
    R = random_rotation(3)
    pts = np.random.default_rng(0).normal(size=(20, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    f = _openmx_functions(l, pts)
    g = _openmx_functions(l, pts @ R.T)
    D = openmx_wigner_D(l, torch.tensor(R)).numpy()
    # functions evaluated at rotated points: f(R r) = D f(r) up to each function's normalisation
    norms = np.sqrt((f ** 2).mean(0))
    norms = np.where(norms > 0, norms, 1)
    lhs = g / norms
    rhs = (f / norms) @ D.T
    # normalisation per function differs (d3z2-r2 vs dxy): compare after solving the scale
    X, *_ = np.linalg.lstsq(f, g, rcond=None)
    assert np.allclose(f @ X, g, atol=1e-10)
    assert np.allclose(np.abs(np.linalg.eigvals(X)), 1.0, atol=1e-8)
    del lhs, rhs


def test_p_orbitals_are_xyz():
    assert np.allclose(openmx_wigner_D(1, torch.tensor(random_rotation(4))).numpy(), random_rotation(4))


def test_sub_block_roundtrip_random():
    rng = np.random.default_rng(1)
    for l1 in range(3):
        for l2 in range(3):
            B = rng.normal(size=(2 * l1 + 1, 2 * l2 + 1))
            ys = sub_block_to_irreps(B, l1, l2)
            assert [len(y) for y in ys] == [2 * l + 1 for l in range(abs(l1 - l2), l1 + l2 + 1)]
            assert np.abs(irreps_to_sub_block(ys, l1, l2) - B).max() < 1e-14


def test_irreps_transform_under_rotation():
    """Rotating a block (OpenMX Wigner-D) rotates each irrep by e3nn's D of its l, parity (-1)^(l1+l2)."""
    from e3nn import o3

    rng = np.random.default_rng(2)
    R = torch.tensor(-random_rotation(5))   # improper
    for l1, l2 in [(1, 1), (1, 2), (2, 2), (0, 2)]:
        B = rng.normal(size=(2 * l1 + 1, 2 * l2 + 1))
        B2 = openmx_wigner_D(l1, R).numpy() @ B @ openmx_wigner_D(l2, R).numpy().T
        for l, y, y2 in zip(range(abs(l1 - l2), l1 + l2 + 1), sub_block_to_irreps(B, l1, l2), sub_block_to_irreps(B2, l1, l2)):
            p = (-1) ** (l1 + l2)
            with float64_default():
                D = o3.Irrep(l, p).D_from_matrix(R).numpy()
            assert np.abs(D @ y - y2).max() < 1e-12


@pytest.mark.parametrize("mp_id", ["mp-10044", "mp-4280"])
def test_dft_blocks_roundtrip_exact(mp_id):
    """Real DFT blocks (s2p2d1 x s3p2d2 etc.) -> irreps -> blocks, exact to 1e-12."""
    ham = load_corpus(mp_id)
    bases = {}
    worst = 0.0
    for p in range(0, ham.num_pairs, 3):
        i, j = ham.atom_pairs[p, 3:]
        key = (ham.species[i], ham.species[j])
        if key not in bases:
            bases[key] = PairBasis(ham.orbital_ls[key[0]], ham.orbital_ls[key[1]])
        pb = bases[key]
        for which in ("hamiltonian", "overlap"):
            B = ham.block(p, which)
            y = pb.to_irreps(B)
            assert np.isclose(np.linalg.norm(y), np.linalg.norm(B))
            worst = max(worst, np.abs(pb.to_block(y) - B).max() / max(1.0, np.abs(B).max()))
    assert len(bases) >= 3
    assert worst < 1e-12


def test_pair_basis_irreps_count():
    pb = PairBasis([0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 2, 2])
    assert pb.matrix.shape == (13 * 19, 13 * 19)
    assert np.allclose(pb.matrix.T @ pb.matrix, np.eye(13 * 19), atol=1e-12)
    dims = sum(2 * l + 1 for *_, l, _ in pb.irreps)
    assert dims == 13 * 19
    # parity (-1)^(l1+l2): a (p, d) sub-block gives 1o, 2o, 3o
    assert {(l, p) for a, b, l, p in pb.irreps if a == 2 and b == 5} == {(1, -1), (2, -1), (3, -1)}


def test_orbital_positions_super_basis():
    pos = orbital_positions([0, 0, 1, 1, 2], (3, 2, 2))
    assert pos.tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    D = atom_wigner_D([0, 1, 2], torch.tensor(random_rotation(1)))
    assert D.shape == (9, 9)
