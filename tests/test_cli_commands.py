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
    # the paper's sizes, 80 channels per l and parity (ModelConfig.preset): within 25 % of the paper's 17.28 M
    assert info["num_parameters"] == 21545310 and abs(info["num_parameters"] / 17.28e6 - 1) < 0.25
    assert info["model"]["channels"] == 160
    from aiida_deeph.cli.info import preset_info

    assert preset_info("medium")["num_parameters"] == 5795870      # the former paper preset, kept by name
    assert info["model"]["num_blocks"] == 3


def test_every_option_has_a_help_text():
    import argparse

    from aiida_deeph.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.option_strings or a.dest}" for name, parser in sub.choices.items() for a in parser._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing
