"""OpenMX text files: input writer/parser and protocols, .out / stdout / .Band parsers, replay stand-in.

Checked on every run of the shared corpus and on the recorded real failures.
"""
import json
import lzma
import os
import subprocess
import sys

import numpy as np
import pytest

from aiida_deeph.core.constants import HARTREE_TO_EV
from aiida_deeph.core.lattice import kpoint_grid
from aiida_deeph.io.openmx_band import OpenmxBandError, read_band
from aiida_deeph.io.openmx_input import (
    OpenmxInputError,
    format_input,
    get_keyword,
    parse_input,
    write_input,
    write_input_from_protocol,
)
from aiida_deeph.io.openmx_out import OpenmxOutputError, parse_out, parse_out_eigenvalues, parse_stdout
from aiida_deeph.io.protocols import ProtocolError, list_protocols, load_protocol, recursive_merge
from aiida_deeph.replay.standin import (
    ENV_VAR,
    ReplayError,
    build_index,
    canonical_physics,
    find_recording,
    physics_key,
    write_replay_executable,
)

from .conftest import shared_dir


def _corpus():
    return shared_dir() / "openmx-corpus"


def _failures():
    return shared_dir() / "openmx-failures"


def _runs():
    root = _corpus()
    return sorted(p.name for p in root.iterdir() if (p / "openmx.dat").is_file()) if root.is_dir() else []


def _band_runs():
    return [r for r in _runs() if (_corpus() / r / "openmx.Band").is_file()]


FAILURES = ["scf-not-converged", "missing-pao", "elpa-abort", "killed"]


def _xz_text(path):
    with lzma.open(path, "rt", encoding="latin-1") as handle:
        return handle.read()


def _structure(run):
    s = json.loads((_corpus() / run / "meta.json").read_text())["structure"]
    cell = s["lattice"]["matrix"]
    positions = [site["xyz"] for site in s["sites"]]
    symbols = [site["species"][0]["element"] for site in s["sites"]]
    return cell, symbols, positions


def _numeric_equal(a, b, tol=1e-6):
    """Parsed inputs equal: same keys, same tokens; numbers equal to tol."""
    la = {k.lower(): v for k, v in a.items()}
    lb = {k.lower(): v for k, v in b.items()}
    assert la.keys() == lb.keys()
    for key in la:
        va, vb = la[key], lb[key]
        rows_a = va if va and isinstance(va[0], list) else [va]
        rows_b = vb if vb and isinstance(vb[0], list) else [vb]
        assert len(rows_a) == len(rows_b), key
        for ra, rb in zip(rows_a, rows_b):
            assert len(ra) == len(rb), key
            for ta, tb in zip(ra, rb):
                try:
                    assert abs(float(ta) - float(tb)) <= tol, (key, ta, tb)
                except ValueError:
                    assert ta.lower() == tb.lower(), (key, ta, tb)


# ---------------------------------------------------------------------------------------------
# input parser / writer
# ---------------------------------------------------------------------------------------------
def test_corpus_present():
    assert len(_runs()) >= 60, f"shared corpus missing at {_corpus()}"


@pytest.mark.parametrize("run", _runs())
def test_write_input_reproduces_corpus_input(run):
    ref_text = (_corpus() / run / "openmx.dat").read_text()
    cell, symbols, positions = _structure(run)
    ref = parse_input(ref_text)
    with_band = "Band.dispersion" in ref
    text = write_input_from_protocol(
        cell, symbols, positions, "moderate", data_path="/tmp/openmx/DFT_DATA19", band_kpath=with_band
    )
    _numeric_equal(parse_input(text), ref)
    assert text == ref_text  # even byte for byte
    # round trip of the parser/formatter
    assert parse_input(format_input(ref)) == ref
    # the requirement: the default protocol's input for this structure hits the recording
    plain = write_input_from_protocol(cell, symbols, positions, system_name="aiida")
    assert physics_key(plain) == physics_key(ref_text)
    assert get_keyword(parse_input(plain), "scf.kgrid") == get_keyword(ref, "scf.Kgrid")
    assert get_keyword(parse_input(plain), "DATA.PATH") is None


def test_parse_input_details():
    text = """# comment
    System.Name   si   # trailing comment
    SCF.maxIter 5
    scf.maxiter 7
    <Atoms.UnitVectors
      1 0 0
      0 1 0
      0 0 1
    Atoms.UnitVectors>
    HS.fileout
    """
    params = parse_input(text)
    assert params["System.Name"] == ["si"]
    assert get_keyword(params, "scf.maxiter") == ["5"]  # first value wins, case-insensitive
    assert params["Atoms.UnitVectors"] == [["1", "0", "0"], ["0", "1", "0"], ["0", "0", "1"]]
    assert params["HS.fileout"] == []
    with pytest.raises(OpenmxInputError, match="never closed"):
        parse_input("<Atoms.UnitVectors\n1 0 0\n")
    with pytest.raises(OpenmxInputError, match="closed by"):
        parse_input("<Atoms.UnitVectors\n1 0 0\nAtoms.Other>\n")


def test_write_input_overrides_and_errors():
    cell = np.eye(3) * 5.43
    symbols = ["Si", "Si"]
    positions = [[0, 0, 0], [1.3575, 1.3575, 1.3575]]
    proto = load_protocol("moderate")
    params = dict(proto["parameters"])
    params.update({
        "SCF.MAXITER": 3,                     # case-insensitive override keeps the position
        "MD.Type": None,                      # removes the keyword
        "scf.eigen.lib": "elpa2",
        "scf.fixed.grid": [0.0, 0.0, 0.0],
        "My.Block": [[1, 2.5, "a"], [3, 4, "b"]],
        "HS.fileout": True,
    })
    text = write_input(cell, symbols, positions, params, kpoints_spacing=0.3)
    p = parse_input(text)
    assert get_keyword(p, "scf.maxIter") == ["3"]
    assert "SCF.MAXITER" not in text and "scf.maxIter 3" in text
    assert get_keyword(p, "MD.Type") is None
    assert get_keyword(p, "scf.eigen.lib") == ["elpa2"]
    assert p["My.Block"] == [["1", "2.5", "a"], ["3", "4", "b"]]
    assert get_keyword(p, "HS.fileout") == ["on"]
    assert p["scf.Kgrid"] == [str(n) for n in kpoint_grid(cell, 0.3)]
    assert p["Atoms.SpeciesAndCoordinates"][1] == ["2", "Si", "1.3575000000", "1.3575000000", "1.3575000000",
                                                   "2.0000", "2.0000"]
    # explicit grid wins, spacing/cap
    assert parse_input(write_input(cell, symbols, positions, {"scf.Kgrid": "2 2 2"}))["scf.Kgrid"] == ["2", "2", "2"]
    assert kpoint_grid(np.eye(3) * 0.5, 0.3) == [8, 8, 8]
    assert kpoint_grid(np.eye(3) * 0.5, 0.3, kmax=None) == [42, 42, 42]
    assert kpoint_grid(np.eye(3) * 10.0, 0.3) == [3, 3, 3]
    with pytest.raises(OpenmxInputError, match="element\\(s\\) Xe .*basis table 'corpus'") as err:
        write_input(cell, ["Si", "Xe"], positions, params)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(OpenmxInputError, match="N x 3"):
        write_input(cell, ["Si"], positions, params)
    # species order: first appearance on request; sorted (as the corpus) by default
    t_sorted = parse_input(write_input(cell, ["Si", "C"], positions, params))
    t_first = parse_input(write_input(cell, ["Si", "C"], positions, params, species_order="first"))
    assert [r[0] for r in t_sorted["Definition.of.Atomic.Species"]] == ["C", "Si"]
    assert [r[0] for r in t_first["Definition.of.Atomic.Species"]] == ["Si", "C"]
    assert t_sorted["Atoms.SpeciesAndCoordinates"][1][-2:] == ["2.0000", "2.0000"]  # C valence 4


def test_band_kpath_argument():
    cell = np.eye(3) * 4.0
    text = write_input(cell, ["Si"], [[0, 0, 0]], {}, band_kpath=[[5, 0, 0, 0, 0.5, 0, 0, "G", "X"]])
    p = parse_input(text)
    assert p["Band.dispersion"] == ["on"] and p["Band.Nkpath"] == ["1"]
    assert p["Band.kpath"] == [["5", "0.0", "0.0", "0.0", "0.5", "0.0", "0.0", "G", "X"]]
    with pytest.raises(OpenmxInputError, match="9 entries"):
        write_input(cell, ["Si"], [[0, 0, 0]], {}, band_kpath=[[5, 0, 0, 0]])


def test_protocols():
    names = list_protocols()
    assert {"fast", "moderate", "precise", "overlap_only"} <= set(names)
    moderate = load_protocol()
    assert moderate["name"] == "moderate"
    pm = moderate["parameters"]
    assert pm["scf.XcType"] == "GGA-PBE" and pm["scf.energycutoff"] == "200.0" and pm["scf.criterion"] == "1.0e-8"
    assert moderate["kpoints_spacing"] == 0.30 and moderate["kpoints_max"] == 8
    precise = load_protocol("precise")
    assert float(precise["parameters"]["scf.energycutoff"]) >= 300
    assert float(precise["parameters"]["scf.criterion"]) <= 1e-10 and precise["kpoints_spacing"] == 0.2
    assert precise["parameters"]["scf.XcType"] == "GGA-PBE"  # inherited
    ov = load_protocol("overlap_only")
    assert ov["parameters"]["scf.maxIter"] == "1"
    assert {k: v for k, v in ov["parameters"].items() if k != "scf.maxIter"} == {
        k: v for k, v in pm.items() if k != "scf.maxIter"
    }
    assert float(load_protocol("fast")["parameters"]["scf.energycutoff"]) < 200
    merged = load_protocol("moderate", {"parameters": {"scf.maxIter": "50"}, "kpoints_spacing": 0.5})
    assert merged["parameters"]["scf.maxIter"] == "50" and merged["parameters"]["scf.XcType"] == "GGA-PBE"
    assert merged["kpoints_spacing"] == 0.5
    assert load_protocol("moderate")["parameters"]["scf.maxIter"] == "200"  # not mutated
    with pytest.raises(ProtocolError, match="unknown OpenMX protocol 'nope'.*moderate.*precise"):
        load_protocol("nope")
    assert recursive_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}, "d": None}) == {
        "a": {"b": 3, "c": 2}, "d": None}


# ---------------------------------------------------------------------------------------------
# .out, stdout, .Band
# ---------------------------------------------------------------------------------------------
def test_out_mp92_values():
    text = _xz_text(_corpus() / "mp-92" / "openmx.out.xz")
    out = parse_out(text)
    assert out["version"] == "3.9"
    assert out["total_energy_hartree"] == pytest.approx(-8.192148813179, abs=1e-12)
    assert out["total_energy"] == pytest.approx(-8.192148813179 * HARTREE_TO_EV, abs=1e-9)
    assert out["energies_hartree"]["Uele"] == pytest.approx(-2.367588205336, abs=1e-12)
    assert out["enthalpy_hartree"] == pytest.approx(-8.192148813179, abs=1e-12)
    assert out["fermi_energy_hartree"] == pytest.approx(-0.092331704728, abs=1e-11)
    assert out["fermi_energy"] == pytest.approx(-0.092331704728 * HARTREE_TO_EV, abs=1e-9)
    assert out["scf_steps"] == 10 and out["scf_max_iter"] == 200 and out["scf_criterion"] == 1e-8
    assert out["scf_history"][-1] == {"step": 10, "NormRD": 4.35403e-7, "Uele": -2.367588205336, "md": 1}
    assert out["scf_converged"] is True
    assert out["elapsed_time"] == pytest.approx(64.113)
    assert out["timings"]["Total Computational Time"] == pytest.approx(64.113)
    assert out["timings_dft"]["Diagonalization"] == pytest.approx(11.429)
    assert out["complete"] and out["warnings"] == []
    kpts, eigs = parse_out_eigenvalues(text)
    assert kpts.shape == (196, 3) and eigs.shape == (196, 26)
    assert kpts[0] == pytest.approx([-0.4375, -0.42857, -0.42857])
    assert eigs[0, 0] == pytest.approx(-0.41988887558081, abs=1e-14)
    _, both = parse_out_eigenvalues(text, spin="both")
    assert both.shape == (2, 196, 26) and np.array_equal(both[0], both[1])


@pytest.mark.parametrize("run", _runs())
def test_out_and_band_every_corpus_run(run):
    folder = _corpus() / run
    text = _xz_text(folder / "openmx.out.xz")
    out = parse_out(text)
    assert out["version"] == "3.9" and out["complete"]
    assert out["scf_converged"] is True and 0 < out["scf_steps"] < out["scf_max_iter"] == 200
    assert out["last_delta_uele"] < out["scf_criterion"]
    assert out["total_energy_hartree"] < 0
    assert parse_input(out["input_text"]) == parse_input((folder / "openmx.dat").read_text())
    kpts, eigs = parse_out_eigenvalues(text)
    assert kpts.shape[0] == eigs.shape[0] > 0
    std = parse_stdout(_xz_text(folder / "openmx.std.xz"))
    assert std["normally_finished"] and std["error_kind"] is None and std["scfout_saved"]
    band_path = folder / "openmx.Band"
    if band_path.is_file():
        band = read_band(band_path)
        assert band["nbands"] == eigs.shape[1]
        assert band["spin"] == 0 and band["eigenvalues_hartree"].shape == (len(band["kpoints"]), band["nbands"])
        assert len(band["kpoints"]) == sum(p["npoints"] for p in band["kpath"])
        assert band["fermi_energy_hartree"] == pytest.approx(out["fermi_energy_hartree"], abs=1e-12)
        assert np.allclose(band["eigenvalues"], band["eigenvalues_hartree"] * HARTREE_TO_EV)
        assert [p["labels"] for p in band["kpath"]] == [("G", "X"), ("X", "M"), ("M", "G"), ("G", "R")]
        # rtv = 2*pi inv(cell)^T in 1/Bohr
        cell, _, _ = _structure(run)
        assert np.allclose(band["reciprocal_cell"], 2 * np.pi * np.linalg.inv(np.array(cell)).T, atol=1e-6)
        # Gamma eigenvalues agree with the SCF eigenvalue list when the SCF grid contains Gamma
        gamma = np.where(np.all(np.abs(kpts) < 1e-6, axis=1))[0]
        if len(gamma):
            assert np.allclose(band["eigenvalues_hartree"][0], eigs[gamma[0]], atol=1e-6)


def test_band_mp92_values_and_errors(tmp_path):
    band = read_band(_corpus() / "mp-92" / "openmx.Band")
    assert band["nbands"] == 26 and band["kpoints"].shape == (44, 3)
    assert band["eigenvalues_hartree"][0, 0] == -0.600004996766587
    assert band["kpoints"][1] == pytest.approx([0.05, 0, 0])
    assert band["rtv"][0, 0] == 1.346583593160033
    text = (_corpus() / "mp-92" / "openmx.Band").read_text()
    assert np.array_equal(read_band(text)["eigenvalues_hartree"], band["eigenvalues_hartree"])
    with pytest.raises(OpenmxBandError, match="truncated|announce|unreadable"):
        read_band(text[: len(text) // 2])
    lines = text.splitlines(keepends=True)
    with pytest.raises(OpenmxBandError, match="paths announce 44"):
        read_band("".join(lines[:-2]))
    with pytest.raises(OpenmxBandError, match="no such"):
        read_band(tmp_path / "missing.Band")
    with pytest.raises(OpenmxBandError):
        read_band("garbage\n1 2\n")


def test_scf_not_converged_failure():
    out = parse_out(_xz_text(_failures() / "scf-not-converged" / "si.out.xz"))
    assert out["scf_steps"] == 4 == out["scf_max_iter"]
    assert out["scf_criterion"] == 1e-10
    assert out["scf_converged"] is False
    assert out["complete"]  # OpenMX still "normally finished"
    std = parse_stdout(_xz_text(_failures() / "scf-not-converged" / "si.std.xz"))
    assert std["normally_finished"] and std["error_kind"] is None


@pytest.mark.parametrize(
    "folder, kind",
    [("missing-pao", "missing_pao"), ("elpa-abort", "eigensolver_abort"), ("killed", "killed")],
)
def test_stdout_failures(folder, kind):
    std = parse_stdout(_xz_text(_failures() / folder / "si.std.xz"))
    assert std["normally_finished"] is False
    assert std["error_kind"] == kind
    if kind == "missing_pao":
        assert std["missing_files"] == ["/tmp/openmx/DFT_DATA19/PAO/Si7.5.pao"]
        assert any("Could not find" in e for e in std["errors"])
    if kind == "eigensolver_abort":
        assert std["eigensolver_abort"] and any("DSTEQR failed" in e for e in std["errors"])
        assert std["last_scf_step"] == 1
    if kind == "killed":
        assert std["killed"] and std["errors"] == []


def test_stdout_warnings_and_bad_out():
    std = parse_stdout("***WARNNING*** something odd\nThe calculation was normally finished.\n")
    assert std["warnings"] == ["***WARNNING*** something odd"] and std["error_kind"] is None
    assert parse_stdout("")["error_kind"] == "killed"
    with pytest.raises(OpenmxOutputError, match="not an OpenMX .out file"):
        parse_out("hello\n")
    with pytest.raises(OpenmxOutputError, match="no 'Eigenvalues"):
        parse_out_eigenvalues("nothing")
    # an .out with steps == maxIter but already converged by dUele counts as converged
    text = (
        "  This calculation was performed by OpenMX Ver. 3.9\n"
        "***********\nscf.maxIter 3\nscf.criterion 1e-6\n***********\n"
        "   SCF=   1  NormRD=  1.0  Uele= -2.0\n"
        "   SCF=   2  NormRD=  0.1  Uele= -2.1\n"
        "   SCF=   3  NormRD=  0.01  Uele= -2.1000000001\n"
    )
    out = parse_out(text)
    assert out["scf_steps"] == 3 and out["scf_converged"] is True and not out["complete"]
    assert parse_out(text.replace("-2.1000000001", "-2.2"))["scf_converged"] is False


# ---------------------------------------------------------------------------------------------
# replay stand-in
# ---------------------------------------------------------------------------------------------
def test_physics_key_normalization():
    base = (_corpus() / "mp-92" / "openmx.dat").read_text()
    k = physics_key(base)
    variants = [
        base.replace("System.Name openmx", "System.Name other").replace("DATA.PATH /tmp/openmx/DFT_DATA19", ""),
        base.replace("scf.criterion 1.0e-8", "SCF.Criterion 1e-08   # comment"),
        base.replace("scf.Init.Mixing.Weight 0.30", "scf.Init.Mixing.Weight 0.3"),
        base.replace("level.of.stdout 1", "level.of.stdout 2").split("Band.dispersion")[0],
        base.replace("1.2364124487", "1.23641244870001"),
        base.replace("scf.SpinPolarization off", "scf.SpinPolarization OFF"),
    ]
    for v in variants:
        assert physics_key(v) == k
    different = [
        base.replace("scf.maxIter 200", "scf.maxIter 201"),
        base.replace("1.2364124487", "1.2364134487"),
        base.replace("scf.energycutoff 200.0", "scf.energycutoff 250.0"),
        base.replace("scf.criterion 1.0e-8", "scf.criterion 1.0e-8\nscf.eigen.lib elpa2"),
    ]
    for v in different:
        assert physics_key(v) != k
    # -0.0 and 0.0 are the same coordinate (units: test_physics_key_units)
    assert canonical_physics(base.replace(" 0.0000000000 0.9602068900", " -0.0000000000 0.9602068900")) == \
        canonical_physics(base)


def test_index_maps_corpus_and_failures():
    index = build_index([_corpus(), _failures()])
    assert len(index) == len(_runs()) + len(FAILURES)
    for run in _runs():
        assert index[physics_key((_corpus() / run / "openmx.dat").read_text())] == str((_corpus() / run).resolve())
    for folder in FAILURES:
        dat = _failures() / folder / "si.dat"
        assert find_recording(dat.read_text(), [_corpus(), _failures()]).parent == (_failures() / folder).resolve()
    with pytest.raises(ReplayError, match="same structure but differs in: scf.maxiter"):
        find_recording((_failures() / "killed" / "si.dat").read_text().replace("100", "77"), [_failures()])


def _run_exe(exe, cwd, *args):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, env=env, timeout=120)


def test_replay_executable_end_to_end(tmp_path):
    exe = write_replay_executable(tmp_path / "bin" / "openmx", [_corpus(), _failures()])
    assert os.access(exe, os.X_OK)
    assert sys.executable in exe.read_text()

    # 1. an input written by the default protocol for a corpus structure
    work = tmp_path / "run"
    work.mkdir()
    cell, symbols, positions = _structure("mp-92")
    text = write_input_from_protocol(cell, symbols, positions, system_name="aiida", band_kpath=True)
    (work / "aiida.in").write_text(text)
    proc = _run_exe(exe, work, "aiida.in", "-nt", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    first = proc.stderr.decode().splitlines()[0]
    assert first.startswith("REPLAYED recorded OpenMX output of ") and "mp-92" in first
    assert b"The calculation was normally finished." in proc.stdout
    assert sorted(p.name for p in work.iterdir()) == ["aiida.Band", "aiida.in", "aiida.out", "aiida.scfout"]
    assert parse_out((work / "aiida.out").read_text())["total_energy_hartree"] == pytest.approx(-8.192148813179)
    assert (work / "aiida.scfout").read_bytes() == lzma.open(_corpus() / "mp-92" / "openmx.scfout.xz").read()

    # without Band.dispersion no .Band file
    work2 = tmp_path / "run2"
    work2.mkdir()
    (work2 / "x.dat").write_text(write_input_from_protocol(cell, symbols, positions, system_name="x"))
    proc = _run_exe(exe, work2, "x.dat")
    assert proc.returncode == 0
    assert sorted(p.name for p in work2.iterdir()) == ["x.dat", "x.out", "x.scfout"]

    # 2. recorded failures: only stdout comes back
    for folder, rc, files in [
        ("missing-pao", 0, []),
        ("elpa-abort", 0, []),
        ("killed", 137, []),
        ("scf-not-converged", 0, ["si.out", "si.scfout"]),
    ]:
        w = tmp_path / folder
        w.mkdir()
        (w / "si.dat").write_text((_failures() / folder / "si.dat").read_text())
        proc = _run_exe(exe, w, "si.dat")
        assert proc.returncode == rc, (folder, proc.stderr.decode())
        assert proc.stderr.decode().startswith(f"REPLAYED recorded OpenMX output of {(_failures() / folder).resolve()}")
        assert sorted(p.name for p in w.iterdir() if p.name != "si.dat") == files
        assert parse_stdout(proc.stdout.decode("latin-1"))["error_kind"] == (
            {"missing-pao": "missing_pao", "elpa-abort": "eigensolver_abort", "killed": "killed"}.get(folder)
        )

    # 3. no recording: clear error, exit 1, no outputs
    w = tmp_path / "miss"
    w.mkdir()
    (w / "aiida.in").write_text(text.replace("scf.maxIter 200", "scf.maxIter 123"))
    proc = _run_exe(exe, w, "aiida.in")
    assert proc.returncode == 1
    assert "no recorded OpenMX run matches" in proc.stderr.decode() and "scf.maxiter" in proc.stderr.decode()
    assert proc.stdout == b"" and sorted(p.name for p in w.iterdir()) == ["aiida.in"]


def test_replay_module_cli_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    proc = subprocess.run([sys.executable, "-m", "aiida_deeph.replay.standin", "x.dat"], cwd=tmp_path,
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 1 and ENV_VAR in proc.stderr.decode()
    with pytest.raises(ReplayError, match="does not exist"):
        write_replay_executable(tmp_path / "openmx", tmp_path / "nope")


def test_index_cache_follows_changes(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    shutil.copytree(_failures() / "killed", root / "a")
    first = build_index(root)
    assert not list(root.rglob(".aiida_deeph*")) and not list(root.rglob("index-*.json"))   # nothing in the corpus
    assert len(list((tmp_path / "cache" / "aiida-deeph" / "replay").glob("index-*.json"))) == 1
    assert list(first.values()) == [str((root / "a").resolve())]
    assert build_index(root) == first
    shutil.copytree(_failures() / "missing-pao", root / "b")
    assert len(build_index(root)) == 2
    dat = root / "b" / "si.dat"
    dat.write_text(dat.read_text().replace("Si7.5", "Si7.0").replace("maxIter                100", "maxIter 9"))
    os.utime(dat, ns=(dat.stat().st_atime_ns, dat.stat().st_mtime_ns + 10**9))
    index = build_index(root)
    assert physics_key(dat.read_text()) in index and len(index) == 2


@pytest.mark.parametrize("run", ["mp-92", "mp-4280", "mp-7000"])
def test_physics_key_units(run):
    """The same structure given in FRAC or AU coordinates has the same physics key."""
    from aiida_deeph.core.constants import BOHR_TO_ANGSTROM

    text = (_corpus() / run / "openmx.dat").read_text()
    params = parse_input(text)
    s = json.loads((_corpus() / run / "meta.json").read_text())["structure"]
    frac = dict(params)
    frac["Atoms.SpeciesAndCoordinates.Unit"] = ["FRAC"]
    frac["Atoms.SpeciesAndCoordinates"] = [
        [row[0], row[1], *(repr(x) for x in site["abc"]), *row[5:]]
        for row, site in zip(params["Atoms.SpeciesAndCoordinates"], s["sites"])
    ]
    assert physics_key(format_input(frac)) == physics_key(text)
    au = dict(params)
    au["Atoms.UnitVectors.Unit"] = ["AU"]
    au["Atoms.UnitVectors"] = [[repr(float(x) / BOHR_TO_ANGSTROM) for x in row] for row in params["Atoms.UnitVectors"]]
    au["Atoms.SpeciesAndCoordinates.Unit"] = ["au"]
    au["Atoms.SpeciesAndCoordinates"] = [
        [*row[:2], *(repr(float(x) / BOHR_TO_ANGSTROM) for x in row[2:5]), *row[5:]]
        for row in params["Atoms.SpeciesAndCoordinates"]
    ]
    assert physics_key(format_input(au)) == physics_key(text)
