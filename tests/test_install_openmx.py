"""scripts/install-openmx.sh (its cache rule, data assembly and one-line failures) and how Python finds the
install it makes (aiida_deeph.io.openmx_install, `aiida-deeph setup openmx --auto`). The real build itself is
exercised by scripts/test.sh before the `real_openmx` tests; here a fake cached build keeps this fast."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from aiida_deeph.io.openmx_install import locate_openmx

from .conftest import shared_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-openmx.sh"


def _run(*args, env=None):
    full = {k: v for k, v in os.environ.items() if k not in ("OPENMX_EXECUTABLE", "OPENMX_DATA_PATH")}
    full.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=300)


def _fake_build(prefix: Path, tarball: Path) -> Path:
    """A cached 'build' for ``tarball`` (the script keys builds by the tarball's sha256)."""
    key = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    exe = prefix / key / "bin" / "openmx"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\necho 'OpenMX (fake) usage'\n")
    exe.chmod(0o755)
    (prefix / key / "BUILD_OK").touch()
    return exe


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_missing_tarball_is_one_line(tmp_path):
    proc = _run("--source", str(tmp_path / "nope.tar.xz"), "--prefix", str(tmp_path / "cache"))
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("install-openmx: error: no OpenMX source tarball")


def test_corrupt_tarball_is_one_line(tmp_path):
    bad = tmp_path / "openmx3.9.tar.gz"
    bad.write_bytes(b"not a tarball at all" * 100)
    proc = _run("--source", str(bad), "--prefix", str(tmp_path / "cache"))
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "corrupt" in lines[0] or "missing build dependencies" in lines[0] or "apt-get" in lines[0]
    assert not (tmp_path / "cache" / "install.json").exists()


def test_cached_build_data_and_record(tmp_path):
    """A second call is instant (the cached build); DFT_DATA19 gets the basis table's PAO/VPS files;
    install.json is what Python finds by the same rule."""
    tarball = tmp_path / "src.tar.xz"
    tarball.write_bytes(b"pretend source")
    prefix = tmp_path / "cache"
    exe = _fake_build(prefix, tarball)
    data = shared_dir() / "openmx-data"
    proc = _run("--source", str(tarball), "--prefix", str(prefix), "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    assert "cached build" in proc.stderr
    dft = exe.parent.parent / "DFT_DATA19"
    assert f"export OPENMX_EXECUTABLE={exe}" in proc.stdout and f"export OPENMX_DATA_PATH={dft}" in proc.stdout
    assert (dft / "PAO" / "Si7.0.pao").is_file() and (dft / "VPS" / "Si_PBE19.vps").is_file()
    assert len(list((dft / "PAO").iterdir())) == 24 and len(list((dft / "VPS").iterdir())) == 24
    record = json.loads((prefix / "install.json").read_text())
    assert record["executable"] == str(exe) and record["data_path"] == str(dft)


def test_data_folder_missing_files_is_one_line(tmp_path):
    tarball = tmp_path / "src.tar.xz"
    tarball.write_bytes(b"pretend source 2")
    prefix = tmp_path / "cache"
    _fake_build(prefix, tarball)
    data = tmp_path / "data"
    (data / "PAO").mkdir(parents=True)
    (data / "VPS").mkdir()
    proc = _run("--source", str(tarball), "--prefix", str(prefix), "--data", str(data))
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "lacks files of the basis table" in lines[0] and "PAO/Si7.0.pao" in lines[0]
    assert not (prefix / "install.json").exists()


def test_locate_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENMX_EXECUTABLE", raising=False)
    monkeypatch.delenv("OPENMX_DATA_PATH", raising=False)
    monkeypatch.delenv("AIIDA_DEEPH_OPENMX_PREFIX", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    install, why = locate_openmx()
    assert install is None and "scripts/install-openmx.sh" in why and "\n" not in why
    # the script's default prefix under XDG_CACHE_HOME
    prefix = tmp_path / "xdg" / "aiida-deeph" / "openmx-3.9"
    exe = prefix / "k" / "bin" / "openmx"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    data = prefix / "k" / "DFT_DATA19"
    (data / "PAO").mkdir(parents=True)
    (data / "VPS").mkdir()
    (prefix / "install.json").write_text(json.dumps({"executable": str(exe), "data_path": str(data)}))
    install, _ = locate_openmx()
    assert install.executable == str(exe) and install.origin.endswith("install.json")
    # a broken install says so
    (data / "VPS").rmdir()
    install, why = locate_openmx()
    assert install is None and "VPS/" in why
    # the environment wins
    (data / "VPS").mkdir()
    monkeypatch.setenv("OPENMX_EXECUTABLE", str(exe))
    install, why = locate_openmx()
    assert install is None and "OPENMX_DATA_PATH" in why
    monkeypatch.setenv("OPENMX_DATA_PATH", str(data))
    assert locate_openmx()[0].origin == "environment"


def test_setup_openmx_auto(aiida_profile, aiida_localhost, tmp_path, monkeypatch, capsys):
    from aiida_deeph.cli.main import main

    monkeypatch.delenv("OPENMX_EXECUTABLE", raising=False)
    monkeypatch.delenv("OPENMX_DATA_PATH", raising=False)
    monkeypatch.setenv("AIIDA_DEEPH_OPENMX_PREFIX", str(tmp_path / "none"))
    assert main(["setup", "openmx", "--auto", "--label", "auto-t"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("aiida-deeph setup: error: no OpenMX install found") and "\n" not in err
    assert main(["setup", "openmx", "--label", "auto-t"]) == 1
    assert "--auto" in capsys.readouterr().err
    exe = tmp_path / "openmx"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    data = tmp_path / "DFT_DATA19"
    (data / "PAO").mkdir(parents=True)
    (data / "VPS").mkdir()
    monkeypatch.setenv("OPENMX_EXECUTABLE", str(exe))
    monkeypatch.setenv("OPENMX_DATA_PATH", str(data))
    assert main(["setup", "openmx", "--auto", "--label", "auto-t"]) == 0
    out = capsys.readouterr().out
    assert "using real OpenMX" in out and "created code auto-t" in out
    from aiida import orm

    code = orm.load_code("auto-t")
    assert code.base.extras.get("openmx_data_path") == str(data)
    assert "OMPI_ALLOW_RUN_AS_ROOT=1" in code.prepend_text


def test_record_openmx_without_install_is_one_line(tmp_path, monkeypatch, capsys):
    from aiida_deeph.cli.main import main

    monkeypatch.delenv("OPENMX_EXECUTABLE", raising=False)
    monkeypatch.setenv("AIIDA_DEEPH_OPENMX_PREFIX", str(tmp_path / "none"))
    assert main(["record-openmx", "--out", str(tmp_path / "rec"), "--ids", "mp-22862"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("aiida-deeph record-openmx: error: no OpenMX install found") and "\n" not in err


def test_read_structure_file(tmp_path):
    from aiida_deeph.structures.files import read_structure_file

    meta = shared_dir() / "openmx-carbon" / "C-dia2-r003" / "meta.json"
    name, structure, info = read_structure_file(meta)
    assert name == "C-dia2-r003" and len(structure) == 2 and "generated_from" in info
    poscar = tmp_path / "Si.vasp"
    poscar.write_text("Si\n1.0\n0 2.715 2.715\n2.715 0 2.715\n2.715 2.715 0\nSi\n2\nDirect\n0 0 0\n0.25 0.25 0.25\n")
    name, structure, _ = read_structure_file(poscar)
    assert name == "Si" and structure.composition.reduced_formula == "Si"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="cannot read a structure from"):
        read_structure_file(bad)
    with pytest.raises(ValueError, match="no structure file"):
        read_structure_file(tmp_path / "missing.cif")
