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

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from .harmonics import ls_from_multiplicity, orbital_count, orbital_positions, union_multiplicity
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

BOHR_TO_ANGSTROM = 0.529177249


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
PRESETS = ("paper", "medium", "small", "tiny")


@dataclass
class ModelConfig:
    """JSON-serialisable model configuration (``to_dict`` / ``from_dict``)."""

    elements: list = field(default_factory=list)      # element symbols, embedding order
    orbital_ls: dict = field(default_factory=dict)    # element -> [l, ...] (OpenMX order)
    cutoff_radius: dict = field(default_factory=dict)  # element -> PAO cutoff rc (Angstrom)
    super_multiplicity: list | None = None            # radial functions per l of the super-basis
    max_pair_distance: float = 0.0                     # Angstrom, Gaussian range (>= max rc_i + rc_j)
    num_blocks: int = 3
    lmax: int = 4
    mmax: int | None = None
    channels: int = 80                                 # per l (half natural, half other parity)
    heads: int = 2
    num_gaussians: int = 600
    radial_hidden: int = 64
    embedding_dim: int | None = None                   # default: channels // 2
    ffn_factor: int = 2
    symmetrize: bool = True
    output_scale: float = 1.0                          # eV
    max_elements: int = 0                              # embedding rows (>= len(elements)); grows on fine-tuning
    # defaults of the keys below are the behaviour of models saved before they existed (configs without them)
    radial_basis: str = "gaussian"                     # gaussian (num_gaussians over 0..range) | bessel
    num_bessel: int = 16                               # sin(n pi d / rc) / d, n = 1..num_bessel, smooth envelope
    head_norm: bool = True                             # EquiLayerNorm before the output heads (False: raw features)
    head_hidden: int = 0                               # > 0: EquiLinear(channels -> head_hidden) + gate before the
                                                       # per-irrep read-out (more read-out features than channels/2)

    # presets --------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **kw) -> ModelConfig:
        """A named configuration (:data:`PRESETS`).

        ``paper``: the DeepH-2 paper's sizes read as its e3nn-style features: 3 blocks, 2 heads, 600 Gaussians,
        lmax 4 and "80 features per l" as 80 channels of *each* parity for every l (as DeepH-E3 carries both
        parities), i.e. ``channels`` 160 here, where ``channels`` counts both parities. For the 24 elements of
        the corpus basis table that is 21,545,310 parameters, 24.7 % above the paper's 17.28 M: our SO(2)
        message convolution takes source, target and edge features (3 x channels in), 45 % of the count.
        ``medium``: the same with 80 channels in all (40 per parity), 5,795,870 parameters (the former paper
        preset). ``small``/``tiny``: CPU-sized.
        """
        if name == "paper":
            base = dict(num_blocks=3, lmax=4, channels=160, heads=2, num_gaussians=600, radial_hidden=64)
        elif name == "medium":
            base = dict(num_blocks=3, lmax=4, channels=80, heads=2, num_gaussians=600, radial_hidden=64)
        elif name == "small":
            # measured on the carbon set (benchmarks/RESULTS.md): all m in the SO(2) convolutions (a C3v bond,
            # as in diamond, has m = +-3 parts in its frame that mmax = 2 cannot give), the raw residual
            # stream into the heads (Bessel functions and a wider read-out measured no better: RESULTS.md)
            base = dict(num_blocks=2, lmax=4, mmax=None, channels=16, heads=2, num_gaussians=128, radial_hidden=32,
                        head_norm=False)
        elif name == "tiny":
            base = dict(num_blocks=1, lmax=4, mmax=2, channels=8, heads=2, num_gaussians=32, radial_hidden=16)
        else:
            raise ValueError(f"unknown model preset {name!r} ({', '.join(PRESETS)})")
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    # derived ----------------------------------------------------------------------------------
    @property
    def multiplicity(self) -> tuple:
        if self.super_multiplicity:
            return tuple(int(n) for n in self.super_multiplicity)
        return union_multiplicity(self.orbital_ls)

    @property
    def gaussian_range(self) -> float:
        rc = max(self.cutoff_radius.values()) * 2 if self.cutoff_radius else 0.0
        return float(max(rc, self.max_pair_distance, 1.0)) + 0.5

    def with_elements(self, orbital_ls: dict, cutoff_radius: dict | None = None) -> ModelConfig:
        """Copy with elements added (existing ones must keep their basis)."""
        new = ModelConfig.from_dict(self.to_dict())
        for el, ls in orbital_ls.items():
            ls = [int(l) for l in ls]
            if el in new.orbital_ls:
                if list(new.orbital_ls[el]) != ls:
                    raise ValueError(f"element {el}: basis {ls} differs from the model's {new.orbital_ls[el]}")
            else:
                new.elements.append(el)
                new.orbital_ls[el] = ls
        for el, rc in (cutoff_radius or {}).items():
            new.cutoff_radius.setdefault(el, float(rc))
        new.max_elements = max(new.max_elements, len(new.elements))
        return new


def basis_metadata(ham) -> tuple:
    """(orbital_ls, cutoff radius per element in Angstrom) of a PackedHamiltonian (rc from meta['basis'])."""
    rc = {}
    basis = (ham.meta or {}).get("basis") or {}
    for el, name in basis.items():
        try:
            from aiida_deeph.core.basis import parse_pao_basis

            rc[el] = parse_pao_basis(name).cutoff_bohr * BOHR_TO_ANGSTROM
        except Exception:  # pragma: no cover - unknown naming: fall back to distances
            pass
    return {el: list(ls) for el, ls in ham.orbital_ls.items()}, rc


# ------------------------------------------------------------------------------------------------
# graph preparation (numpy; runs in data-loader workers)
# ------------------------------------------------------------------------------------------------
class BasisMap:
    """Element -> index and orbital positions in the super-basis; refuses unknown elements/bases."""

    def __init__(self, config: ModelConfig):
        self.elements = list(config.elements)
        self.index = {el: k for k, el in enumerate(self.elements)}
        self.mult = config.multiplicity
        self.ls = {el: [int(l) for l in config.orbital_ls[el]] for el in self.elements}
        self.nsuper = orbital_count(ls_from_multiplicity(self.mult))
        self.positions = {el: orbital_positions(self.ls[el], self.mult) for el in self.elements}

    def check(self, ham) -> None:
        for el in dict.fromkeys(ham.species):
            if el not in self.index:
                raise ValueError(f"element {el} is not known to this model (trained on {' '.join(self.elements)})")
            if [int(l) for l in ham.orbital_ls[el]] != self.ls[el]:
                raise ValueError(
                    f"element {el} has basis l = {list(ham.orbital_ls[el])}, the model was trained with {self.ls[el]}"
                )


def prepare_graph(ham, basis: BasisMap, with_targets: bool = True, with_kspace: bool = False) -> dict:
    """PackedHamiltonian -> dict of tensors for the model (one structure).

    ``with_kspace`` adds what the band loss (:func:`aiida_deeph.ml.loss.band_loss`) needs to build H(k)
    and S(k): each entry's row and column orbital (``entry_row``, ``entry_col``, within the structure),
    each pair's lattice vector ``pair_R``, ``num_orbitals`` and the Fermi level ``fermi`` (NaN if unknown).
    """
    basis.check(ham)
    ap = np.asarray(ham.atom_pairs, dtype=np.int64)
    P = len(ap)
    N = ham.num_atoms
    species_idx = np.array([basis.index[s] for s in ham.species], dtype=np.int64)
    onsite = (ap[:, 0] == 0) & (ap[:, 1] == 0) & (ap[:, 2] == 0) & (ap[:, 3] == ap[:, 4])
    edge_rows = np.nonzero(~onsite)[0]
    E = len(edge_rows)
    # reverse edge (j, i, -R) for symmetrisation
    key = {tuple(r): k for k, r in enumerate(ap[edge_rows].tolist())}
    rev = np.array([key.get((-r[0], -r[1], -r[2], r[4], r[3]), -1) for r in ap[edge_rows].tolist()], dtype=np.int64)
    # block id of every pair: on-site -> atom index (kind 0), hopping -> edge number (kind 1)
    pair_kind = (~onsite).astype(np.int64)
    pair_id = np.where(onsite, ap[:, 3], 0)
    pair_id[edge_rows] = np.arange(E)
    # flat entry -> (pair, row*ns+col in the super-basis block)
    ns = basis.nsuper
    norb = ham.norb_per_atom
    offsets = np.asarray(ham.offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    pair_of_entry = np.repeat(np.arange(P), sizes)
    local = np.arange(int(offsets[-1])) - offsets[:-1][pair_of_entry]
    ncol = norb[ap[pair_of_entry, 4]]
    row, col = local // ncol, local % ncol
    pos_list = [basis.positions[s] for s in ham.species]
    # vectorised: per atom positions padded
    maxn = max(len(p) for p in pos_list)
    pos_tab = np.zeros((N, maxn), dtype=np.int64)
    for a, p in enumerate(pos_list):
        pos_tab[a, :len(p)] = p
    entry_local = pos_tab[ap[pair_of_entry, 3], row] * ns + pos_tab[ap[pair_of_entry, 4], col]
    g = {
        "species": torch.from_numpy(species_idx),
        "pos": torch.from_numpy(np.array(ham.positions, dtype=np.float64)),
        "cell": torch.from_numpy(np.array(ham.cell, dtype=np.float64)),
        "edge_R": torch.from_numpy(ap[edge_rows, :3].copy()),
        "edge_dst": torch.from_numpy(ap[edge_rows, 3].copy()),
        "edge_src": torch.from_numpy(ap[edge_rows, 4].copy()),
        "edge_rev": torch.from_numpy(rev),
        "pair_kind": torch.from_numpy(pair_kind),
        "pair_id": torch.from_numpy(pair_id),
        "pair_i": torch.from_numpy(ap[:, 3].copy()),
        "pair_j": torch.from_numpy(ap[:, 4].copy()),
        "entry_pair": torch.from_numpy(pair_of_entry),
        "entry_local": torch.from_numpy(entry_local),
        "num_atoms": torch.tensor([N]),
        "num_edges": torch.tensor([E]),
        "num_pairs": torch.tensor([P]),
        "num_entries": torch.tensor([int(offsets[-1])]),
    }
    if with_kspace:
        first = np.concatenate([[0], np.cumsum(norb)[:-1]])
        g["entry_row"] = torch.from_numpy(first[ap[pair_of_entry, 3]] + row)
        g["entry_col"] = torch.from_numpy(first[ap[pair_of_entry, 4]] + col)
        g["pair_R"] = torch.from_numpy(ap[:, :3].copy())
        g["num_orbitals"] = torch.tensor([int(norb.sum())])
        fermi = ham.fermi_energy_eV
        g["fermi"] = torch.tensor([float(fermi) if fermi is not None and np.isfinite(fermi) else np.nan],
                                  dtype=torch.float64)
    if with_targets:
        if ham.hamiltonian is not None:
            g["H"] = torch.from_numpy(np.asarray(ham.hamiltonian, dtype=np.float64))
    if ham.overlap is not None:
        g["S"] = torch.from_numpy(np.asarray(ham.overlap, dtype=np.float64))
    return g


def collate_graphs(graphs: list) -> dict:
    """Concatenate prepared graphs into one batch (indices shifted; ``*_batch`` vectors added)."""
    if len(graphs) == 1:
        g = dict(graphs[0])
        g["cell"] = g["cell"][None]
        g["node_batch"] = torch.zeros(int(g["num_atoms"][0]), dtype=torch.long)
        g["edge_batch"] = torch.zeros(int(g["num_edges"][0]), dtype=torch.long)
        g["entry_batch"] = torch.zeros(int(g["num_entries"][0]), dtype=torch.long)
        return g
    out: dict = {}
    n_off = e_off = p_off = 0
    lists: dict = {k: [] for k in graphs[0]}
    nb, eb, xb = [], [], []
    for b, g in enumerate(graphs):
        N, E, P = int(g["num_atoms"][0]), int(g["num_edges"][0]), int(g["num_pairs"][0])
        for k, v in g.items():
            if k in ("edge_dst", "edge_src", "pair_i", "pair_j"):
                v = v + n_off
            elif k == "edge_rev":
                v = torch.where(v >= 0, v + e_off, v)
            elif k == "pair_id":
                v = torch.where(g["pair_kind"] == 1, v + e_off, v + n_off)
            elif k == "entry_pair":
                v = v + p_off
            elif k == "cell":
                v = v[None]
            lists[k].append(v)
        nb.append(torch.full((N,), b, dtype=torch.long))
        eb.append(torch.full((E,), b, dtype=torch.long))
        xb.append(torch.full((int(g["num_entries"][0]),), b, dtype=torch.long))
        n_off, e_off, p_off = n_off + N, e_off + E, p_off + P
    for k, v in lists.items():
        out[k] = torch.cat(v, 0)
    out["node_batch"], out["edge_batch"], out["entry_batch"] = torch.cat(nb), torch.cat(eb), torch.cat(xb)
    return out


def graph_to(g: dict, device=None, dtype=None) -> dict:
    out = {}
    for k, v in g.items():
        if torch.is_floating_point(v):
            out[k] = v.to(device=device, dtype=dtype or v.dtype)
        else:
            out[k] = v.to(device=device)
    return out


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


@torch.no_grad()
def init_onsite_reference(model: DeepH2, graphs, elements=None, min_atoms: int = 8,
                          max_structures: int = 256) -> dict:
    """Start every element's on-site blocks at the invariant part of its mean on-site block in ``graphs``.

    On-site H blocks reach tens of eV (K 3s: -35 eV) while the per-element bias of the on-site head
    starts at zero and, under Adam, moves about one learning rate per step: without this the on-site
    blocks of a short training stay eV off (the Huber loss's linear regime gives them little weight).
    As MACE fixes atomic reference energies from the data, the fixed ``reference`` buffer rows of the
    on-site head for ``elements`` (default: all; the trained bias learns the rest) are set by least
    squares to the scalar (rotation- and inversion-invariant, so equivariance is kept) part of the
    mean on-site block over the atoms of the first structures of ``graphs`` (an iterable of
    :func:`prepare_graph` dicts with ``H``), until every element has ``min_atoms`` atoms or
    ``max_structures`` were read. Returns ``{element: number of atoms used}``.
    """
    cfg = model.cfg
    head = model.head_onsite
    ns2 = head.ns ** 2
    n_el = len(cfg.elements)
    wanted = set(range(n_el)) if elements is None else {cfg.elements.index(e) for e in elements}
    if not wanted:
        return {}
    sums = np.zeros((n_el, ns2))
    cnts = np.zeros((n_el, ns2))
    atoms = np.zeros(n_el, dtype=np.int64)
    for k, g in enumerate(graphs):
        if k >= max_structures:
            break
        if "H" not in g:
            continue
        kind = g["pair_kind"].numpy()
        pid = g["pair_id"].numpy()
        ep = g["entry_pair"].numpy()
        on = kind[ep] == 0
        z = g["species"].numpy()
        el = z[pid[ep[on]]]
        loc = g["entry_local"].numpy()[on]
        np.add.at(sums, (el, loc), g["H"].numpy()[on])
        np.add.at(cnts, (el, loc), 1.0)
        atoms += np.bincount(z, minlength=n_el)[:n_el]
        if all(atoms[e] >= min_atoms for e in wanted):
            break
    M0 = head._M64[:, :head.n0].numpy()
    used = {}
    ref = head.reference
    for e in sorted(wanted):
        mask = cnts[e] > 0
        if not mask.any():
            continue
        target = sums[e, mask] / cnts[e, mask]
        b, *_ = np.linalg.lstsq(M0[mask], target, rcond=None)
        ref[e] = torch.as_tensor(b / cfg.output_scale, dtype=ref.dtype, device=ref.device)
        used[cfg.elements[e]] = int(atoms[e])
    return used


def grow_state_dict(model: DeepH2, parent_state: dict) -> list:
    """Load a parent model's weights into ``model`` (embedding/bias tables may be larger).

    Returns the list of parameter names that were only partially copied.
    """
    own = model.state_dict()
    partial = []
    for k, v in parent_state.items():
        if k not in own:
            raise ValueError(f"parent model has a parameter {k} this model lacks (different architecture)")
        t = own[k]
        if t.shape == v.shape:
            t.copy_(v)
        elif t.dim() == v.dim() and all(a >= b for a, b in zip(t.shape, v.shape)):
            if k.endswith(("head_hop.bias.weight", "head_hop.reference")):
                n_old = int(round(math.sqrt(v.shape[0])))
                n_new = int(round(math.sqrt(t.shape[0])))
                tv = t.view(n_new, n_new, -1)
                tv[:n_old, :n_old] = v.view(n_old, n_old, -1)
            else:
                t[tuple(slice(0, s) for s in v.shape)] = v
            partial.append(k)
        else:
            raise ValueError(f"parameter {k}: parent shape {tuple(v.shape)} does not fit {tuple(t.shape)}")
    model.load_state_dict(own)
    return partial
