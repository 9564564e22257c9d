"""Errors of predicted Hamiltonians against DFT, from packed Hamiltonians (numpy).

The definitions are those of :mod:`aiida_deeph.ml.loss` (and of ``aiida-deeph evaluate``), recomputed from
the two PackedHamiltonians of a structure, so a report can be checked against saved predictions:

* per structure, ``dmu = sum (H_pred - H_dft) S / sum S^2`` (the shift of the energy zero that best aligns
  the prediction); the *corrected* error of an entry is ``|H_pred - (H_dft + dmu S)|``, the uncorrected one
  ``|H_pred - H_dft|``; all in meV, means over matrix entries;
* ``per_element[X]``: entries of the blocks whose two atoms include X (an A-B block counts for A and for B,
  an A-A block once); ``per_pair["A-B"]``: entries of the blocks between an A and a B atom (A <= B
  alphabetically, on-site blocks are A-A);
* training counts: the number of H blocks (directed atom pairs (i, j, R) as OpenMX stores them, on-site
  included) between an A and a B atom in the training structures.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.elements import symbol_to_z
from aiida_deeph.core.packed import PackedHamiltonian


def pair_key(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return f"{x}-{y}"


def by_atomic_number(elements) -> list:
    return sorted(set(elements), key=symbol_to_z)


def block_pair_keys(ham: PackedHamiltonian) -> list:
    """``'A-B'`` of every atom pair of ``ham`` (its ``atom_pairs`` order)."""
    species = np.asarray(ham.species)
    ap = np.asarray(ham.atom_pairs)
    return [pair_key(a, b) for a, b in zip(species[ap[:, 3]], species[ap[:, 4]])]


def training_pair_counts(hams) -> dict:
    """{'A-B': number of H blocks} over an iterable of PackedHamiltonians (their metadata suffice)."""
    counts: dict = {}
    for ham in hams:
        keys, n = np.unique(block_pair_keys(ham), return_counts=True)
        for k, c in zip(keys.tolist(), n.tolist()):
            counts[k] = counts.get(k, 0) + int(c)
    return counts


class ErrorTable:
    """Sums of absolute errors (eV) per element, element pair and structure; reports meV."""

    def __init__(self):
        self.pair: dict = {}          # "A-B" -> [corrected sum, uncorrected sum, entries]
        self.element: dict = {}       # "A" -> [corrected, uncorrected, entries]
        self.structures: list = []

    def add(self, name: str, predicted: PackedHamiltonian, reference: PackedHamiltonian) -> dict:
        """Add one structure (the same atom pairs in both); returns its row of :attr:`structures`."""
        if not np.array_equal(predicted.atom_pairs, reference.atom_pairs):
            raise ValueError(f"{name}: the prediction's atom pairs differ from the reference's")
        h_p = np.asarray(predicted.hamiltonian, dtype=np.float64)
        h_t = np.asarray(reference.hamiltonian, dtype=np.float64)
        s = np.asarray(reference.overlap, dtype=np.float64)
        diff = h_p - h_t
        dmu = float(np.dot(diff, s) / max(float(np.dot(s, s)), 1e-30))
        res = np.stack([np.abs(diff - dmu * s), np.abs(diff)])                 # (2, entries)
        offsets = np.asarray(reference.offsets, dtype=np.int64)
        sizes = np.diff(offsets)
        per_block = np.add.reduceat(res, offsets[:-1], axis=1) if len(sizes) else np.zeros((2, 0))
        per_block[:, sizes == 0] = 0.0
        species = np.asarray(reference.species)
        ap = np.asarray(reference.atom_pairs)
        si, sj = species[ap[:, 3]], species[ap[:, 4]]
        for k, key in enumerate(block_pair_keys(reference)):
            row = self.pair.setdefault(key, [0.0, 0.0, 0])
            row[0] += per_block[0, k]
            row[1] += per_block[1, k]
            row[2] += int(sizes[k])
            for el in {si[k], sj[k]}:
                erow = self.element.setdefault(str(el), [0.0, 0.0, 0])
                erow[0] += per_block[0, k]
                erow[1] += per_block[1, k]
                erow[2] += int(sizes[k])
        n = int(res.shape[1])
        entry = {"name": name, "formula": reference.formula, "num_atoms": int(reference.num_atoms),
                 "mae_meV": 1000.0 * float(res[0].sum()) / n if n else float("nan"),
                 "mae_uncorrected_meV": 1000.0 * float(res[1].sum()) / n if n else float("nan"),
                 "num_entries": n, "gauge_shift_meV": 1000.0 * dmu}
        self.structures.append(entry)
        return entry

    def result(self) -> dict:
        total = np.array([sum(r[0] for r in self.pair.values()), sum(r[1] for r in self.pair.values())])
        count = sum(r[2] for r in self.pair.values())
        mae = lambda row, k=0: 1000.0 * row[k] / row[2] if row[2] else float("nan")  # noqa: E731
        return {
            "mae_meV": 1000.0 * float(total[0]) / count if count else float("nan"),
            "mae_uncorrected_meV": 1000.0 * float(total[1]) / count if count else float("nan"),
            "num_entries": int(count),
            "num_structures": len(self.structures),
            "per_element_mae_meV": {el: mae(r) for el, r in sorted(self.element.items(), key=lambda x: symbol_to_z(x[0]))},
            "per_element_uncorrected_meV": {el: mae(r, 1) for el, r in sorted(self.element.items(),
                                                                              key=lambda x: symbol_to_z(x[0]))},
            "per_pair_mae_meV": {k: mae(r) for k, r in sorted(self.pair.items())},
            "per_pair_entries": {k: int(r[2]) for k, r in sorted(self.pair.items())},
        }


def spearman(x, y) -> dict:
    """Spearman's rank correlation of ``x`` and ``y`` (scipy.stats.spearmanr) with its two-sided p-value."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": None, "p": None, "n": int(len(x)),
                "note": "fewer than 3 element pairs, or constant values: no rank correlation"}
    res = spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": int(len(x))}


def cumulative(values) -> dict:
    """Sorted values and their cumulative fraction (the cumulative distribution), with quantiles."""
    v = np.sort(np.asarray(values, dtype=float))
    if not len(v):
        return {"mae_meV": [], "fraction": [], "median_meV": None, "p90_meV": None}
    return {"mae_meV": v.tolist(), "fraction": (np.arange(1, len(v) + 1) / len(v)).tolist(),
            "median_meV": float(np.median(v)), "p90_meV": float(np.quantile(v, 0.9)),
            "max_meV": float(v[-1]), "mean_meV": float(v.mean())}
