"""Scores -> the text NotaGen trains on and generates (the model's format).

MusicXML -> ABC with abctoolkit's xml2abc (`-d 8 -x`: unified L:1/8, no line breaks), then:
titles, composer fields, lyrics and other text removed, bar-number comments removed, voices
interleaved bar by bar (`[V:1]...|[V:2]...|`, abctoolkit's rotate_abc), voices that only rest in a
line left out, each tune-body line prefixed with `[r:i/j]` (line index / lines remaining).
"""
from __future__ import annotations

import re
from pathlib import Path

from engine import quiet
from engine.errors import CadenzaError
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import line_segments, settled_barlines, split_right_barline

DROPPED_FIELDS = ["X:", "T:", "C:", "W:", "w:", "Z:", "N:", "S:", "H:", "A:", "O:", "B:", "D:", "F:", "G:", "R:", "%%MIDI"]
REST_ONLY = re.compile(r"^\s*(?:[zx][\d/]*\s*)+$")


def musicxml_to_abc(path: str | Path, timeout: float = 60.0) -> str:
    """A .musicxml/.xml/.mxl file -> per-voice ABC (abctoolkit's xml2abc with -d 8 -x)."""
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if not n.startswith("META") and n.lower().endswith((".xml", ".musicxml"))), None)
            if name is None:
                raise CadenzaError(f"{path.name} holds no MusicXML score")
            data = z.read(name)
    else:
        data = path.read_bytes()
    return xml_to_abc(data, timeout)


def xml_to_abc(xml: bytes, timeout: float = 60.0) -> str:
    """MusicXML bytes -> ABC, in this process (12 ms for a chorale, against 300 ms for a child
    Python). xml2abc is a script built around module globals; this drives it the way its main
    does. A time bound applies when called from a main thread (SIGALRM)."""
    import io
    import signal
    import threading
    import types

    from abctoolkit import xml2abc as x2a

    opts = types.SimpleNamespace(u=False, m=0, c=0, d=8, n=0, b=0, o="", v=0, x=True, p=[], j=False, t=False,
                                 s=False, v1=False, ped=True, stm=False, i=False)
    out = io.StringIO()
    alarm = threading.current_thread() is threading.main_thread() and timeout > 0

    def too_slow(*_):
        raise CadenzaError(f"converting the MusicXML to ABC took longer than {timeout:.0f}s")

    if alarm:
        old = signal.signal(signal.SIGALRM, too_slow)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with quiet.captured() as log:
            x2a.abcOut = x2a.ABCoutput("piece.abc", "", 0, opts)
            x2a.abcOut.outfile = out
            x2a.Parser(opts).parse(io.BytesIO(xml))
    except CadenzaError:
        raise
    except Exception as e:  # xml2abc raises whatever its parsing hits on odd files
        raise CadenzaError(f"could not convert the MusicXML to ABC ({type(e).__name__}: {str(e)[:200]})") from e
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    text = out.getvalue()
    if "K:" not in text:
        raise CadenzaError(f"could not convert the MusicXML to ABC: {' '.join(log).strip()[-300:] or 'no output'}")
    return text


EMPTY_BAR = re.compile(r"\|:?[ \t\n]+\|")


def interleave(abc: str) -> list[str]:
    """Per-voice ABC -> header lines + one line per bar holding every voice."""
    from abctoolkit.rotate import rotate_abc
    from abctoolkit.utils import remove_bar_no_annotations, remove_information_field

    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in abc.splitlines()]
    lines = remove_information_field(lines, DROPPED_FIELDS)
    lines = [ln for ln in lines if ln.strip() and not (ln.startswith("%") and not ln.startswith("%%"))]
    lines = remove_bar_no_annotations(lines)
    # an empty bar ("|| | z |", "| |]", "|: |2", also across a line break) throws rotate_abc's bar count off
    lines = "".join(lines).replace("\r", "")
    lines = [ln + "\n" for ln in EMPTY_BAR.sub("|", lines).splitlines() if ln.strip()]
    try:
        rotated = rotate_abc(lines)
    except (IndexError, KeyError, ValueError) as e:
        raise CadenzaError(f"could not interleave the voices: the parts do not have the same bars ({e})") from e
    at = next((i for i, ln in enumerate(rotated) if ln.startswith("[V:")), len(rotated))
    return rotated[:at] + settled_barlines(rotated[at:])


def reduce_rests(line: str) -> str:
    """Leaves out voices whose bar is only rests (the first voice stays if all rest)."""
    segments = line_segments(line)
    if not segments:
        raise CadenzaError(f"a tune-body line without any voice: {line.strip()[:80]!r}")
    kept = {v: t for v, t in segments.items() if not REST_ONLY.match(split_right_barline(t)[0])}
    if not kept:
        first = next(iter(segments))
        kept = {first: segments[first]}
    return "".join(f"[V:{v}]{t}" for v, t in kept.items()) + "\n"


PART_NAME = re.compile(r'\b(nm|snm)="([^"]*)"')
NAME_JUNK = re.compile(r"(?:\\n|\s)+")  # a literal backslash-n, or any whitespace


def clean_part_names(line: str) -> str:
    """A V: line's nm="..."/snm="..." as plain words: MusicXML part names often hold line breaks
    and tabs, which xml2abc writes as a literal backslash-n and raw tabs."""
    if not line.startswith("V:"):
        return line

    def tidy(m: re.Match) -> str:
        return f'{m.group(1)}="{NAME_JUNK.sub(" ", m.group(2)).strip(" :")}"'

    end = "\n" if line.endswith("\n") else ""
    return PART_NAME.sub(tidy, line.rstrip("\n")) + end


def to_model_text(abc_lines: list[str], prompt_lines: list[str] | None = None) -> str:
    """Interleaved ABC lines -> the model's format, optionally with the three prompt lines in front."""
    metadata, body = split_tunebody("".join(abc_lines))
    metadata = [clean_part_names(ln) for ln in metadata]
    n = len(body)
    body = [f"[r:{i}/{n - i - 1}]" + reduce_rests(line) for i, line in enumerate(body)]
    return "".join(prompt_lines or []) + "".join(metadata) + "".join(body)


def score_to_model_text(path: str | Path, prompt_lines: list[str] | None = None) -> str:
    return to_model_text(interleave(musicxml_to_abc(path)), prompt_lines)
