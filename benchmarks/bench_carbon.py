"""DeepH on one material: rattled/strained diamond (../shared/openmx-carbon), trained and judged as a user would.

    python benchmarks/bench_carbon.py --out DIR [--minutes 30] [--preset small] [--config JSON]
                                      [--train-cells N] [--threads 1] [--tag NAME] [--parent MODEL_DIR]
    python benchmarks/bench_carbon.py --out DIR --evaluate-only MODEL_DIR

1. The 41 runs are split by a fixed rule: test = 8 cells (C-dia2 r003 r008 r013 r018 r023 r028, C-dia8 r001
   r006), train = the other 33 (``--train-cells N`` takes the first N of a fixed shuffled order, for learning
   curves). The training cells' DeepH-dock folders are symlinked into ``OUT/TAG/data`` and
   ``aiida-deeph train --preset P --max-minutes M --data OUT/TAG/data`` runs as a subprocess
   (``OMP_NUM_THREADS=threads``).
2. For every test cell, ``aiida-deeph predict`` runs on an overlap-only copy of its dock folder (S alone).
3. Metrics on the test cells (independent numpy code, not the training loss):
   - gauge-corrected MAE of H (meV; dmu per structure = sum (Hp - H) S / sum S^2), and the MAE by block
     type: on-site, hoppings by distance shell (< 1.8 A first neighbours, 1.8-2.8 second, 2.8-4.0, > 4.0 A);
   - bands: ``aiida-deeph bands --kpoints`` at its default settings on the prediction and on the DFT folder,
     on a Gamma-centred 4x4x4 mesh; bands matched by index from the bottom, the prediction shifted by -dmu,
     eigenvalues whose DFT value is within E_F +- 3 eV (DFT E_F of info.json); band MAE (meV) and the
     error of the gap on that mesh (meV).
Writes ``OUT/TAG/result.json`` and prints one summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEST_CELLS = ["C-dia2-r003", "C-dia2-r008", "C-dia2-r013", "C-dia2-r018", "C-dia2-r023", "C-dia2-r028",
              "C-dia8-r001", "C-dia8-r006"]
SHELLS = [(0.0, 1.8, "hop<1.8"), (1.8, 2.8, "hop1.8-2.8"), (2.8, 4.0, "hop2.8-4"), (4.0, 99.0, "hop>4")]


def carbon_runs(root: Path) -> list:
    return sorted(p for p in root.iterdir() if (p / "dock" / "info.json").is_file())


def split_cells(root: Path, train_cells: int | None = None, seed: int = 0):
    runs = carbon_runs(root)
    test = [r for r in runs if r.name in TEST_CELLS]
    train = [r for r in runs if r.name not in TEST_CELLS]
    order = np.random.default_rng(seed).permutation(len(train))
    train = [train[i] for i in order]
    if train_cells:
        train = train[:train_cells]
    return train, test


def gamma_mesh(n: int = 4) -> np.ndarray:
    g = np.arange(n) / n
    return np.array([[a, b, c] for a in g for b in g for c in g])


def block_mae(pred, true) -> dict:
    """Gauge-corrected MAE (meV) in total and by block type; ``pred``/``true`` PackedHamiltonians (same pairs)."""
    S = true.overlap
    dmu = float(np.sum((pred.hamiltonian - true.hamiltonian) * S) / np.sum(S * S))
    res = np.abs(pred.hamiltonian - (true.hamiltonian + dmu * S))
    sizes = np.diff(true.offsets)
    ap = true.atom_pairs
    onsite = (ap[:, 3] == ap[:, 4]) & ~ap[:, :3].any(axis=1)
    dist = true.pair_distances()
    kind = np.full(len(ap), "onsite", dtype=object)
    for lo, hi, name in SHELLS:
        kind[(~onsite) & (dist >= lo) & (dist < hi)] = name
    per_entry = np.repeat(kind, sizes)
    out = {"mae_meV": 1000 * float(res.mean()), "dmu_eV": dmu, "sum": {}, "count": {}}
    for name in ["onsite"] + [s[2] for s in SHELLS]:
        m = per_entry == name
        out["sum"][name] = float(res[m].sum())
        out["count"][name] = int(m.sum())
    return out


def bands_json(folder: Path, kfile: Path, out: Path) -> dict:
    from aiida_deeph.cli.main import main

    code = main(["bands", "--input", str(folder), "--kpoints", str(kfile), "--output", str(out), "--quiet",
                 "--threads", "1"])
    if code != 0:
        return {"failed": True, "code": code}
    return json.loads(out.read_text())


def evaluate(model_dir: Path, test: list, work: Path, window: float = 3.0) -> dict:
    from aiida_deeph.io.dock import read_dock, write_dock
    from aiida_deeph.ml.predict import predict_dock_folders
    from aiida_deeph.physics.fermi import band_gap

    work.mkdir(parents=True, exist_ok=True)
    kfile = work / "mesh444.txt"
    kfile.write_text("\n".join(" ".join(f"{x:.6f}" for x in k) for k in gamma_mesh(4)) + "\n")
    inputs = []
    for run in test:
        src = work / "s_only" / run.name
        if not src.is_dir():
            dft = read_dock(run / "dock", load=("overlap",), restore_order=False)
            write_dock(dft, src, include=("overlap",))
            # the DFT folder's info.json (Fermi level, electron count) as a user's S-only input would carry it
            (src / "info.json").write_text((run / "dock" / "info.json").read_text())
        inputs.append(src)
    t0 = time.perf_counter()
    predict_dock_folders(model_dir, inputs, work / "pred", log=None)
    t_pred = time.perf_counter() - t0
    per, sums, counts = {}, {}, {}
    for run in test:
        true = read_dock(run / "dock", load=("hamiltonian", "overlap"), restore_order=False)
        pred = read_dock(work / "pred" / run.name, load=("hamiltonian", "overlap"), restore_order=False)
        m = block_mae(pred, true)
        for k in m["sum"]:
            sums[k] = sums.get(k, 0.0) + m["sum"][k]
            counts[k] = counts.get(k, 0) + m["count"][k]
        bp = bands_json(work / "pred" / run.name, kfile, work / "bands" / f"{run.name}.pred.json")
        bd = bands_json(run / "dock", kfile, work / "bands" / f"{run.name}.dft.json")
        entry = {"mae_meV": m["mae_meV"], "dmu_eV": m["dmu_eV"]}
        if bp.get("failed"):
            entry["bands_failed"] = True
        else:
            ep = np.array([[np.nan if v is None else v for v in row] for row in bp["eigenvalues_eV"]])
            ed = np.array(bd["eigenvalues_eV"], dtype=float)
            ef = float(json.loads((run / "dock" / "info.json").read_text())["fermi_energy_eV"])
            nb = min(ep.shape[1], ed.shape[1])
            p, d = ep[:, :nb] - m["dmu_eV"], ed[:, :nb]
            mask = np.abs(d - ef) <= window
            diff = np.abs(p - d)[mask]
            entry["band_mae_meV"] = 1000 * float(np.nanmean(diff)) if np.isfinite(diff).any() else None
            entry["band_nan_values"] = int((~np.isfinite(diff)).sum())
            gp = band_gap(p, ef)["gap_eV"]
            gd = band_gap(d, ef)["gap_eV"]
            entry["gap_dft_eV"], entry["gap_pred_eV"] = float(gd), float(gp)
            entry["gap_error_meV"] = 1000 * float(gp - gd)
            entry["dropped_s_eigenvectors"] = bp.get("dropped_s_eigenvectors")
        per[run.name] = entry
    n_tot = sum(counts.values())
    band = [e["band_mae_meV"] for e in per.values() if e.get("band_mae_meV") is not None]
    return {
        "test_mae_meV": 1000 * sum(sums.values()) / n_tot,
        "mae_by_block_meV": {k: 1000 * sums[k] / counts[k] for k in sums if counts[k]},
        "band_mae_meV": float(np.mean(band)) if band and len(band) == len(per) else None,
        "abs_gap_error_meV": float(np.mean([abs(e["gap_error_meV"]) for e in per.values() if "gap_error_meV" in e])),
        "bands_failed": sum(1 for e in per.values() if e.get("bands_failed")),
        "predict_s": t_pred,
        "per_cell": per,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--config", default=None, help="JSON file for `aiida-deeph train --config`")
    ap.add_argument("--parent", default=None, help="fine-tune from this model directory")
    ap.add_argument("--train-cells", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--carbon", default=str(SHARED / "openmx-carbon"))
    ap.add_argument("--evaluate-only", default=None, metavar="MODEL_DIR")
    ap.add_argument("--train-pythonpath", default=None, help="PYTHONPATH of the training subprocess (another checkout)")
    args = ap.parse_args(argv)
    root = Path(args.carbon)
    train_runs, test_runs = split_cells(root, args.train_cells)
    out = Path(args.out) / args.tag
    out.mkdir(parents=True, exist_ok=True)
    train_info = {}
    if args.evaluate_only:
        model_dir = Path(args.evaluate_only)
    else:
        data = out / "data"
        data.mkdir(exist_ok=True)
        for run in train_runs:
            link = data / run.name
            if not link.exists():
                link.symlink_to((run / "dock").resolve(), target_is_directory=True)
        model_dir = out / "model"
        cmd = [sys.executable, "-m", "aiida_deeph.cli.main", "train", "--preset", args.preset, "--data", str(data),
               "--output", str(model_dir), "--no-test", "--max-minutes", str(args.minutes)]
        if args.max_epochs:
            cmd += ["--max-epochs", str(args.max_epochs)]
        if args.config:
            cmd += ["--config", args.config]
        if args.parent:
            cmd += ["--parent", args.parent]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if args.train_pythonpath:
            env["PYTHONPATH"] = args.train_pythonpath
        t0 = time.perf_counter()
        with open(out / "train.log", "w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                           cwd=args.train_pythonpath or None)
        rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
        train_info = {"wall_s": time.perf_counter() - t0, "epochs": len(rows),
                      "best_val_mae_meV": min((r["val_mae_meV"] for r in rows if "val_mae_meV" in r), default=None),
                      "structures_per_s": float(np.median([r["structures_per_s"] for r in rows])) if rows else None}
        split = json.loads((model_dir / "split.json").read_text())
        train_info["steps"] = len(rows) * len(split["train"])
        train_info["split_sizes"] = {k: len(split[k]) for k in ("train", "val", "test")}
    import torch

    torch.set_num_threads(args.threads)
    res = evaluate(model_dir, test_runs, out / "eval")
    res.update(train=train_info, tag=args.tag, preset=args.preset, minutes=args.minutes,
               config=json.loads(Path(args.config).read_text()) if args.config else None,
               train_cells=len(train_runs), test_cells=[r.name for r in test_runs],
               machine=os.uname().nodename, date=time.strftime("%Y-%m-%d %H:%M"))
    (out / "result.json").write_text(json.dumps(res, indent=1))
    blocks = " ".join(f"{k} {v:.2f}" for k, v in res["mae_by_block_meV"].items())
    band = "failed" if res["band_mae_meV"] is None else f"{res['band_mae_meV']:.1f}"
    print(f"{args.tag}: test MAE {res['test_mae_meV']:.3f} meV ({blocks}); band MAE {band} meV; "
          f"|gap error| {res['abs_gap_error_meV']:.1f} meV; epochs {train_info.get('epochs')}, "
          f"steps {train_info.get('steps')}")


if __name__ == "__main__":
    main()
