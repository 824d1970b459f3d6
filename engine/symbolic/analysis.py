"""A musical check of a score a composer can read (issue 32, step 5): the bars that do not fill
the metre, and for several voices how many beats sound a full triad or seventh chord, where
parallel fifths or octaves and voice crossings are (bar numbers), the final cadence and whether
the voices end together; for one voice whether it ends on the key's tonic. The same readers as
the bar rules and the critic (postprocess.bar_fits, engine.symbolic.harmony), on the ABC the
composer gets (to_abc's: every voice in every bar, X:1 and the header first).

Bars are numbered as printed, as the engraved score and Rewrite number them: a
pickup is bar 0, the first full bar is bar 1.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from engine.symbolic.harmony import (bar_harmony, beat_length, chord_fit, crossings, ends_on, final_cadence,
                                     key_alterations, parallels, read_bar, tonic_class)
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import (BARLINE, bar_fits, header_field, header_unit, line_segments, metre_bar,
                                        starts_with_pickup)

MAX_LISTED = 12  # bar numbers listed per finding (the count is always whole)


@dataclass
class Analysis:
    bars: int
    voices: int
    unfit_bars: list[int] = field(default_factory=list)  # bars that do not fill the metre (bar_fits)
    # several voices (None for one):
    full_chord_beats: float | None = None  # share of beats of two or more pitch classes that are a full chord
    no_chord_beats: float | None = None  # share of such beats that fit no triad or seventh
    parallel_bars: list[int] = field(default_factory=list)  # bars with parallel fifths or octaves
    crossing_bars: list[int] = field(default_factory=list)  # bars where a higher voice sounds below a lower
    final_cadence: bool | None = None  # V-I or IV-I to a root-position triad (harmony.final_cadence)
    voices_end_together: bool | None = None
    # one voice:
    ends_on_tonic: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The check in words, one finding a line (what the page and the CLI print)."""
        fit = self.bars - len(self.unfit_bars)
        out = [f"{fit} of {self.bars} bars fill the metre" + _where(self.unfit_bars, "not")]
        if self.voices > 1 and self.full_chord_beats is not None:
            out.append(f"{self.full_chord_beats:.0%} of beats sound a full chord, {self.no_chord_beats:.0%} fit no chord")
            out.append(f"parallel fifths or octaves in {_count(self.parallel_bars)}" + _where(self.parallel_bars))
            out.append(f"voices crossing in {_count(self.crossing_bars)}" + _where(self.crossing_bars))
            out.append("ends with a V-I or IV-I cadence" if self.final_cadence else "no final V-I or IV-I cadence")
            out.append("all voices end together" if self.voices_end_together else "the voices do not end together")
        elif self.ends_on_tonic is not None:
            out.append("ends on the tonic" if self.ends_on_tonic else "does not end on the tonic")
        return out


def _count(bars: list[int]) -> str:
    return "no bar" if not bars else f"{len(bars)} bar" + ("s" if len(bars) > 1 else "")


def _where(bars: list[int], what: str = "") -> str:
    if not bars:
        return ""
    listed = ", ".join(map(str, bars[:MAX_LISTED])) + (" ..." if len(bars) > MAX_LISTED else "")
    return f" ({what + ': ' if what else ''}bar{'s' if len(bars) > 1 else ''} {listed})"


def analyse(abc: str) -> Analysis:
    """The check of an ABC score (to_abc's layout: one line per bar holding every voice)."""
    meta, body = split_tunebody(abc)
    voices = [m.group(1) for ln in meta for m in [re.match(r"V:\s*(\S+)", ln)] if m] or ["1"]
    if body and "[V:" not in body[0]:  # one voice written without [V:]
        body = [f"[V:{voices[0]}]{ln.strip()}\n" for ln in body]
    bar, unit = metre_bar(meta), header_unit(meta)
    fits = bar_fits(body, bar, unit)
    first = 0 if starts_with_pickup(body, bar, unit) else 1  # the first line's printed number
    result = Analysis(len(body), len(voices), [n for n, ok in enumerate(fits, first) if not ok])
    key_text = header_field(meta, "K") or "C"
    key = key_alterations(key_text)
    segments = [[line_segments(ln).get(v, "") for v in voices] for ln in body]
    if not body:
        return result
    if len(voices) == 1:
        tonic = tonic_class(key_text)
        if tonic is not None:
            result.ends_on_tonic = ends_on([b for segs in segments for b in BARLINE.split(segs[0])
                                            if b and not BARLINE.fullmatch(b)], key, tonic)
        return result
    _harmony(result, segments, key, beat_length(header_field(meta, "M"), header_field(meta, "L")), bar, first)
    return result


def _harmony(result: Analysis, segments: list[list[str]], key: dict, beat, bar, first: int) -> None:
    if not (beat and bar):
        return
    chord_beats = full = none = 0
    previous = None
    for n, segs in enumerate(segments, first):
        h = bar_harmony(segs, key, beat, bar)
        crossed_here = parallel_here = False
        for now in h.beats:
            pcs = {p % 12 for ps in now for p in ps}
            if len(pcs) >= 2:
                fit = chord_fit(pcs)
                chord_beats, full, none = chord_beats + 1, full + (fit == "full"), none + (fit == "none")
            crossed_here |= crossings(now)[1] > 0
        for now in h.moments:
            if previous is not None:
                parallel_here |= parallels(previous, now)[1] > 0
            previous = now
        if crossed_here:
            result.crossing_bars.append(n)
        if parallel_here:
            result.parallel_bars.append(n)
    if chord_beats:
        result.full_chord_beats, result.no_chord_beats = round(full / chord_beats, 3), round(none / chord_beats, 3)
    last = segments[-1]
    result.final_cadence = final_cadence(last, segments[-2] if len(segments) > 1 else [], key)
    # each voice's last note ends at the same moment (a rest after it, as the x that pads a short
    # final bar, does not count)
    ends = [max((e.onset + e.length for e in read_bar(t, key) if e.pitches), default=None) for t in last]
    result.voices_end_together = None not in ends and len(set(ends)) == 1
