"""OpenMX 3.9 input files (``.dat``): parse, write, protocols.

Pure Python (numpy + stdlib; PyYAML if importable): never imports aiida.

Parsed form (``parse_input``): an insertion-ordered ``dict`` mapping the keyword as spelled in
the file to either a list of value tokens (``'scf.Kgrid' -> ['8', '7', '7']``) or, for a
``<Name ... Name>`` block, a list of token lists keyed by the block name without the ``<``
(``'Definition.of.Atomic.Species' -> [['Si', 'Si7.0-s2p2d1', 'Si_PBE19']]``).
OpenMX compares keywords case-insensitively; use :func:`get_keyword` to look one up.
"""
from __future__ import annotations

import numpy as np

from aiida_deeph.core.lattice import LatticeError, kpoint_grid

__all__ = [
    "OpenmxInputError",
    "parse_input",
    "get_keyword",
    "is_block",
    "format_input",
    "write_input",
    "write_input_from_protocol",
    "default_band_kpath",
    "STRUCTURE_KEYS",
]


class OpenmxInputError(ValueError):
    """An OpenMX input that cannot be parsed or written."""


# keywords write_input generates from the structure and basis table
STRUCTURE_KEYS = (
    "Species.Number",
    "Definition.of.Atomic.Species",
    "Atoms.Number",
    "Atoms.SpeciesAndCoordinates.Unit",
    "Atoms.SpeciesAndCoordinates",
    "Atoms.UnitVectors.Unit",
    "Atoms.UnitVectors",
)
_HEADER_KEYS = ("system.currrentdirectory", "system.name", "data.path")


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    pos = line.find("#")
    return line if pos < 0 else line[:pos]


def parse_input(text: str) -> dict:
    """Parse an OpenMX input text into ``{key: tokens}`` / ``{block: [tokens, ...]}`` (see module doc).

    ``#`` starts a comment. A keyword given twice keeps its first value, as OpenMX does.
    Raises :class:`OpenmxInputError` for an unterminated or mismatched block.
    """
    if not isinstance(text, str):
        raise OpenmxInputError(f"parse_input expects the input text as str, got {type(text).__name__}")
    out: dict = {}
    seen: set = set()
    block_name = None
    block_rows: list = []
    block_line = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = _strip_comment(raw).split()
        if not tokens:
            continue
        first = tokens[0]
        if block_name is None:
            if first.startswith("<") and len(first) > 1:
                block_name, block_rows, block_line = first[1:], [], lineno
                if len(tokens) > 1:  # '<Block a b c' on one line: keep the rest as a first row
                    block_rows.append(tokens[1:])
                continue
            if first.endswith(">") and len(first) > 1:
                raise OpenmxInputError(f"line {lineno}: block end {first!r} without a matching '<{first[:-1]}'")
            if first.lower() not in seen:
                seen.add(first.lower())
                out[first] = tokens[1:]
            continue
        # inside a block
        if first.endswith(">") and len(first) > 1:
            name = first[:-1]
            if name.lower() != block_name.lower():
                raise OpenmxInputError(
                    f"line {lineno}: block <{block_name} (line {block_line}) closed by {first!r}"
                )
            if block_name.lower() not in seen:
                seen.add(block_name.lower())
                out[block_name] = block_rows
            block_name = None
            continue
        block_rows.append(tokens)
    if block_name is not None:
        raise OpenmxInputError(f"block <{block_name} (line {block_line}) is never closed with '{block_name}>'")
    return out


def is_block(value) -> bool:
    """True for a block value (list of token lists)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(r, (list, tuple)) for r in value)


def _find_key(params: dict, key: str):
    low = key.lower()
    for k in params:
        if k.lower() == low:
            return k
    return None


def get_keyword(params: dict, key: str, default=None):
    """Case-insensitive lookup in a parsed input (or a parameters dict)."""
    k = _find_key(params, key)
    return default if k is None else params[k]


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _fmt_scalar(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _fmt_value(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(_fmt_scalar(v) for v in value)
    return _fmt_scalar(value)


def format_input(params: dict) -> str:
    """Render a ``{key: value}`` mapping (parsed form or plain values) as OpenMX input text."""
    lines = []
    for key, value in params.items():
        if value is None:
            continue
        if is_block(value):
            lines.append(f"<{key}")
            lines.extend(" " + " ".join(_fmt_scalar(t) for t in row) for row in value)
            lines.append(f"{key}>")
        else:
            text = _fmt_value(value)
            lines.append(f"{key} {text}" if text else key)
    return "\n".join(lines) + "\n"


def default_band_kpath(npoints: int = 11) -> list:
    """The corpus' generic path G-X-M-G-R (fractional, the cell's own reciprocal basis) as block rows."""
    pts = {"G": (0.0, 0.0, 0.0), "X": (0.5, 0.0, 0.0), "M": (0.5, 0.5, 0.0), "R": (0.5, 0.5, 0.5)}
    return [
        [npoints, *pts[a], *pts[b], a, b]
        for a, b in (("G", "X"), ("X", "M"), ("M", "G"), ("G", "R"))
    ]


def _band_rows(band_kpath) -> list:
    rows = []
    for seg in band_kpath:
        seg = list(seg)
        if len(seg) != 9:
            raise OpenmxInputError(
                "each Band.kpath segment needs 9 entries: npoints k1(3) k2(3) label1 label2, got "
                f"{seg!r}"
            )
        n = int(seg[0])
        ks = [float(x) for x in seg[1:7]]
        rows.append([str(n), *[repr(x) for x in ks], str(seg[7]), str(seg[8])])
    return rows


def write_input(
    cell,
    symbols,
    positions,
    parameters: dict | None = None,
    basis_table="corpus",
    system_name: str = "openmx",
    data_path: str | None = None,
    kpoints_spacing: float | None = None,
    kpoints_max: int | None = 8,
    band_kpath=None,
    species_order: str = "sorted",
) -> str:
    """Write an OpenMX input text for a periodic structure.

    ``cell`` (3x3, rows = lattice vectors) and ``positions`` (N x 3) in Cartesian Angstrom;
    ``symbols`` element symbols. ``parameters``: keyword -> value (scalars, lists, booleans -> on/off,
    a list of lists becomes a ``<block``; ``None`` removes the keyword); keys are matched
    case-insensitively and may override any generated keyword. ``scf.Kgrid`` is computed from
    ``kpoints_spacing`` (1/Angstrom incl. 2*pi, capped at ``kpoints_max``) unless ``parameters`` sets it.
    ``band_kpath``: ``True`` for the corpus' default path, or a list of segments
    ``[n, k1x, k1y, k1z, k2x, k2y, k2z, label1, label2]`` -> ``Band.dispersion on`` etc.
    ``species_order``: ``'sorted'`` (alphabetical, as the corpus) or ``'first'`` (first appearance).
    """
    from aiida_deeph.core.basis import BasisError, BasisTable, load_basis_table

    parameters = dict(parameters or {})
    cell = np.asarray(cell, dtype=float)
    positions = np.asarray(positions, dtype=float)
    symbols = [str(s) for s in symbols]
    if cell.shape != (3, 3):
        raise OpenmxInputError(f"cell must be 3x3 (Angstrom), got shape {cell.shape}")
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) != len(symbols):
        raise OpenmxInputError(
            f"positions must be N x 3 with N = len(symbols) = {len(symbols)}, got shape {positions.shape}"
        )
    if len(symbols) == 0:
        raise OpenmxInputError("cannot write an OpenMX input for a structure without atoms")
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(positions)):
        raise OpenmxInputError("cell or positions contain non-finite numbers")
    if abs(np.linalg.det(cell)) < 1e-8:
        raise OpenmxInputError("cell is singular (zero volume)")

    table = basis_table if isinstance(basis_table, BasisTable) else load_basis_table(basis_table)
    if species_order == "sorted":
        species = sorted(set(symbols))
    elif species_order == "first":
        species = list(dict.fromkeys(symbols))
    else:
        raise OpenmxInputError(f"species_order must be 'sorted' or 'first', got {species_order!r}")
    missing = [el for el in species if el not in table.elements]
    if missing:
        raise OpenmxInputError(
            f"element(s) {', '.join(missing)} have no basis in the basis table '{table.name}' "
            f"(available: {' '.join(sorted(table.elements))})"
        )
    try:
        entries = {el: table.entry(el) for el in species}
        valence = {el: table.valence(el) for el in species}
    except BasisError as exc:  # pragma: no cover - covered by the check above
        raise OpenmxInputError(str(exc).splitlines()[0]) from None

    header: dict = {"System.CurrrentDirectory": "./", "System.Name": system_name}
    if data_path is not None:
        header["DATA.PATH"] = data_path
    structure: dict = {
        "Species.Number": str(len(species)),
        "Definition.of.Atomic.Species": [[el, entries[el]["pao"], entries[el]["vps"]] for el in species],
        "Atoms.Number": str(len(symbols)),
        "Atoms.SpeciesAndCoordinates.Unit": "Ang",
        "Atoms.SpeciesAndCoordinates": [
            [str(i + 1), el, *(f"{x:.10f}" for x in pos), f"{valence[el] / 2:.4f}", f"{valence[el] / 2:.4f}"]
            for i, (el, pos) in enumerate(zip(symbols, positions))
        ],
        "Atoms.UnitVectors.Unit": "Ang",
        "Atoms.UnitVectors": [[f"{x:.10f}" for x in row] for row in cell],
    }

    # assemble: header, leading level.of.* keys, structure, remaining parameters
    out: dict = dict(header)
    user_items = list(parameters.items())
    lead = [(k, v) for k, v in user_items if k.lower().startswith("level.of.")]
    rest = [(k, v) for k, v in user_items if not k.lower().startswith("level.of.")]
    for k, v in lead:
        out[k] = v
    out.update(structure)

    has_kgrid = any(k.lower() == "scf.kgrid" for k, _ in user_items)
    if not has_kgrid:
        spacing = 0.30 if kpoints_spacing is None else kpoints_spacing
        try:
            kgrid = " ".join(str(n) for n in kpoint_grid(cell, spacing, kpoints_max))
        except LatticeError as exc:
            raise OpenmxInputError(str(exc)) from None
    inserted = has_kgrid
    for k, v in rest:
        existing = _find_key(out, k)
        if existing is not None:  # override of a generated keyword, keep its place
            if v is None:
                del out[existing]
            else:
                out[existing] = v
            continue
        if v is None:
            continue
        out[k] = v
        if not inserted and k.lower() == "scf.eigenvaluesolver":
            out["scf.Kgrid"] = kgrid
            inserted = True
    if not inserted:
        # after the last scf.* keyword, or at the end
        items = list(out.items())
        last_scf = max((i for i, (k, _) in enumerate(items) if k.lower().startswith("scf.")), default=len(items) - 1)
        items.insert(last_scf + 1, ("scf.Kgrid", kgrid))
        out = dict(items)

    if band_kpath:
        rows = _band_rows(default_band_kpath() if band_kpath is True else band_kpath)
        for key in ("Band.dispersion", "Band.Nkpath", "Band.kpath"):
            existing = _find_key(out, key)
            if existing is not None:
                del out[existing]
        out["Band.dispersion"] = "on"
        out["Band.Nkpath"] = str(len(rows))
        out["Band.kpath"] = rows
    for k in list(out):
        if out[k] is None:
            del out[k]
        elif isinstance(out[k], (list, tuple)) and len(out[k]) == 0:
            raise OpenmxInputError(f"keyword {k} has an empty value; use None to remove it")
    return format_input(out)


def write_input_from_protocol(cell, symbols, positions, protocol="moderate", overrides=None, **kwargs) -> str:
    """``write_input`` with the settings of a protocol (name or dict from :func:`load_protocol`).

    ``overrides`` are merged into the protocol (``{'parameters': {...}, 'kpoints_spacing': ...}``).
    Extra keyword arguments go to :func:`write_input` (``system_name``, ``data_path``, ``band_kpath``...).
    """
    from .protocols import load_protocol, recursive_merge

    proto = load_protocol(protocol, overrides) if isinstance(protocol, str) else recursive_merge(protocol, overrides or {})
    kwargs.setdefault("basis_table", proto.get("basis_table", "corpus"))
    kwargs.setdefault("kpoints_spacing", proto.get("kpoints_spacing"))
    kwargs.setdefault("kpoints_max", proto.get("kpoints_max", 8))
    return write_input(cell, symbols, positions, proto.get("parameters", {}), **kwargs)
