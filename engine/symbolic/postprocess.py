"""From the model's text to a valid ABC file, and the bar-alignment check.

The model writes NotaGen's training format: prompt comment lines, header, then tune-body lines
`[r:i/j][V:1]...|[V:2]...|` holding one bar of every voice that plays (voices that only rest are
left out). Post-processing undoes that so any ABC reader sees every voice in every bar.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from abctoolkit.duration import calculate_bartext_duration

from engine import quiet
from engine.symbolic.patches import split_tunebody

R_MARKER = re.compile(r"^\[r:[^\]]*\]")
VOICE_SEGMENT = re.compile(r"\[V:(\d+)\](.*?)(?=\[V:|$)")
BARLINE = re.compile(r"(\|\|:|:\|\||\[\|:|:\|\]|\|\]:|:\[\||\|:|::|:\||\[\||\|\||\|\]|\|)")
OPENERS, CLOSERS = "({[", ")}]"
SECTION_END = re.compile(r"(:\||\|\]|\|\||::)\s*$")  # a bar that closes a section (or the piece) may be short
INLINE_KEY = re.compile(r"\[K:([^\]]*)\]")
# a model's slips (`:::|`, `::|`): music21 reads `:::|` as `::` and an empty bar, xml2abc writes that back
# as `:::`, and each trip through them reads it anew
COLON_RUNS = ((re.compile(r":+\|:+"), "::"), (re.compile(r":{2,}\|"), ":|"), (re.compile(r"\|:{2,}"), "|:"),
              (re.compile(r":{3,}"), "::"))
OPENING_END = re.compile(r"(:\|:|::|\|\|:|\|:)(?=\[V:|\s*$)")
CLOSED = {":|:": ":|", "::": ":|", "||:": "||", "|:": "|"}  # a repeat opened after the last bar: nothing to repeat


@dataclass
class Alignment:
    aligned: int  # tune-body lines whose voices all last the same
    total: int  # tune-body lines checked
    misaligned_lines: list[int] = field(default_factory=list)  # 1-based tune-body line numbers

    @property
    def ratio(self) -> float:
        return self.aligned / self.total if self.total else 1.0

    def __str__(self) -> str:
        return f"{self.aligned}/{self.total} bars aligned"


@dataclass
class AbcResult:
    abc: str  # a complete ABC file: X:1, header, every voice in every bar
    alignment: Alignment
    warnings: list[str] = field(default_factory=list)


def bar_duration(text: str) -> Fraction | None:
    """Length of one bar's notes in units of L; None when the text cannot be measured."""
    try:
        with quiet.captured():  # abctoolkit prints its parse failures
            return Fraction(calculate_bartext_duration(text))
    except Exception:  # abctoolkit raises bare Exceptions on notation it cannot measure
        return None


def split_right_barline(bartext: str) -> tuple[str, str]:
    """('notes', 'closing barline and anything after it')."""
    parts = BARLINE.split(bartext)
    if len(parts) < 3:
        return bartext, ""
    right = "".join(parts[-2:])
    return bartext[: len(bartext) - len(right)], right


def settled_barlines(body: list[str]) -> list[str]:
    """Tune-body lines whose barlines read the same after any number of round trips through MusicXML:
    runs of colons are `:|`, `|:` or `::`, and the last line's barlines open no repeat (`::` -> `:|`,
    `|:` -> `|`).
    A rewrite keeps the bars around its passage through such a trip, and `:::|` came back as `:::`,
    then `::`, then `:|`: a kept bar that changed."""
    out = []
    for i, line in enumerate(body):
        text = line
        for run, settled in COLON_RUNS:
            text = run.sub(settled, text)
        if i == len(body) - 1:
            text = OPENING_END.sub(lambda m: CLOSED[m.group(1)], text)
        out.append(text)
    return out


def voice_groups(metadata: list[str]) -> tuple[list[str], set[str]]:
    """All voice ids in number order, and those that rest with x (later voices of a %%score group)."""
    groups: list[list[str]] = []
    voices: list[str] = []
    for line in metadata:
        if line.startswith("%%score"):
            groups += [g.split() for g in re.findall(r"\((.*?)\)", line)]
    grouped = {v for g in groups for v in g}
    for line in metadata:
        m = re.match(r"V:\s*(\d+)", line)
        if m and m.group(1) not in voices:
            voices.append(m.group(1))
            if m.group(1) not in grouped:
                groups.append([m.group(1)])
    x_voices = {v for g in groups for v in g[1:]}
    return sorted(voices, key=int), x_voices


def close_brackets(line: str) -> str:
    """Closes the brackets a cut-short %%score line leaves open, innermost first."""
    stack = []
    for c in line.rstrip("\n"):
        if c in OPENERS:
            stack.append(CLOSERS[OPENERS.index(c)])
        elif c in CLOSERS and stack and stack[-1] == c:
            stack.pop()
    return line.rstrip("\n") + "".join(f" {c}" for c in reversed(stack)) + "\n"


def line_segments(line: str) -> dict[str, str]:
    return {v: text for v, text in VOICE_SEGMENT.findall(R_MARKER.sub("", line.rstrip("\n")))}


def count_voices(metadata: list[str]) -> int:
    """Voices a header declares (V: lines); a header with none is one voice."""
    return len([ln for ln in metadata if ln.startswith("V:")]) or 1


def voice_ids(metadata: list[str]) -> list[str]:
    """The ids of the voices a header declares (V:1 treble ... -> "1"), in its order."""
    return [ln[2:].split()[0] for ln in metadata if ln.startswith("V:") and ln[2:].split()]


def bar_well_formed(text: str) -> bool:
    """Chords [..], grace notes {..} and quoted annotations ".." open and close inside one bar of
    one voice (slurs may cross bars, so parentheses are not checked), and no accidental is more than
    double (the model can write ^^^F, which no reader takes as written: MusicXML made it ^^F)."""
    if text.count('"') % 2:
        return False
    depth = {"[": 0, "{": 0}
    closer = {"]": "[", "}": "{"}
    # annotations and decorations may hold anything; |] and [| are barlines, not chord brackets
    music = re.sub(r'"[^"]*"|![^!]*!|\|\]|\[\|', "", text)
    if re.search(r"\^{3}|_{3}", music):
        return False
    for c in music:
        if c in depth:
            depth[c] += 1
        elif c in closer:
            depth[closer[c]] -= 1
            if depth[closer[c]] < 0:
                return False
    return not any(depth.values())


def header_field(metadata: list[str], name: str) -> str | None:
    """The value of the header's first `name:` line (M, L, K ...), stripped."""
    return next((ln[len(name) + 1:].strip() for ln in metadata if ln.startswith(name + ":")), None)


def metre_bar(metadata: list[str]) -> Fraction | None:
    """A full bar in units of L, from the header's M: and L: (M:C is 4/4, M:C| 2/2; L defaults to
    1/8 as in NotaGen's data); None for free metre or a metre that cannot be read."""
    m, unit = header_field(metadata, "M"), header_field(metadata, "L") or "1/8"
    m = {"C": "4/4", "C|": "2/2"}.get(m or "", m or "")
    try:
        return Fraction(m) / Fraction(unit) if re.fullmatch(r"\d+/\d+", m) and re.fullmatch(r"\d+/\d+", unit) else None
    except (ValueError, ZeroDivisionError):
        return None


def closes_section(line: str) -> bool:
    """Every voice of the line ends with a section's or the piece's closing barline (:| |] || ::)."""
    segments = line_segments(line)
    return bool(segments) and all(SECTION_END.search(t) for t in segments.values())


def line_bars(line: str) -> list[Fraction | None]:
    """The lengths of a tune-body line's bars, in units of L, from its first voice (line_aligned
    says whether the others agree)."""
    segments = list(line_segments(line).values())
    if not segments:
        return [None]
    return [bar_duration(b) for b in BARLINE.split(segments[0]) if b and not BARLINE.fullmatch(b)] or [None]


def starts_with_pickup(body_lines: list[str], bar: Fraction | None, unit: Fraction = Fraction(1, 8)) -> bool:
    """Whether the first tune-body line is a pickup: one bar, shorter than the metre's (a
    printed score numbers it bar 0). `unit` is the header's L, for a metre changed in that line."""
    if not body_lines:
        return False
    bar = inline_metre(body_lines[0], unit) or bar
    lengths = [d for d in line_bars(body_lines[0]) if d != 0]
    return bar is not None and len(lengths) == 1 and lengths[0] is not None and 0 < lengths[0] < bar


ENDING = re.compile(r"(?:\||\[)[1-9]")  # a first or second ending starts: |1 :|2 [1
FERMATA = re.compile(r"!fermata!|\bH(?=[_=^]*[A-Ga-gz])")  # !fermata! or H, the short form


def split_point(line: str) -> bool:
    """A line after which a bar may be split in two (its rest in the next line): it closes a section
    (a repeat or double bar mid-bar) or it holds a fermata (Bach's phrases end mid-bar)."""
    return closes_section(line) or FERMATA.search(line) is not None or ENDING.search(line) is not None


INLINE_METRE = re.compile(r"\[M:\s*([^\]]*)\]")


def inline_metre(line: str, unit: Fraction) -> Fraction | None:
    """The bar of a metre the line changes to ([M:3/4]), in units of L; None when it changes none
    (or to one that cannot be read: free metre)."""
    found = INLINE_METRE.findall(line)
    return metre_bar([f"M:{found[-1]}\n", f"L:{unit}\n"]) if found else None


def bar_fits(body_lines: list[str], bar: Fraction | None, unit: Fraction = Fraction(1, 8)) -> list[bool]:
    """Whether each tune-body line's bars fill the metre, as music21 would count a measure full,
    except where a composer would not: the first bar (a pickup), the last bar, a bar after a
    section closes (the next section's pickup) and a bar split in two at a fermata, a repeat or an
    ending (both halves; they must make one bar exactly). A metre changed inline ([M:3/4]) holds
    from its line on; the line that changes it may be short (the change is often mid-bar)."""
    bars = []  # the metre's bar at each line
    for ln in body_lines:
        changed = inline_metre(ln, unit) if "[M:" in ln else None
        bar = changed if changed is not None else (None if "[M:" in ln else bar)
        bars.append(bar)
    # an ending's number after the line's last barline ("|1") reads as a bar of length 0: not a bar
    lines = [[d for d in line_bars(ln) if d != 0] or [Fraction(0)] for ln in body_lines]
    fits = [b is None or all(d is not None and d == b for d in ds) for ds, b in zip(lines, bars)]
    for n, ds in enumerate(lines):
        bar = bars[n]
        if fits[n] or None in ds:
            continue
        if "[M:" in body_lines[n]:
            fits[n] = all(d <= bar for d in ds)
            continue
        short = all(d <= bar for d in ds) and len(ds) == 1
        if not short:
            continue
        if n == 0 or n == len(lines) - 1 or closes_section(body_lines[n - 1]) or closes_section(body_lines[n]):
            fits[n] = True  # a pickup, the final bar, a section's last bar or the next one's pickup
        elif split_point(body_lines[n]) and n + 1 < len(lines) and None not in lines[n + 1] \
                and ds[0] + lines[n + 1][0] == bar and all(d == bar for d in lines[n + 1][1:]):
            fits[n] = fits[n + 1] = True  # one bar split at a fermata: both halves
    return fits


@dataclass(frozen=True)
class Metre:
    """Where a piece stands in its metre after a line: `open` is the part of a bar still to come
    (a bar split across two lines, as at Bach's mid-bar fermatas); `fresh` says the next line may
    be a pickup (the first line, or after a section closes)."""
    bar: Fraction | None  # a full bar in units of L (None: free metre, nothing is checked)
    open: Fraction = Fraction(0)
    fresh: bool = True
    unit: Fraction = Fraction(1, 8)  # the header's L, to read a metre changed inline

    def after(self, line: str) -> "Metre | None":
        """The state after `line`, or None when its bars do not fill the metre, as bar_fits counts
        them: every bar is a full bar except a pickup (the first bar, or the first after a section
        closes), a section's closing bar, and a bar split at a fermata, repeat or ending, whose
        rest must be the next bar exactly. A short bar anywhere else is refused (the rule used to
        let it pass and blame the bar after it). A line with its own [M:] starts the new metre
        (that line is not checked: the change is often mid-bar)."""
        if "[M:" in line:
            return Metre(inline_metre(line, self.unit), Fraction(0), True, self.unit)
        if self.bar is None:
            return self
        state = self
        for d in [d for d in line_bars(line) if d != 0] or [Fraction(0)]:  # "|1": an ending's number
            state = state._bar(d, line)
            if state is None:
                return None
        if closes_section(line):
            return Metre(self.bar, Fraction(0), True, self.unit)
        return state

    def _bar(self, d: Fraction | None, line: str) -> "Metre | None":
        bar = self.bar
        if d is None or d > bar:
            return None
        if self.open:  # the rest of a split bar: exactly what was left
            return Metre(bar, Fraction(0), False, self.unit) if d == self.open else None
        if d == bar or self.fresh:
            return Metre(bar, Fraction(0), False, self.unit)
        if closes_section(line) or split_point(line):
            return Metre(bar, bar - d, False, self.unit)
        return None


def line_aligned(line: str) -> bool:
    """True when every voice of a tune-body line lasts as long as the others, bar by bar."""
    per_voice = []
    for text in line_segments(line).values():
        bars = [b for b in BARLINE.split(text) if b and not BARLINE.fullmatch(b)]
        per_voice.append([bar_duration(b) for b in bars])
    return bool(per_voice) and all(None not in d for d in per_voice) and all(d == per_voice[0] for d in per_voice)


def check_alignment(body_lines: list[str], bar: Fraction | None = None, unit: Fraction = Fraction(1, 8)) -> Alignment:
    """Every voice of a line must last as long as the others (bar by bar) and, given the metre's
    bar, fill the metre as bar_fits counts it (what the page reports as bars that fit)."""
    aligned, bad = 0, []
    for n, (line, fits) in enumerate(zip(body_lines, bar_fits(body_lines, bar, unit)), 1):
        if fits and line_aligned(line):
            aligned += 1
        else:
            bad.append(n)
    return Alignment(aligned, len(body_lines), bad)


def header_unit(metadata: list[str]) -> Fraction:
    """The header's L: (NotaGen's data: 1/8 throughout)."""
    unit = header_field(metadata, "L") or "1/8"
    return Fraction(unit) if re.fullmatch(r"\d+/\d+", unit) and unit[0] != "0" else Fraction(1, 8)


def normalise_inline_keys(body: list[str]) -> tuple[list[str], int]:
    """An inline key ([K:F]) that only some voices of a line take, or that voices disagree on, is
    not a modulation: the printed page would show one key while the part plays another (verovio
    draws a part's first key only). Such keys are taken out (the header's key holds); a key every
    voice changes to at the same bar stays. -> (lines, lines changed)."""
    out, changed = [], 0
    for line in body:
        segments = line_segments(line)
        keys = {v: tuple(INLINE_KEY.findall(t)) for v, t in segments.items()}
        if any(keys.values()) and (not all(keys.values()) or len(set(keys.values())) > 1):
            line = INLINE_KEY.sub("", line)
            changed += 1
        out.append(line)
    return out, changed


def restore_voices(metadata: list[str], body: list[str]) -> list[str]:
    """Puts back the voices a line leaves out, as a rest as long as the line's usual bar."""
    voices, x_voices = voice_groups(metadata)
    out, ref_dur = [], None
    for i, line in enumerate(body):
        line = R_MARKER.sub("", line.rstrip("\n"))
        segments = line_segments(line)
        durations = Counter()
        right = "|"
        for text in segments.values():
            notes, right = split_right_barline(text)
            d = bar_duration(notes)
            if d is not None:
                durations[d] += 1
        if durations:
            ref_dur = durations.most_common(1)[0][0]
        left = line.split("[V:")[0] if i == 0 else ""
        parts = []
        for v in voices or list(segments):
            if v in segments:
                parts.append(f"[V:{v}]{segments[v]}")
            elif ref_dur is not None:
                rest = "x" if v in x_voices else "z"
                parts.append(f"[V:{v}]{left}{rest}{ref_dur}{right or '|'}")
        out.append("".join(parts) + "\n")
    return out


TEMPO = re.compile(r'^Q:\s*(?:"[^"]*"\s*)?(?:(\d+)/(\d+)\s*=\s*)?(\d+)\s*(?:"[^"]*")?\s*$')  # Q:"Allegro" 1/4=120
TEMPO_RANGE = (20, 300)  # quarter notes a minute: from a slow grave to a fast presto
UNITS = {1, 2, 4, 8, 16, 32, 64}  # L:1/n a note value can be
METRE = re.compile(r"^M:\s*(?:C\|?|none|(\d+)/(\d+))\s*$")


def sane_header(header: list[str]) -> tuple[list[str], list[str]]:
    """Header values a player can play, as the model may write garbage there (a jig came out with
    `Q:3/8=10]`: a 10-minute WAV for 32 bars): a tempo that cannot be read goes (the player's
    default), one outside 20-300 quarter notes a minute is clamped; a unit length that is not 1/n of
    a note value becomes NotaGen's 1/8; a metre that cannot be read goes (free metre). -> (lines,
    what was changed, in words)."""
    out, notes = [], []
    for line in header:
        text = line.rstrip("\n")
        if text.startswith("Q:"):
            m = TEMPO.match(text)
            if m is None:
                notes.append(f"the tempo {text[2:].strip()!r} could not be read: left out (the player's default)")
                continue
            beat = Fraction(int(m.group(1)), int(m.group(2))) if m.group(1) and int(m.group(2)) else Fraction(1, 4)
            quarters = int(m.group(3)) * beat * 4
            low, high = TEMPO_RANGE
            if not low <= quarters <= high:
                bpm = max(low, min(high, quarters))
                notes.append(f"the tempo {text[2:].strip()} ({float(quarters):.0f} quarter notes a minute) is out of "
                             f"range: {float(bpm):.0f} used")
                line = f"Q:1/4={round(bpm)}\n"
        elif text.startswith("L:"):
            m = re.match(r"^L:\s*1/(\d+)\s*$", text)
            if m is None or int(m.group(1)) not in UNITS:
                notes.append(f"the unit length {text[2:].strip()!r} is not a note value: NotaGen's 1/8 used")
                line = "L:1/8\n"
        elif text.startswith("M:"):
            m = METRE.match(text)
            if m is None or (m.group(1) and (not 1 <= int(m.group(1)) <= 32 or int(m.group(2)) not in UNITS)):
                notes.append(f"the metre {text[2:].strip()!r} could not be read: left out (free metre)")
                continue
        out.append(line)
    return out, notes


def to_abc(text: str) -> AbcResult:
    """The model's text -> ABC file. An unfinished last line (a piece cut short) is left out."""
    metadata, body = split_tunebody(text)
    warnings = []
    if body and not body[-1].endswith("\n"):
        body = body[:-1]
        warnings.append("the last bar was unfinished and is left out of the ABC")
    header = [ln if ln.endswith("\n") else ln + "\n" for ln in metadata if not (ln.startswith("%") and not ln.startswith("%%"))]
    header = [close_brackets(ln) if ln.startswith("%%score") else ln for ln in header]
    header = [ln for ln in header if not ln.startswith("X:")]
    header, changed = sane_header(header)
    warnings += changed
    # NotaGen's format always has L:1/8 and a key; a small or unlucky model may leave them out.
    if not any(ln.startswith("L:") for ln in header):
        header.insert(0, "L:1/8\n")
        warnings.append("the model wrote no unit length (L:); NotaGen's L:1/8 assumed")
    if body and not any(ln.startswith("K:") for ln in header):
        last_field = max((i for i, ln in enumerate(header) if re.match(r"[A-Z]:", ln) and not ln.startswith("V:")), default=-1)
        header.insert(last_field + 1, "K:C\n")
        warnings.append("the model wrote no key (K:); C major assumed")
    if not body:
        warnings.append("the piece has no complete bar")
    body, rekeyed = normalise_inline_keys(settled_barlines(body))
    if rekeyed:
        warnings.append(f"{rekeyed} bar(s) changed key in some voices only: the header's key kept there")
    alignment = check_alignment(body, metre_bar(header), header_unit(header))
    restored = restore_voices(metadata, body)
    return AbcResult("X:1\n" + "".join(header) + "".join(restored), alignment, warnings)
