"""``verdi data deeph``: statistics and export of a Group of HamiltonianData.

Loaded by ``verdi data`` through the ``aiida.cmdline.data`` entry point ``deeph`` (aiida-core's
``Pluginable`` group loads the entry point lazily). The logic lives in :mod:`aiida_deeph.data.stats`.
"""
from __future__ import annotations

import json

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.utils import decorators, echo


@click.group("deeph", cls=VerdiCommandGroup)
def deeph():
    """Dataset statistics and export of HamiltonianData groups (aiida-deeph)."""


@deeph.command("stats")
@click.argument("group", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, writable=True),
              help="Write a figure (PNG): element counts, element-pair heat map, atoms per cell.")
@decorators.with_dbenv()
def stats_cmd(group, as_json, plot):
    """Statistics of the HamiltonianData in GROUP (label), from node attributes only.

    Structures, element and element-pair counts, atoms per cell, elements per structure, atom pairs,
    matrix entries, storage, SCF iterations, and the failures recorded by the DatabaseWorkChains that
    filled the group.
    """
    from aiida_deeph.data.stats import GroupNotFound, collect_stats, format_stats, plot_stats

    try:
        result = collect_stats(group)
    except GroupNotFound as exc:
        echo.echo_critical(str(exc))
    if plot:
        try:
            plot_stats(result, plot)
        except OSError as exc:
            echo.echo_critical(f"cannot write the plot {plot}: {exc}")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(format_stats(result))
        if plot:
            echo.echo_success(f"figure written to {plot}")


@deeph.command("export")
@click.argument("group", type=str)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dock", "packed", "legacy"]), default="dock",
              show_default=True, help="DeepH-dock folders, packed shards, or legacy DeepH-pack folders.")
@click.option("--shard-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Structures per packed shard (--format packed).")
@decorators.with_dbenv()
def export_cmd(group, directory, fmt, shard_size):
    """Write the HamiltonianData of GROUP (label) to DIRECTORY for use outside AiiDA.

    dock/legacy: one folder per structure named by MP id (or UUID); packed: shard-00000.h5, ... with up
    to --shard-size structures each (the input of `aiida-deeph train`). DIRECTORY/index.json lists every
    structure with its shard or folder, name, UUID, MP id and formula.
    """
    from aiida_deeph.data.stats import GroupNotFound, export_group, load_group

    try:
        load_group(group)
    except GroupNotFound as exc:
        echo.echo_critical(str(exc))

    def progress(done, total, name):
        if done == total or done % 100 == 0:
            echo.echo_report(f"{done}/{total} exported (last: {name})")

    try:
        index = export_group(group, directory, fmt=fmt, shard_size=shard_size, progress=progress)
    except OSError as exc:
        echo.echo_critical(f"export failed: {exc}")
    what = f"{index['num_shards']} shard(s)" if fmt == "packed" else f"{index['num_structures']} folder(s)"
    echo.echo_success(f"exported {index['num_structures']} structures of group {index['group']!r} "
                      f"as {what} to {directory}")
