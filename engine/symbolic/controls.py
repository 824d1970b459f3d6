"""Musical controls: the piece's length in bars, its key, metre and tempo (issue 17).

NotaGen's format makes them cheap to hold to. Every tune-body line starts with `[r:i/j]` (line i,
j lines still to come), so a length in bars is a marker forced at the start of every line and an
end forced after the last; `K:`, `M:` and `Q:` are header lines the model writes, so a requested
one replaces the model's when it is finished (or goes in before the first `V:` line when the
model leaves it out). Everything else is the model's: the music follows the forced lines because
they enter its context like any other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.checks import said, whole
from engine.errors import SettingsError
from engine.symbolic.harmony import FIFTHS, MODES as MODE_FIFTHS
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import R_MARKER, header_field

MAX_BARS = 512  # a bar of four voices is several patches; more would not fit max_patches
MODES = {  # accepted spellings -> ABC's
    "": "", "maj": "", "major": "", "ion": "", "ionian": "",
    "m": "m", "min": "m", "minor": "m", "aeo": "aeo", "aeolian": "aeo",
    "dor": "dor", "dorian": "dor", "phr": "phr", "phrygian": "phr", "lyd": "lyd", "lydian": "lyd",
    "mix": "mix", "mixolydian": "mix", "loc": "loc", "locrian": "loc",
}
KEY = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*([A-Za-z]*)\s*$")
METER = re.compile(r"^\s*(\d{1,2})\s*/\s*(\d{1,2})\s*$")
NOTE_VALUES = (1, 2, 4, 8, 16, 32)
UNIT = re.compile(r"^1/(1|2|4|8|16|32|64)$")


def check_key(value: str) -> str:
    """'D', 'Bb', 'F#m', 'Dmin', 'Eb dorian' -> ABC's K: value ('D', 'Bb', 'F#m', 'Dm', 'Ebdor')."""
    m = KEY.match(value) if isinstance(value, str) else None
    mode = MODES.get(m.group(3).lower()) if m else None
    if m is None or mode is None:
        raise SettingsError(f"key must be a note A-G, optionally # or b, then a mode (major, minor or m, dorian, "
                            f"phrygian, lydian, mixolydian, aeolian, locrian), e.g. D, Bb, F#m, Eb dorian; got {said(value)}")
    tonic, acc = m.group(1).upper(), m.group(2).replace("♯", "#").replace("♭", "b")
    if abs(FIFTHS[tonic] + {"#": 7, "b": -7, "": 0}[acc] + MODE_FIFTHS.get(mode or "maj", 0)) > 7:
        raise SettingsError(f"key {said(value)} needs more than seven sharps or flats: write it enharmonically "
                            f"(G# major is Ab major)")
    return tonic + acc + mode


def check_meter(value: str) -> str:
    """'3/4', '6/8', 'C' (4/4), 'C|' (2/2) -> ABC's M: value."""
    if isinstance(value, str) and value.strip() in ("C", "C|"):
        return value.strip()
    m = METER.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) not in NOTE_VALUES:
        raise SettingsError(f"metre must be beats/note value with the note value one of {', '.join(map(str, NOTE_VALUES))} "
                            f"(3/4, 6/8, 2/2), or C or C|; got {said(value)}")
    return f"{int(m.group(1))}/{int(m.group(2))}"


@dataclass(frozen=True)
class Controls:
    """What the composer fixes; None leaves it to the model."""
    bars: int | None = None  # tune-body lines (bars of every voice) the piece has
    key: str | None = None  # an ABC key (D, Bb, F#m, Ebdor)
    meter: str | None = None  # 3/4, 6/8, C, C|
    tempo: int | None = None  # quarter notes per minute
    # the note length unit (L:) the header must declare: a harmonised melody's notes are written in
    # its unit (engine.api.harmonise_request), not set by the composer
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.bars is not None:
            object.__setattr__(self, "bars", whole(self.bars, "length (bars)", 1, MAX_BARS))
        if self.key is not None:
            object.__setattr__(self, "key", check_key(self.key))
        if self.meter is not None:
            object.__setattr__(self, "meter", check_meter(self.meter))
        if self.tempo is not None:
            object.__setattr__(self, "tempo", whole(self.tempo, "tempo (quarter notes per minute)", 20, 400))
        if self.unit is not None and (not isinstance(self.unit, str) or not UNIT.match(self.unit)):
            raise SettingsError(f"the note length unit must be 1/1 to 1/64 (as ABC's L: field), got {said(self.unit)}")

    @classmethod
    def from_page(cls, bars=None, key=None, meter=None, tempo=None) -> "Controls":
        """The page's and API's spelling: an empty box (None, '', 0) leaves it to the model."""
        blank = lambda v: v is None or (isinstance(v, str) and not v.strip()) or (  # noqa: E731
            isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)
        return cls(*(None if blank(v) else v for v in (bars, key, meter, tempo)))

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.bars, self.key, self.meter, self.tempo, self.unit))

    def fields(self) -> dict[str, str]:
        """The header lines asked for, by field letter: {'K': 'K:D\\n', ...}."""
        out = {}
        if self.tempo is not None:
            out["Q"] = f"Q:1/4={self.tempo}\n"
        if self.unit is not None:
            out["L"] = f"L:{self.unit}\n"
        if self.meter is not None:
            out["M"] = f"M:{self.meter}\n"
        if self.key is not None:
            out["K"] = f"K:{self.key}\n"
        return out

    def to_dict(self) -> dict:
        return {k: v for k, v in (("bars", self.bars), ("key", self.key), ("meter", self.meter),
                                  ("tempo", self.tempo), ("unit", self.unit)) if v is not None}


def marker(index: int, bars: int) -> str:
    """The `[r:i/j]` that starts line `index` of a piece of `bars` lines."""
    return f"[r:{index}/{bars - 1 - index}]"


def header_edit(line: str, header: list[str], controls: Controls) -> str | None:
    """The text that replaces a header line the model just finished, or None to keep it: a K:/M:/Q:
    line becomes the requested one; the first V: line gets the requested fields the header has
    not written before it (they would come too late after it)."""
    wanted = controls.fields()
    field = line.split(":", 1)[0] if re.match(r"^[A-Za-z]:", line) else None
    if field in wanted:
        return wanted[field] if line != wanted[field] else None
    if field == "V" and not any(h.startswith("V:") for h in header):
        have = {h.split(":", 1)[0] for h in header if re.match(r"^[A-Za-z]:", h)}
        missing = [text for f, text in wanted.items() if f not in have]
        return "".join(missing) + line if missing else None
    return None


def fit_prefix(prefix: str, controls: Controls) -> str:
    """A score to continue under the composer's controls. Its lines are renumbered to the length
    asked (which must be longer than the score); a header without notes yet takes the key, metre and
    tempo asked; a score with notes keeps its key and metre (a different one is refused: its notes
    would be read in the new key) and takes the tempo asked."""
    if not prefix or not controls:
        return prefix
    meta, body = split_tunebody(prefix)
    if body:
        for f, name, asked in (("K", "key", controls.key), ("M", "metre", controls.meter)):
            have = header_field(meta, f)
            if asked and have is not None and _same(f, have) != asked:
                raise SettingsError(f"the score being continued is in {name} {have}; to continue it in {asked}, "
                                    f"{'transpose it first' if f == 'K' else 'start a new piece'}, "
                                    f"or leave the {name} empty to keep {have}")
    header_controls = Controls(tempo=controls.tempo) if body else controls  # notes written: the tempo only
    edited: list[str] = []
    for line in meta:
        new = header_edit(line, edited, header_controls)
        edited += (new or line).splitlines(keepends=True)
    if controls.bars is not None and body:
        done = sum(ln.endswith("\n") for ln in body)
        if controls.bars <= done:
            raise SettingsError(f"the score already has {done} bars: ask for more than {done} bars to continue it "
                                f"(the length counts the whole piece)")
        body = [R_MARKER.sub(marker(i, controls.bars), ln, count=1) for i, ln in enumerate(body)]
    return "".join(edited + body)


def _same(field: str, value: str) -> str:
    """A header's K:/M: value in the form the controls write (K:Gmin -> Gm), else as it is."""
    try:
        return check_key(value) if field == "K" else check_meter(value)
    except SettingsError:
        return value
