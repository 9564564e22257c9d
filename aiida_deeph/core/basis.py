"""Basis tables (protocols): PAO/VPS per element, orbital l lists, valence electrons.

Pure Python: no aiida import. A basis table is a JSON file in ``aiida_deeph/resources``
named ``basis_<name>.json``; ``corpus`` is the default (the table of the shared OpenMX corpus).
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

_L_LETTERS = {"s": 0, "p": 1, "d": 2, "f": 3}
_PAO_RE = re.compile(r"^(?P<stem>[A-Za-z]+)(?P<rc>\d+(?:\.\d+)?)(?P<suffix>[A-Za-z]*)-(?P<spec>(?:[spdf]\d+)+)$")


class BasisError(ValueError):
    """A basis string or table entry that cannot be interpreted."""


@dataclass(frozen=True)
class PaoBasis:
    """A parsed OpenMX basis string such as ``Si7.0-s2p2d1``."""

    name: str          # full string, e.g. 'Si7.0-s2p2d1'
    pao_file: str      # PAO file stem, e.g. 'Si7.0' (file Si7.0.pao)
    cutoff_bohr: float  # rc in Bohr from the name
    multiplicity: tuple  # radial functions per l, e.g. (2, 2, 1)

    @property
    def orbital_ls(self) -> list[int]:
        """One l per radial function, OpenMX order (l outer, then zeta): e.g. [0,0,1,1,2]."""
        return [l for l, n in enumerate(self.multiplicity) for _ in range(n)]

    @property
    def num_orbitals(self) -> int:
        return sum((2 * l + 1) * n for l, n in enumerate(self.multiplicity))


def parse_pao_basis(name: str) -> PaoBasis:
    """Parse an OpenMX basis string (``Si7.0-s2p2d1``, ``Cu6.0H-s3p2d1``)."""
    match = _PAO_RE.match(name.strip())
    if not match:
        raise BasisError(f"not an OpenMX basis string: {name!r} (expected e.g. 'Si7.0-s2p2d1')")
    mult = [0, 0, 0, 0]
    for letter, count in re.findall(r"([spdf])(\d+)", match.group("spec")):
        mult[_L_LETTERS[letter]] = int(count)
    while mult and mult[-1] == 0:
        mult.pop()
    stem = f"{match.group('stem')}{match.group('rc')}{match.group('suffix')}"
    return PaoBasis(name=name.strip(), pao_file=stem, cutoff_bohr=float(match.group("rc")), multiplicity=tuple(mult))


@dataclass(frozen=True)
class BasisTable:
    name: str
    elements: dict  # element -> {"pao": ..., "vps": ..., "valence": ...}

    def entry(self, element: str) -> dict:
        try:
            return self.elements[element]
        except KeyError:
            raise BasisError(
                f"element {element} has no basis in the basis table '{self.name}' "
                f"(available: {' '.join(sorted(self.elements))})"
            ) from None

    def pao(self, element: str) -> PaoBasis:
        return parse_pao_basis(self.entry(element)["pao"])

    def valence(self, element: str) -> float:
        return float(self.entry(element)["valence"])

    def orbital_ls(self, element: str) -> list[int]:
        return self.pao(element).orbital_ls

    def num_electrons(self, symbols) -> float:
        return float(sum(self.valence(s) for s in symbols))


@functools.cache
def load_basis_table(name: str = "corpus") -> BasisTable:
    """Load a basis table by protocol name (``corpus``) or from a JSON file path."""
    if name.endswith(".json"):
        with open(name, encoding="utf8") as handle:
            data = json.load(handle)
    else:
        try:
            text = resources.files("aiida_deeph.resources").joinpath(f"basis_{name}.json").read_text("utf8")
        except FileNotFoundError:
            raise BasisError(f"unknown basis table {name!r}") from None
        data = json.loads(text)
    return BasisTable(name=data.get("name", name), elements=data["elements"])
