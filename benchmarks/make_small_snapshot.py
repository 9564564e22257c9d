"""Regenerate aiida_deeph/resources/mp_snapshot_small.json.gz, the structure snapshot shipped in the package.

Selection rule (records are copied unchanged from the full offline snapshot
``shared/mp/mp_light_elements_snapshot.json.gz``):

1. Only records whose ``source`` comes from matminer (``matminer-0.4.0:*``) or m3gnet
   (``m3gnet-0.2.4:*``) are eligible (not the MP-20/CDVAE or pymatviz ones).
2. Corpus part: eligible records whose MP id is an OpenMX corpus folder
   (``shared/openmx-corpus/<mp-id>/meta.json``) and whose primitive cell has at most 2 sites;
   one record per reduced formula (the lowest MP id, integer part) so that the list stays short.
   Every one of them passes the default filter, and its primitive reduction reproduces the
   corpus ``meta.json`` structure (lattice and Cartesian positions to 1e-6 A), which is what lets
   the embedded demo replay the recorded OpenMX runs. So every record of the small snapshot
   that passes the default filter is a corpus structure.
3. Controls: a few eligible, non-corpus records that the default filter rejects as magnetic:
   O2 mp-611836 (FM), LiO2 mp-1094129 (FM), CuO2 mp-601195 (AFM), CuO mp-1692 (ordering Unknown,
   flagged Cu2+_likely).

The output is gzip with mtime 0 (byte-reproducible); records are ordered by MP id (integer part).
The script checks the rules above after writing and exits non-zero when one fails.

    python benchmarks/make_small_snapshot.py [--shared ../shared] [--out PATH]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from aiida_deeph.structures.source import SMALL_SNAPSHOT, filter_records, load_snapshot, mp_id_sort_key

ELIGIBLE_SOURCES = ("matminer-", "m3gnet-")
MAX_PRIMITIVE_SITES = 2
CONTROLS = ("mp-611836", "mp-1094129", "mp-601195", "mp-1692")


def select(records: list[dict], corpus: Path) -> list[dict]:
    eligible = [r for r in records if str(r.get("source", "")).startswith(ELIGIBLE_SOURCES)]
    corpus_ids = {p.name for p in corpus.iterdir() if (p / "meta.json").is_file()}
    chosen: dict[str, dict] = {}
    for r in sorted(eligible, key=lambda r: mp_id_sort_key(r["material_id"])):
        if r["material_id"] in corpus_ids and int(r["nsites_primitive"]) <= MAX_PRIMITIVE_SITES:
            chosen.setdefault(r["formula_pretty"], r)
    by_id = {r["material_id"]: r for r in eligible}
    missing = [i for i in CONTROLS if i not in by_id]
    if missing:
        raise SystemExit(f"control records not eligible or not found: {missing}")
    out = list(chosen.values()) + [by_id[i] for i in CONTROLS]
    return sorted(out, key=lambda r: mp_id_sort_key(r["material_id"]))


def check(path: Path, corpus: Path) -> list[str]:
    from pymatgen.core import Structure

    problems = []
    records = load_snapshot(path)
    result = filter_records(records)
    rejected = {r.mp_id: r for r in result.rejections}
    for i in CONTROLS:
        if i not in rejected or rejected[i].reason != "magnetic":
            problems.append(f"{i} should be rejected as magnetic")
    for c in result.candidates:
        meta = corpus / c.mp_id / "meta.json"
        if not meta.is_file():
            problems.append(f"{c.mp_id} passes the filter but is not a corpus structure")
            continue
        ref = Structure.from_dict(json.loads(meta.read_text())["structure"])
        s = c.structure
        same = (len(s) == len(ref) and [x.specie.symbol for x in s] == [x.specie.symbol for x in ref]
                and np.allclose(s.lattice.matrix, ref.lattice.matrix, atol=1e-6, rtol=0)
                and np.allclose(s.cart_coords, ref.cart_coords, atol=1e-6, rtol=0))
        if not same:
            problems.append(f"{c.mp_id}: primitive cell differs from the corpus meta.json structure")
    return problems


def main(argv=None) -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=SMALL_SNAPSHOT)
    args = parser.parse_args(argv)
    full = args.shared / "mp" / "mp_light_elements_snapshot.json.gz"
    corpus = args.shared / "openmx-corpus"
    records = select(load_snapshot(full), corpus)
    text = json.dumps(records, indent=None, separators=(",", ":")).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(text)
    problems = check(args.out, corpus)
    n_corpus = len(records) - len(CONTROLS)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(records)} records, "
          f"{n_corpus} corpus structures + {len(CONTROLS)} magnetic controls")
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
