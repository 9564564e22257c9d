"""The m-major SO2Linear / batched EquiLinear against verbatim copies of the earlier per-m / per-l
implementations (float64): same state_dict -> same outputs and the same gradients."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from aiida_deeph.ml.so2 import EquiLinear, SO2Linear, m_indices  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Reference copies of the earlier implementations (kept here only, not in the package)
# ------------------------------------------------------------------------------------------------
class _SO2LinearReference(nn.Module):
    """Verbatim copy of the earlier SO2Linear (per-m gathers scattered into a zero buffer)."""

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


class _EquiLinearReference(nn.Module):
    """Verbatim copy of the earlier EquiLinear (per-l loop with torch.cat)."""

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


# ------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------
def _compare(ref, new, inputs, seed=3):
    """Forward + backward with the same random cotangent; returns {name: max |diff| / max |ref|}."""
    ins_r = [t.detach().clone().requires_grad_(True) for t in inputs]
    ins_n = [t.detach().clone().requires_grad_(True) for t in inputs]
    yr, yn = ref(*ins_r), new(*ins_n)
    assert yr.shape == yn.shape and yr.dtype == yn.dtype
    gy = torch.randn(yr.shape, dtype=yr.dtype, generator=torch.Generator().manual_seed(seed))
    (yr * gy).sum().backward()
    (yn * gy).sum().backward()
    pairs = {"out": (yr, yn)}
    for i, (a, b) in enumerate(zip(ins_r, ins_n)):
        pairs[f"d_in{i}"] = (a.grad, b.grad)
    pn = dict(new.named_parameters())
    for name, p in ref.named_parameters():
        pairs[f"d_{name}"] = (p.grad, pn[name].grad)
    err = {}
    for k, (a, b) in pairs.items():
        assert b is not None, k
        scale = a.abs().max().item() or 1.0
        err[k] = (a - b).abs().max().item() / scale
    return err


SO2_CASES = [(0, None), (1, None), (2, None), (2, 1), (3, None), (4, None), (4, 2), (4, 0), (5, 3)]


@pytest.mark.parametrize("lmax,mmax", SO2_CASES)
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_so2linear_matches_reference(lmax, mmax, modulated, bias):
    torch.manual_seed(lmax * 10 + (mmax or 0))
    c_in, c_out, E = 12, 8, 37
    ref = _SO2LinearReference(c_in, c_out, lmax, mmax, bias=bias).double()
    if bias:
        with torch.no_grad():
            ref.bias.normal_()
    new = SO2Linear(c_in, c_out, lmax, mmax, bias=bias).double()
    new.load_state_dict(ref.state_dict())          # same checkpoint format
    assert new.num_modulation == ref.num_modulation
    assert [tuple(p.shape) for p in new.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    x = torch.randn(E, (lmax + 1) ** 2, c_in, dtype=torch.float64)
    inputs = [x]
    if modulated:
        inputs.append(torch.randn(E, ref.num_modulation, dtype=torch.float64))
    err = _compare(ref, new, inputs)
    assert max(err.values()) < 1e-12, err


def test_so2linear_zero_rows_beyond_mmax():
    lmax, mmax = 4, 2
    new = SO2Linear(6, 4, lmax, mmax).double()
    y = new(torch.randn(5, (lmax + 1) ** 2, 6, dtype=torch.float64))
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            if abs(m) > mmax:
                assert torch.all(y[:, l * l + l + m] == 0)


def test_so2linear_float32_and_reference_state_dict():
    torch.manual_seed(0)
    ref = _SO2LinearReference(48, 16, 4, 2)
    new = SO2Linear(48, 16, 4, 2)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(20, 25, 48)
    rad = torch.randn(20, ref.num_modulation)
    yr, yn = ref(x, rad), new(x, rad)
    assert yn.dtype == torch.float32
    assert torch.allclose(yr, yn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lmax", [0, 1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_equilinear_matches_reference(lmax, bias):
    torch.manual_seed(lmax)
    ref = _EquiLinearReference(10, 14, lmax, bias=bias).double()
    if bias:
        with torch.no_grad():
            ref.bias.normal_()
    new = EquiLinear(10, 14, lmax, bias=bias).double()
    new.load_state_dict(ref.state_dict())
    x = torch.randn(23, (lmax + 1) ** 2, 10, dtype=torch.float64)
    err = _compare(ref, new, [x])
    assert max(err.values()) < 1e-12, err


def test_double_backward_runs():
    lmax = 2
    new = SO2Linear(4, 4, lmax).double()
    x = torch.randn(3, (lmax + 1) ** 2, 4, dtype=torch.float64, requires_grad=True)
    rad = torch.randn(3, new.num_modulation, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: new(a, b), (x, rad))
    assert torch.autograd.gradgradcheck(lambda a, b: new(a, b), (x, rad))
