"""``aiida-deeph optics``: electric susceptibility chi(omega) of an insulator from a DeepH-dock folder.

The folder needs hamiltonian.h5, overlap.h5 and position_matrix.h5 (``aiida-deeph convert openmx RUN OUT
--position-matrix``). chi.json keys: ``omega_eV``, ``chi`` ({"real", "imag"}: per omega a 3x3 tensor,
SI, dimensionless), ``chi0`` (3x3, static), ``eps_inf`` (1 + tr chi0 / 3), ``eta_eV``, ``mesh``,
``gap_on_mesh_eV``; see :mod:`aiida_deeph.physics.optics`.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..physics.plots import plot_chi
from .common import load_hs, report, write_json
from .errors import CliError


def run(args) -> int:
    from ..physics.optics import susceptibility

    t0 = time.perf_counter()
    folder = Path(args.input)
    ham = load_hs(folder, "chi(omega) needs", extra=("position_matrix",))
    if ham.position_matrix is None:
        raise CliError(f"{folder} has no position_matrix.h5: convert the OpenMX run with 'aiida-deeph convert "
                       "openmx RUN_DIR OUT_DIR --position-matrix' (DeepH-dock: --export-r), or, for a prediction, "
                       "start from 'aiida-deeph overlap ... --position-matrix' (two-centre integrals of r)")
    result = susceptibility(ham, mesh=args.mesh, eta=args.eta, omega_max=args.omega_max, num_omega=args.num_omega,
                            num_electrons=args.electrons, s_threshold=args.s_threshold, basis_table=args.basis)
    result["input"] = str(folder.resolve())
    result["timings_s"] = {"total": time.perf_counter() - t0}
    out = write_json(args.output, result)
    if args.plot:
        plot_chi(result, args.plot)
    report(f"{result['formula']}: eps_inf = {result['eps_inf']:.3f} (independent particles, no local fields; "
           f"{'x'.join(map(str, result['mesh']))} mesh, gap on the mesh {result['gap_on_mesh_eV']:.3f} eV); "
           f"{result['timings_s']['total']:.2f} s", args, out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "optics", help="electric susceptibility chi(omega) and eps_inf of an insulator (H, S, position matrix)",
        description="Independent-particle interband chi_ab(omega) (Kubo, T = 0, Lorentzian eta) in SI units, its "
        "static limit chi(0) and eps_inf = 1 + tr chi(0)/3, on a Gamma-centred k-mesh. Needs position_matrix.h5 "
        "(aiida-deeph convert openmx ... --position-matrix). Metals are refused: their chi(0) diverges.",
    )
    p.add_argument("--input", required=True,
                   help="DeepH-dock folder with hamiltonian.h5, overlap.h5 and position_matrix.h5")
    p.add_argument("--mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"), default=(8, 8, 8),
                   help="Gamma-centred k-mesh (default 8 8 8; eps_inf converges slowly: check with a finer one)")
    p.add_argument("--eta", type=float, default=0.1, help="Lorentzian broadening (eV, default 0.1)")
    p.add_argument("--omega-max", type=float, default=10.0, help="highest hbar*omega (eV, default 10)")
    p.add_argument("--num-omega", type=int, default=501, help="frequency points from 0 to --omega-max (default 501)")
    p.add_argument("--electrons", type=float, default=None,
                   help="valence electrons (default: the folder's info.json, else the basis table)")
    p.add_argument("--basis", default="corpus", help="basis protocol for the electron count (default corpus)")
    p.add_argument("--s-threshold", type=float, default=1e-7, help="drop S(k) eigenvectors below this (default 1e-7)")
    p.add_argument("--output", required=True, help="chi.json to write")
    p.add_argument("--plot", default=None, help="also write a PNG plot of chi(omega)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
