"""``aiida-deeph dos``: total and projected density of states of a DeepH-dock folder (no aiida).

dos.json keys: ``energy_eV`` (absolute, the zero of H), ``fermi_energy_eV``, ``total`` (states/eV/cell,
spin included), ``projected`` ({element: {l: [...]}}, Mulliken), ``method``, ``sigma_eV``, ``mesh``,
``num_kpoints``, ``num_electrons``, ``integrated_to_fermi`` (states below E_F on the grid; with
``states_below_grid`` they add up to the electron count) and the
solver's S(k) figures; see :mod:`aiida_deeph.physics.dos`.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..physics.plots import plot_dos
from .common import load_hs, report, write_json


def run(args) -> int:
    from ..physics.dos import density_of_states, integrated

    t0 = time.perf_counter()
    ham = load_hs(args.input, "the DOS needs")
    result = density_of_states(
        ham, mesh=args.mesh, spacing=args.spacing, sigma=args.sigma, method=args.method, grid=args.grid,
        window=tuple(args.window), num_electrons=args.electrons, projected=not args.no_projected,
        s_threshold=args.s_threshold, basis_table=args.basis,
    )
    result["integrated_to_fermi"] = integrated(result)
    result["input"] = str(Path(args.input).resolve())
    result["timings_s"] = {"total": time.perf_counter() - t0}
    out = write_json(args.output, result)
    if args.plot:
        plot_dos(result, args.plot)
    report(f"{result['formula']}: DOS on a {'x'.join(map(str, result['mesh']))} mesh ({result['method']}), "
           f"E_F = {result['fermi_energy_eV']:.4f} eV; states below E_F: {result['integrated_to_fermi']:.3f} on "
           f"the grid + {result['states_below_grid']:.3f} below it ({result['num_electrons']:g} electrons); "
           f"{result['timings_s']['total']:.2f} s", args, out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dos", help="total and projected density of states of a DeepH-dock folder (H and S)",
        description="Density of states on a Gamma-centred k-mesh (k = m/n, as DeepH-dock's), Gaussian "
        "broadening or the tetrahedron method (libtetrabz), projected per element and l (Mulliken). "
        "Energies are absolute (the zero of H); the DOS is in states/eV/cell with spin.",
    )
    p.add_argument("--input", required=True, help="DeepH-dock structure folder (info.json, POSCAR, overlap.h5, hamiltonian.h5)")
    mesh = p.add_mutually_exclusive_group()
    mesh.add_argument("--mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"), default=None,
                      help="Gamma-centred k-mesh (default: from --spacing)")
    mesh.add_argument("--spacing", type=float, default=None,
                      help="k-mesh ceil(|b_i|/spacing), |b_i| in 1/Angstrom with 2 pi (DeepH-dock's "
                           "--kp-density; default 0.1)")
    p.add_argument("--method", choices=("gaussian", "tetrahedron"), default="gaussian",
                   help="Gaussian broadening (default) or the linear tetrahedron method")
    p.add_argument("--sigma", type=float, default=0.1,
                   help="standard deviation of the normalised Gaussian (eV, default 0.1)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--grid", type=float, nargs=3, metavar=("EMIN", "EMAX", "N"), default=None,
                      help="absolute energy grid: N points from EMIN to EMAX (eV)")
    grid.add_argument("--window", type=float, nargs=2, metavar=("EMIN", "EMAX"), default=(-10.0, 10.0),
                      help="energy grid relative to E_F (eV, default -10 10, step 0.01 eV)")
    p.add_argument("--electrons", type=float, default=None,
                   help="valence electrons (default: the folder's info.json, else the basis table)")
    p.add_argument("--basis", default="corpus", help="basis protocol for the electron count (default corpus)")
    p.add_argument("--s-threshold", type=float, default=1e-7,
                   help="drop S(k) eigenvectors below this (default 1e-7: none for a DFT overlap)")
    p.add_argument("--no-projected", action="store_true", help="total DOS only (faster)")
    p.add_argument("--output", required=True, help="dos.json to write")
    p.add_argument("--plot", default=None, help="also write a PNG plot of the DOS")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
