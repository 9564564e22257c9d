"""``aiida-deeph bands``: band energies of a DeepH-dock folder (H and S) along a k-path (no aiida).

Output JSON keys: ``kpoints`` ([k1, k2, k3] fractional in the reciprocal basis of the folder's cell),
``eigenvalues_eV`` (one list per k-point, ascending; all bands with the dense solver, ``null`` where
near-null S directions were dropped), ``fermi_energy_eV``, ``fermi_source`` ('info.json' or
'electron count'), ``labels`` ([index, label]), ``segments``, ``band_gap_eV`` (and ``band_gap``
details: over the k-points and the SCF k-mesh, as the work chains compute it, ``gap_over``; the k-points'
own gap: ``band_gap_path_eV``), ``dropped_s_eigenvectors`` (largest number dropped at any k), ``min_s_eigenvalue``,
``solver``, ``num_orbitals``, ``timings_s``. One pipeline with the work chains:
:func:`aiida_deeph.physics.bands.band_structure`.
"""
from __future__ import annotations

import math
import sys
import time

from .common import load_hs, write_json
from .errors import CliError


def _nan_to_none(values):
    return [None if (v is None or not math.isfinite(v)) else float(v) for v in values]


def run(args) -> int:
    import numpy as np

    from ..physics.bands import band_structure, check_finite
    from ..physics.kpath import auto_kpath, read_kpoints_file

    t0 = time.perf_counter()
    ham = load_hs(args.input, "bands need")
    check_finite(ham)
    t_read = time.perf_counter()

    labels, segments = [], []
    if args.kpoints:
        kpoints = read_kpoints_file(args.kpoints)
        kpath_source = str(args.kpoints)
    else:
        if args.kpath != "auto":
            raise CliError(f"--kpath must be 'auto' (or give --kpoints FILE), got {args.kpath!r}")
        path = auto_kpath(ham.cell, ham.positions, ham.species, reference_distance=args.kpath_spacing)
        kpoints, labels, segments = path["kpoints"], path["labels"], path["segments"]
        kpath_source = f"seekpath {path['bravais_lattice']}"
    t_path = time.perf_counter()

    from ..physics.kspace import electron_count

    threads = args.threads or None
    given = ham.fermi_energy_eV if ham.fermi_energy_eV is not None and math.isfinite(ham.fermi_energy_eV) \
        and not args.recompute_fermi else None
    bs = band_structure(ham, kpoints, electron_count(ham, None, args.basis), fermi_energy=given,
                        solver=args.solver, num_bands=args.num_bands, window=args.window,
                        threads=threads, s_threshold=args.s_threshold,
                        mesh=False if args.path_gap_only else None)
    t_solve = time.perf_counter()
    result, solver, fermi, fermi_info = bs["result"], bs["solver"], bs["fermi_energy_eV"], bs["fermi"]
    fermi_source = "info.json" if given is not None else "electron count"
    gap = bs["gap"]
    window = None if args.window is None else (fermi + args.window[0], fermi + args.window[1])
    out = {
        "kpoints": np.asarray(kpoints, dtype=float).tolist(),
        "eigenvalues_eV": [_nan_to_none(e) for e in result.eigenvalues],
        "fermi_energy_eV": fermi,
        "fermi_source": fermi_source,
        "labels": [[int(i), str(lab)] for i, lab in labels],
        "segments": [list(s) for s in segments],
        "kpath_source": kpath_source,
        "band_gap_eV": float(gap["gap_eV"]),
        "band_gap": gap,
        "band_gap_path_eV": float(bs["path_gap"]["gap_eV"]),
        "band_gap_path": bs["path_gap"],
        "gap_over": bs["gap_over"],
        "dropped_s_eigenvectors": int(np.max(result.dropped)) if len(result.dropped) else 0,
        "min_s_eigenvalue": None if not math.isfinite(result.min_s_eigenvalue) else float(result.min_s_eigenvalue),
        "s_threshold": args.s_threshold,
        "solver": solver,
        "num_bands": args.num_bands,
        "energy_window_eV": None if window is None else list(window),
        "num_orbitals": ham.num_orbitals,
        "num_atoms": ham.num_atoms,
        "formula": ham.formula,
        "energy_unit": "eV",
        "kpoints_basis": "fractional, reciprocal basis of the input cell",
        "timings_s": {"read": t_read - t0, "kpath": t_path - t_read, "fermi_and_solve": t_solve - t_path},
    }
    if fermi_info is not None:
        out["fermi_level"] = fermi_info
    output = write_json(args.output, out)
    if not args.quiet:
        print(f"{ham.formula}: {len(kpoints)} k-points, {ham.num_orbitals} orbitals, solver {solver}, "
              f"E_F = {fermi:.4f} eV ({fermi_source}), gap {gap['gap_eV']:.4f} eV ({bs['gap_over']}); "
              f"{t_solve - t0:.2f} s; written to {output}", file=sys.stdout)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bands",
        help="band energies of a DeepH-dock folder (H and S) along a k-path",
        description="Solve H(k) c = E S(k) c for a DeepH-dock folder along seekpath's path (--kpath auto) "
        "or given fractional k-points (--kpoints FILE: lines 'k1 k2 k3' in the reciprocal basis of the "
        "folder's cell, '#' comments) and write a JSON file.",
    )
    p.add_argument("--input", required=True, help="DeepH-dock structure folder (info.json, POSCAR, overlap.h5, hamiltonian.h5)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--kpath", default="auto", help="'auto': the HPKOT path from seekpath (default)")
    group.add_argument("--kpoints", help="file of fractional k-points (k1 k2 k3 per line)")
    p.add_argument("--kpath-spacing", type=float, default=0.025,
                   help="k-point spacing of the auto path in 1/Angstrom (2 pi included; default 0.025)")
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--threads", type=int, default=0, help="threads over k-points (default: all cores)")
    p.add_argument("--s-threshold", type=float, default=1e-7,
                   help="drop S(k) eigenvectors with eigenvalues below this (default 1e-7)")
    p.add_argument("--solver", choices=("auto", "dense", "sparse"), default="auto",
                   help="dense (all bands), sparse shift-invert (bands around E_F), or auto by size")
    p.add_argument("--num-bands", type=int, default=None,
                   help="only this many bands around the Fermi level (half below, half above)")
    p.add_argument("--window", type=float, nargs=2, metavar=("EMIN", "EMAX"), default=None,
                   help="only bands in [E_F+EMIN, E_F+EMAX] (eV)")
    p.add_argument("--basis", default="corpus",
                   help="basis protocol for the valence electron count when the folder has none (default corpus)")
    p.add_argument("--recompute-fermi", action="store_true",
                   help="compute the Fermi level from the electron count even if info.json has one")
    p.add_argument("--path-gap-only", action="store_true",
                   help="with the Fermi level of info.json: the gap over the k-points given only, no SCF-mesh solve "
                        "(default: over the k-points and the SCF k-mesh, as the work chains do, except for cells "
                        "in the sparse solver's range)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
