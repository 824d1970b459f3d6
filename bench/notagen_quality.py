"""Quality of a model's pieces: for every prompt in its table, k pieces with default sampling.

Per prompt and overall: converts to MusicXML without error; bars aligned across voices; voices
as the instrumentation was trained: a voice count that is typical of that label's training pieces
(the fewest counts covering 80% of them: 4 for Bach's chorales, 4-6 for Palestrina's masses), and
stricter, the single most common count; part names that fit the instrumentation (singers only for
Choral, singers and players for Vocal-Orchestral, ...: engine.symbolic.labels);
ends with eos before the patch limit; median length in bars; pieces differ from each other and
from the training set (the longest run of bars copied from a training piece); held-out bits per
character. Prints a table, then one JSON line.

    python -m bench.notagen_quality [--model assets/models/...] [--k 4] [--data assets/data/corpus]
    python -m bench.notagen_quality --musical [--n 20] [--batch 10]   # chorales and German melodies, real vs generated
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

from bench import musicality
from engine import api
from engine.data.build import read_split
from engine.render.convert import ConversionError, abc_to_musicxml
from engine.symbolic.labels import fits_label
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import R_MARKER
from engine.symbolic.train import evaluate, prompt_voices


def body_lines(text: str) -> list[str]:
    return [R_MARKER.sub("", ln).rstrip("\n") for ln in split_tunebody(text)[1]]


def voice_count(text: str) -> int:
    meta, body = split_tunebody(text)
    declared = len([ln for ln in meta if ln.startswith("V:")])
    return declared or (1 if body else 0)


class CopyFinder:
    """Longest run of consecutive bars a piece shares with any training piece."""

    def __init__(self, texts: list[str]):
        self.where: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for p, t in enumerate(texts):
            for j, line in enumerate(body_lines(t)):
                self.where[line].append((p, j))

    def longest(self, text: str) -> int:
        best, prev = 0, {}
        for line in body_lines(text):
            cur = {}
            for p, j in self.where.get(line, ()):
                cur[(p, j)] = prev.get((p, j - 1), 0) + 1
            best = max([best, *cur.values()])
            prev = cur
        return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="assets/data/corpus")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-patches", type=int, default=1536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bar-retries", type=int, default=16, help="0: NotaGen's own sampling")
    ap.add_argument("--header-retries", type=int, default=64, help="0: NotaGen's own sampling")
    ap.add_argument("--musical", action="store_true",
                    help="instead: Bach chorales and German melodies measured as a musician would (bench.musicality), "
                         "real pieces against plain sampling, retries, and retries with the critic")
    ap.add_argument("--n", type=int, default=20, help="(--musical) generated pieces per mode")
    ap.add_argument("--batch", type=int, default=10,
                    help="(--musical) pieces written together; 1: one at a time, as a composer waits for one")
    ap.add_argument("--modes", default=",".join(musicality.MODES),
                    help=f"(--musical) the columns, comma-separated, from {', '.join(musicality.MODES)}")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(musicality.MODES):
        ap.error(f"--modes: choose from {', '.join(musicality.MODES)}, got {args.modes!r}")

    lm = api.load(args.model)
    train = [p for p in read_split(args.data, "train") if "@t" not in p["id"]]
    if args.musical:
        result = musicality.compare(lm, train, n=args.n, seed=args.seed, max_patches=args.max_patches,
                                    batch=args.batch, modes=modes)
        musicality.print_table(result)
        print(json.dumps({"bench": "notagen_quality_musical", "model": lm.name, "batch": args.batch, **result}))
        return
    val = read_split(args.data, "val")
    copies = CopyFinder([p["text"] for p in train])
    # the same sets generation's header retries aim at (the model's config holds them too)
    typical_voices = {tuple(k.split("_")): v for k, v in prompt_voices(train, lm.prompts).items()}

    rows, t0 = [], time.monotonic()
    for prompt in lm.prompts.prompts:
        label = (prompt.period, prompt.composer, prompt.instrumentation)
        request = api.ComposeRequest(*label, seed=args.seed, variations=args.k, max_patches=args.max_patches,
                                     bar_retries=args.bar_retries, header_retries=args.header_retries)
        comps = api.compose(lm, request)
        stats = {"prompt": " / ".join(label), "n": len(comps), "converts": 0, "aligned": 0, "bars": 0,
                 "voices_ok": 0, "voices_usual": 0, "fits": 0, "eos": 0, "lengths": [], "longest_copy": 0,
                 "rewritten": sum(c.piece.lines_rewritten for c in comps),
                 "distinct": len({c.abc.abc for c in comps}) == len(comps)}
        for c in comps:
            try:
                abc_to_musicxml(c.abc.abc)
                stats["converts"] += 1 if c.abc.alignment.total else 0
            except ConversionError:
                pass
            stats["aligned"] += c.abc.alignment.aligned
            stats["bars"] += c.abc.alignment.total
            typical = typical_voices.get(label, [-1])
            stats["voices_ok"] += voice_count(c.piece.text) in typical
            stats["voices_usual"] += voice_count(c.piece.text) == typical[0]
            stats["fits"] += fits_label(split_tunebody(c.piece.text)[0], prompt.instrumentation)
            stats["eos"] += c.piece.complete
            stats["lengths"].append(c.abc.alignment.total)
            stats["longest_copy"] = max(stats["longest_copy"], copies.longest(c.piece.text))
        rows.append(stats)
    gen_seconds = time.monotonic() - t0
    bpc = evaluate(lm.model, val[:256])

    n = sum(r["n"] for r in rows)
    overall = {
        "bench": "notagen_quality", "model": lm.name, "parameters": lm.model.config.num_parameters(),
        "prompts": len(rows), "pieces": n,
        "converts_pct": 100 * sum(r["converts"] for r in rows) / n,
        "aligned_bars_pct": 100 * sum(r["aligned"] for r in rows) / max(1, sum(r["bars"] for r in rows)),
        "voices_as_trained_pct": 100 * sum(r["voices_ok"] for r in rows) / n,
        "voices_most_common_pct": 100 * sum(r["voices_usual"] for r in rows) / n,
        "parts_fit_label_pct": 100 * sum(r["fits"] for r in rows) / n,
        "eos_pct": 100 * sum(r["eos"] for r in rows) / n,
        "median_bars": statistics.median(x for r in rows for x in r["lengths"]),
        "all_variations_distinct": all(r["distinct"] for r in rows),
        "longest_copied_bars": max(r["longest_copy"] for r in rows),
        "heldout_bits_per_char": bpc, "generation_seconds": gen_seconds,
        "bar_retries": args.bar_retries, "header_retries": args.header_retries,
        "lines_rewritten": sum(r["rewritten"] for r in rows),
    }
    print(f"{'prompt':58s} {'conv':>5s} {'align':>6s} {'voices':>6s} {'(mode)':>6s} {'typical':>8s} {'parts':>5s} {'eos':>4s} "
          f"{'bars':>5s} {'copy':>5s}")
    for r in rows:
        label = tuple(r["prompt"].split(" / "))
        print(f"{r['prompt'][:58]:58s} {r['converts']:>3d}/{r['n']} {100 * r['aligned'] / max(1, r['bars']):5.0f}% "
              f"{r['voices_ok']:>4d}/{r['n']} {r['voices_usual']:>4d}/{r['n']} "
              f"{','.join(map(str, typical_voices.get(label, []))):>8s} {r['fits']:>3d}/{r['n']} {r['eos']:>2d}/{r['n']} "
              f"{statistics.median(r['lengths']):5.0f} {r['longest_copy']:5d}")
    print(f"overall: converts {overall['converts_pct']:.0f}%, aligned bars {overall['aligned_bars_pct']:.0f}%, "
          f"voices as trained {overall['voices_as_trained_pct']:.0f}% "
          f"(the most common count {overall['voices_most_common_pct']:.0f}%), parts fit the label "
          f"{overall['parts_fit_label_pct']:.0f}%, eos {overall['eos_pct']:.0f}%, "
          f"median {overall['median_bars']} bars, longest copy {overall['longest_copied_bars']} bars, "
          f"held-out {bpc:.3f} bits/char")
    print(json.dumps(overall))


if __name__ == "__main__":
    main()
