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


def _write_like(input_folder: Path, out_folder: Path, ham_pred) -> None:
    """Write hamiltonian.h5 with the exact atom_pairs order of the input overlap.h5."""
    import h5py

    from aiida_deeph.core.packed import entry_gather_index
    from aiida_deeph.io.dock import permute_orbitals

    with h5py.File(input_folder / "overlap.h5", "r") as h5:
        ap_in = h5["atom_pairs"][()].astype(np.int64)
        cb_in = h5["chunk_boundaries"][()].astype(np.int64)
        shapes_in = h5["chunk_shapes"][()] if "chunk_shapes" in h5 else None
    arrays = permute_orbitals(ham_pred, {"hamiltonian": ham_pred.hamiltonian})
    index = ham_pred.pair_index()
    try:
        order = np.array([index[tuple(r)] for r in ap_in.tolist()], dtype=np.int64)
    except KeyError:
        raise ValueError(f"{input_folder}: atom_pairs of overlap.h5 do not match the structure read") from None
    entries = arrays["hamiltonian"][entry_gather_index(ham_pred.offsets, order)]
    if len(entries) != cb_in[-1]:
        raise ValueError(f"{input_folder}: chunk_boundaries of overlap.h5 do not match the orbital counts")
    from aiida_deeph.core.files import atomic_path

    with atomic_path(out_folder / "hamiltonian.h5") as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("atom_pairs", data=ap_in)
        h5.create_dataset("chunk_boundaries", data=cb_in)
        if shapes_in is not None:
            h5.create_dataset("chunk_shapes", data=shapes_in)
        h5.create_dataset("entries", data=entries.astype(np.float64))


def _write_info(src: Path, dst: Path) -> None:
    """The input's info.json without its Fermi level: a DFT Fermi level does not belong to the prediction
    (the model's H has its own energy zero, H + dmu S); ``aiida-deeph bands`` then finds it from the electron
    count. The source of H is recorded (``aiida_deeph.meta.source``)."""
    import json

    info = json.loads(src.read_text())
    info.pop("fermi_energy_eV", None)
    extra = info.setdefault("aiida_deeph", {})
    extra["meta"] = dict(extra.get("meta", {}), source="DeepH-2 prediction")
    from aiida_deeph.core.files import write_json_atomic

    write_json_atomic(dst, info)


def predict_dock_folders(model_dir, inputs, output, device=None, log=print) -> list:
    from aiida_deeph.io.dock import read_dock

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
        _write_info(src / "info.json", dst / "info.json")
        _write_like(src, dst, pred)
        written.append(dst)
        if log:
            log(f"{src.name}: {pred.num_atoms} atoms, {pred.num_pairs} pairs -> {dst}")
    return written
