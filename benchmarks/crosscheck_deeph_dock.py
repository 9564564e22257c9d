#!/usr/bin/env python
"""Cross-check aiida-deeph's DeepH-dock writer against DeepH-dock itself.

For each OpenMX run folder (``<name>.out`` / ``<name>.scfout``, plain or ``.xz``) this script

1. runs DeepH-dock's converter (``dock convert openmx to-deeph``) in a separate venv;
   DeepH-dock is GPL and is never imported here. It only runs as a subprocess.
2. runs ours: ``aiida-deeph convert openmx RUN_DIR OUT_DIR --format dock``,
3. compares POSCAR (lattice, species, positions), info.json, the set of atom pairs and every block
   of hamiltonian.h5 (eV) and overlap.h5,
4. (default on) loads *our* folder with DeepH-dock's own reader in a subprocess and compares H(R),
   S(R) with DeepH-dock's folder loaded the same way. This proves DeepH-dock reads what we write.
5. (``--bands``) runs ``dock compute eigen calc-band`` on our folder with the k-path of the run's
   ``openmx.Band``, and compares with OpenMX's band energies.

It exits 1 if any difference exceeds the tolerances (default 1e-8 eV for H, 1e-8 for S, 1e-8 A)
or if a step fails. Needs only numpy + h5py (our venv) and DeepH-dock in its own venv:

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/dockenv
    /work/dockenv/bin/pip install deepx-dock

Usage:
    .venv/bin/python benchmarks/crosscheck_deeph_dock.py                   # default corpus runs
    .venv/bin/python benchmarks/crosscheck_deeph_dock.py mp-92 /path/to/run --bands --keep /tmp/cc
"""
from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HARTREE_TO_EV = 27.2113845  # OpenMX's constant
DEFAULT_CORPUS = Path("/work/shared/openmx-corpus")
DEFAULT_RUNS = ["mp-92", "mp-22862", "mp-2534", "mp-1943", "mp-38011", "mp-28369"]
REQUIRED_INFO_KEYS = ["atoms_quantity", "orbits_quantity", "orthogonal_basis", "spinful",
                      "fermi_energy_eV", "elements_orbital_map"]

# Run inside DeepH-dock's venv: load a folder with DeepH-dock's reader, dump H(R), S(R) to .npz.
_LOADER_SNIPPET = r"""
import sys, numpy as np
from deepx_dock.compute.eigen.matrix_obj import AOMatrixObj
folder, out = sys.argv[1], sys.argv[2]
h = AOMatrixObj(folder, matrix_type="hamiltonian")
s = AOMatrixObj(folder, matrix_type="overlap")
np.savez(out, HR=h.mats, SR=s.mats, R_H=h.Rijk_list, R_S=s.Rijk_list, ncum=np.asarray(h.atom_num_orbits_cumsum),
         elements=np.array(h.elements), fermi=h.fermi_energy)
"""


# ---------------------------------------------------------------------------- helpers
def find_run_file(run_dir: Path, suffix: str) -> Path:
    hits = sorted(run_dir.glob(f"*{suffix}")) + sorted(run_dir.glob(f"*{suffix}.xz"))
    hits = [h for h in hits if not h.name.endswith(".std") and not h.name.endswith(".std.xz")]
    if not hits:
        raise FileNotFoundError(f"{run_dir}: no *{suffix} or *{suffix}.xz")
    return hits[0]


def stage_for_dock(run_dir: Path, dest: Path) -> None:
    """Copy/decompress the run's .out and .scfout into ``dest`` under the names DeepH-dock demands."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".out", ".scfout"):
        src = find_run_file(run_dir, suffix)
        target = dest / f"openmx{suffix}"
        if src.name.endswith(".xz"):
            with lzma.open(src, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        else:
            shutil.copyfile(src, target)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def read_poscar(path: Path):
    lines = path.read_text().splitlines()
    scale = np.array([float(x) for x in lines[1].split()])
    lat = np.array([[float(x) for x in lines[i].split()[:3]] for i in (2, 3, 4)]) * (
        scale if scale.size == 3 else scale[0])
    elems = lines[5].split()
    counts = [int(x) for x in lines[6].split()]
    k = 7
    if lines[k].strip().lower().startswith("s"):
        k += 1
    cart = lines[k].strip()[:1].lower() in ("c", "k")
    n = sum(counts)
    xyz = np.array([[float(x) for x in lines[k + 1 + a].split()[:3]] for a in range(n)])
    pos = xyz * (scale if scale.size == 3 else scale[0]) if cart else xyz @ lat
    species = [e for e, c in zip(elems, counts) for _ in range(c)]
    return {"lattice": lat, "positions": pos, "species": species, "elements": elems, "counts": counts,
            "cartesian": cart}


def read_h5(path: Path):
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("atom_pairs", "chunk_boundaries", "chunk_shapes", "entries")}
        out["dtypes"] = {k: str(f[k].dtype) for k in f.keys()}
    return out


def blocks_by_pair(h5: dict) -> dict:
    ap, cb, cs, e = h5["atom_pairs"], h5["chunk_boundaries"], h5["chunk_shapes"], h5["entries"]
    return {tuple(int(x) for x in ap[p]): e[cb[p]:cb[p + 1]].reshape(int(cs[p, 0]), int(cs[p, 1]))
            for p in range(len(ap))}


def compare_h5(dock: dict, ours: dict) -> dict:
    bd, bo = blocks_by_pair(dock), blocks_by_pair(ours)
    kd, ko = set(bd), set(bo)
    res = {"pairs_dock": len(kd), "pairs_ours": len(ko), "pairs_equal": kd == ko,
           "only_dock": sorted(kd - ko)[:5], "only_ours": sorted(ko - kd)[:5],
           "same_order": bool(len(dock["atom_pairs"]) == len(ours["atom_pairs"])
                              and np.array_equal(dock["atom_pairs"], ours["atom_pairs"])),
           "dtypes_ours": ours["dtypes"], "shape_mismatch": 0, "max_abs": 0.0, "worst_pair": None}
    # internal consistency of our file
    cb, cs = ours["chunk_boundaries"], ours["chunk_shapes"]
    res["ours_boundaries_ok"] = bool(cb[0] == 0 and np.array_equal(np.diff(cb), cs[:, 0] * cs[:, 1])
                                     and cb[-1] == ours["entries"].size)
    for key in kd & ko:
        a, b = bd[key], bo[key]
        if a.shape != b.shape:
            res["shape_mismatch"] += 1
            continue
        d = float(np.max(np.abs(a - b))) if a.size else 0.0
        if d > res["max_abs"]:
            res["max_abs"], res["worst_pair"] = d, key
    return res


def parse_band_file(path: Path):
    """(path lines, k fractional (nk,3), eigenvalues in eV (nk, nb)) from an OpenMX .Band (spin 0)."""
    lines = path.read_text().split("\n")
    spin = int(lines[0].split()[1])
    if spin != 0:
        raise ValueError(f"{path}: spin-polarised .Band not supported")
    npath = int(lines[2].split()[0])
    path_lines = [lines[3 + i].strip() for i in range(npath)]
    tok = " ".join(lines[3 + npath:]).split()
    ks, ev, p = [], [], 0
    while p < len(tok):
        n = int(tok[p])
        ks.append([float(x) for x in tok[p + 1:p + 4]])
        ev.append([float(x) for x in tok[p + 4:p + 4 + n]])
        p += 4 + n
    return path_lines, np.array(ks), np.array(ev) * HARTREE_TO_EV


# ---------------------------------------------------------------------------- one run
def check_run(run_dir: Path, work: Path, args) -> dict:
    name = run_dir.name
    row = {"run": name, "ok": True, "errors": [], "notes": []}

    def fail(msg):
        row["ok"] = False
        row["errors"].append(msg)

    # 1. DeepH-dock
    staged, dock_out = work / "openmx", work / "dock"
    stage_for_dock(run_dir, staged)
    r = run([args.dock, "convert", "openmx", "to-deeph", staged, dock_out, "-t", "-1", "-p", "1", "--force"])
    if r.returncode != 0 or not (dock_out / "info.json").is_file():
        fail(f"DeepH-dock converter failed: {(r.stderr or r.stdout).strip()[-400:]}")
        return row
    # 2. ours
    ours_out = work / "ours"
    cmd = [*args.ours, "convert", "openmx", run_dir, ours_out, "--format", "dock"]
    if args.allow_unconverged:
        cmd.append("--allow-unconverged")
    r = run(cmd)
    if r.returncode != 0 or not (ours_out / "info.json").is_file():
        fail(f"our converter failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
        return row

    # 3a. POSCAR
    pd_, po = read_poscar(dock_out / "POSCAR"), read_poscar(ours_out / "POSCAR")
    row["natoms"] = len(pd_["species"])
    row["species_dock"] = " ".join(pd_["elements"])
    row["species_ours"] = " ".join(po["elements"])
    if pd_["elements"] != po["elements"] or pd_["counts"] != po["counts"]:
        fail(f"POSCAR species/counts differ: dock {pd_['elements']} {pd_['counts']}, "
             f"ours {po['elements']} {po['counts']}")
    if pd_["species"] != po["species"]:
        fail("per-atom species differ")
    if not po["cartesian"]:
        row["notes"].append("our POSCAR is Direct (dock writes Cartesian)")
    row["d_lattice"] = float(np.max(np.abs(pd_["lattice"] - po["lattice"])))
    row["d_pos"] = (float(np.max(np.abs(pd_["positions"] - po["positions"])))
                    if pd_["positions"].shape == po["positions"].shape else float("inf"))
    if row["d_lattice"] > args.tol_pos or row["d_pos"] > args.tol_pos:
        fail(f"POSCAR geometry differs: lattice {row['d_lattice']:.3e} A, positions {row['d_pos']:.3e} A")

    # 3b. info.json
    jd = json.loads((dock_out / "info.json").read_text())
    jo = json.loads((ours_out / "info.json").read_text())
    missing = [k for k in REQUIRED_INFO_KEYS if k not in jo]
    if missing:
        fail(f"info.json lacks {missing}")
    extra = sorted(set(jo) - set(jd))
    if extra:
        row["notes"].append(f"extra info.json keys (ignored by dock's reader): {extra}")
    for k in ("atoms_quantity", "orbits_quantity", "orthogonal_basis", "spinful"):
        if k in jo and (jo[k] != jd[k] or type(jo[k]) is not type(jd[k])):
            fail(f"info.json {k}: dock {jd[k]!r}, ours {jo.get(k)!r}")
    if "elements_orbital_map" in jo:
        # dock lists every species of <Definition.of.Atomic.Species; compare those present in POSCAR
        used = set(pd_["elements"])
        md = {k: v for k, v in jd["elements_orbital_map"].items() if k in used}
        mo = {k: v for k, v in jo["elements_orbital_map"].items() if k in used}
        if md != mo:
            fail(f"elements_orbital_map differs: dock {md}, ours {mo}")
        if list(jd["elements_orbital_map"]) != list(jo["elements_orbital_map"]):
            row["notes"].append(f"elements_orbital_map key order: dock {list(jd['elements_orbital_map'])}, "
                                f"ours {list(jo['elements_orbital_map'])}")
    row["d_fermi"] = abs(float(jd["fermi_energy_eV"]) - float(jo.get("fermi_energy_eV", np.nan)))
    if not row["d_fermi"] <= args.tol_h:
        fail(f"fermi_energy_eV differs by {row['d_fermi']:.3e} eV")

    # 3c. hamiltonian.h5 / overlap.h5
    for fname, key, tol in (("hamiltonian.h5", "H", args.tol_h), ("overlap.h5", "S", args.tol_s)):
        if not (ours_out / fname).is_file():
            fail(f"ours has no {fname}")
            continue
        c = compare_h5(read_h5(dock_out / fname), read_h5(ours_out / fname))
        row[f"d_{key}"] = c["max_abs"]
        row["pairs"] = f"{c['pairs_dock']}/{c['pairs_ours']}"
        row["same_order"] = c["same_order"]
        if not c["pairs_equal"]:
            fail(f"{fname}: atom pair sets differ (only dock e.g. {c['only_dock']}, only ours e.g. {c['only_ours']})")
        if c["shape_mismatch"]:
            fail(f"{fname}: {c['shape_mismatch']} blocks with different shapes")
        if not c["ours_boundaries_ok"]:
            fail(f"{fname}: our chunk_boundaries do not match chunk_shapes/entries")
        want = {"atom_pairs": "int64", "chunk_boundaries": "int64", "chunk_shapes": "int64", "entries": "float64"}
        if c["dtypes_ours"] != want:
            row["notes"].append(f"{fname} dtypes {c['dtypes_ours']} (dock: {want})")
        if c["max_abs"] > tol:
            fail(f"{fname}: max |d{key}| = {c['max_abs']:.3e} at pair {c['worst_pair']}")
    if (ours_out / "hamiltonian.h5").is_file() and (ours_out / "overlap.h5").is_file():
        a, b = read_h5(ours_out / "hamiltonian.h5"), read_h5(ours_out / "overlap.h5")
        if not np.array_equal(a["atom_pairs"], b["atom_pairs"]):
            fail("ours: atom_pairs differ between hamiltonian.h5 and overlap.h5")

    # 4. DeepH-dock's reader on our folder
    if not args.no_loader_check:
        got = {}
        for tag, folder in (("dock", dock_out), ("ours", ours_out)):
            npz = work / f"loaded_{tag}.npz"
            r = run([args.dock_python, "-c", _LOADER_SNIPPET, folder, npz])
            if r.returncode != 0:
                fail(f"DeepH-dock's reader failed on {tag} folder: {(r.stderr or r.stdout).strip()[-400:]}")
                break
            got[tag] = dict(np.load(npz))
        if len(got) == 2:
            d, o = got["dock"], got["ours"]
            if not (np.array_equal(d["R_H"], o["R_H"]) and np.array_equal(d["R_S"], o["R_S"])):
                fail("reader: R lists differ")
            elif d["HR"].shape != o["HR"].shape:
                fail(f"reader: H(R) shapes differ {d['HR'].shape} vs {o['HR'].shape}")
            else:
                row["reader_dH"] = float(np.max(np.abs(d["HR"] - o["HR"])))
                row["reader_dS"] = float(np.max(np.abs(d["SR"] - o["SR"])))
                if row["reader_dH"] > args.tol_h or row["reader_dS"] > args.tol_s:
                    fail(f"reader: H(R)/S(R) differ ({row['reader_dH']:.3e} eV, {row['reader_dS']:.3e})")

    # 5. bands with DeepH-dock on our folder vs OpenMX's .Band
    band_files = sorted(run_dir.glob("*.Band"))
    if args.bands and band_files:
        path_lines, k_omx, e_omx = parse_band_file(band_files[0])
        (ours_out / "K_PATH").write_text("\n".join(path_lines) + "\n")
        r = run([args.dock, "compute", "eigen", "calc-band", ours_out, "-p", "1"])
        if r.returncode != 0 or not (ours_out / "band.h5").is_file():
            fail(f"dock calc-band failed on our folder: {(r.stderr or r.stdout).strip()[-400:]}")
        else:
            with h5py.File(ours_out / "band.h5", "r") as f:
                e_dock = (f["band_data"][()] + f["fermi_energy_before_shift_eV"][()]).T  # (nk, nb)
                k_dock = f["kpoints_frac_list"][()]
            if e_dock.shape != e_omx.shape or np.max(np.abs(k_dock - k_omx)) > 1e-9:
                fail(f"bands: k-points/shape differ (dock {e_dock.shape}, OpenMX {e_omx.shape})")
            else:
                row["d_band"] = float(np.max(np.abs(e_dock - e_omx)))
                if row["d_band"] > args.tol_band:
                    fail(f"bands: max |dE| = {row['d_band']:.3e} eV vs OpenMX .Band")
    elif args.bands:
        row["notes"].append("no .Band file: band check skipped")
    return row


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help=f"run folders or names under --corpus (default: {' '.join(DEFAULT_RUNS)})")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--dock", type=Path, default=Path("/work/dockenv/bin/dock"), help="DeepH-dock's `dock` executable")
    p.add_argument("--ours", nargs="+", default=None,
                   help="command prefix for our CLI (default: aiida-deeph next to this Python, else python -m)")
    p.add_argument("--tol-h", type=float, default=1e-8, help="eV, for H blocks and the Fermi energy")
    p.add_argument("--tol-s", type=float, default=1e-8, help="for S blocks")
    p.add_argument("--tol-pos", type=float, default=1e-8, help="Angstrom, for lattice and positions")
    p.add_argument("--tol-band", type=float, default=1e-6, help="eV, dock bands on our folder vs OpenMX .Band")
    p.add_argument("--bands", action="store_true", help="also run `dock compute eigen calc-band` on our folder")
    p.add_argument("--no-loader-check", action="store_true", help="skip loading our folder with DeepH-dock's reader")
    p.add_argument("--allow-unconverged", action="store_true", help="pass --allow-unconverged to our converter")
    p.add_argument("--keep", type=Path, default=None, help="keep all outputs under this folder")
    args = p.parse_args(argv)

    if not args.dock.exists():
        print(f"DeepH-dock not found at {args.dock} (see the module docstring to install it)", file=sys.stderr)
        return 2
    args.dock_python = args.dock.parent / "python"
    if args.ours is None:
        exe = Path(sys.executable).parent / "aiida-deeph"
        args.ours = [str(exe)] if exe.exists() else [sys.executable, "-m", "aiida_deeph.cli.main"]
    runs = [Path(r) if Path(r).is_dir() else args.corpus / r for r in (args.runs or DEFAULT_RUNS)]

    base = args.keep or Path(tempfile.mkdtemp(prefix="crosscheck-dock-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for run_dir in runs:
            work = base / run_dir.name
            if work.exists():
                shutil.rmtree(work)
            try:
                row = check_run(run_dir, work, args)
            except Exception as exc:  # report and keep going
                row = {"run": run_dir.name, "ok": False, "errors": [f"{type(exc).__name__}: {exc}"], "notes": []}
            rows.append(row)
            print(f"{row['run']}: {'ok' if row['ok'] else 'MISMATCH'}", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    def f(x):
        return "-" if x is None else (f"{x:.2e}" if isinstance(x, float) else str(x))

    cols = [("run", "run"), ("natoms", "atoms"), ("pairs", "pairs dock/ours"), ("same_order", "same order"),
            ("d_H", "max|dH| eV"), ("d_S", "max|dS|"), ("d_fermi", "dE_F eV"), ("d_lattice", "dlat A"),
            ("d_pos", "dpos A"), ("reader_dH", "reader dH"), ("reader_dS", "reader dS")]
    if args.bands:
        cols.append(("d_band", "band vs .Band eV"))
    cols.append(("ok", "status"))
    table = [[h for _, h in cols]]
    for r in rows:
        table.append([("ok" if r["ok"] else "FAIL") if k == "ok" else f(r.get(k)) for k, _ in cols])
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    for i, t in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        for e in r["errors"]:
            print(f"[{r['run']}] ERROR {e}")
        for n in r["notes"]:
            print(f"[{r['run']}] note: {n}")
    maxes = {k: max((r.get(k) or 0.0) for r in rows) for k in ("d_H", "d_S", "d_fermi", "d_pos", "d_band")}
    print("overall max: " + ", ".join(f"{k}={v:.3e}" for k, v in maxes.items() if v or k != "d_band"))
    bad = [r["run"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} runs match" + (f"; mismatches: {' '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
