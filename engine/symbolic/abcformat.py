"""Scores -> the text NotaGen trains on and generates (the model's format).

MusicXML -> ABC with abctoolkit's xml2abc (`-d 8 -x`: unified L:1/8, no line breaks), then:
titles, composer fields, lyrics and other text removed, bar-number comments removed, voices
interleaved bar by bar (`[V:1]...|[V:2]...|`, abctoolkit's rotate_abc), voices that only rest in a
line left out, each tune-body line prefixed with `[r:i/j]` (line index / lines remaining).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from engine.errors import CadenzaError
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import line_segments, split_right_barline

DROPPED_FIELDS = ["X:", "T:", "C:", "W:", "w:", "Z:", "N:", "S:", "H:", "A:", "O:", "B:", "D:", "F:", "G:", "R:", "%%MIDI"]
REST_ONLY = re.compile(r"^\s*(?:[zx][\d/]*\s*)+$")


def musicxml_to_abc(path: str | Path, timeout: float = 60.0) -> str:
    """abctoolkit's xml2abc in a child process (a bound on time for any score)."""
    cmd = [sys.executable, "-m", "abctoolkit.xml2abc", "-d", "8", "-x", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CadenzaError(f"converting {path} to ABC took longer than {timeout:.0f}s") from e
    if out.returncode != 0 or not out.stdout.strip():
        raise CadenzaError(f"could not convert {path} to ABC: {out.stderr.strip()[-300:] or 'no output'}")
    return out.stdout


def interleave(abc: str) -> list[str]:
    """Per-voice ABC -> header lines + one line per bar holding every voice."""
    from abctoolkit.rotate import rotate_abc
    from abctoolkit.utils import remove_bar_no_annotations, remove_information_field

    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in abc.splitlines()]
    lines = remove_information_field(lines, DROPPED_FIELDS)
    lines = [ln for ln in lines if ln.strip() and not (ln.startswith("%") and not ln.startswith("%%"))]
    lines = remove_bar_no_annotations(lines)
    try:
        return rotate_abc(lines)
    except (IndexError, KeyError, ValueError) as e:
        raise CadenzaError(f"could not interleave the voices: the parts do not have the same bars ({e})") from e


def reduce_rests(line: str) -> str:
    """Leaves out voices whose bar is only rests (the first voice stays if all rest)."""
    segments = line_segments(line)
    kept = {v: t for v, t in segments.items() if not REST_ONLY.match(split_right_barline(t)[0])}
    if not kept:
        first = next(iter(segments))
        kept = {first: segments[first]}
    return "".join(f"[V:{v}]{t}" for v, t in kept.items()) + "\n"


def to_model_text(abc_lines: list[str], prompt_lines: list[str] | None = None) -> str:
    """Interleaved ABC lines -> the model's format, optionally with the three prompt lines in front."""
    metadata, body = split_tunebody("".join(abc_lines))
    n = len(body)
    body = [f"[r:{i}/{n - i - 1}]" + reduce_rests(line) for i, line in enumerate(body)]
    return "".join(prompt_lines or []) + "".join(metadata) + "".join(body)


def score_to_model_text(path: str | Path, prompt_lines: list[str] | None = None) -> str:
    return to_model_text(interleave(musicxml_to_abc(path)), prompt_lines)
