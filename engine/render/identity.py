"""A generated piece's identity in its own ABC: a title (T:), a composer and period line (C:) and
part names (nm=, snm=) from the prompt it was written for. The model writes none of these (its
training data has no titles, and folk melodies have unnamed voices), so without them the page has
no title and an unnamed melody plays on the default piano. Lines the ABC already has are kept:
they are the user's.

The part names are chosen so that engine.symbolic.instruments.gm_program, the one place where
names become General MIDI programs, gives each part a fitting sound (a fiddle for an Irish tune,
voices for a chorale)."""
from __future__ import annotations

import re

from engine.symbolic.postprocess import voice_groups

# What a piece of each NotaGen instrumentation label is called in its title.
PIECE_NOUNS = {"Choral": "Chorale", "Vocal-Orchestral": "Piece for voices and orchestra", "Art Song": "Song",
               "Keyboard": "Keyboard piece", "Chamber": "Chamber piece", "Orchestral": "Orchestral piece",
               "Melody": "Melody"}
SATB = ("Soprano", "Alto", "Tenor", "Bass")
FIDDLE_TRADITIONS = ("irish", "scottish")  # traditions whose melodies are fiddle tunes
EARLY_PERIODS = ("medieval", "renaissance")  # a melody of these periods is played on a recorder
SHORT_NAMES = {"Soprano": "S.", "Alto": "A.", "Tenor": "T.", "Bass": "B.", "Choir": "Ch.", "Voice": "V.",
               "Fiddle": "Fdl.", "Flute": "Fl.", "Recorder": "Rec.", "Piano": "Pno."}
FIELD = re.compile(r"^([A-Za-z]:|%)")  # header lines: fields and comments (%%score, %%MIDI ...)
NAME = re.compile(r'\bnm="([^"]*)"')


def with_identity(abc: str, prompt: dict | None) -> str:
    """The ABC with a T: and a C: line from `prompt` ({"period", "composer", "instrumentation"},
    as in a piece's manifest) where it has none, and a name for every part that has none."""
    prompt = prompt or {}
    composer, instrumentation = prompt.get("composer") or "", prompt.get("instrumentation") or ""
    if not composer and not instrumentation:
        return abc
    header, body = _split(abc)
    header = _name_parts(header, prompt)
    titles = [f"{f}:{text}\n" for f, text in (("T", title(prompt)), ("C", composer_line(prompt)))
              if text and not any(ln.startswith(f + ":") for ln in header)]
    # after X: and any title: T: first, then C:
    at = max((i + 1 for i, ln in enumerate(header) if ln.startswith(("X:", "T:"))), default=0)
    return "".join(header[:at] + titles + header[at:] + body)


# --- the identity a score carries in its own header ----------------------------------------------
# One rule: the title printed on a piece's pages is the title History lists. A score's own T: and
# C: lines also tell whether text in the page is still the open piece or another score pasted over it.

def heading(abc: str) -> tuple[str | None, str | None]:
    """The texts of a score's first T: and C: lines (None where it has none)."""
    header = _header(abc)
    found = [next((ln[2:].strip() for ln in header if ln.startswith(f + ":")), None) for f in "TC"]
    return found[0] or None, found[1] or None


def retitled(abc: str, new_title: str) -> str:
    """The ABC with `new_title` as its title: its first T: line replaced (or one put after X:), and
    later T: lines that repeated the old title dropped (a subtitle of its own stays)."""
    header, body = _split(abc)
    old, _ = heading(abc)
    line = f"T:{new_title.strip()}\n"
    first = next((i for i, ln in enumerate(header) if ln.startswith("T:")), None)
    if first is None:
        at = next((i + 1 for i, ln in enumerate(header) if ln.startswith("X:")), 0)
        return "".join(header[:at] + [line] + header[at:] + body)
    rest = [ln for ln in header[first + 1:] if not (ln.startswith("T:") and ln[2:].strip() in (old, new_title.strip()))]
    return "".join(header[:first] + [line] + rest + body)


def tidy_titles(abc: str) -> str:
    """A converted score's header without what the converters add: a T: line repeating an earlier
    one (MusicXML's work and movement titles are often the same) and music21's placeholder
    composer ("C:Music21")."""
    header, body = _split(abc)
    seen, kept = set(), []
    for ln in header:
        text = ln[2:].strip()
        if (ln.startswith("T:") and text in seen) or (ln.startswith("C:") and text == "Music21"):
            continue
        if ln.startswith("T:"):
            seen.add(text)
        kept.append(ln)
    return "".join(kept + body)


def of_edit(text: str, opened: tuple[str | None, str | None], title: str | None,
            prompt: dict | None) -> tuple[str | None, dict | None]:
    """(title, prompt) for a score in the page's editor when the piece `title`, written for `prompt`,
    with `opened` as its heading() was open. Its title line as it was: still that piece. Its title
    line changed under the same composer line: that piece renamed. Anything else (a tune pasted over
    it, with its own title or none) is a score of its own: its own title, no style."""
    t, c = heading(text)
    if t == opened[0] and (t or c == opened[1]):
        return title, prompt
    if c and c == opened[1]:
        return t or title, prompt
    return t, None


def with_part_names(abc: str, source: str) -> str:
    """The part names (nm=, snm=) of `source`'s voices on the same voices of `abc` where it has
    none: a continued or rewritten score keeps what its parts were called (a flute stays a flute
    whatever the style it was continued in)."""
    names = {}
    for ln in _header(source):
        m = re.match(r"V:\s*(\d+)", ln)
        if m and NAME.search(ln) and NAME.search(ln).group(1).strip():
            names.setdefault(m.group(1), re.findall(r'\s*\bs?nm="[^"]*"', ln))
    header = _header(abc)
    if not names:
        return abc
    out, declared = [], set()
    for ln in header:  # a voice's first V: line declares it; a later one starts its music
        m = re.match(r"V:\s*(\d+)", ln)
        named = NAME.search(ln)
        first = m is not None and m.group(1) not in declared
        if m:
            declared.add(m.group(1))
        if first and m.group(1) in names and not (named and named.group(1).strip()):
            bare = re.sub(r'\s*\bs?nm="[^"]*"', "", ln.rstrip("\n")).rstrip()
            ln = bare + "".join(names[m.group(1)]) + "\n"
        out.append(ln)
    return "".join(out) + abc[len("".join(header)):]


def _split(abc: str) -> tuple[list[str], list[str]]:
    """(header lines, the rest): the header ends at the first line that is no field or comment."""
    lines = abc.splitlines(keepends=True)
    end = next((i for i, ln in enumerate(lines) if not FIELD.match(ln)), len(lines))
    return lines[:end], lines[end:]


def _header(abc: str) -> list[str]:
    return _split(abc)[0]


def title(prompt: dict) -> str:
    """'Chorale in the style of Bach', 'Irish melody'."""
    composer, instrumentation = prompt.get("composer") or "", prompt.get("instrumentation") or ""
    noun = PIECE_NOUNS.get(instrumentation, instrumentation or "Piece")
    surname, given = _name_parts_of(composer)
    if surname.lower() == "traditional":
        return f"{given} {noun.lower()}" if given and given.lower() != "various" else f"Traditional {noun.lower()}"
    return f"{noun} in the style of {surname}" if surname else noun


def composer_line(prompt: dict) -> str:
    """'after Johann Sebastian Bach (Baroque)', 'Traditional, Irish (Folk)': the model wrote the
    piece, in the manner of the composer it was asked for."""
    composer, period = prompt.get("composer") or "", prompt.get("period") or ""
    surname, given = _name_parts_of(composer)
    if not surname:
        who = ""
    elif surname.lower() == "traditional":
        who = composer
    else:
        who = f"after {given} {surname}" if given and given.lower() != "various" else f"after {surname}"
    return f"{who} ({period})" if who and period else who or period


def _name_parts_of(composer: str) -> tuple[str, str]:
    """'Bach, Johann Sebastian' -> ('Bach', 'Johann Sebastian'), as NotaGen's prompts write names."""
    surname, _, given = composer.partition(",")
    return surname.strip(), given.strip()


def part_names(prompt: dict, count: int) -> list[str]:
    """Names for `count` unnamed parts of a piece written for `prompt`; [] when the label says
    nothing of the instruments (Chamber, Orchestral: any players)."""
    label, composer = prompt.get("instrumentation") or "", (prompt.get("composer") or "").lower()
    if label == "Choral":
        return list(SATB) if count == 4 else ["Choir"] if count == 1 else [f"Voice {i}" for i in range(1, count + 1)]
    if label == "Art Song":
        return ["Voice"] + _numbered("Piano", count - 1)
    if label == "Keyboard":
        return _numbered("Piano", count)
    if label == "Melody":
        if any(t in composer for t in FIDDLE_TRADITIONS):
            return _numbered("Fiddle", count)
        if (prompt.get("period") or "").lower() in EARLY_PERIODS:
            return _numbered("Recorder", count)
        return _numbered("Flute", count)
    return []


def _numbered(name: str, count: int) -> list[str]:
    return [name if i == 1 else f"{name} {i}" for i in range(1, count + 1)]


def _name_parts(header: list[str], prompt: dict) -> list[str]:
    """nm= (and snm=) on the V: lines of unnamed parts. A voice sharing a staff with an earlier
    one (the later voices of a %%score group in parentheses) is no part of its own: left as is."""
    voices, same_staff = voice_groups(header)
    parts = [v for v in voices if v not in same_staff]
    names = dict(zip(parts, part_names(prompt, len(parts))))
    out = []
    for line in header:
        m = re.match(r"V:\s*(\d+)", line)
        named = NAME.search(line)
        if m and m.group(1) in names and not (named and named.group(1).strip()):
            line = _named(line, names[m.group(1)])
        out.append(line)
    return out


def _named(v_line: str, name: str) -> str:
    short = SHORT_NAMES.get(name.split(" ")[0], "")
    bare = re.sub(r'\s*\bs?nm="[^"]*"', "", v_line.rstrip("\n")).rstrip()
    return f'{bare} nm="{name}"' + (f' snm="{short}"' if short else "") + "\n"
