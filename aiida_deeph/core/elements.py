"""Chemical elements: symbols, atomic numbers and formulas (the one table of the package)."""
from __future__ import annotations

# Periodic table up to Xe (the 24 elements of the project and their neighbours; extend when needed).
_SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe"
).split()
ATOMIC_NUMBERS = {s: z for z, s in enumerate(_SYMBOLS)}
# Pauling electronegativities (pymatgen's Element.X); formulas list elements by them, as pymatgen does: NaCl, KBr
_PAULING = dict(zip(_SYMBOLS[1:], (
    2.20, None, 0.98, 1.57, 2.04, 2.55, 3.04, 3.44, 3.98, None, 0.93, 1.31, 1.61, 1.90, 2.19, 2.58, 3.16, None, 0.82,
    1.00, 1.36, 1.54, 1.63, 1.66, 1.55, 1.83, 1.88, 1.91, 1.90, 1.65, 1.81, 2.01, 2.18, 2.55, 2.96, 3.00, 0.82, 0.95,
    1.22, 1.33, 1.60, 2.16, 1.90, 2.20, 2.28, 2.20, 1.93, 1.69, 1.78, 1.96, 2.05, 2.10, 2.66, 2.60)))


def formula_of(species) -> str:
    """Cell formula with elements ordered by electronegativity, then symbol (pymatgen's order): NaCl, Si3O6."""
    counts: dict = {}
    for s in species:
        counts[s] = counts.get(s, 0) + 1
    order = sorted(counts, key=lambda s: (_PAULING.get(s) is None, _PAULING.get(s) or 0.0, s))
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)


def symbol_to_z(symbol: str) -> int:
    try:
        return ATOMIC_NUMBERS[symbol]
    except KeyError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def z_to_symbol(z: int) -> str:
    return _SYMBOLS[int(z)]
