"""Every subcommand listed in cli/main.py is registered (main skips missing modules silently) and its --help
works; `aiida-deeph info --json` prints exactly one JSON object."""
import json
import subprocess
import sys

import pytest

from aiida_deeph.cli.main import SUBCOMMANDS, build_parser


def test_every_listed_subcommand_is_registered():
    import importlib

    for name in SUBCOMMANDS:       # each module exists (main() would skip a missing one without a word)
        assert hasattr(importlib.import_module(f"aiida_deeph.cli.{name}"), "register"), name
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert len(choices) == len(SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(next(a for a in build_parser()._actions if a.dest == "command").choices))
def test_help(command, capsys):
    from aiida_deeph.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: aiida-deeph" in capsys.readouterr().out


def test_info_json_is_one_object():
    proc = subprocess.run([sys.executable, "-m", "aiida_deeph.cli.main", "info", "--preset", "paper", "--json"],
                          capture_output=True, text=True, check=True, timeout=300)
    info = json.loads(proc.stdout)
    assert info["preset"] == "paper" and len(info["elements"]) == 24
    assert info["num_parameters"] == 5795870          # the 5.8 M configuration (issue 13 sizes it further)
    assert info["model"]["num_blocks"] == 3
