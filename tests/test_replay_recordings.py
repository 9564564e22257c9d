"""The shipped replay recordings still match what today's input writer produces.

The replay stand-in finds a recording by the physics of the input (:func:`physics_key`). When the input
writer or a protocol changes, the recordings must be refreshed from a real OpenMX
(`aiida-deeph record-openmx --refresh --out aiida_deeph/resources/recordings`); these tests say so.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_deeph.calculations.openmx import OpenmxCalculation
from aiida_deeph.cli.setup import shipped_recordings
from aiida_deeph.replay.record import input_for, recording_structures
from aiida_deeph.replay.standin import canonical_physics, physics_key

RECORDINGS = sorted(recording_structures(shipped_recordings()).items())


def _differences(a: str, b: str) -> list:
    ca, cb = canonical_physics(a), canonical_physics(b)
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))


@pytest.mark.parametrize("name", [n for n, _ in RECORDINGS])
def test_calcjob_input_equals_the_recording(name, openmx_code, tmp_path, monkeypatch):
    """OpenmxCalculation (dry run, the recording's protocol) writes an input with the recorded physics."""
    structure, meta = dict(RECORDINGS)[name]
    recorded = (shipped_recordings() / name / "openmx.dat").read_text()
    monkeypatch.chdir(tmp_path)
    builder = OpenmxCalculation.get_builder_from_protocol(openmx_code, orm.StructureData(pymatgen=structure),
                                                          protocol=meta.get("protocol", "moderate"))
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    written = (Path(node.dry_run_info["folder"]) / "aiida.dat").read_text()
    assert physics_key(written) == physics_key(recorded), (
        f"{name}: today's input differs from the recording in {_differences(written, recorded)}; refresh with "
        "`aiida-deeph record-openmx --refresh --out aiida_deeph/resources/recordings` (needs a real OpenMX)")


@pytest.mark.parametrize("name", [n for n, _ in RECORDINGS])
def test_recorder_writes_what_the_calcjob_writes(name):
    """The recorder's input (aiida_deeph.replay.record.input_for) has the recorded physics too."""
    structure, meta = dict(RECORDINGS)[name]
    recorded = (shipped_recordings() / name / "openmx.dat").read_text()
    assert physics_key(input_for(structure, protocol=meta.get("protocol", "moderate"))) == physics_key(recorded)


def test_every_shipped_recording_has_a_structure():
    folders = sorted(p.name for p in shipped_recordings().iterdir() if (p / "openmx.dat").is_file())
    assert folders and folders == [n for n, _ in RECORDINGS]
    for name in folders:
        meta = json.loads((shipped_recordings() / name / "meta.json").read_text())
        assert meta["nsites"] == len(dict(RECORDINGS)[name][0])
