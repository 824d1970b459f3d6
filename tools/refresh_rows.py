"""Re-converts some pieces of the committed dataset with the current build code, in place, each
piece keeping its split (train or validation) and its transpositions re-made. For a fix to the
conversion of one kind of source, where a full `python -m engine dataset build` (every piece of
music21's corpus converted again) is not needed. Prints what changed; the last line is JSON.

    python -m tools.refresh_rows --match .abc --out assets/data/corpus
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import time
from pathlib import Path

from engine.data.build import ascii_only, convert_source, corpus_sources


def _convert(src):
    return convert_source(src, (-2, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--match", default=".abc", help="re-convert pieces whose id contains this (default .abc)")
    ap.add_argument("--out", default="assets/data/corpus")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out, t = Path(a.out), time.monotonic()
    splits = {name: [json.loads(ln) for ln in gzip.open(out / f"{name}.jsonl.gz", "rt")] for name in ("train", "val")}
    ids = {r["id"] for rows in splits.values() for r in rows if "@t" not in r["id"] and a.match in r["id"]}
    sources = [s for s in corpus_sources()[0] if s.id in ids]
    with mp.get_context("fork").Pool(a.workers) as pool:
        fresh = {r["id"]: r for r in pool.imap_unordered(_convert, sources, chunksize=8) if "skipped" not in r}
    changed = 0
    for name, rows in splits.items():
        kept = []
        for row in rows:
            base = row["id"].split("@t")[0]
            entry = fresh.get(base)
            if entry is None:
                kept.append(row)
                continue
            if "@t" in row["id"]:
                i = int(row["id"].split("@t")[1]) - 1
                if i >= len(entry["augmented"]):
                    continue  # the transposition cannot be made any more
                text = ascii_only(entry["augmented"][i])
            else:
                text = ascii_only(entry["text"])
            changed += text != row["text"]
            kept.append({**row, "text": text, "bars": entry["bars"]})
        with gzip.open(out / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
    print(json.dumps({"pieces_reconverted": len(fresh), "of": len(ids), "rows_changed": changed,
                      "seconds": round(time.monotonic() - t, 1)}))


if __name__ == "__main__":
    main()
