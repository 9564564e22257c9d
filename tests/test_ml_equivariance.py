"""Equivariance / invariance of the DeepH-2 model on real corpus structures (float64)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("e3nn")

from aiida_deeph.core.packed import PackedHamiltonian  # noqa: E402
from aiida_deeph.ml.config import ModelConfig  # noqa: E402
from aiida_deeph.ml.graph import basis_metadata
from aiida_deeph.ml.harmonics import atom_wigner_D  # noqa: E402
from aiida_deeph.ml.model import DeepH2

from .conftest import load_corpus, random_rotation  # noqa: E402,F401  (shared helpers)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ham():
    # three elements, three different bases (s3p2, s2p2d1, s3p2d1), hoppings i == j with R != 0
    return load_corpus("mp-10182")


# the options a saved model can have: Gaussian radial basis + normalised head (models saved before those
# options existed), Bessel basis + raw-feature head
MODEL_VARIANTS = {"gaussian-normhead": dict(radial_basis="gaussian", head_norm=True),
                  "bessel-rawhead": dict(radial_basis="bessel", head_norm=False),
                  "bessel-wide-head": dict(radial_basis="bessel", head_norm=False, head_hidden=12)}


@pytest.fixture(scope="module", params=sorted(MODEL_VARIANTS))
def model(ham, request):
    torch.manual_seed(0)
    ols, rc = basis_metadata(ham)
    cfg = ModelConfig.preset("tiny", num_blocks=2, channels=8, **MODEL_VARIANTS[request.param]).with_elements(ols, rc)
    m = DeepH2(cfg).double()
    from aiida_deeph.ml.graph import prepare_graph
    from aiida_deeph.ml.init import init_onsite_reference

    init_onsite_reference(m, [prepare_graph(ham, m.basis)])   # as training starts: on-site blocks at the data
    # make the output heads non-trivial (biases are zero-initialised)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def blocks(ham, flat):
    return [flat[ham.offsets[p]:ham.offsets[p + 1]].reshape(ham.block_shape(p)) for p in range(ham.num_pairs)]


def transformed(ham: PackedHamiltonian, R: np.ndarray, shift=None) -> PackedHamiltonian:
    shift = np.zeros(3) if shift is None else shift
    new = ham.copy()
    new.positions = ham.positions @ R.T + shift
    new.cell = ham.cell @ R.T
    return new


def check_covariant(ham, model, R, tol=1e-10):
    H0 = blocks(ham, model.predict(ham))
    H1 = blocks(ham, model.predict(transformed(ham, R)))
    Rt = torch.tensor(R, dtype=torch.float64)
    Dat = {el: atom_wigner_D(ls, Rt).numpy() for el, ls in ham.orbital_ls.items()}
    scale = max(np.abs(b).max() for b in H0)
    err = 0.0
    for p, (i, j) in enumerate(ham.atom_pairs[:, 3:]):
        Di, Dj = Dat[ham.species[i]], Dat[ham.species[j]]
        err = max(err, np.abs(Di @ H0[p] @ Dj.T - H1[p]).max())
    assert scale > 1e-3
    assert err < tol * max(scale, 1.0), err
    return err


def test_rotation_equivariance(ham, model):
    check_covariant(ham, model, random_rotation(1))


def test_inversion_equivariance(ham, model):
    check_covariant(ham, model, -np.eye(3))


def test_improper_rotation_equivariance(ham, model):
    check_covariant(ham, model, -random_rotation(2))


def test_translation_invariance(ham, model):
    H0 = model.predict(ham)
    H1 = model.predict(transformed(ham, np.eye(3), shift=np.array([0.37, -1.2, 2.5])))
    assert np.abs(H0 - H1).max() < 1e-10


def test_permutation_invariance(ham, model):
    n = ham.num_atoms
    perm = np.roll(np.arange(n), 1)          # new atom k = old atom perm[k]
    inv = np.argsort(perm)
    new_pairs = ham.atom_pairs.copy()
    new_pairs[:, 3] = inv[ham.atom_pairs[:, 3]]
    new_pairs[:, 4] = inv[ham.atom_pairs[:, 4]]
    permuted = PackedHamiltonian(
        cell=ham.cell, positions=ham.positions[perm], species=[ham.species[k] for k in perm],
        orbital_ls=ham.orbital_ls, atom_pairs=new_pairs, offsets=ham.offsets, hamiltonian=ham.hamiltonian,
        overlap=ham.overlap, meta=ham.meta,
    )
    permuted.validate()
    H0 = model.predict(ham)
    H1 = model.predict(permuted)            # same pair rows in the same order, only labels changed
    assert np.abs(H0 - H1).max() < 1e-10


def test_image_choice_invariance(ham, model):
    """Wrapping an atom into another cell (R of its pairs shifted) leaves every block unchanged."""
    k, T = 1, np.array([1, -1, 2])
    moved = ham.copy()
    moved.positions = ham.positions.copy()
    moved.positions[k] += T @ ham.cell
    ap = ham.atom_pairs.copy()
    # <i,0|H|j,R>: r_j + R - r_i must stay the same
    ap[ap[:, 4] == k, :3] -= T
    ap[ap[:, 3] == k, :3] += T
    moved.atom_pairs = ap
    moved.validate()
    H0 = model.predict(ham)
    H1 = model.predict(moved)
    assert np.abs(H0 - H1).max() < 1e-10


def test_hermiticity(ham, model):
    H = blocks(ham, model.predict(ham))
    index = ham.pair_index()
    for p, (R1, R2, R3, i, j) in enumerate(ham.atom_pairs):
        q = index[(-R1, -R2, -R3, j, i)]
        assert np.abs(H[p] - H[q].T).max() < 1e-12


def test_supercell_prediction_is_the_tiled_primitive_prediction(ham, model):
    """Locality and translation consistency (issue 13): tiling a DFT H(R) onto a supercell is exact
    (physics.supercell.supercell), so a model's prediction for a 2x1x2 supercell must be its prediction for
    the primitive cell, tiled: every block, to float64 precision."""
    from aiida_deeph.physics.supercell import supercell

    reps = (2, 1, 2)
    prim = ham.copy()
    prim.hamiltonian = model.predict(ham)
    tiled = supercell(prim, reps)
    big = supercell(ham, reps)
    assert big.num_atoms == 4 * ham.num_atoms and np.array_equal(big.atom_pairs, tiled.atom_pairs)
    pred = model.predict(big)
    scale = np.abs(tiled.hamiltonian).max()
    assert scale > 1e-3
    assert np.abs(pred - tiled.hamiltonian).max() < 1e-10 * scale


def test_activation_checkpointing_gives_the_same_gradients(ham):
    """TrainConfig.activation_checkpointing recomputes the blocks in the backward pass: same loss, same
    gradients (float64), only less memory."""
    from aiida_deeph.ml.graph import collate_graphs, prepare_graph
    from aiida_deeph.ml.loss import gauge_loss

    torch.manual_seed(0)
    ols, rc = basis_metadata(ham)
    m = DeepH2(ModelConfig.preset("tiny", num_blocks=2, channels=8, head_norm=False).with_elements(ols, rc)).double()
    g = collate_graphs([prepare_graph(ham, m.basis)])
    grads = []
    for flag in (False, True):
        m.activation_checkpointing = flag
        m.zero_grad()
        pred = m(g)
        loss = gauge_loss(pred, g["H"].double(), g["S"].double(), g["entry_batch"], 1)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    assert grads[0][0] == grads[1][0]
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
