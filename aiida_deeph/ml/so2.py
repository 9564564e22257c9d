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
class _PermuteRows(torch.autograd.Function):
    """``x.index_select(1, perm)`` for a bijection ``perm``; backward is the inverse gather (no
    zero-filled buffer, no index_add)."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(perm, inv)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx, grad):
        perm, inv = ctx.saved_tensors
        return _PermuteRows.apply(grad, inv, perm), None, None


def _m_major_rows(lmax: int, mmax: int) -> list:
    """Row order of the m-major layout of ``x.view(E, 2S, C/2)`` (row ``2s + p``, parity half p).

    m = 0: (p, l) for p in (natural, unnatural), l = 0..lmax.  Each m > 0: two "pairs" of the
    rows one output pair needs, ``[natural of -m | unnatural of +m]`` then ``[natural of +m |
    unnatural of -m]``, each by l = m..lmax.  Then the rows of |m| > mmax (unused, zero output).
    """
    def row(l, m, p):
        return 2 * (l * l + l + m) + p
    rows = [row(l, 0, p) for p in (0, 1) for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        for sn, su in ((-m, m), (m, -m)):
            rows += [row(l, sn, 0) for l in range(m, lmax + 1)]
            rows += [row(l, su, 1) for l in range(m, lmax + 1)]
    used = set(rows)
    rows += [r for r in range(2 * num_coeffs(lmax)) if r not in used]
    return rows


class SO2Linear(nn.Module):
    """SO(2)- and reflection-equivariant linear map in the edge frame, (E, S, Cin) -> (E, S, Cout).

    ``radial_modulation`` (optional, (E, n_mod)) multiplies the inputs per (m, l, channel), giving
    distance-dependent weights; ``n_mod = self.num_modulation`` (blocks of (L, Cin) for m = 0..mmax,
    each applied to both -m and +m).  Coefficients with ``|m| > mmax`` get zero output.

    ``weights[m]`` is ``(n_w, L*hi, L*ho)`` (``n_w`` = 2 for m = 0, else 4: natural->natural,
    unnatural->unnatural, unnatural->natural (with J), natural->unnatural (with J)); rows/columns
    ordered (l, channel).  The forward works in an "m-major" layout: ONE row permutation of
    ``x.view(E, 2S, hi)`` (rows ``2s + parity``) groups the rows each per-m product needs into
    contiguous slices; per m > 0 one batched matmul of the two pairs ``[x_n(-m) | x_u(+m)]`` and
    ``[x_n(+m) | x_u(-m)]`` with the fused weights ``[[W0, W3], [-W2, W1]]`` and
    ``[[W0, -W3], [W2, W1]]`` gives ``[y_n(-m) | y_u(+m)]`` and ``[y_n(+m) | y_u(-m)]`` (rows again in
    the m-major order); one concatenation and the inverse permutation restore ``(E, S, Cout)``.
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
        rows = _m_major_rows(lmax, self.mmax)
        perm = torch.tensor(rows, dtype=torch.long)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        # row counts of the m blocks (2L for m = 0, 4L for m > 0), then the unused |m| > mmax rows
        self._block_rows = [2 * (lmax + 1)] + [4 * (lmax - m + 1) for m in range(1, self.mmax + 1)]
        self._unused_rows = len(rows) - sum(self._block_rows)
        # W (4, K, Ko) -> (2, 2, 2, K, Ko): pair b, input half i, output half j
        self.register_buffer("_w_pick", torch.tensor([0, 3, 2, 1], dtype=torch.long), persistent=False)
        sign = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]], [[1.0, -1.0], [1.0, 1.0]]], dtype=torch.float64)
        self._w_sign64 = sign[:, :, :, None, None]
        self._sign_cache: dict = {}
        self._mod_sizes = [(lmax - m + 1) * c_in for m in range(self.mmax + 1)]
        self.num_modulation = sum(self._mod_sizes)

    def _sign(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._sign_cache:
            self._sign_cache[key] = self._w_sign64.to(device=like.device, dtype=like.dtype)
        return self._sign_cache[key]

    def _pair_weights(self, W: torch.Tensor) -> torch.Tensor:
        """(4, K, Ko) -> (2, 2K, 2Ko): ``[[W0, W3], [-W2, W1]]`` and ``[[W0, -W3], [W2, W1]]``."""
        _, K, Ko = W.shape
        Wq = W.index_select(0, self._w_pick).view(1, 2, 2, K, Ko) * self._sign(W)
        return Wq.permute(0, 1, 3, 2, 4).reshape(2, 2 * K, 2 * Ko)

    def forward(self, x: torch.Tensor, radial_modulation: torch.Tensor | None = None) -> torch.Tensor:
        E, S = x.shape[0], x.shape[1]
        hi, ho = self.c_in // 2, self.c_out // 2
        xs = _PermuteRows.apply(x.reshape(E, 2 * S, hi), self.perm, self.inv_perm)
        blocks = torch.split(xs, self._block_rows + [self._unused_rows], dim=1)
        mods = None
        if radial_modulation is not None:
            mods = torch.split(radial_modulation, self._mod_sizes, dim=1)
        pieces = []
        for m in range(self.mmax + 1):
            L = self.lmax - m + 1
            K, Ko = L * hi, L * ho
            W = self.weights[m]
            n_pair = 1 if m == 0 else 2            # inputs per batch: [n | u] of one m, or two pairs
            xb = blocks[m].reshape(E, n_pair, 2, L, hi)                     # rows (pair, half, l)
            if mods is not None:
                # modulation (L, 2, hi) per l / parity half, the same for -m and +m
                mod = mods[m].view(E, 1, L, 2, hi).permute(0, 1, 3, 2, 4)   # (E, 1, 2, L, hi)
                xb = xb * mod
            if m == 0:
                a = xb.reshape(E, 2, K).transpose(0, 1)                     # (2, E, K): n, u
                if self.bias is None:
                    y = torch.bmm(a, W)
                else:   # bias on the natural l = 0 row only
                    y = torch.baddbmm(torch.cat([self.bias, self.bias.new_zeros(2 * Ko - ho)]).view(2, 1, Ko), a, W)
                yn, yu = y.unbind(0)                                        # (E, Ko) each
                pieces += [yn.view(E, L, ho), yu.view(E, L, ho)]
                continue
            a = xb.reshape(E, 2, 2 * K).transpose(0, 1)                     # (2, E, 2K)
            y1, y2 = torch.bmm(a, self._pair_weights(W)).unbind(0)          # (E, 2Ko) each
            pieces += [y1.view(E, 2 * L, ho), y2.view(E, 2 * L, ho)]
        if self._unused_rows:
            pieces.append(pieces[-1].new_zeros(E, self._unused_rows, ho))
        out = _PermuteRows.apply(torch.cat(pieces, 1), self.inv_perm, self.perm)
        if out.dtype != x.dtype:   # autocast: the reference scattered into a buffer of x's dtype
            out = out.to(x.dtype)
        return out.view(E, S, self.c_out)


# ------------------------------------------------------------------------------------------------
# Equivariant pointwise layers (global or local frame alike)
# ------------------------------------------------------------------------------------------------
class EquiLinear(nn.Module):
    """Per-l channel mixing within each parity half; bias on 0e only.

    One batched matmul over the 2S (coefficient, parity half) rows with the weight of each row's l
    (``weight`` (lmax+1, 2, hi, ho) expanded along the coefficients)."""

    def __init__(self, c_in: int, c_out: int, lmax: int, bias: bool = True):
        super().__init__()
        self.lmax, self.c_in, self.c_out = lmax, c_in, c_out
        hi, ho = c_in // 2, c_out // 2
        w = torch.randn(lmax + 1, 2, hi, ho) / math.sqrt(hi)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(ho)) if bias else None
        self.register_buffer("l_of", l_of_coeff(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        E, S = x.shape[0], x.shape[1]
        hi, ho = self.c_in // 2, self.c_out // 2
        a = x.reshape(E, 2 * S, hi).transpose(0, 1)                          # (2S, E, hi)
        w = self.weight.index_select(0, self.l_of).view(2 * S, hi, ho)
        if self.bias is None:
            y = torch.bmm(a, w)                                              # (2S, E, ho)
        else:   # bias on the natural half of s = 0 (row 0) only
            b = torch.cat([self.bias, self.bias.new_zeros((2 * S - 1) * ho)]).view(2 * S, 1, ho)
            y = torch.baddbmm(b, a, w)
        return y.transpose(0, 1).reshape(E, S, self.c_out)


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
