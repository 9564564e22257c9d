"""The shared ground of every layer (numpy and h5py only; no aiida, no torch).

``packed`` (the one internal Hamiltonian format), ``basis`` (PAO basis names and basis tables),
``constants`` (units), ``elements`` (symbols, atomic numbers, formulas) and ``lattice`` (reciprocal
cells and Monkhorst-Pack k-grids). The layers above: structures -> io -> physics -> overlap -> ml ->
replay -> testing -> analysis -> data -> engine -> calculations -> parsers -> workflows -> cli / cmdline
(the import-linter contract in pyproject.toml, checked by scripts/test.sh).
"""
