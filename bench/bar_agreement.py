"""Bars read right (issue 32, step 1): our bar lengths against music21's, bar for bar, and what the
page's "bars that fit the metre" figure counts.

1. Lengths. Every bar of every voice of the training corpus (the pieces as written, not their
   transpositions) and of generated pieces, read by our reader (engine.symbolic.postprocess.
   bar_duration, abctoolkit's) and by music21's ABC parser, voice by voice: the share of bars
   whose lengths agree. A piece where music21 finds another number of measures in a voice (it
   splits a bar longer than the metre in two) is compared up to that point and counted apart.
2. The fit figure. The share of bars that fit the metre as the page counts them
   (postprocess.bar_fits: full bars, plus the pickup, the final bar, a section's last bar and the
   next one's pickup, and a bar split in two at a fermata, repeat or ending), against the earlier
   rule (postprocess.Metre.after, which let any short bar pass when the next one completed it) and
   against music21's count of full measures with no exceptions at all.

    python -m bench.bar_agreement [--pieces 0] [--generated 20] [--model M]

--pieces N reads N corpus pieces spread over the corpus (0: all of them, which is slow: music21
reads a long quartet for minutes); --generated N writes N pieces per prompt with the bundled model
(seeds 1..N, default settings); --save FILE keeps them, --texts FILE reads pieces saved by another
version (--pieces -1 skips the corpus). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import time
from fractions import Fraction
from pathlib import Path

from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import (BARLINE, R_MARKER, Metre, bar_duration, bar_fits, header_field,
                                         line_segments, metre_bar, to_abc)

CORPUS = Path(__file__).resolve().parents[1] / "assets" / "data" / "corpus"
PROMPTS = [("Folk", "Traditional, Irish", "Melody"), ("Folk", "Traditional, German", "Melody"),
           ("Baroque", "Bach, Johann Sebastian", "Choral")]


def voices_of(body: list[str]) -> dict[str, list[str]]:
    """Each voice's bars, in order, as written (barline kept, markers out)."""
    out: dict[str, list[str]] = {}
    for line in body:
        for v, seg in line_segments(R_MARKER.sub("", line)).items():
            bars = [b for b in BARLINE.split(seg) if b and not BARLINE.fullmatch(b) and b.strip()
                    and not re.fullmatch(r"[\d,\s]+", b)]  # an ending's number is not a bar
            out.setdefault(v, []).extend(bars)
    return out


INVISIBLE_REST = re.compile(r'(!.*?!|".*?")|x')  # an x outside a decoration or a quoted string


def visible_rests(bar: str) -> str:
    """x (an invisible rest, as long as any rest) as z: music21's ABC reader drops x's length
    ("Could not get pitch information from note: x"), which would count against our reader."""
    return INVISIBLE_REST.sub(lambda m: m.group(1) or "z", bar)


def music21_bars(meta: list[str], body: list[str]) -> list[list[Fraction]] | None:
    """music21's measure lengths per voice (quarter notes), from the piece laid out voice by voice
    (its ABC parser does not read voices interleaved in one line)."""
    from music21 import converter

    per_voice: dict[str, list[str]] = {}
    for line in body:
        for v, seg in line_segments(R_MARKER.sub("", line)).items():
            per_voice.setdefault(v, []).append(visible_rests(seg))
    head = "".join(ln for ln in meta if not ln.startswith(("X:", "V:", "%%score", "%")))
    text = "X:1\n" + head + "".join(f"V:{v}\n" + "".join(segs) + "\n" for v, segs in per_voice.items())
    try:
        score = converter.parse(text, format="abc")
    except Exception:  # noqa: BLE001 - music21's ABC reader fails on some notation: counted apart
        return None
    parts = score.parts if score.parts else [score]
    return [[Fraction(m.highestTime).limit_denominator(10_000) for m in p.getElementsByClass("Measure")]
            for p in parts]


def compare_lengths(text: str, stats: collections.Counter, examples: list) -> None:
    """`text` in the model's format, compared as the composer gets it: as ABC with every voice in
    every bar (to_abc restores the voices the model's format leaves out while they rest)."""
    meta, body = split_tunebody(to_abc(text).abc)
    unit = Fraction(header_field(meta, "L") or "1/8")
    if any("[L:" in ln for ln in body):
        stats["pieces_with_inline_L"] += 1
        return
    ours = voices_of(body)
    theirs = music21_bars(meta, body)
    if theirs is None:
        stats["music21_failed"] += 1
        return
    bar = metre_bar(meta)
    metre_quarters = bar * unit * 4 if bar is not None else None
    for m21 in theirs:  # the issue's measure: music21's full measures, first and last aside
        inner = m21[1:-1]
        stats["m21_measures"] += len(inner)
        stats["m21_full"] += sum(q == metre_quarters for q in inner)
    for bars, m21 in zip(ours.values(), theirs):
        split = len(m21) != len(bars)  # music21 cut a bar longer than the metre into measures
        stats["voices_measure_count_differs"] += split
        for b, q in zip(bars, m21):  # up to the first bar music21 cut, they are the same bars
            d = bar_duration(b)
            if d is None:
                stats["ours_unreadable"] += 1
                continue
            if d * unit * 4 == q:
                stats["agree"] += 1
                continue
            if split and metre_quarters is not None and d * unit * 4 > metre_quarters:
                stats["cut_by_music21"] += 1  # the overlong bar itself: not a disagreement on its length
                break
            stats["disagree"] += 1
            if len(examples) < 12:
                examples.append((b.strip()[:40], str(d * unit * 4), str(q)))
            if split:
                break


def fit_figures(text: str, stats: collections.Counter) -> None:
    """The page's figure (bar_fits), the earlier rule (Metre.after) and strict full bars."""
    meta, body = split_tunebody(text)
    bar = metre_bar(meta)
    if bar is None or not body:
        return
    body = [R_MARKER.sub("", ln) for ln in body]
    unit = Fraction(header_field(meta, "L") or "1/8")
    fits = bar_fits(body, bar, unit)
    metre = Metre(bar)
    for line, fit in zip(body, fits):
        after = metre.after(line)
        metre = after or Metre(bar, Fraction(0), False)
        stats["lines"] += 1
        stats["fit_new"] += fit
        stats["fit_old"] += after is not None


def corpus_texts(limit: int) -> list[tuple[str, str]]:
    rows = []
    for name in ("train.jsonl.gz", "val.jsonl.gz"):
        with gzip.open(CORPUS / name, "rt") as f:
            rows += [json.loads(ln) for ln in f]
    rows = [r for r in rows if "@t" not in r["id"]]  # as written, not the transpositions
    rows = rows[::max(1, len(rows) // limit)][:limit] if limit else rows  # spread over every kind
    return [(r["labels"][1] + " / " + r["labels"][2], r["text"]) for r in rows]


def generated_texts(model: str | None, n: int) -> list[tuple[str, str]]:
    from engine import api

    lm = api.load(model)
    out = []
    for prompt in PROMPTS:
        request = api.ComposeRequest(*prompt, seed=1, variations=n)
        for c in api.compose(lm, request):
            out.append((prompt[1] + " / " + prompt[2], c.piece.text))
    return out


def run(texts: list[tuple[str, str]]) -> dict:
    by_label: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: list = []
    for label, text in texts:
        compare_lengths(text, by_label[label], examples)
        fit_figures(text, by_label[label])
    total = sum(by_label.values(), collections.Counter())
    return {"by_label": by_label, "total": total, "examples": examples}


def share(c: collections.Counter, a: str, b: str) -> float:
    return round(c[a] / max(1, c[a] + c[b]), 4)


def report(name: str, result: dict) -> dict:
    print(f"\n{name}: bar lengths against music21, and the fit figure")
    print(f"{'label':44s} {'bars':>7s} {'agree':>7s} {'fit(page)':>10s} {'fit(old)':>9s} {'full(m21)':>9s}")
    for label, c in sorted(result["by_label"].items(), key=lambda kv: -kv[1]["lines"])[:16]:
        bars = c["agree"] + c["disagree"]
        print(f"{label[:44]:44s} {bars:7d} {share(c, 'agree', 'disagree'):7.4f} "
              f"{c['fit_new'] / max(1, c['lines']):10.4f} {c['fit_old'] / max(1, c['lines']):9.4f} "
              f"{c['m21_full'] / max(1, c['m21_measures']):9.4f}")
    t = result["total"]
    for e in result["examples"][:8]:
        print("  differs:", e)
    return {"bars": t["agree"] + t["disagree"], "length_agreement": share(t, "agree", "disagree"),
            "fit_page": round(t["fit_new"] / max(1, t["lines"]), 4), "fit_old_rule": round(t["fit_old"] / max(1, t["lines"]), 4),
            "music21_full_measures": round(t["m21_full"] / max(1, t["m21_measures"]), 4),
            "by_label_music21_full": {k: round(c["m21_full"] / max(1, c["m21_measures"]), 4)
                                      for k, c in result["by_label"].items() if c["m21_measures"]},
            "music21_failed": t["music21_failed"], "voices_measure_count_differs": t["voices_measure_count_differs"],
            "bars_cut_by_music21": t["cut_by_music21"],
            "pieces_with_inline_L": t["pieces_with_inline_L"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=0, help="corpus pieces to read (0: all)")
    ap.add_argument("--generated", type=int, default=20, help="pieces to write per prompt (0: none)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--save", help="write the generated pieces' texts here (JSON)")
    ap.add_argument("--texts", action="append", default=[],
                    help="read pieces from this JSON (a --save of another version) instead of writing them; repeatable")
    a = ap.parse_args()
    t = time.monotonic()
    out = {"corpus": report("corpus (as written)", run(corpus_texts(a.pieces)))} if a.pieces >= 0 else {}
    if a.generated:
        texts = generated_texts(a.model, a.generated)
        if a.save:
            Path(a.save).write_text(json.dumps(texts))
        out["generated"] = report(f"generated ({a.generated} per prompt)", run(texts))
    for path in a.texts:
        out[Path(path).stem] = report(f"pieces from {path}", run([tuple(x) for x in json.loads(Path(path).read_text())]))
    out["seconds"] = round(time.monotonic() - t, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
