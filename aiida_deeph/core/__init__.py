"""The shared ground of every layer (numpy and h5py only; no aiida, no torch).

``packed`` (the one internal Hamiltonian format), ``basis`` (PAO basis names and basis tables),
``constants`` (units), ``elements`` (symbols, atomic numbers, formulas) and ``lattice`` (reciprocal
cells and Monkhorst-Pack k-grids). The layers above: io -> physics -> overlap -> ml -> analysis ->
data -> calculations -> parsers -> workflows -> cli / cmdline (the import-linter contract in
pyproject.toml, checked by scripts/test.sh).
"""
