"""Musical controls held to (issue 17): pieces asked for a length in bars, a key and a metre.

For each prompt and each asked length, `--seeds` pieces (one batch, seeds 0..n-1) with a key and
metre drawn per batch, and the same prompts without controls. Per piece, read back with music21
from the MusicXML the studio would give: exactly the asked measures in every part, the key
signature of the asked key, the asked time signature; converts to MusicXML; bars aligned (voices
agree and fill the metre, engine.symbolic.postprocess.check_alignment). Prints a table, then one
JSON line.

    python -m bench.controls [--model M] [--seeds 5] [--lengths 16,32,64]
"""
from __future__ import annotations

import argparse
import json
import random
import time

from engine import api
from engine.render.convert import ConversionError, abc_to_musicxml
from engine.symbolic.controls import Controls
from engine.symbolic.harmony import key_alterations

PROMPTS = [("Baroque", "Bach, Johann Sebastian", "Choral"), ("Folk", "Traditional, Irish", "Melody"),
           ("Folk", "Traditional, German", "Melody"), ("Renaissance", "Palestrina, Giovanni Pierluigi da", "Choral")]
KEYS = ["C", "G", "D", "A", "F", "Bb", "Eb", "Am", "Em", "Dm", "Gm", "Cm"]
METERS = ["2/4", "3/4", "4/4", "6/8"]


def sharps(key: str) -> int:
    alt = key_alterations(key)
    return sum(alt.values())


def read_back(abc: str) -> dict:
    """What music21 reads in the piece's MusicXML: measures per part, key signature, time signature."""
    from music21 import converter

    try:
        xml, _ = abc_to_musicxml(abc)
    except ConversionError:
        return {"converts": False}
    score = converter.parseData(xml, format="musicxml")
    parts = [p.getElementsByClass("Measure") for p in score.parts]
    first = parts[0][0] if parts and parts[0] else None
    ks, ts = (first.keySignature, first.timeSignature) if first is not None else (None, None)
    return {"converts": True, "measures": {len(p) for p in parts}, "sharps": ks.sharps if ks else 0,
            "meter": ts.ratioString if ts else None}


def judge(comp, controls: Controls | None) -> dict:
    got = read_back(comp.abc.abc)
    a = comp.abc.alignment
    row = {"converts": got["converts"], "aligned": a.aligned, "bars_total": a.total,
           "complete": comp.piece.complete, "bars": comp.piece.bars, "seconds": comp.piece.elapsed}
    if controls is not None and got["converts"]:
        meter = {"C": "4/4", "C|": "2/2"}.get(controls.meter, controls.meter)
        row |= {"length_ok": got["measures"] == {controls.bars}, "key_ok": got["sharps"] == sharps(controls.key),
                "meter_ok": got["meter"] == meter}
        row["all_ok"] = row["length_ok"] and row["key_ok"] and row["meter_ok"]
    elif controls is not None:
        row |= {"length_ok": False, "key_ok": False, "meter_ok": False, "all_ok": False}
    return row


def share(rows: list[dict], key: str) -> float:
    return round(100 * sum(bool(r[key]) for r in rows) / max(1, len(rows)), 1)


def aligned(rows: list[dict]) -> float:
    return round(100 * sum(r["aligned"] for r in rows) / max(1, sum(r["bars_total"] for r in rows)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lengths", default="16,32,64")
    ap.add_argument("--max-patches", type=int, default=2048)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    lm = api.load(args.model)
    rng = random.Random(0)
    rows: dict[str, list[dict]] = {"free": []} | {str(n): [] for n in lengths}
    t0 = time.monotonic()
    for prompt in PROMPTS:
        base = api.ComposeRequest(*prompt, seed=0, variations=args.seeds, max_patches=args.max_patches)
        rows["free"] += [judge(c, None) for c in api.compose(lm, base)]
        for n in lengths:
            controls = Controls(bars=n, key=rng.choice(KEYS), meter=rng.choice(METERS))
            got = [judge(c, controls) for c in api.compose(lm, base.update(controls=controls))]
            rows[str(n)] += got
            # as it goes: a run cut short (64-bar chorales take minutes each on a CPU) still says something
            print(f"{' / '.join(prompt)}, {n} bars in {controls.key} {controls.meter}: exact {share(got, 'all_ok')}%, "
                  f"converts {share(got, 'converts')}%, aligned {aligned(got)}% ({time.monotonic() - t0:.0f} s)",
                  flush=True)
    print(f"\n{'asked':>8} {'pieces':>6} {'bars,key,metre':>15} {'length':>7} {'key':>5} {'metre':>6} "
          f"{'converts':>8} {'aligned':>8} {'complete':>8} {'s/piece':>8}")
    summary = {}
    for name, rs in rows.items():
        s = {"pieces": len(rs), "converts_pct": share(rs, "converts"), "aligned_pct": aligned(rs),
             "complete_pct": share(rs, "complete"), "seconds_per_piece": round(sum(r["seconds"] for r in rs) / len(rs), 2)}
        if name != "free":
            s |= {"exact_pct": share(rs, "all_ok"), "length_pct": share(rs, "length_ok"), "key_pct": share(rs, "key_ok"),
                  "meter_pct": share(rs, "meter_ok")}
        summary[name] = s
        print(f"{name:>8} {s['pieces']:>6} {s.get('exact_pct', '-'):>15} {s.get('length_pct', '-'):>7} "
              f"{s.get('key_pct', '-'):>5} {s.get('meter_pct', '-'):>6} {s['converts_pct']:>8} {s['aligned_pct']:>8} "
              f"{s['complete_pct']:>8} {s['seconds_per_piece']:>8}")
    asked = [r for n in lengths for r in rows[str(n)]]
    print(json.dumps({"bench": "controls", "model": lm.name, "prompts": len(PROMPTS), "seeds": args.seeds,
                      "lengths": lengths, "exact_pct": share(asked, "all_ok"), "converts_pct": share(asked, "converts"),
                      "aligned_pct": aligned(asked), "free": summary["free"], "by_length": {n: summary[str(n)]
                                                                                           for n in map(str, lengths)},
                      "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
