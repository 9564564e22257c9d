"""Physical constants exactly as OpenMX 3.9 uses them (and DeepH-dock follows)."""

BOHR_TO_ANGSTROM = 0.529177249
ANGSTROM_TO_BOHR = 1.0 / BOHR_TO_ANGSTROM
HARTREE_TO_EV = 27.2113845
EV_TO_HARTREE = 1.0 / HARTREE_TO_EV
KB_EV = 8.617333262e-5  # Boltzmann constant in eV/K
