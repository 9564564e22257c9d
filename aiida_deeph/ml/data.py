"""Streaming datasets of Hamiltonians (pure: torch, numpy, h5py).

Sources (``discover``): packed HDF5 files (one or many structures each), DeepH-dock folders
(``info.json`` + ``overlap.h5`` [+ ``hamiltonian.h5``]), folders holding either of them, and plain
OpenMX run folders (``*.scfout[.xz]``).  Items are *references*; structures are read one at a time
when a worker asks for them, so the dataset never has to fit in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aiida_deeph.io.formats import is_dock, is_openmx_run, is_packed

from .graph import BasisMap, basis_metadata, collate_graphs, prepare_graph


@dataclass(frozen=True)
class Item:
    kind: str      # "packed" | "dock" | "openmx"
    path: str
    name: str      # structure name inside a packed file, else the folder name

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.path}:{self.name}"

    @property
    def label(self) -> str:
        return self.name if self.kind != "packed" else f"{Path(self.path).stem}/{self.name}"


def discover(paths) -> list:
    """Expand data paths into a sorted, de-duplicated list of :class:`Item`."""
    from aiida_deeph.core.packed import PackedFile

    items: list = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ValueError(f"data path {raw} does not exist")
        if p.is_file():
            if not is_packed(p):
                raise ValueError(f"{raw} is not an aiida-deeph packed HDF5 file")
            with PackedFile(p) as pf:
                items += [Item("packed", str(p.resolve()), n) for n in pf.names()]
            continue
        if is_dock(p):
            items.append(Item("dock", str(p.resolve()), p.name))
            continue
        if is_openmx_run(p):
            items.append(Item("openmx", str(p.resolve()), p.name))
            continue
        found = 0
        for sub in sorted(p.rglob("*")):
            if sub.is_dir() and is_dock(sub):
                items.append(Item("dock", str(sub.resolve()), sub.name))
                found += 1
            elif sub.is_dir() and is_openmx_run(sub):
                items.append(Item("openmx", str(sub.resolve()), sub.name))
                found += 1
            elif sub.is_file() and is_packed(sub):
                with PackedFile(sub) as pf:
                    items += [Item("packed", str(sub.resolve()), n) for n in pf.names()]
                found += 1
        if not found:
            raise ValueError(f"{raw}: no DeepH-dock folders, OpenMX runs or packed files found")
    unique = {it.key: it for it in items}
    return [unique[k] for k in sorted(unique)]


class Reader:
    """Reads items; keeps packed files open per process (worker-safe: reopened after fork)."""

    def __init__(self):
        self._files: dict = {}
        self._pid = os.getpid()

    def read(self, item: Item, load=("hamiltonian", "overlap")):
        if os.getpid() != self._pid:
            self._files, self._pid = {}, os.getpid()
        if item.kind == "packed":
            from aiida_deeph.core.packed import PackedFile

            pf = self._files.get(item.path)
            if pf is None:
                pf = self._files[item.path] = PackedFile(item.path)
            return pf.read(item.name, load=load)
        if item.kind == "dock":
            from aiida_deeph.io.dock import read_dock

            return read_dock(item.path, load=load)
        if item.kind == "openmx":
            from aiida_deeph.io.openmx import find_run_files, scfout_to_packed
            from aiida_deeph.io.scfout import read_scfout

            return scfout_to_packed(read_scfout(find_run_files(item.path)["scfout"], load_density_matrix=False,
                                                load_position_matrix="position_matrix" in load))
        raise ValueError(f"unknown item kind {item.kind}")


def split_items(items: list, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> dict:
    """Deterministic split by hashing (seed, key): independent of discovery order, stable on growth."""
    keys = sorted(items, key=lambda it: hashlib.sha256(f"{seed}:{it.key}".encode()).hexdigest())
    n = len(keys)
    f = np.asarray(fractions, dtype=float) / sum(fractions)
    n_val = int(round(f[1] * n))
    n_test = int(round(f[2] * n))
    if n - n_val - n_test < 1:
        n_val, n_test = (0, 0) if n < 3 else (1, 1)
    n_train = n - n_val - n_test
    return {"train": keys[:n_train], "val": keys[n_train:n_train + n_val], "test": keys[n_train + n_val:]}


def scan_metadata(items: list, reader: Reader | None = None) -> dict:
    """One streaming pass: orbital l lists, cutoff radii, longest pair, element counts, H scale."""
    reader = reader or Reader()
    orbital_ls: dict = {}
    rc: dict = {}
    dmax = 0.0
    counts: dict = {}
    sq, n_entries = 0.0, 0
    for k, it in enumerate(items):
        ham = reader.read(it, load=("hamiltonian",) if k < 16 else ())
        ols, r = basis_metadata(ham)
        for el, ls in ols.items():
            if el in orbital_ls and orbital_ls[el] != ls:
                raise ValueError(f"element {el} appears with two bases ({orbital_ls[el]}, {ls}) in the data")
            orbital_ls[el] = ls
        rc.update(r)
        if ham.num_pairs:
            dmax = max(dmax, float(ham.pair_distances().max()))
        for s in ham.species:
            counts[s] = counts.get(s, 0) + 1
        if ham.hamiltonian is not None:
            sq += float(np.sum(ham.hamiltonian ** 2))
            n_entries += ham.hamiltonian.size
    return {"orbital_ls": orbital_ls, "cutoff_radius": rc, "max_pair_distance": dmax, "atom_counts": counts,
            "h_rms": (sq / n_entries) ** 0.5 if n_entries else 1.0}


class StructureDataset(torch.utils.data.Dataset):
    """Map-style dataset of prepared graphs, read lazily one structure at a time."""

    def __init__(self, items: list, basis: BasisMap, with_targets: bool = True, cache_items: int = 0,
                 cache_mb: float = 0.0, with_kspace: bool = False):
        self.items = list(items)
        self.basis = basis
        self.with_targets = with_targets
        self.with_kspace = with_kspace
        self.reader = Reader()
        # bounded in-memory cache of prepared graphs (per process): at most cache_items structures, or as many
        # as fit in cache_mb megabytes (small corpora are then read and prepared once, large ones still stream)
        self.cache_items = int(cache_items)
        self.cache_bytes = float(cache_mb) * 2 ** 20
        self._cache: dict = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        if k in self._cache:
            return self._cache[k]
        out = self._load(k)
        if len(self._cache) < self.cache_items:
            self._cache[k] = out
        elif self.cache_bytes > 0:
            size = sum(t.numel() * t.element_size() for t in out[1].values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[k] = out
                self._cached_bytes += size
        return out

    def _load(self, k: int):
        it = self.items[k]
        ham = self.reader.read(it, load=("hamiltonian", "overlap") if self.with_targets else ("overlap",))
        if self.with_targets and (ham.hamiltonian is None or ham.overlap is None):
            raise ValueError(f"{it.label}: training/evaluation needs both H and S")
        return it.label, prepare_graph(ham, self.basis, with_targets=self.with_targets, with_kspace=self.with_kspace)


def collate(batch):
    names = [b[0] for b in batch]
    return names, collate_graphs([b[1] for b in batch])


def make_loader(dataset, order, batch_size: int = 1, num_workers: int = 0, prefetch: int = 2):
    """DataLoader over ``order`` (a list of dataset indices, in that order)."""
    batches = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    kw = {}
    if num_workers > 0:
        kw = dict(num_workers=num_workers, prefetch_factor=prefetch, persistent_workers=False)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, **kw)


def write_split(path, split: dict) -> None:
    data = {k: [it.label for it in v] for k, v in split.items()}
    data["keys"] = {k: [it.key for it in v] for k, v in split.items()}
    Path(path).write_text(json.dumps(data, indent=1))
