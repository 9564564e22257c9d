"""DeepH-2: equivariant transformer in local coordinates (eSCN-style SO(2) convolutions).

Graph: nodes = atoms; edges = the atom pairs of the Hamiltonian (both directions, periodic images,
``i == j`` with ``R != 0``) except the on-site pairs ``(0,0,0,i,i)``, which come from the nodes.
The edge ``p = (R, i, j)`` carries the block ``<i, 0|H|j, R>``; its vector is ``r_j + R.cell - r_i``
and its message flows from ``j`` to ``i``.

Output: a Wigner-Eckart layer per (ordered) element pair.  All elements are embedded in a
*super-basis* (radial functions per l = the maximum over the elements, e.g. s3p2d2): the
network predicts the irreps of the full super-basis block (shared channels), and every element
pair takes its own rows/columns (its radial function number z of l sits at slot z of l), in
OpenMX orbital order.  On-site and hopping blocks are symmetrised, ``H_ij(R) = H_ji(-R)^T``.

Pure module: torch, e3nn, numpy.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from .config import ModelConfig
from .graph import BasisMap, collate_graphs, graph_to, prepare_graph
from .harmonics import ls_from_multiplicity
from .so2 import (
    EquiLayerNorm,
    EquiLinear,
    Gate,
    SO2Linear,
    WignerBlocks,
    cat_channels,
    l_of_coeff,
    m_indices,
    num_coeffs,
    rotate,
    rotate_back,
    scatter_softmax,
)
from .wigner_eckart import PairBasis


# ------------------------------------------------------------------------------------------------
# network
# ------------------------------------------------------------------------------------------------
class GaussianSmearing(nn.Module):
    def __init__(self, stop: float, num: int):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, stop, num))
        spacing = stop / max(num - 1, 1)
        self.coeff = -0.5 / spacing ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (d[:, None] - self.centers.to(d.dtype)) ** 2)


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n pi d / rc) / d`` (n = 1..num) times a polynomial envelope (p = 6) that takes the
    functions and their first two derivatives smoothly to zero at ``rc`` (DimeNet / NequIP / MACE).

    Few, smooth functions that cover the whole range: with little data every radial weight is
    still trained by every distance (600 narrow Gaussians leave most weights without a training distance).
    """

    def __init__(self, cutoff: float, num: int, p: int = 6):
        super().__init__()
        self.cutoff, self.p = float(cutoff), int(p)
        self.register_buffer("freq", torch.arange(1, num + 1, dtype=torch.float64) * math.pi / self.cutoff)

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        env = (1.0 - (p + 1) * (p + 2) / 2 * x ** p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
        return torch.where(x < 1.0, env, torch.zeros_like(x))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        d = d.clamp_min(1e-6)
        x = d / self.cutoff
        b = math.sqrt(2.0 / self.cutoff) * torch.sin(self.freq.to(d.dtype) * d[:, None]) / d[:, None]
        return b * self.envelope(x)[:, None]


class EquiFFN(nn.Module):
    def __init__(self, channels: int, lmax: int, factor: int):
        super().__init__()
        self.norm = EquiLayerNorm(channels, lmax)
        self.lin1 = EquiLinear(channels, factor * channels, lmax)
        self.gate = Gate(factor * channels, lmax)
        self.lin2 = EquiLinear(factor * channels, channels, lmax)

    def forward(self, x):
        return self.lin2(self.gate(self.lin1(self.norm(x))))


class TransformerBlock(nn.Module):
    """One equivariant transformer block in local (edge) coordinates."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, L, H = cfg.channels, cfg.lmax, cfg.heads
        self.C, self.L, self.H = C, L, H
        self.norm_node = EquiLayerNorm(C, L)
        self.norm_edge = EquiLayerNorm(C, L)
        self.conv_msg = SO2Linear(3 * C, C, L, cfg.mmax)
        self.rad_msg = nn.Linear(cfg.radial_hidden, self.conv_msg.num_modulation)
        self.gate_msg = Gate(C, L)
        self.attn = nn.Sequential(nn.Linear((L + 1) * (C // 2), C), nn.SiLU(), nn.Linear(C, H))
        self.conv_val = SO2Linear(C, C, L, cfg.mmax)
        self.conv_edge = SO2Linear(C, C, L, cfg.mmax)
        self.node_out = EquiLinear(C, C, L)
        self.ffn_node = EquiFFN(C, L, cfg.ffn_factor)
        self.ffn_edge = EquiFFN(C, L, cfg.ffn_factor)
        self.register_buffer("m0", m_indices(L, 0), persistent=False)
        h = C // 2
        head_of = torch.tensor([(c % h) * H // h for c in range(C)], dtype=torch.long)
        self.register_buffer("head_of", head_of, persistent=False)

    def forward(self, x, e, D, rad, dst, src):
        N, E = x.shape[0], e.shape[0]
        xn, en = self.norm_node(x), self.norm_edge(e)
        h = cat_channels([xn[dst], xn[src], en])
        h = rotate(D, h)
        m = self.gate_msg(self.conv_msg(h, self.rad_msg(rad)))
        inv = m[:, self.m0, : self.C // 2].reshape(E, -1)          # natural m = 0 parts: invariant
        alpha = scatter_softmax(self.attn(inv), dst, N)            # (E, H)
        v = self.conv_val(m) * alpha[:, self.head_of][:, None, :]
        # the residual stream x stays in its own dtype (float32) under bf16 autocast
        agg = torch.zeros_like(x).index_add_(0, dst, rotate_back(D, v).to(x.dtype))
        x = x + self.node_out(agg)
        e = e + rotate_back(D, self.conv_edge(m))
        x = x + self.ffn_node(x)
        e = e + self.ffn_edge(e)
        return x, e


class WignerEckartHead(nn.Module):
    """Features (n, S, C) -> super-basis blocks (n, ns, ns) in OpenMX order, via irreps slots."""

    def __init__(self, cfg: ModelConfig, num_bias_rows: int):
        super().__init__()
        C, L = cfg.channels, cfg.lmax
        self.C, self.L = C, L
        mult = cfg.multiplicity
        ls = ls_from_multiplicity(mult)
        pb = PairBasis(ls, ls)
        self.ns = pb.shape[0]
        # group the irreps by (l, parity class q: 0 natural, 1 other); slots within a group
        groups: dict = {}
        start = 0
        for (_, _, l, p) in pb.irreps:
            q = 0 if p == (-1) ** l else 1
            groups.setdefault((l, q), []).append(start)
            start += 2 * l + 1
        if max(l for (l, _) in groups) > L:
            raise ValueError(f"the basis needs irreps up to l={max(l for (l, _) in groups)}, model lmax={L}")
        self.group_keys = sorted(groups)
        # permutation: slot-ordered irreps vector -> PairBasis order
        perm = []
        for (l, q) in self.group_keys:
            for s in groups[(l, q)]:
                perm.extend(range(s, s + 2 * l + 1))
        # y_slot layout: for each group, (2l+1, K) -> flattened as (K, 2l+1)? we keep (m, k) order
        self._M64 = torch.tensor(pb.matrix[:, perm], dtype=torch.float64)   # flat block = M @ y_slot
        self._M_cache: dict = {}
        self.linears = nn.ModuleList()
        self.sizes = []
        for (l, q) in self.group_keys:
            K = len(groups[(l, q)])
            self.sizes.append((l, q, K))
            self.linears.append(nn.Linear((cfg.head_hidden or C) // 2, K, bias=False))
        n0 = len(groups[(0, 0)])
        self.n0 = n0
        self.bias = nn.Embedding(num_bias_rows, n0)
        nn.init.zeros_(self.bias.weight)
        # fixed (not trained) reference of the scalar slots per bias row, set from the data before training
        # (init_onsite_reference; MACE's atomic reference energies play the same role)
        self.register_buffer("reference", torch.zeros(num_bias_rows, n0))
        # cfg.head_norm False: the heads read the residual stream itself, so a feature's amplitude (blocks
        # range from meV to tens of eV) reaches the output; a norm here would have to relearn it per block
        self.norm = EquiLayerNorm(C, L) if cfg.head_norm else None
        # the read-out of each (l, parity) group is linear in C/2 features, so at most C/2 independent
        # functions of the geometry reach the K slots of a group (K is up to 17 for s3p2d2): an equivariant
        # expansion (EquiLinear + gate) to head_hidden channels lifts that limit
        self.expand = None
        if cfg.head_hidden:
            if cfg.head_hidden % 2:
                raise ValueError("head_hidden must be even (natural | unnatural halves)")
            self.expand = nn.Sequential(EquiLinear(C, cfg.head_hidden, L), Gate(cfg.head_hidden, L))

    def forward(self, feats: torch.Tensor, bias_rows: torch.Tensor) -> torch.Tensor:
        x = self.norm(feats) if self.norm is not None else feats
        if self.expand is not None:
            x = self.expand(x)
        h = x.shape[-1] // 2
        ys = []
        for (l, q, _k), lin in zip(self.sizes, self.linears):
            xl = x[:, l * l:(l + 1) * (l + 1), q * h:(q + 1) * h]     # (n, 2l+1, h)
            y = lin(xl)                                                # (n, 2l+1, K)
            if l == 0 and q == 0:
                y = y + (self.bias(bias_rows) + self.reference[bias_rows].to(y.dtype))[:, None, :]
            ys.append(y.transpose(1, 2).reshape(x.shape[0], -1))      # (K, 2l+1) order
        y = torch.cat(ys, 1)
        key = (y.device, y.dtype)
        M = self._M_cache.get(key)
        if M is None:
            M = self._M_cache[key] = self._M64.to(device=y.device, dtype=y.dtype)
        return (y @ M.T).view(-1, self.ns, self.ns)


class DeepH2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.elements:
            raise ValueError("model config has no elements")
        self.cfg = cfg
        C, L = cfg.channels, cfg.lmax
        if C % 2 or (C // 2) % cfg.heads:
            raise ValueError("channels must be even and channels/2 divisible by heads")
        n_el = max(cfg.max_elements, len(cfg.elements))
        self.n_el = n_el
        emb = cfg.embedding_dim or C // 2
        self.embedding = nn.Embedding(n_el, emb)
        self.node_in = nn.Linear(emb, C // 2)
        if cfg.radial_basis == "gaussian":
            self.gauss = GaussianSmearing(cfg.gaussian_range, cfg.num_gaussians)
            n_rad = cfg.num_gaussians
        elif cfg.radial_basis == "bessel":
            self.gauss = BesselBasis(cfg.gaussian_range, cfg.num_bessel)
            n_rad = cfg.num_bessel
        else:
            raise ValueError(f"unknown radial_basis {cfg.radial_basis!r} (gaussian, bessel)")
        self.radial = nn.Sequential(nn.Linear(n_rad, cfg.radial_hidden), nn.SiLU(),
                                    nn.Linear(cfg.radial_hidden, cfg.radial_hidden), nn.SiLU())
        self.edge_scalar = nn.Sequential(nn.Linear(2 * emb + cfg.radial_hidden, C), nn.SiLU(), nn.Linear(C, C // 2))
        self.edge_sh = nn.Linear(cfg.radial_hidden, L * (C // 2))
        self.wigner = WignerBlocks(L)
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.num_blocks)])
        self.head_onsite = WignerEckartHead(cfg, n_el)
        self.head_hop = WignerEckartHead(cfg, n_el * n_el)
        self.basis = BasisMap(cfg)
        self.register_buffer("l_of", l_of_coeff(L), persistent=False)
        # a run-time switch (not part of the saved configuration): TrainConfig.activation_checkpointing
        self.activation_checkpointing = False

    # ---------------------------------------------------------------------------------------
    def forward(self, g: dict) -> torch.Tensor:
        """Predicted flat H entries (eV) of the batch, in the packed layout of the input pairs."""
        from e3nn import o3

        cfg = self.cfg
        C, L = cfg.channels, cfg.lmax
        h = C // 2
        pos, cell = g["pos"], g["cell"]
        dtype = self.node_in.weight.dtype
        pos = pos.to(dtype)
        cell = cell.to(dtype)
        z = g["species"]
        dst, src = g["edge_dst"], g["edge_src"]
        N, E = pos.shape[0], dst.shape[0]
        eb = g.get("edge_batch")
        cellE = cell[eb] if eb is not None else cell[0].expand(E, 3, 3)
        vec = pos[src] - pos[dst] + torch.einsum("ei,eij->ej", g["edge_R"].to(dtype), cellE)
        dist = vec.norm(dim=-1)
        rad = self.radial(self.gauss(dist))
        D = self.wigner.edge_frame(vec)

        ez = self.embedding(z)
        x = pos.new_zeros(N, num_coeffs(L), C)
        x[:, 0, :h] = self.node_in(ez)
        e = pos.new_zeros(E, num_coeffs(L), C)
        e[:, 0, :h] = self.edge_scalar(torch.cat([ez[dst], ez[src], rad], -1))
        if L > 0:
            sh = o3.spherical_harmonics(list(range(1, L + 1)), vec, normalize=True, normalization="component")
            w = self.edge_sh(rad).view(E, L, h)[:, self.l_of[1:] - 1, :]      # (E, S-1, h)
            e[:, 1:, :h] = sh[:, :, None] * w
        for blk in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's inputs; its activations are recomputed in the backward pass
                # (same result, less memory for large cells: benchmarks/bench_large_cell.py)
                x, e = torch.utils.checkpoint.checkpoint(blk, x, e, D, rad, dst, src, use_reentrant=False)
            else:
                x, e = blk(x, e, D, rad, dst, src)

        # heads, Wigner-Eckart and symmetrisation in the parameters' dtype, also under bf16 autocast (--amp)
        with torch.autocast(device_type=x.device.type, enabled=False):
            onsite = self.head_onsite(x.to(dtype), z)
            hop = self.head_hop(e.to(dtype), z[dst] * self.n_el + z[src])
        if cfg.symmetrize:
            onsite = 0.5 * (onsite + onsite.transpose(1, 2))
            rev = g["edge_rev"]
            has = rev >= 0
            partner = hop[rev.clamp_min(0)].transpose(1, 2)
            hop = torch.where(has[:, None, None], 0.5 * (hop + partner), hop)
        full = torch.cat([onsite, hop], 0).reshape(-1) * cfg.output_scale
        ns2 = self.head_onsite.ns ** 2
        kind, pid = g["pair_kind"], g["pair_id"]
        block_of_pair = torch.where(kind == 1, pid + N, pid)
        idx = block_of_pair[g["entry_pair"]] * ns2 + g["entry_local"]
        return full[idx]

    def load_state_dict(self, state_dict, strict: bool = True, **kw):
        """As torch's; checkpoints written before the on-site reference buffers get zero references."""
        state_dict = dict(state_dict)
        for k, v in self.state_dict().items():
            if k.endswith(".reference") and k not in state_dict:
                state_dict[k] = torch.zeros_like(v)
        return super().load_state_dict(state_dict, strict, **kw)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, ham, device=None) -> np.ndarray:
        """Flat predicted H (eV, float64 numpy) for a PackedHamiltonian (needs its atom pairs only)."""
        g = collate_graphs([prepare_graph(ham, self.basis, with_targets=False)])
        g = graph_to(g, device=device)
        with torch.no_grad():      # no autograd graph: a prediction keeps no activations (1000-atom cells)
            return self(g).to("cpu", torch.float64).numpy()


