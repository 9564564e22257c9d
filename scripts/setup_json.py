"""setup.json (the AiiDA plugin registry's classic metadata file) generated from pyproject.toml.

    python scripts/setup_json.py          # rewrite setup.json beside pyproject.toml
    python scripts/setup_json.py --check  # exit 1 if setup.json differs from pyproject.toml (the tests do this)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def setup_json(pyproject: Path = ROOT / "pyproject.toml") -> dict:
    project = tomllib.loads(pyproject.read_text())["project"]
    entry_points = {group: [f"{name} = {target}" for name, target in points.items()]
                    for group, points in project.get("entry-points", {}).items()}
    entry_points["console_scripts"] = [f"{name} = {target}" for name, target in project.get("scripts", {}).items()]
    return {
        "name": project["name"],
        "version": project["version"],
        "description": project["description"],
        "license": project.get("license", {}).get("text"),
        "classifiers": project.get("classifiers", []),
        "python_requires": project.get("requires-python"),
        "install_requires": project.get("dependencies", []),
        "extras_require": project.get("optional-dependencies", {}),
        "entry_points": entry_points,
        "reentry_register": True,
    }


def text() -> str:
    return json.dumps(setup_json(), indent=4) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = ROOT / "setup.json"
    if "--check" in argv:
        if not path.is_file() or path.read_text() != text():
            print("setup.json differs from pyproject.toml: run python scripts/setup_json.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
