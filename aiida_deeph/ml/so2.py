"""Equivariant building blocks in the eSCN / DeepH-2 style (pure: torch + e3nn).

Feature layout everywhere: ``x[..., s, c]`` with ``s = l*l + l + m`` (e3nn's real-harmonic order of
irrep ``l``, ``m = -l..l``; e3nn's polar axis is **y**) and ``c`` the channel.  Each ``l`` holds
``C`` channels: the first ``C/2`` have the *natural* parity ``(-1)^l`` (0e, 1o, 2e, ...), the last
``C/2`` the other one (0o, 1e, 2o, ...).  Under a rotation ``R`` the ``m`` axis of ``l`` transforms
with ``o3.Irrep(l, .).D_from_matrix(R)``; under inversion a coefficient changes sign when its
parity is odd.

In the local frame of an edge (edge direction rotated onto e3nn's polar axis y) the components
``(l, -m)`` and ``(l, +m)`` rotate into each other with angle ``m*phi`` (same orientation for every
l, checked at import), and the reflections that keep the edge fixed act as ``diag(-1, +1)`` on them
(times the parity class).  The most general linear map that commutes with both is, per ``m``:

* natural -> natural and unnatural -> unnatural: ``W (x) I`` (also for m = 0);
* natural <-> unnatural: ``W (x) J`` with ``J (x_-, x_+) = (-x_+, x_-)`` (m > 0 only),

which is the SO(2) convolution (linear maps mixing all ``l >= |m|``).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def num_coeffs(lmax: int) -> int:
    return (lmax + 1) ** 2


def l_of_coeff(lmax: int) -> torch.Tensor:
    return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.long)


def m_indices(lmax: int, m: int) -> torch.Tensor:
    """Coefficient indices of order ``m`` (signed) for all l >= |m|."""
    return torch.tensor([l * l + l + m for l in range(abs(m), lmax + 1)], dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# Wigner-D matrices (block diagonal over l = 0..lmax) for rotations into the edge frame
# ------------------------------------------------------------------------------------------------
class WignerBlocks(nn.Module):
    """Fast Wigner-D for ``R_y(a) R_x(b)`` products: D(R_y(t)) is a sum of cos/sin of ``m t``."""

    def __init__(self, lmax: int):
        super().__init__()
        from .harmonics import float64_default

        with float64_default():   # e3nn builds its generators in the default dtype
            self._build(lmax)

    def _build(self, lmax: int):
        from e3nn import o3

        self.lmax = lmax
        S = num_coeffs(lmax)
        A = torch.zeros(lmax + 1, S, S, dtype=torch.float64)   # projector on +-m (m=0: itself)
        B = torch.zeros(lmax + 1, S, S, dtype=torch.float64)   # antisymmetric +-m mixer
        for l in range(lmax + 1):
            c = l * l + l
            A[0, c, c] = 1.0
            for m in range(1, l + 1):
                A[m, c - m, c - m] = 1.0
                A[m, c + m, c + m] = 1.0
                B[m, c - m, c + m] = 1.0
                B[m, c + m, c - m] = -1.0
        Q = o3.matrix_z(torch.tensor(-math.pi / 2, dtype=torch.float64))   # Q y = x
        K = torch.block_diag(*[o3.Irrep(l, 1).D_from_matrix(Q) for l in range(lmax + 1)])
        # self-check against e3nn
        t = torch.tensor(0.731, dtype=torch.float64)
        ref_y = torch.block_diag(*[o3.Irrep(l, 1).D_from_matrix(o3.matrix_y(t)) for l in range(lmax + 1)])
        ref_x = torch.block_diag(*[o3.Irrep(l, 1).D_from_matrix(o3.matrix_x(t)) for l in range(lmax + 1)])
        mine_y = self._dy(t[None], A, B)[0]
        if not torch.allclose(mine_y, ref_y, atol=1e-12) or not torch.allclose(K @ mine_y @ K.T, ref_x, atol=1e-12):
            raise RuntimeError("e3nn real-harmonic convention differs from the one SO(2) layers assume")
        # kept in float64 outside the module's buffers (so .float()/.double() never round them)
        self._mats64 = (A, B, K)
        self._cache: dict = {}

    def _mats(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=like.device, dtype=like.dtype) for t in self._mats64)
        return self._cache[key]

    @staticmethod
    def _dy(theta, A, B):
        m = torch.arange(A.shape[0], dtype=theta.dtype, device=theta.device)
        cos = torch.cos(theta[:, None] * m)            # (E, L+1)
        sin = torch.sin(theta[:, None] * m)
        return torch.einsum("em,mab->eab", cos, A) + torch.einsum("em,mab->eab", sin, B)

    def edge_frame(self, vec: torch.Tensor) -> torch.Tensor:
        """D(R_e) (E, S, S) for the rotation R_e that takes the unit edge vector onto +y."""
        unit = vec / vec.norm(dim=-1, keepdim=True)
        x, y, z = unit.unbind(-1)
        alpha = torch.atan2(x, z)
        beta = torch.atan2(torch.sqrt(x * x + z * z), y)     # acos(y) loses precision near the poles
        A, B, K = self._mats(vec)
        # R_e = (R_y(alpha) R_x(beta))^T = R_x(-beta) R_y(-alpha);  D(R_x(t)) = K D(R_y(t)) K^T
        Dx = K @ self._dy(-beta, A, B) @ K.T
        Dy = self._dy(-alpha, A, B)
        return Dx @ Dy


def rotate(D: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply per-edge D (E, S, S) to features (E, S, C)."""
    return torch.bmm(D, x)


def rotate_back(D: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.bmm(D.transpose(1, 2), x)


def cat_channels(tensors) -> torch.Tensor:
    """Concatenate along channels keeping the (natural | unnatural) halves layout."""
    nat = [t[..., : t.shape[-1] // 2] for t in tensors]
    unn = [t[..., t.shape[-1] // 2:] for t in tensors]
    return torch.cat(nat + unn, dim=-1)


# ------------------------------------------------------------------------------------------------
# SO(2) convolution
# ------------------------------------------------------------------------------------------------
class SO2Linear(nn.Module):
    """SO(2)- and reflection-equivariant linear map in the edge frame, (E, S, Cin) -> (E, S, Cout).

    ``radial_modulation`` (optional, (E, n_mod)) multiplies the inputs per (m, l, channel), giving
    distance-dependent weights; ``n_mod = self.num_modulation``.
    """

    def __init__(self, c_in: int, c_out: int, lmax: int, mmax: int | None = None, bias: bool = True):
        super().__init__()
        if c_in % 2 or c_out % 2:
            raise ValueError("channel counts must be even (natural | unnatural halves)")
        self.c_in, self.c_out, self.lmax = c_in, c_out, lmax
        self.mmax = lmax if mmax is None else min(mmax, lmax)
        hi, ho = c_in // 2, c_out // 2
        self.weights = nn.ParameterList()
        for m in range(self.mmax + 1):
            L = lmax - m + 1
            n_w = 2 if m == 0 else 4
            w = torch.empty(n_w, L * hi, L * ho)
            # fan-in of one output: natural and unnatural inputs of all l (m > 0)
            fan = L * hi * (1 if m == 0 else 2)
            nn.init.normal_(w, std=1.0 / math.sqrt(fan))
            self.weights.append(nn.Parameter(w))
        self.bias = nn.Parameter(torch.zeros(ho)) if bias else None
        for m in range(self.mmax + 1):
            self.register_buffer(f"idx_p{m}", m_indices(lmax, m), persistent=False)
            self.register_buffer(f"idx_m{m}", m_indices(lmax, -m), persistent=False)
        self.num_modulation = sum((lmax - m + 1) * c_in for m in range(self.mmax + 1))

    def forward(self, x: torch.Tensor, radial_modulation: torch.Tensor | None = None) -> torch.Tensor:
        E = x.shape[0]
        hi, ho = self.c_in // 2, self.c_out // 2
        out = x.new_zeros(E, x.shape[1], self.c_out)
        k = 0
        for m in range(self.mmax + 1):
            L = self.lmax - m + 1
            W = self.weights[m]
            ip = getattr(self, f"idx_p{m}")
            xp = x[:, ip, :]                                  # (E, L, Cin)
            mod = None
            if radial_modulation is not None:
                mod = radial_modulation[:, k:k + L * self.c_in].view(E, L, self.c_in)
                k += L * self.c_in
                xp = xp * mod
            if m == 0:
                yn = xp[..., :hi].reshape(E, L * hi) @ W[0]
                yu = xp[..., hi:].reshape(E, L * hi) @ W[1]
                y = torch.cat([yn.view(E, L, ho), yu.view(E, L, ho)], dim=-1)
                if self.bias is not None:
                    y[:, 0, :ho] = y[:, 0, :ho] + self.bias
                out[:, ip, :] = y
                continue
            im = getattr(self, f"idx_m{m}")
            xm = x[:, im, :]
            if mod is not None:
                xm = xm * mod
            # stack (-m, +m) along the batch axis
            pn = xp[..., :hi].reshape(E, L * hi)
            pu = xp[..., hi:].reshape(E, L * hi)
            mn = xm[..., :hi].reshape(E, L * hi)
            mu = xm[..., hi:].reshape(E, L * hi)
            # out_n = x_n W_nn + (J x_u) W_un ;  out_u = x_u W_uu + (J x_n) W_nu ;  J(x-, x+) = (-x+, x-)
            nat_in = torch.cat([mn, pn], 0)
            unn_in = torch.cat([mu, pu], 0)
            j_unn = torch.cat([-pu, mu], 0)
            j_nat = torch.cat([-pn, mn], 0)
            on = nat_in @ W[0] + j_unn @ W[2]
            ou = unn_in @ W[1] + j_nat @ W[3]
            on_m, on_p = on.view(2, E, L, ho).unbind(0)
            ou_m, ou_p = ou.view(2, E, L, ho).unbind(0)
            out[:, im, :] = torch.cat([on_m, ou_m], -1)
            out[:, ip, :] = torch.cat([on_p, ou_p], -1)
        return out


# ------------------------------------------------------------------------------------------------
# Equivariant pointwise layers (global or local frame alike)
# ------------------------------------------------------------------------------------------------
class EquiLinear(nn.Module):
    """Per-l channel mixing within each parity half; bias on 0e only."""

    def __init__(self, c_in: int, c_out: int, lmax: int, bias: bool = True):
        super().__init__()
        self.lmax, self.c_in, self.c_out = lmax, c_in, c_out
        hi, ho = c_in // 2, c_out // 2
        w = torch.randn(lmax + 1, 2, hi, ho) / math.sqrt(hi)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(ho)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hi = self.c_in // 2
        outs = []
        for l in range(self.lmax + 1):
            xl = x[:, l * l:(l + 1) * (l + 1), :]
            outs.append(torch.cat([xl[..., :hi] @ self.weight[l, 0], xl[..., hi:] @ self.weight[l, 1]], -1))
        y = torch.cat(outs, 1)
        if self.bias is not None:
            ho = self.c_out // 2
            y[:, 0, :ho] = y[:, 0, :ho] + self.bias
        return y


class Gate(nn.Module):
    """SiLU on 0e channels; every other (l, channel) scaled by a sigmoid of the 0e channels."""

    def __init__(self, channels: int, lmax: int):
        super().__init__()
        self.lmax, self.channels = lmax, channels
        h = channels // 2
        self.gates = nn.Linear(h, (lmax + 1) * channels)
        self.register_buffer("l_of", l_of_coeff(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.channels // 2
        s = x[:, 0, :h]
        g = torch.sigmoid(self.gates(s)).view(x.shape[0], self.lmax + 1, self.channels)[:, self.l_of, :]
        y = x * g
        y[:, 0, :h] = torch.nn.functional.silu(s)
        return y


class EquiLayerNorm(nn.Module):
    """Equivariant layer norm: LayerNorm on the 0e channels; everything else divided by one RMS
    taken over all other (l, m, channel) coefficients together (a per-l RMS would amplify the
    round-off of features that vanish by symmetry), then scaled per (l, channel)."""

    def __init__(self, channels: int, lmax: int, eps: float = 1e-6):
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels // 2))
        self.register_buffer("l_of", l_of_coeff(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.channels // 2
        s = x[:, 0, :h]
        s = s - s.mean(dim=-1, keepdim=True)
        s = s / s.pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()
        count = x.shape[1] * x.shape[2] - h
        sq = x.pow(2).sum(dim=(1, 2)) - x[:, 0, :h].pow(2).sum(dim=-1)
        rms = (sq.clamp_min(0.0) / count).add(self.eps).sqrt()
        y = x / rms[:, None, None]
        y = torch.cat([torch.cat([s, y[:, :1, h:].squeeze(1)], -1)[:, None, :], y[:, 1:, :]], 1)
        y = y * self.weight[self.l_of]
        y[:, 0, :h] = y[:, 0, :h] + self.bias
        return y


def scatter_softmax(logits: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Softmax of (E, H) logits over edges sharing ``index`` (the destination node)."""
    H = logits.shape[1]
    mx = torch.full((num, H), -torch.inf, dtype=logits.dtype, device=logits.device)
    mx = mx.scatter_reduce(0, index[:, None].expand(-1, H), logits, reduce="amax", include_self=True)
    ex = torch.exp(logits - mx[index].detach())
    den = torch.zeros((num, H), dtype=logits.dtype, device=logits.device).index_add_(0, index, ex)
    return ex / den[index].clamp_min(1e-30)
