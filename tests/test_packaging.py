"""Packaging metadata: setup.json (the AiiDA plugin registry's file) never disagrees with pyproject.toml."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_json_equals_pyproject():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "setup_json.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((ROOT / "setup.json").read_text())
    assert "deeph.properties = aiida_deeph.workflows.properties:DeepHPropertiesWorkChain" in data["entry_points"][
        "aiida.workflows"]
    assert data["entry_points"]["console_scripts"] == ["aiida-deeph = aiida_deeph.cli.main:main"]


def test_every_entry_point_imports():
    import importlib

    data = json.loads((ROOT / "setup.json").read_text())
    for group, points in data["entry_points"].items():
        for point in points:
            module, _, attr = point.split(" = ")[1].partition(":")
            assert hasattr(importlib.import_module(module), attr), (group, point)
