"""Initialisation and growth of a DeepH-2 model: on-site reference blocks from data, parameter tables grown
for new elements when fine-tuning."""
from __future__ import annotations

import math

import numpy as np
import torch

from .model import DeepH2


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
