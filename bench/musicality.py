"""Musical measures of a piece, as a musician would check it, the same for real scores and
generated ones (engine.symbolic.harmony reads the notes):

- chorales (several voices): the share of beats whose sounding notes form a full triad or
  seventh chord, and of beats (two or more pitch classes) that fit no triad or seventh; parallel
  fifths or octaves per 100 voice-pair moves; voice crossings per 100 voice-pair beats; a final
  cadence (the last bar's bass the root of a major or minor triad, reached from a fifth above, V-I,
  or a fourth above, IV-I); every voice sounding to the end; whole-bar rests inside a voice (a
  bar where a voice only rests); one key signature for every voice.
- melodies: bars not as long as the metre (postprocess.Metre: pickups and split bars aside); the
  last note the key's tonic; bars that repeat an earlier bar of the piece.
"""
from __future__ import annotations

import re
import time

from engine.symbolic.harmony import (INLINE_KEY, bar_harmony, beat_length, chord_fit, crossings, ends_together,
                                     final_cadence,
                                     key_alterations, parallels, read_bar, tonic_class)
from engine.symbolic.postprocess import BARLINE, check_alignment, header_field, header_unit, line_segments, metre_bar



def parse_abc(abc: str) -> tuple[list[str], list[str], list[str]]:
    """-> (header lines, voice ids in order, tune-body lines) of an ABC file as to_abc writes it."""
    lines = abc.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith("[V:") or (not re.match(r"^[A-Za-z%]:|^%", ln)
                                                                            and ln.strip())), len(lines))
    header, body = lines[:start], [ln for ln in lines[start:] if ln.strip()]
    voices = [m.group(1) for ln in header for m in [re.match(r"V:\s*(\d+)", ln)] if m] or ["1"]
    return header, voices, body


def segments_of(line: str, voices: list[str]) -> list[str]:
    seg = line_segments(line)
    if not seg:  # one voice written without [V:]
        return [line.strip()]
    return [seg.get(v, "") for v in voices]


def chorale_measures(abc: str) -> dict:
    header, voices, body = parse_abc(abc)
    key_text = header_field(header, "K") or "C"
    key, bar = key_alterations(key_text), metre_bar(header)
    beat = beat_length(header_field(header, "M"), header_field(header, "L"))
    m = {"beats": 0, "full": 0, "nofit": 0, "chord_beats": 0, "moves": 0, "parallels": 0, "pairs": 0,
         "crossings": 0, "voice_bars": 0, "rest_bars": 0, "cadence": 0, "end_together": 0,
         "one_key": int(_one_key(body, voices))}
    previous = None
    for line in body:
        segs = segments_of(line, voices)
        for text in segs:
            m["voice_bars"] += 1
            notes = [e for b in BARLINE.split(text) if b and not BARLINE.fullmatch(b) for e in read_bar(b, key)]
            m["rest_bars"] += bool(notes) and all(not e.pitches for e in notes)
        if not (beat and bar):
            continue
        h = bar_harmony(segs, key, beat, bar)
        for now in h.beats:
            m["beats"] += 1
            pcs = {p % 12 for ps in now for p in ps}
            fit = chord_fit(pcs) if len(pcs) >= 2 else "fits"
            m["full"] += fit == "full"
            m["nofit"] += fit == "none"
            m["chord_beats"] += len(pcs) >= 2
            pairs, crossed = crossings(now)
            m["pairs"] += pairs
            m["crossings"] += crossed
        for now in h.moments:
            if previous is not None:
                moves, bad = parallels(previous, now)
                m["moves"] += moves
                m["parallels"] += bad
            previous = now
    if body and beat and bar:
        m["cadence"], m["end_together"] = _ending(body, voices, key)
    return m


def _one_key(body: list[str], voices: list[str]) -> bool:
    """Every voice starts in the same key (an inline key in one voice's first bar differs)."""
    if not body:
        return True
    first = {v: tuple(INLINE_KEY.findall(t)[:1]) for v, t in zip(voices, segments_of(body[0], voices))}
    return len(set(first.values())) <= 1


def _ending(body: list[str], voices: list[str], key: dict) -> tuple[int, int]:
    """(a final V-I or IV-I cadence, the sampler's own test: harmony.final_cadence; every voice
    sounding to the end)."""
    last_bar = segments_of(body[-1], voices)
    together = int(ends_together(last_bar))
    before = segments_of(body[-2], voices) if len(body) > 1 else []
    return int(final_cadence(last_bar, before, key)), together


def melody_measures(abc: str) -> dict:
    header, voices, body = parse_abc(abc)
    key_text = header_field(header, "K") or "C"
    key = key_alterations(key_text)
    lines = [ln if "[V:" in ln else f"[V:1]{ln.strip()}\n" for ln in body]
    alignment = check_alignment(lines, metre_bar(header), header_unit(header))
    notes = [e for ln in lines for t in segments_of(ln, ["1"]) for b in BARLINE.split(t)
             if b and not BARLINE.fullmatch(b) for e in read_bar(b, key) if e.pitches]
    bars = [re.sub(r"\s+", "", t) for ln in lines for t in segments_of(ln, ["1"])]
    tonic = tonic_class(key_text)
    return {"bars": alignment.total, "wrong_bars": alignment.total - alignment.aligned,
            "tonic_end": int(bool(notes) and tonic is not None and notes[-1].pitches[-1] % 12 == tonic),
            "repeated": sum(b in bars[:i] for i, b in enumerate(bars))}


def summarise(kind: str, measures: list[dict]) -> dict:
    """Per-piece counts -> the figures of issue 16's tables."""
    total = lambda k: sum(m[k] for m in measures)  # noqa: E731
    n = max(1, len(measures))
    if kind == "melody":
        return {"pieces": len(measures), "wrong_length_bars_pct": round(100 * total("wrong_bars") / max(1, total("bars")), 1),
                "ends_on_tonic_pct": round(100 * total("tonic_end") / n, 1),
                "repeated_bars_pct": round(100 * total("repeated") / max(1, total("bars")), 1)}
    return {"pieces": len(measures), "full_chord_beats": round(total("full") / max(1, total("beats")), 3),
            "no_chord_beats": round(total("nofit") / max(1, total("beats")), 3),
            "parallels_per_100_moves": round(100 * total("parallels") / max(1, total("moves")), 2),
            "crossings_per_100": round(100 * total("crossings") / max(1, total("pairs")), 2),
            "final_cadence_pct": round(100 * total("cadence") / n, 1),
            "voices_end_together_pct": round(100 * total("end_together") / n, 1),
            "whole_bar_rests_pct": round(100 * total("rest_bars") / max(1, total("voice_bars")), 2),
            "one_key_signature_pct": round(100 * total("one_key") / n, 1)}


# --- the comparison bench.notagen_quality --musical prints ----------------------------------------------
CHORALE = ("Baroque", "Bach, Johann Sebastian", "Choral")
GERMAN = ("Folk", "Traditional, German", "Melody")
MODES = {"plain": dict(bar_retries=0, header_retries=0, critic=False, search=1),  # NotaGen's own sampling
         "retries": dict(critic=False, search=1),  # bar and header retries with the bar rules, no critic
         "critic": dict(critic=True, search=1),  # one candidate a bar, written again while it breaks a rule
         "search": dict(critic=True, search=4, search_by="line"),  # four candidates of each line, the best kept
         "voice8": dict(critic=True, search=8, search_by="voice"),  # ... of the bass's bar, four of each above
         "voice": dict(critic=True, search=16, search_by="voice")}  # 16 of the bass's bar, 8 above: the defaults


def compare(lm, train: list[dict], n: int = 20, real: int = 40, seed: int = 0, max_patches: int = 1024,
            batch: int = 10, modes: list[str] | None = None) -> dict:
    """For Bach chorales and German folk melodies: `real` pieces of the training data and `n`
    generated ones per mode (`batch` at a time), measured the same way; seconds per generated piece."""
    from engine import api
    from engine.symbolic.postprocess import to_abc

    out = {}
    for label, kind, measure in ((CHORALE, "chorale", chorale_measures), (GERMAN, "melody", melody_measures)):
        pieces = [p for p in train if tuple(p["labels"]) == label and "@t" not in p["id"]][:real]
        row = {"real": summarise(kind, [measure(to_abc(p["text"]).abc) for p in pieces])}
        for mode, settings in MODES.items():
            if modes is not None and mode not in modes:
                continue
            t0, comps = time.monotonic(), []
            for start in range(0, n, batch):
                request = api.ComposeRequest(*label, seed=seed + start, variations=min(batch, n - start),
                                             max_patches=max_patches, **settings)
                comps += api.compose(lm, request)
            row[mode] = {**summarise(kind, [measure(c.abc.abc) for c in comps]),
                         "seconds_per_piece": round((time.monotonic() - t0) / max(1, len(comps)), 2)}
        out[kind] = row
    return out


def print_table(result: dict) -> None:
    for kind, row in result.items():
        keys = [k for k in row["real"] if k != "pieces"] + ["seconds_per_piece"]
        print(f"\n{kind:28s}" + "".join(f"{c:>10s}" for c in row))
        for k in keys:
            print(f"{k:28s}" + "".join(f"{row[c].get(k, ''):>10}" for c in row))
