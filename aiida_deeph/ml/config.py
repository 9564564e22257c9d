"""The DeepH-2 model configuration (a JSON-serialisable dataclass) and its named presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .harmonics import union_multiplicity

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


