"""The .scfout reader: layout checks, byte orders, bad files."""
import lzma

import numpy as np
import pytest

from aiida_deeph.io.scfout import ScfoutError, read_scfout, swap_byte_order

from .conftest import corpus_dir, corpus_ids, shared_dir


def _bytes(mp_id="mp-92"):
    return lzma.open(corpus_dir() / mp_id / "openmx.scfout.xz").read()


@pytest.mark.parametrize("mp_id", corpus_ids())
def test_reads_every_corpus_file(mp_id):
    scf = read_scfout(corpus_dir() / mp_id / "openmx.scfout.xz")
    assert scf.version == 3 and scf.spin == 0
    assert scf.hamiltonian.shape == scf.overlap.shape
    # both directions of every pair are stored
    pairs = {tuple(r) for r in scf.pairs().tolist()}
    assert all((-a, -b, -c, j, i) in pairs for a, b, c, i, j in pairs)
    assert "Definition.of.Atomic.Species" in scf.input_text


def test_big_endian_file_reads_the_same(tmp_path):
    raw = _bytes()
    swapped = swap_byte_order(raw)
    assert swapped != raw
    (tmp_path / "be.scfout").write_bytes(swapped)
    a = read_scfout(corpus_dir() / "mp-92" / "openmx.scfout.xz")
    b = read_scfout(tmp_path / "be.scfout")
    assert b.byteorder == ">" and a.byteorder == "<"
    for name in ("hamiltonian", "overlap", "density_matrix", "tv", "gxyz", "atv_ijk"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.input_text == b.input_text and a.chemical_potential == b.chemical_potential


@pytest.mark.parametrize("cut", [10, 100, 5000, -1, -257])
def test_truncated_file_is_refused(tmp_path, cut):
    raw = _bytes()
    (tmp_path / "t.scfout").write_bytes(raw[:cut])
    with pytest.raises(ScfoutError, match="truncated|size mismatch|too short|not an OpenMX"):
        read_scfout(tmp_path / "t.scfout")


def test_extra_bytes_are_refused(tmp_path):
    (tmp_path / "t.scfout").write_bytes(_bytes() + b"\0" * 16)
    with pytest.raises(ScfoutError, match="size mismatch"):
        read_scfout(tmp_path / "t.scfout")


def test_version0_file_is_refused(tmp_path):
    raw = bytearray(_bytes())
    raw[4:8] = np.array([0], dtype="<i4").tobytes()  # SpinP_switch 0 + 4 * version 0
    (tmp_path / "v0.scfout").write_bytes(bytes(raw))
    with pytest.raises(ScfoutError, match="version 0"):
        read_scfout(tmp_path / "v0.scfout")


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "text.scfout").write_text("This is not an OpenMX file at all, just some text.\n" * 10)
    with pytest.raises(ScfoutError):
        read_scfout(tmp_path / "text.scfout")
    out_xz = shared_dir() / "openmx-failures" / "scf-not-converged" / "si.out.xz"
    with pytest.raises(ScfoutError):
        read_scfout(out_xz)
    (tmp_path / "bad.scfout.xz").write_bytes(b"\xfd7zXZ\0garbage")
    with pytest.raises(ScfoutError, match="xz"):
        read_scfout(tmp_path / "bad.scfout.xz")
    with pytest.raises(ScfoutError, match="no such file"):
        read_scfout(tmp_path / "missing.scfout")
