"""Command line plugins for ``verdi`` (``verdi data deeph ...``) and their pure helpers.

``aiida_deeph.data.stats`` holds the logic (dataset statistics, plots, export), usable from
workflows and scripts; ``aiida_deeph.cmdline.data`` the click commands.
"""
