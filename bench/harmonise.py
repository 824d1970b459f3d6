"""Harmonising the soprano lines of Bach chorales the model never trained on (issue 35), against Bach's
own four voices on the same melodies, measured by the same code (bench.musicality's chorale measures):

- search: the defaults (bar rules, critic, four candidates a bar);
- plain:  NotaGen's own sampling under the forced melody (no retries, critic or search);
- bach:   the chorales as Bach wrote them.

Per mode: the melody back note for note (the first voice of every bar), full-chord beats, beats off
any chord, parallels, crossings, the final cadence, voices ending together, bars that fit, the
share of the lower voices' notes inside the usual SATB ranges, seconds per piece.

    python -m bench.harmonise [--n 20] [--seed 0]

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import time

from bench import musicality
from engine import api
from engine.data.build import read_split
from engine.symbolic.harmony import key_alterations, read_bar
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import BARLINE, check_alignment, header_field, header_unit, metre_bar, to_abc

CHORALE = musicality.CHORALE
MODES = {"search": {}, "plain": dict(bar_retries=0, critic=False, search=1)}
RANGES = {1: (55, 74), 2: (48, 67), 3: (40, 62)}  # alto G3-D5, tenor C3-G4, bass E2-D4 (MIDI; voices after the first)


def first_voice(abc: str) -> list[str]:
    return [re.match(r"(\[V:1\][^\[]*)", ln).group(1) for ln in abc.splitlines() if ln.startswith("[V:1]")]


def in_range(abc: str) -> tuple[int, int]:
    """(notes of the lower voices inside their range, notes of the lower voices)."""
    header, voices, body = musicality.parse_abc(abc)
    key = key_alterations(header_field(header, "K") or "C")
    inside = total = 0
    for line in body:
        for n, text in enumerate(musicality.segments_of(line, voices)):
            lo, hi = RANGES.get(n, (0, 127))
            if n == 0:
                continue
            for b in BARLINE.split(text):
                if b and not BARLINE.fullmatch(b):
                    for e in read_bar(b, key):
                        total += len(e.pitches)
                        inside += sum(lo <= p <= hi for p in e.pitches)
    return inside, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="assets/data/corpus")
    ap.add_argument("--n", type=int, default=20, help="held-out chorales")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = api.load(args.model)
    held_out = [p for p in read_split(args.data, "val") if tuple(p["labels"]) == CHORALE and "@t" not in p["id"]][:args.n]
    found = {m: {"measures": [], "melody": 0, "fit": [0, 0], "range": [0, 0], "seconds": 0.0}
             for m in (*MODES, "bach")}
    for i, p in enumerate(held_out):
        bach = to_abc(p["text"]).abc
        melody = api.voice_of(bach, 1)
        abcs = {"bach": bach}
        for mode, settings in MODES.items():
            t0 = time.monotonic()
            request = api.harmonise_request(api.ComposeRequest(*CHORALE, seed=args.seed + i, **settings), melody)
            (c,) = api.compose(lm, request)
            found[mode]["seconds"] += time.monotonic() - t0
            abcs[mode] = c.abc.abc
        for mode, abc in abcs.items():
            f = found[mode]
            f["melody"] += first_voice(abc) == first_voice(melody)
            f["measures"].append(musicality.chorale_measures(abc))
            meta, body = split_tunebody(abc)
            a = check_alignment(body, metre_bar(meta), header_unit(meta))
            f["fit"][0] += a.aligned
            f["fit"][1] += a.total
            inside, total = in_range(abc)
            f["range"][0] += inside
            f["range"][1] += total
        print(f"{p['id']}: melody kept {[first_voice(abcs[m]) == first_voice(melody) for m in MODES]}", flush=True)
    n = max(1, len(held_out))
    result = {}
    for mode, f in found.items():
        s = musicality.summarise("chorale", f["measures"])
        result[mode] = {"pieces": s["pieces"], "melody_kept_pct": round(100 * f["melody"] / n, 1),
                        **{k: s[k] for k in ("full_chord_beats", "no_chord_beats", "parallels_per_100_moves",
                                             "crossings_per_100", "final_cadence_pct", "voices_end_together_pct")},
                        "bars_fit_pct": round(100 * f["fit"][0] / max(1, f["fit"][1]), 1),
                        "lower_voices_in_range_pct": round(100 * f["range"][0] / max(1, f["range"][1]), 1)}
        if mode in MODES:
            result[mode]["seconds_per_piece"] = round(f["seconds"] / n, 2)
    print(f"\n{'':26s}" + "".join(f"{m:>10s}" for m in result))
    for k in list(result["bach"]) + ["seconds_per_piece"]:
        print(f"{k:26s}" + "".join(f"{result[m].get(k, ''):>10}" for m in result))
    print(json.dumps({"bench": "harmonise", "model": lm.name, **result}))


if __name__ == "__main__":
    main()
