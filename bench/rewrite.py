"""Rewriting bars 5-8 of real chorales the model never trained on (issue 35), side by side:

- seam:  K candidates written at once, the one after which the model finds the kept bars most likely
         joined to them (what the studio does, engine.symbolic.passage);
- first: one candidate (the first of the same seeds: what one rewrite without a choice gives);
- bach:  Bach's own bars, measured the same way.

For each: every other bar kept byte for byte (the model's lines); the log-likelihood of the next kept
bars after the passage, per character; and the music of the window from the bar before the passage
to the bar after it (bench.musicality's chorale measures: full-chord beats, beats off any chord,
parallels, crossings; bars whose voices fit the metre and each other); seconds per piece.

    python -m bench.rewrite [--n 20] [--k 4] [--first 5] [--last 8]

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

from bench import musicality
from engine import api
from engine.data.build import read_split
from engine.symbolic import passage
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import check_alignment, header_unit, metre_bar, to_abc

CHORALE = musicality.CHORALE


def window_abc(abc: str, first_line: int, last_line: int) -> str:
    """The header and the lines first_line..last_line (0-based, inclusive) of a score in the
    one-bar-a-line layout to_abc writes."""
    lines = abc.splitlines(keepends=True)
    head = [ln for ln in lines if not ln.startswith("[V:")]
    body = [ln for ln in lines if ln.startswith("[V:")]
    return "".join(head + body[first_line:last_line + 1])


def fits(abc: str) -> tuple[int, int]:
    meta, body = split_tunebody(abc)
    a = check_alignment(body, metre_bar(meta), header_unit(meta))
    return a.aligned, a.total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="assets/data/corpus")
    ap.add_argument("--n", type=int, default=20, help="held-out chorales")
    ap.add_argument("--k", type=int, default=passage.CANDIDATES, help="candidates of the seam mode")
    ap.add_argument("--first", type=int, default=5)
    ap.add_argument("--last", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = api.load(args.model)
    held_out = [p for p in read_split(args.data, "val") if tuple(p["labels"]) == CHORALE and "@t" not in p["id"]]
    modes = {"seam": args.k, "first": 1}
    found = {m: {"measures": [], "kept_verbatim": 0, "nats": 0.0, "chars": 0, "seconds": 0.0, "fit": [0, 0]}
             for m in (*modes, "bach")}
    used = 0
    for p in held_out:
        if used == args.n:
            break
        abc = to_abc(p["text"]).abc
        try:
            asked = api.passage_request(api.ComposeRequest(*CHORALE, seed=args.seed + used), abc, args.first, args.last)
        except api.SettingsError:
            continue  # too short for bars first..last with one kept after them
        if not asked.passage.kept:
            continue
        used += 1
        pa = asked.passage
        lo, hi = max(0, pa.before - 1), pa.before + pa.lines  # the bar before the passage to the bar after it
        follow = "".join(pa.kept[:passage.SEAM_BARS])
        head = "".join(asked.prompt.lines()) + asked.prefix
        texts = {"bach": head + "".join(pa.replaced) + "".join(pa.kept)}
        for mode, k in modes.items():
            t0 = time.monotonic()
            (c,) = api.compose(lm, asked.update(variations=k))
            found[mode]["seconds"] += time.monotonic() - t0
            texts[mode] = c.piece.text
        for mode, text in texts.items():
            f = found[mode]
            _, body = split_tunebody(text)
            _, prefix = split_tunebody(head)
            f["kept_verbatim"] += body[:pa.before] == prefix and tuple(body[pa.before + pa.lines:]) == pa.kept
            before = "".join(split_tunebody(text)[0]) + "".join(body[:pa.before + pa.lines])
            f["nats"] += passage.seam_logps(lm.model, [before], pa.kept)[0]
            f["chars"] += len(follow)
            window = window_abc(to_abc(text).abc, lo, hi)
            f["measures"].append(musicality.chorale_measures(window))
            a, t = fits(window)
            f["fit"][0] += a
            f["fit"][1] += t
        print(f"{p['id']}: bars {pa.first}-{pa.last}, seam {texts['seam'] != texts['first']}", flush=True)
    result = {}
    for mode, f in found.items():
        s = musicality.summarise("chorale", f["measures"])
        result[mode] = {"pieces": s["pieces"], "kept_verbatim_pct": round(100 * f["kept_verbatim"] / max(1, used), 1),
                        "seam_nats_per_char": round(f["nats"] / max(1, f["chars"]), 4),
                        "window_bars_fit_pct": round(100 * f["fit"][0] / max(1, f["fit"][1]), 1),
                        **{k: s[k] for k in ("full_chord_beats", "no_chord_beats", "parallels_per_100_moves",
                                             "crossings_per_100")}}
        if mode in modes:
            result[mode]["seconds_per_piece"] = round(f["seconds"] / max(1, used), 2)
    keys = list(result["bach"])
    print(f"\n{'':26s}" + "".join(f"{m:>10s}" for m in result))
    for k in keys + ["seconds_per_piece"]:
        print(f"{k:26s}" + "".join(f"{result[m].get(k, ''):>10}" for m in result))
    print(json.dumps({"bench": "rewrite", "model": lm.name, "bars": [args.first, args.last], "k": args.k, **result}))


if __name__ == "__main__":
    main()
