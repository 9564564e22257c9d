"""Gauge-invariant loss and metrics (pure: torch, numpy).

``H`` and ``H + dmu * S`` describe the same physics (a shift of the energy zero).  Per structure

    dmu = Re sum (H_pred - H_true) S* / sum |S|^2

is the shift that best aligns the prediction with the truth; the loss compares ``H_pred`` with
``H_true + dmu * S``.  The loss and the *corrected* MAE are exactly unchanged by ``H_true -> H_true + c S``.

Metric definitions (all in meV, mean absolute error over matrix entries):

* ``mae``: every entry of every block, gauge-corrected; ``mae_uncorrected``: same without correction.
* ``per_element[X]``: entries of the blocks (on-site and hopping) whose two atoms include element
  X (an A-B block counts for A and for B; an A-A block once).
* ``per_element_pair["A-B"]``: entries of the blocks between an A and a B atom (unordered, A <= B
  alphabetically).
* ``per_structure[name]``: corrected MAE of each structure (and ``uncorrected``).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def gauge_shift(pred, true, S, entry_batch, num_structures: int):
    """dmu per structure (real matrices: Re(. S*) = . S)."""
    num = torch.zeros(num_structures, dtype=pred.dtype, device=pred.device).index_add_(0, entry_batch, (pred - true) * S)
    den = torch.zeros(num_structures, dtype=pred.dtype, device=pred.device).index_add_(0, entry_batch, S * S)
    return num / den.clamp_min(1e-30)


def gauge_residual(pred, true, S, entry_batch, num_structures: int, correct: bool = True):
    """``pred - (true + dmu S)`` per entry (or ``pred - true`` without correction)."""
    if not correct or S is None:
        return pred - true
    dmu = gauge_shift(pred, true, S, entry_batch, num_structures)
    return pred - (true + dmu[entry_batch] * S)


def onsite_entry_weights(g: dict, onsite_weight: float, dtype=torch.float32):
    """Per-entry loss weights: ``onsite_weight`` for the entries of on-site blocks, 1 for hoppings (None
    when ``onsite_weight`` is 1: the unweighted mean)."""
    if onsite_weight == 1.0:
        return None
    onsite = (g["pair_kind"][g["entry_pair"]] == 0).to(dtype)
    return 1.0 + (onsite_weight - 1.0) * onsite


def _huber(r, delta):
    a = r.abs()
    return torch.where(a < delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def gauge_loss(pred, true, S, entry_batch, num_structures: int, kind: str = "huber", delta: float = 0.01,
               weights=None, correct: bool = True):
    """Mean over structures of the mean (optionally weighted) per-entry loss of the corrected residual."""
    r = gauge_residual(pred, true, S, entry_batch, num_structures, correct)
    if kind == "huber":
        per = _huber(r, delta)
    elif kind == "mse":
        per = r * r
    elif kind == "mae":
        per = r.abs()
    else:
        raise ValueError(f"unknown loss {kind!r} (huber, mse, mae)")
    w = torch.ones_like(per) if weights is None else weights
    num = torch.zeros(num_structures, dtype=per.dtype, device=per.device).index_add_(0, entry_batch, per * w)
    den = torch.zeros(num_structures, dtype=per.dtype, device=per.device).index_add_(0, entry_batch, w)
    return (num / den.clamp_min(1e-30)).mean()


def _kspace(g: dict, b: int, dtype):
    """Structure ``b``'s entry selection, orbital count, flat (row, col) index and entry lattice vectors."""
    sel = g["entry_batch"] == b
    n = int(g["num_orbitals"][b])
    flat = g["entry_row"][sel] * n + g["entry_col"][sel]
    return sel, n, flat, g["pair_R"][g["entry_pair"]][sel].to(dtype)


def _at_k(values, flat, n: int, ph):
    """Dense (n, n) matrix sum_R values(R) e^{2 pi i k.R} of one structure's entries."""
    return torch.zeros(n * n, dtype=ph.dtype, device=ph.device).index_add_(0, flat, values.to(ph.dtype) * ph).view(n, n)


def _cholesky_of(Sk):
    return torch.linalg.cholesky(0.5 * (Sk + Sk.conj().T))


def _orthogonalised(Hk, Lc):
    """A = L^-1 H L^-H (S = L L^H): H(k) c = e S(k) c has the eigenvalues of A."""
    X = torch.linalg.solve_triangular(Lc, Hk, upper=False)                 # L^-1 H
    A = torch.linalg.solve_triangular(Lc, X.conj().T, upper=False)         # L^-1 (L^-1 H)^H = A^H
    return 0.5 * (A + A.conj().T)


def _phases(R, kpts, cdtype):
    return torch.exp(1j * (2 * math.pi) * (R @ kpts.T).to(cdtype))          # (entries, k)


def _true_problems(g: dict, num_structures: int, dtype, kpoints):
    """For every structure with a Fermi level: ``(b, fermi, sel, n, flat, at_k)``, where ``at_k`` yields for each
    of its k-points ``(ph, Lc, A)``: the phases of its entries, the Cholesky factor of the true S(k) and the
    true orthogonalised ``A = L^-1 H L^-H`` (both without gradient). ``kpoints()`` gives a structure's (k, 3)
    fractional k-points; it is called once per structure, after the Fermi-level check (random draws keep
    their order)."""
    true, S = g["H"].to(dtype), g["S"].to(dtype)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    def at_k(sel, n, flat, phase):
        for kk in range(phase.shape[1]):
            ph = phase[:, kk]
            with torch.no_grad():
                Lc = _cholesky_of(_at_k(S[sel], flat, n, ph))
                A = _orthogonalised(_at_k(true[sel], flat, n, ph), Lc)
            yield ph, Lc, A

    for b in range(num_structures):
        fermi = float(g["fermi"][b])
        if not math.isfinite(fermi):
            continue
        sel, n, flat, R = _kspace(g, b, dtype)
        yield b, fermi, sel, n, flat, at_k(sel, n, flat, _phases(R, kpoints(), cdtype))


def _random_kpoints(num_k: int, generator, pred):
    return lambda: torch.rand(num_k, 3, generator=generator, dtype=pred.dtype).to(pred.device)


def band_loss(pred, g: dict, num_structures: int, num_k: int = 2, window_eV: float = 3.0, delta: float = 0.01,
              generator=None):
    """Huber loss of the band energies of the predicted H at ``num_k`` random k-points per structure.

    The eigenvalues ``e`` of ``H(k) c = e S(k) c`` with the *true* S(k) (Cholesky ``S = L L^H``,
    ``A = L^-1 H L^-H``), predicted against true, shifted by the structure's gauge ``dmu`` (exactly
    the eigenvalue shift of ``H + dmu S``, so the term is gauge-invariant), over the bands whose true
    energy lies within the structure's Fermi level +- ``window_eV``. This is what bands see: an H error
    along a near-null direction of S(k) costs here what it costs in the band structure, however small
    its share of the entry-wise loss. Needs the ``with_kspace`` fields of :func:`prepare_graph`;
    structures without a Fermi level are skipped. Returns a scalar (0 when nothing was compared).
    """
    dmu = gauge_shift(pred.detach(), g["H"].to(pred.dtype), g["S"].to(pred.dtype), g["entry_batch"], num_structures)
    total, count = pred.new_zeros(()), 0
    for b, fermi, sel, n, flat, at_k in _true_problems(g, num_structures, pred.dtype,
                                                       _random_kpoints(num_k, generator, pred)):
        pred_b = pred[sel]
        for ph, Lc, A in at_k:
            et = torch.linalg.eigvalsh(A)
            keep = (et - fermi).abs() <= window_eV
            if not bool(keep.any()):
                continue
            ep = torch.linalg.eigvalsh(_orthogonalised(_at_k(pred_b, flat, n, ph), Lc))
            total = total + _huber((ep - dmu[b] - et)[keep], delta).mean()
            count += 1
    return total / max(count, 1)


def projected_band_loss(pred, g: dict, num_structures: int, num_k: int = 2, window_eV: float = 3.0,
                        delta: float = 0.01, generator=None):
    """Huber loss of the H error in the DFT eigenbasis, weighted by distance from the Fermi level.

    At ``num_k`` random k-points per structure, with the *true* generalised eigenvectors ``C``
    (``H C = S C E``, ``C^H S C = 1``, no gradient) the error ``D = C^H (H_pred - H_true - dmu S) C`` is
    what moves the bands: ``D_nn`` is the first-order shift of band n and ``D_nm`` couples bands n and m.
    Entries are weighted by ``w_n w_m`` with ``w_n = (1 + |E_n - E_F| / window_eV)^-1/2`` (second order goes
    as ``|D_nm|^2 / (E_m - E_n)``), so the bands near E_F count most, their couplings to the high-energy
    states that live in the near-null space of S(k) next, and errors among those states least. Unlike the
    eigenvalue loss (:func:`band_loss`) it is convex in ``H_pred`` (no eigensolver in the backward pass) and
    zero only where the predicted H is exact in every direction. Gauge-invariant (``dmu``); the Huber
    function acts on ``|D_nm|``, so the eigenvectors' phases do not matter.
    """
    true, S = g["H"].to(pred.dtype), g["S"].to(pred.dtype)
    dmu = gauge_shift(pred.detach(), true, S, g["entry_batch"], num_structures)
    total, count = pred.new_zeros(()), 0
    for b, fermi, sel, n, flat, at_k in _true_problems(g, num_structures, pred.dtype,
                                                       _random_kpoints(num_k, generator, pred)):
        err = pred[sel] - true[sel] - dmu[b] * S[sel]
        for ph, Lc, A in at_k:
            with torch.no_grad():
                e, U = torch.linalg.eigh(A)
                C = torch.linalg.solve_triangular(Lc.conj().T, U, upper=True)          # C = L^-H U
                Cw = C * (1.0 + (e - fermi).abs() / window_eV).rsqrt().to(C.dtype)[None, :]
            D = Cw.conj().T @ _at_k(err, flat, n, ph) @ Cw
            total = total + _huber(D.abs(), delta).mean()
            count += 1
    return total / max(count, 1)


@torch.no_grad()
def band_errors(pred, g: dict, num_structures: int, kpts, window_eV: float = 3.0):
    """Sum of |e_pred - dmu - e_true| (eV) and its count per structure at the fixed ``kpts`` (fractional),
    over the bands whose true energy is within E_F +- ``window_eV`` (bands matched by index from the
    bottom, as ``aiida-deeph bands`` users compare them). Structures without a Fermi level count 0."""
    pred = pred.detach().to(torch.float64)
    dmu = gauge_shift(pred, g["H"].to(pred), g["S"].to(pred), g["entry_batch"], num_structures)
    sums, counts = np.zeros(num_structures), np.zeros(num_structures, dtype=np.int64)
    kpts = torch.as_tensor(np.asarray(kpts), dtype=pred.dtype, device=pred.device)
    for b, fermi, sel, n, flat, at_k in _true_problems(g, num_structures, pred.dtype, lambda: kpts):
        pred_b = pred[sel]
        for ph, Lc, A in at_k:
            et = torch.linalg.eigvalsh(A)
            ep = torch.linalg.eigvalsh(_orthogonalised(_at_k(pred_b, flat, n, ph), Lc)) - dmu[b]
            keep = (et - fermi).abs() <= window_eV
            sums[b] += float((ep - et)[keep].abs().sum())
            counts[b] += int(keep.sum())
    return sums, counts


class MetricAccumulator:
    """Accumulates absolute errors (eV) per element, element pair and structure; reports meV."""

    def __init__(self, elements):
        self.elements = list(elements)
        n = len(self.elements)
        self.el_sum = np.zeros((2, n))
        self.el_cnt = np.zeros(n)
        self.pair_sum = np.zeros((2, n, n))
        self.pair_cnt = np.zeros((n, n))
        self.total = np.zeros(2)
        self.count = 0
        self.per_structure: dict = {}

    @torch.no_grad()
    def add_batch(self, g: dict, pred: torch.Tensor, names) -> None:
        B = len(names)
        pred = pred.detach().to(torch.float64)
        true = g["H"].to(pred)
        S = g["S"].to(pred)
        eb = g["entry_batch"]
        res_c = gauge_residual(pred, true, S, eb, B).abs()
        res_u = (pred - true).abs()
        species = g["species"]
        zi = species[g["pair_i"]][g["entry_pair"]]
        zj = species[g["pair_j"]][g["entry_pair"]]
        n = len(self.elements)
        for k, res in enumerate((res_c, res_u)):
            pair_key = (torch.minimum(zi, zj) * n + torch.maximum(zi, zj))
            ps = torch.zeros(n * n, dtype=res.dtype, device=res.device).index_add_(0, pair_key, res)
            self.pair_sum[k] += ps.view(n, n).cpu().numpy()
            es = torch.zeros(n, dtype=res.dtype, device=res.device).index_add_(0, zi, res)
            es.index_add_(0, zj, torch.where(zi != zj, res, torch.zeros_like(res)))
            self.el_sum[k] += es.cpu().numpy()
            self.total[k] += float(res.sum())
            sums = torch.zeros(B, dtype=res.dtype, device=res.device).index_add_(0, eb, res).cpu().numpy()
            cnts = torch.bincount(eb, minlength=B).cpu().numpy()
            for b, name in enumerate(names):
                entry = self.per_structure.setdefault(name, [0.0, 0.0, 0])
                entry[k] += float(sums[b])
                if k == 0:
                    entry[2] += int(cnts[b])
        ones = torch.ones_like(res_c)
        pair_key = (torch.minimum(zi, zj) * n + torch.maximum(zi, zj))
        self.pair_cnt += torch.zeros(n * n, dtype=ones.dtype, device=ones.device).index_add_(0, pair_key, ones).view(n, n).cpu().numpy()
        ec = torch.zeros(n, dtype=ones.dtype, device=ones.device).index_add_(0, zi, ones)
        ec.index_add_(0, zj, (zi != zj).to(ones.dtype))
        self.el_cnt += ec.cpu().numpy()
        self.count += int(pred.numel())

    def state(self) -> np.ndarray:
        """Flat vector of the additive parts (for all_reduce across ranks); per_structure excluded."""
        return np.concatenate([self.el_sum.ravel(), self.el_cnt, self.pair_sum.ravel(), self.pair_cnt.ravel(),
                               self.total, [self.count]])

    def load_state(self, vec: np.ndarray) -> None:
        n = len(self.elements)
        k = 0

        def take(size, shape):
            nonlocal k
            out = np.asarray(vec[k:k + size]).reshape(shape)
            k += size
            return out

        self.el_sum = take(2 * n, (2, n))
        self.el_cnt = take(n, (n,))
        self.pair_sum = take(2 * n * n, (2, n, n))
        self.pair_cnt = take(n * n, (n, n))
        self.total = take(2, (2,))
        self.count = int(take(1, (1,))[0])

    @property
    def mae_meV(self) -> float:
        return float(1000.0 * self.total[0] / self.count) if self.count else math.nan

    def result(self, per_structure: bool = True) -> dict:
        n = len(self.elements)
        out = {
            "mae_meV": self.mae_meV,
            "mae_uncorrected_meV": float(1000.0 * self.total[1] / self.count) if self.count else math.nan,
            "num_entries": self.count,
            "num_structures": len(self.per_structure),
            "per_element_meV": {},
            "per_element_uncorrected_meV": {},
            "per_element_pair_meV": {},
            "per_element_pair_uncorrected_meV": {},
            "per_element_pair_entries": {},
        }
        for a in range(n):
            if self.el_cnt[a]:
                out["per_element_meV"][self.elements[a]] = float(1000.0 * self.el_sum[0, a] / self.el_cnt[a])
                out["per_element_uncorrected_meV"][self.elements[a]] = float(1000.0 * self.el_sum[1, a] / self.el_cnt[a])
        for a in range(n):
            for b in range(a, n):
                if self.pair_cnt[a, b]:
                    x, y = sorted((self.elements[a], self.elements[b]))
                    key = f"{x}-{y}"
                    out["per_element_pair_meV"][key] = float(1000.0 * self.pair_sum[0, a, b] / self.pair_cnt[a, b])
                    out["per_element_pair_uncorrected_meV"][key] = float(1000.0 * self.pair_sum[1, a, b] / self.pair_cnt[a, b])
                    out["per_element_pair_entries"][key] = int(self.pair_cnt[a, b])
        if per_structure:
            out["per_structure_meV"] = {
                name: {"mae_meV": 1000.0 * c / k, "mae_uncorrected_meV": 1000.0 * u / k, "num_entries": k}
                for name, (c, u, k) in sorted(self.per_structure.items()) if k
            }
        return out
