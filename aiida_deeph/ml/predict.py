"""Inference: predicted Hamiltonians for new structures (their pairs come from the overlap S).

``predict_dock_folders`` reads DeepH-dock folders (POSCAR, info.json, overlap.h5), predicts H on
exactly the atom pairs of overlap.h5 and writes ``OUT/<folder name>/`` with the input files plus
``hamiltonian.h5`` in the same layout (same atom_pairs order, chunk_boundaries, chunk_shapes,
real-harmonic orbital order).  Pure: torch, numpy, h5py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .train import load_model


def predict_hamiltonian(model, ham, device=None):
    """Copy of ``ham`` (a PackedHamiltonian) with ``hamiltonian`` replaced by the model's prediction (eV)."""
    model.basis.check(ham)
    pred = model.predict(ham, device=device)
    if not np.all(np.isfinite(pred)):
        raise ValueError("the model produced non-finite values")
    out = ham.copy()
    out.hamiltonian = pred
    out.meta = dict(out.meta, source="DeepH-2 prediction")
    return out


def predict_dock_folders(model_dir, inputs, output, device=None, log=print) -> list:
    from aiida_deeph.io.dock import read_dock, write_hamiltonian_like, write_prediction_info

    model = load_model(model_dir, device=device)
    model.eval()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = [Path(p).resolve().name for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError("two input folders have the same name; their outputs would collide")
    written = []
    for src in inputs:
        src = Path(src)
        if not (src / "overlap.h5").is_file() or not (src / "POSCAR").is_file() or not (src / "info.json").is_file():
            raise ValueError(f"{src}: a DeepH-dock input needs POSCAR, info.json and overlap.h5")
        ham = read_dock(src, load=("overlap",), restore_order=False)
        pred = predict_hamiltonian(model, ham, device=device)
        dst = output / src.resolve().name
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.name not in ("hamiltonian.h5", "info.json"):
                shutil.copy2(f, dst / f.name)
        write_prediction_info(src / "info.json", dst / "info.json")
        write_hamiltonian_like(src, dst, pred)
        written.append(dst)
        if log:
            log(f"{src.name}: {pred.num_atoms} atoms, {pred.num_pairs} pairs -> {dst}")
    return written
