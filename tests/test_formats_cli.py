"""Packed <-> DeepH-dock <-> legacy round trips, the convert command, bad input, and the pure-core rule."""
import json
import lzma
import shutil
import subprocess
import sys

import numpy as np
import pytest

from aiida_deeph.core.packed import PackedFile, PackedFormatError, PackedHamiltonian, write_packed
from aiida_deeph.io.dock import read_dock, read_legacy, write_dock, write_legacy
from aiida_deeph.io.openmx import load_openmx_run

from .conftest import corpus_dir, shared_dir

ARRAYS = ("hamiltonian", "overlap", "density_matrix")


def assert_same(a: PackedHamiltonian, b: PackedHamiltonian, arrays=ARRAYS):
    assert a.species == b.species
    assert np.array_equal(a.atom_pairs, b.atom_pairs) and np.array_equal(a.offsets, b.offsets)
    assert np.allclose(a.positions, b.positions, atol=1e-12, rtol=0) and np.allclose(a.cell, b.cell, atol=1e-12, rtol=0)
    for name in arrays:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    assert a.fermi_energy_eV == b.fermi_energy_eV and a.num_electrons == b.num_electrons


@pytest.mark.parametrize("mp_id", ["mp-92", "mp-38011", "mp-28369", "mp-4280"])
def test_round_trips_are_exact(mp_id, tmp_path):
    ham = load_openmx_run(corpus_dir() / mp_id, load_density_matrix=True)
    # packed file (one and many structures)
    ham.save(tmp_path / "one.h5")
    assert_same(ham, PackedHamiltonian.load(tmp_path / "one.h5"))
    write_packed(tmp_path / "many.h5", [("a", ham), ("b", ham)])
    with PackedFile(tmp_path / "many.h5") as pf:
        assert pf.names() == ["a", "b"]
        assert_same(ham, pf.read("b"))
    # dock (atoms regrouped by species on disk, original order restored on reading)
    dock = read_dock(write_dock(ham, tmp_path / "dock", include=ARRAYS))
    assert_same(ham, dock)
    # legacy and dock -> legacy -> dock
    assert_same(ham, read_legacy(write_legacy(ham, tmp_path / "legacy")))
    assert_same(ham, read_dock(write_dock(read_legacy(tmp_path / "legacy"), tmp_path / "dock2", include=ARRAYS)))


def test_dock_groups_atoms_by_species(tmp_path):
    ham = load_openmx_run(corpus_dir() / "mp-4280")  # GaCuO2: atoms Ga Cu O O -> grouped the same
    shuffled = ham.copy()
    from aiida_deeph.io.dock import reorder_atoms
    shuffled = reorder_atoms(ham, np.array([2, 0, 3, 1]))  # O Ga O Cu: not grouped
    folder = write_dock(shuffled, tmp_path / "d")
    lines = (folder / "POSCAR").read_text().splitlines()
    assert lines[5].split() == ["O", "Ga", "Cu"] and lines[6].split() == ["2", "1", "1"]
    info = json.loads((folder / "info.json").read_text())
    assert info["atoms_quantity"] == 4 and info["orbits_quantity"] == ham.num_orbitals
    assert info["occupation"] == ham.num_electrons
    assert_same(shuffled, read_dock(folder), arrays=("hamiltonian", "overlap"))
    # without the recorded order, the grouped structure has the same spectrum
    from aiida_deeph.physics.bands import band_energies
    k = [[0.1, 0.2, 0.3]]
    e1 = band_energies(ham, k, threads=1).eigenvalues
    e2 = band_energies(read_dock(folder, restore_order=False), k, threads=1).eigenvalues
    assert np.abs(e1 - e2).max() < 1e-9


def test_dock_orbital_order_is_real_harmonic(tmp_path):
    """p: OpenMX (x,y,z) -> (y,z,x); d: (3z2-r2,x2-y2,xy,xz,yz) -> (xy,yz,3z2-r2,xz,x2-y2)."""
    import h5py

    ham = load_openmx_run(corpus_dir() / "mp-92")
    folder = write_dock(ham, tmp_path / "d")
    with h5py.File(folder / "hamiltonian.h5") as h5:
        pairs, bounds, entries = h5["atom_pairs"][()], h5["chunk_boundaries"][()], h5["entries"][()]
    p = [tuple(r) for r in pairs.tolist()].index((0, 0, 0, 0, 1))
    dock_block = entries[bounds[p]:bounds[p + 1]].reshape(13, 13)
    q = ham.pair_index()[(0, 0, 0, 0, 1)]
    ours = ham.block(q)
    perm = [0, 1, 3, 4, 2, 6, 7, 5, 10, 12, 8, 11, 9]
    assert np.array_equal(dock_block, ours[np.ix_(perm, perm)])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aiida_deeph.cli.main", *args], capture_output=True, text=True)


def test_convert_cli_writes_dock_folder(tmp_path):
    out = tmp_path / "NaCl"
    proc = run_cli("convert", "openmx", str(corpus_dir() / "mp-22862"), str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["POSCAR", "hamiltonian.h5", "info.json", "overlap.h5"]
    proc = run_cli("convert", "openmx", str(corpus_dir() / "mp-22862"), str(tmp_path / "leg"), "--format", "legacy")
    assert proc.returncode == 0 and (tmp_path / "leg" / "hamiltonians.h5").is_file()


def _run_folder(tmp_path, scfout_bytes=None, with_out=True, src="mp-92"):
    run = tmp_path / "run"
    run.mkdir()
    if with_out:
        shutil.copy(corpus_dir() / src / "openmx.out.xz", run / "openmx.out.xz")
    raw = lzma.open(corpus_dir() / src / "openmx.scfout.xz").read()
    (run / "openmx.scfout").write_bytes(raw if scfout_bytes is None else scfout_bytes(raw))
    return run


@pytest.mark.parametrize("case, pattern", [
    ("truncated", "truncated|size mismatch"),
    ("garbage", "not an OpenMX .scfout"),
    ("version0", "version 0"),
    ("no_out", "no .out file"),
    ("no_scfout", "no .scfout"),
    ("unconverged", "did not converge"),
])
def test_convert_cli_bad_input_one_line_error(tmp_path, case, pattern):
    if case == "truncated":
        run = _run_folder(tmp_path, lambda raw: raw[: len(raw) // 2])
    elif case == "garbage":
        run = _run_folder(tmp_path, lambda raw: b"\xff" * 4096)
    elif case == "version0":
        run = _run_folder(tmp_path, lambda raw: raw[:4] + np.array([0], "<i4").tobytes() + raw[8:])
    elif case == "no_out":
        run = _run_folder(tmp_path, with_out=False)
    elif case == "no_scfout":
        run = tmp_path / "run"
        run.mkdir()
        shutil.copy(corpus_dir() / "mp-92" / "openmx.out.xz", run)
    else:
        run = shared_dir() / "openmx-failures" / "scf-not-converged"
    out = tmp_path / "out"
    proc = run_cli("convert", "openmx", str(run), str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_convert_unconverged_allowed_on_request(tmp_path):
    proc = run_cli("convert", "openmx", str(shared_dir() / "openmx-failures" / "scf-not-converged"),
                   str(tmp_path / "o"), "--allow-unconverged")
    assert proc.returncode == 0, proc.stderr


def test_packed_file_checks(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5.attrs["format"] = "something-else"
    with pytest.raises(PackedFormatError, match="not an aiida-deeph packed file"):
        PackedFile(tmp_path / "x.h5")
    ham = load_openmx_run(corpus_dir() / "mp-92")
    ham.save(tmp_path / "y.h5")
    with h5py.File(tmp_path / "y.h5", "a") as h5:
        h5.attrs["format_version"] = 99
    with pytest.raises(PackedFormatError, match="version 99"):
        PackedFile(tmp_path / "y.h5")
    bad = ham.copy()
    bad.hamiltonian = bad.hamiltonian[:-1]
    with pytest.raises(PackedFormatError):
        bad.save(tmp_path / "z.h5")
    assert not (tmp_path / "z.h5").exists()


PURE = ["aiida_deeph.core.packed", "aiida_deeph.io.scfout", "aiida_deeph.io.openmx", "aiida_deeph.io.dock",
        "aiida_deeph.io.openmx_input", "aiida_deeph.io.openmx_out", "aiida_deeph.io.openmx_band",
        "aiida_deeph.physics.bands", "aiida_deeph.core.basis", "aiida_deeph.cli.main",
        "aiida_deeph.replay.standin", "aiida_deeph.overlap", "aiida_deeph.ml"]


def test_pure_core_never_imports_aiida():
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'aiida' or name.startswith('aiida.') or name.startswith(('pymatgen', 'mp_api')):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {PURE!r}:\n"
        "    importlib.import_module(m)\n"
        "import aiida_deeph.cli.main as c; c.build_parser()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
