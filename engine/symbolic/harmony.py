"""Reading a bar of ABC as music: the pitches each voice sounds on each beat, the chords they make,
the parallels between voices. Pure Python over the bar's text (no music21: the sampler's critic
runs it on every bar it writes), used by the critic (engine.symbolic.retries, bar rule "harmony")
and by bench.notagen_quality's musical measures.

What is read: notes with accidentals (carried to the bar's end), octave marks and lengths, chords
[CEG], rests z/x, tuplets (3, broken rhythm > <, the key signature (K:, modes included) and
inline key changes. Decorations, annotations, grace notes, slurs and ties are skipped (a tied
note sounds on as written).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

LETTERS = "CDEFGAB"
NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
SHARPS, FLATS = "FCGDAEB", "BEADGCF"
FIFTHS = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F": -1}  # a tonic's place on the circle of fifths
MODES = {"maj": 0, "ion": 0, "min": -3, "m": -3, "aeo": -3, "dor": -2, "mix": -1, "lyd": 1, "phr": -4, "loc": -5}
# chord shapes over a root: triads, then sevenths (pitch classes above the root)
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8), (0, 4, 7, 10), (0, 3, 7, 10), (0, 4, 7, 11), (0, 3, 6, 10),
          (0, 3, 6, 9))
IMPERFECT = (3, 4, 8, 9)  # thirds and sixths (and their compounds), in semitones
TOKEN = re.compile(r"""
    (?P<skip>![^!]*!|"[^"]*"|\{[^}]*\}|\[[A-Za-z]:[^\]]*\]|[.~HLMOPSTuv]|\(\d(?::\d*)*)
  | (?P<chord>\[(?P<notes>[^\]]*)\](?P<clen>[\d/]*))
  | (?P<note>(?P<acc>\^\^|\^|__|_|=)?(?P<letter>[A-Ga-g])(?P<oct>[,']*)(?P<len>[\d/]*))
  | (?P<rest>[zxZX](?P<rlen>[\d/]*))
  | (?P<broken>[<>]+)
""", re.X)
TUPLET = re.compile(r"\((\d)(?::(\d*))?(?::(\d*))?")
NOTE_IN_CHORD = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)([\d/]*)")
INLINE_KEY = re.compile(r"\[K:([^\]]*)\]")


def key_alterations(key: str) -> dict[str, int]:
    """K: value -> the semitones each letter is raised or lowered by (Gmin: B and E flat)."""
    m = re.match(r"\s*([A-G])([#b]?)\s*([A-Za-z]*)", key or "")
    if not m or (key or "").strip().lower() in ("none", ""):
        return {}
    tonic, acc, mode = m.groups()
    fifths = FIFTHS[tonic] + {"#": 7, "b": -7, "": 0}[acc] + MODES.get(mode.lower()[:3] if mode.lower() != "m" else "m", 0)
    fifths = max(-7, min(7, fifths))
    if fifths > 0:
        return {c: 1 for c in SHARPS[:fifths]}
    return {c: -1 for c in FLATS[:-fifths]}


TONICS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def tonic_class(key: str | None) -> int | None:
    """K: value -> its tonic's pitch class (Ador: 9, Bb: 10), None when it names none."""
    m = re.match(r"\s*([A-G])([#b]?)", key or "")
    return None if not m else (TONICS[m.group(1)] + {"#": 1, "b": -1, "": 0}[m.group(2)]) % 12


def ends_on(bars: list[str], key: dict[str, int], tonic: int) -> bool | None:
    """Whether one voice's last note (of these bars' text) is the tonic; None when they hold no note."""
    for text in reversed(bars):
        notes = [e for e in read_bar(text, key) if e.pitches]
        if notes:
            return notes[-1].pitches[-1] % 12 == tonic
    return None


def _length(text: str) -> Fraction:
    """An ABC length suffix: '' 1, '2' 2, '/' 1/2, '//' 1/4, '3/2' 3/2; a malformed one a model can
    write ('4/4/2', '/0') read slash by slash (each halves, or divides by the number after it)."""
    num, slash, rest = text.partition("/")
    value = Fraction(int(num or 1))
    for den in rest.split("/") if slash else []:
        value /= max(1, int(den)) if den else 2
    return value


def _pitch(acc: str | None, letter: str, octave: str, key: dict[str, int], carried: dict[str, int]) -> int:
    name = letter.upper()
    base = 60 + NATURAL[name] + (12 if letter.islower() else 0) + 12 * octave.count("'") - 12 * octave.count(",")
    mark = name + str(base // 12)
    if acc:
        carried[mark] = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}[acc]
    return base + carried.get(mark, key.get(name, 0))


@dataclass(frozen=True)
class Event:
    onset: Fraction  # in units of L from the bar's start
    length: Fraction
    pitches: tuple[int, ...]  # MIDI numbers; () for a rest


def read_bar(text: str, key: dict[str, int]) -> list[Event]:
    """One voice's bar (its text between barlines) -> its notes and rests, in order."""
    events: list[Event] = []
    carried: dict[str, int] = {}
    t, tuplet, left, broken = Fraction(0), Fraction(1), 0, None
    for m in TOKEN.finditer(text):
        if m.group("skip"):
            tm = TUPLET.fullmatch(m.group("skip"))
            if tm:
                p = int(tm.group(1))
                q = int(tm.group(2)) if tm.group(2) else (3 if p in (2, 4, 8) else 2)
                tuplet, left = Fraction(q, p), int(tm.group(3)) if tm.group(3) else p
            continue
        if m.group("broken"):
            broken = m.group("broken")
            if events:  # the note before is longer (>) or shorter (<); the next one makes up
                e = events[-1]
                factor = Fraction(2 ** len(broken) * 2 - 1, 2 ** len(broken)) if broken[0] == ">" else Fraction(1, 2 ** len(broken))
                events[-1] = Event(e.onset, e.length * factor, e.pitches)
                t = e.onset + e.length * factor
            continue
        if m.group("chord") is not None:
            notes = NOTE_IN_CHORD.findall(m.group("notes"))
            if not notes:
                continue
            length = _length(m.group("clen")) * _length(notes[0][3])
            pitches = tuple(_pitch(a or None, ltr, o, key, carried) for a, ltr, o, _ in notes)
        elif m.group("note"):
            length = _length(m.group("len"))
            pitches = (_pitch(m.group("acc"), m.group("letter"), m.group("oct"), key, carried),)
        elif m.group("rest"):
            length, pitches = _length(m.group("rlen")), ()
        else:
            continue
        length *= tuplet
        if left:
            left -= 1
            tuplet = tuplet if left else Fraction(1)
        if broken:  # the note after a broken rhythm
            length *= Fraction(1, 2 ** len(broken)) if broken[0] == ">" else Fraction(2 ** len(broken) * 2 - 1, 2 ** len(broken))
            broken = None
        events.append(Event(t, length, pitches))
        t += length
    return events


def beat_length(metre: str | None, unit: str | None) -> Fraction | None:
    """A beat in units of L: the metre's denominator, or a dotted one in 6/8, 9/8, 12/8."""
    m = {"C": "4/4", "C|": "2/2"}.get((metre or "").strip(), (metre or "").strip())
    if not re.fullmatch(r"\d+/\d+", m):
        return None
    num, den = (int(x) for x in m.split("/"))
    beat = Fraction(3, den) if den == 8 and num % 3 == 0 and num > 3 else Fraction(1, den)
    return beat / Fraction(unit or "1/8")


def sounding(events: list[Event], t: Fraction) -> tuple[int, ...]:
    """The pitches a voice sounds at time t (a note that started at or before t and still lasts)."""
    for e in events:
        if e.onset <= t < e.onset + e.length:
            return e.pitches
    return ()


def chord_fit(pitch_classes: set[int]) -> str:
    """'full' (a triad or seventh chord with its root and third), 'fits' (notes of one chord, not
    all of it) or 'none' (no triad or seventh holds them all)."""
    best = "none"
    for root in range(12):
        for shape in CHORDS:
            chord = {(root + i) % 12 for i in shape}
            if pitch_classes <= chord:
                if len(pitch_classes) >= 3 and {root, (root + shape[1]) % 12} <= pitch_classes:
                    return "full"
                best = "fits"
    return best


@dataclass
class BarHarmony:
    """What the critic and the measures read of one tune-body line (one bar of every voice)."""
    beats: list[list[tuple[int, ...]]]  # per beat, what each voice sounds (voices in order)
    fits: list[str]  # per beat: chord_fit of the sounding pitch classes (beats with 2+ classes)
    moments: list[list[tuple[int, ...]]]  # what each voice sounds whenever any voice starts a note or rest

    def no_chord_share(self) -> float:
        return sum(f == "none" for f in self.fits) / len(self.fits) if self.fits else 0.0

    def full_share(self) -> float:
        return sum(f == "full" for f in self.fits) / len(self.fits) if self.fits else 0.0

    def thirds_share(self) -> float:
        """The share of beats on which the first two voices sound a third or a sixth apart (the top
        note of the upper, the bottom note of the lower): 51% of beats in Bach's soprano and alto."""
        thirds = sum(1 for now in self.beats if len(now) >= 2 and now[0] and now[1]
                     and (max(now[0]) - min(now[1])) % 12 in IMPERFECT)
        return thirds / len(self.beats) if self.beats else 0.0


def bar_harmony(segments: list[str], key: dict[str, int], beat: Fraction, bar: Fraction) -> BarHarmony:
    """Each voice's bar text (in voice order) -> what sounds on each beat. Inline keys apply."""
    voices = []
    for text in segments:
        k = INLINE_KEY.search(text)
        voices.append(read_bar(text, key_alterations(k.group(1)) if k else key))
    beats, fits = [], []
    # the beats the bar holds: a pickup (or a bar split at a fermata) has fewer than the metre's,
    # and the ones it lacks are no silent beats of the piece
    length = max((e.onset + e.length for v in voices for e in v), default=Fraction(0))
    n = min(int(bar / beat), math.ceil(length / beat)) if beat and bar else 0
    for i in range(min(n, 64)):  # bounded: at most 64 beats a bar
        t = beat * i
        now = [sounding(v, t) for v in voices]
        beats.append(now)
        classes = {p % 12 for ps in now for p in ps}
        if len(classes) >= 2:
            fits.append(chord_fit(classes))
    onsets = sorted({e.onset for v in voices for e in v})[:256]  # bounded: a bar's notes
    return BarHarmony(beats, fits, [[sounding(v, t) for v in voices] for t in onsets])


def final_cadence(last: list[str], before: list[str], key: dict[str, int]) -> bool:
    """The last bar (each voice's text, the bass last) ends on a major or minor triad in root
    position, its bass reached from a fifth above (V-I) or a fourth above (IV-I), in that bar or
    from the bar before."""
    voices = [read_bar(t, key) for t in last]
    bass = _lowest(voices[-1]) if voices else []
    earlier = _lowest(read_bar(before[-1], key)) if before else []
    if not bass:
        return False
    root, end = bass[-1], max(e.onset for e in voices[-1] if e.pitches)
    sounding = {p % 12 for v in voices for e in v if e.pitches and e.onset <= end < e.onset + e.length
                for p in e.pitches}
    approach = next((p for p in reversed(earlier + bass[:-1]) if p % 12 != root % 12), None)
    triad = any(sounding <= {root % 12, (root + third) % 12, (root + 7) % 12} for third in (3, 4))
    return triad and len(sounding) >= 2 and approach is not None and (approach - root) % 12 in (5, 7)


def ends_together(segments: list[str]) -> bool:
    """Every voice of a last bar (each voice's text) sounds its last note to the bar's end, all
    together: no voice stops early or pads the bar with a rest (`x2`, the ragged ending a musician
    hears as a voice dropping out)."""
    voices = [read_bar(t, {}) for t in segments]
    ends = [max((e.onset + e.length for e in v if e.pitches), default=None) for v in voices]
    ended = [max((e.onset + e.length for e in v), default=Fraction(0)) for v in voices]
    return bool(voices) and None not in ends and len(set(ends)) == 1 and ends[0] == max(ended)


def bass_prepares(segments: list[str], key: dict[str, int], tonic: int) -> bool:
    """The bass of a bar before the last (its last voice's text) ends a fifth or a fourth above the
    tonic: a last bar that is one tonic chord, as this model mostly writes it, then closes a V-I or
    IV-I (final_cadence reads the approach from the bar before)."""
    bass = _lowest(read_bar(segments[-1], key)) if segments else []
    return bool(bass) and (bass[-1] - tonic) % 12 in (5, 7)


def _lowest(events: list[Event]) -> list[int]:
    """A voice's bass line: the lowest pitch of each note or chord, rests left out."""
    return [min(e.pitches) for e in events if e.pitches]


def cadence_ready(segments: list[str], key: dict[str, int], tonic: int) -> bool:
    """The upper voices of a last bar written so far (each voice's text) end on notes of the tonic's
    major or minor triad: a bass can still close it with a V-I or IV-I (final_cadence)."""
    voices = [read_bar(t, key) for t in segments]
    last = {p % 12 for v in voices for e in v[-1:] for p in e.pitches}
    return all(v and v[-1].pitches for v in voices) and any(
        last <= {tonic, (tonic + third) % 12, (tonic + 7) % 12} for third in (3, 4))


@dataclass(frozen=True)
class Critic:
    """The musical critic's verdict on a bar of several voices (bar rule "harmony"): a bar whose
    beats mostly (more than MAX_NO_CHORD of them) fit no triad or seventh, or that has a parallel
    fifth or octave between a voice pair (note against note, from the previous bar's last sound
    on), is written again. Bach's chorales pass 96% of their bars (2,238 of 2,333 in 150 of them
    have no parallels; 15 have more than half their beats off any chord)."""
    key: dict
    beat: Fraction
    bar: Fraction
    tonic: int | None = None  # the key's tonic (pitch class), which a last bar's chord is ready to close on
    MAX_NO_CHORD = 0.5
    MIN_FULL = 0.75  # a bar of four beats is thin with two full chords or fewer (10% of Bach's bars)
    # the grade's weights: full chords count twice, and an alto a third or sixth below the soprano
    # leaves the tenor and bass a chord to complete. On 20 chorales (seeds 0-19, K=8) they lifted
    # full-chord beats 0.70 -> 0.735, and soprano-alto thirds and sixths 0.37 -> 0.54 of beats
    # (Bach's: 0.51)
    FULL = 2.0
    THIRDS = 1.0

    def judge(self, segments: list[str], before: list[tuple[int, ...]] | None) -> tuple[bool, list[tuple[int, ...]] | None]:
        """-> (the bar passes, what sounds at its end: the next bar's `before`)."""
        h, clashes = self._read(segments, before)
        return self._passes(h, clashes), (h.moments[-1] if h.moments else before)

    def review(self, segments: list[str], before: list[tuple[int, ...]] | None) -> tuple[bool, bool, float]:
        """What a search ranks candidate bars by (engine.symbolic.search), from one reading: (the bar
        passes `judge`; it is thin: three voices or more sound a full chord on fewer than MIN_FULL of
        its beats, as 10% of Bach's chorale bars do; a graded verdict, lower is better: each parallel
        fifth or octave counts 1, then the shares of beats off any chord and of voice pairs crossing,
        less the share of beats sounding a full chord)."""
        h, clashes = self._read(segments, before)
        pairs = [crossings(m) for m in h.moments]
        crossed = sum(b for _, b in pairs) / max(1, sum(n for n, _ in pairs))
        thin = len(segments) >= 3 and h.full_share() < self.MIN_FULL
        thirds = h.thirds_share() if len(segments) == 2 else 0.0
        grade = clashes + h.no_chord_share() + crossed - self.FULL * h.full_share() - self.THIRDS * thirds
        return self._passes(h, clashes), thin, grade

    def _passes(self, h: BarHarmony, clashes: int) -> bool:
        return h.no_chord_share() <= self.MAX_NO_CHORD and clashes == 0

    def _read(self, segments: list[str], before: list[tuple[int, ...]] | None) -> tuple[BarHarmony, int]:
        h = bar_harmony(segments, self.key, self.beat, self.bar)
        moments = ([before] if before is not None else []) + h.moments
        return h, sum(parallels(a, b)[1] for a, b in zip(moments, moments[1:]))


def parallels(before: list[tuple[int, ...]], after: list[tuple[int, ...]]) -> tuple[int, int]:
    """Between two consecutive moments (what each voice sounds, BarHarmony.moments): (voice pairs
    that both move, of those the pairs moving in parallel fifths or octaves, note against note). A
    voice's lowest note stands for a chord."""
    moves = bad = 0
    lows = [(min(a) if a else None, min(b) if b else None) for a, b in zip(before, after)]
    for i in range(len(lows)):
        for j in range(i + 1, len(lows)):
            (a1, a2), (b1, b2) = lows[i], lows[j]
            if None in (a1, a2, b1, b2) or a1 == a2 or b1 == b2:
                continue
            moves += 1
            first, second = abs(a1 - b1) % 12, abs(a2 - b2) % 12
            if first == second and first in (0, 7) and (a2 - a1) * (b2 - b1) > 0:
                bad += 1
    return moves, bad


def crossings(now: list[tuple[int, ...]]) -> tuple[int, int]:
    """(voice pairs sounding, pairs where the upper voice, by number, is below the lower one)."""
    pairs = bad = 0
    lows = [max(p) if p else None for p in now]
    for i in range(len(lows)):
        for j in range(i + 1, len(lows)):
            if lows[i] is not None and lows[j] is not None:
                pairs += 1
                bad += lows[i] < lows[j]
    return pairs, bad
