"""Instrumentation labels from part names, as NotaGen labels its data (Choral, Vocal-Orchestral,
Art Song, Keyboard, Chamber, Orchestral, Melody). The dataset builder labels pieces with it, and
generation checks that a header's parts fit the prompt's label."""
from __future__ import annotations

import re
from collections import Counter

from engine.symbolic.instruments import gm_program

# names notation programs give a part nobody named: they say nothing of the instrument
PLACEHOLDER = re.compile(r"^(musicxml part|part|p|staff|instrument|untitled)?\s*\d*$", re.I)
LABELS = ("Choral", "Vocal-Orchestral", "Art Song", "Keyboard", "Chamber", "Orchestral", "Melody")
KEYBOARD = re.compile(r"piano|klavier|keyboard|harpsichord|cembalo|clavecin|organ|continuo|\bb\.\s?c\.", re.I)


def part_kind(name: str) -> str:
    """'voice', 'keys' (keyboards and continuo) or 'inst' for a part name ('' when unnamed or a
    placeholder such as "MusicXML Part")."""

    if KEYBOARD.search(name):  # before the voices: "Basso continuo" is played, not sung
        return "keys"
    if gm_program(name) == 52:
        return "voice"
    return "" if PLACEHOLDER.match(name.strip()) else "inst"


def infer_instrumentation(metadata: list[str], unnamed: str | None = None) -> str:
    """Choral, Keyboard, Art Song, Vocal-Orchestral, Melody, Chamber or Orchestral, from the
    voices' names (NotaGen's labels). `unnamed`: the label for several voices without names
    (e.g. Choral for a folder of four-part chorales), else they count as Chamber."""
    v_lines = [ln for ln in metadata if ln.startswith("V:")]
    names = [m.group(1) if m else "" for ln in v_lines for m in [re.search(r'nm="([^"]*)"', ln)]]
    kinds = Counter(part_kind(n) for n in names)
    if len(v_lines) <= 1:
        return "Melody"
    if set(kinds) <= {""}:  # no part names anything
        # a %%score that braces every staff together, { ... }, is a keyboard's grand staff
        score = next((ln for ln in metadata if ln.startswith("%%score")), "")
        braced = re.fullmatch(r"%%score\s*\{[^{}\[\]]*\}", score.strip()) is not None
        return "Keyboard" if braced or (len(v_lines) == 2 and not unnamed) else unnamed or "Chamber"
    # xml2abc names a part's first staff only: an unnamed V: line is a piano's left hand, not a player
    singers, players = kinds["voice"], kinds["inst"]
    if singers and not players:
        # a choir with organ or continuo is still choral music; one singer with a keyboard is a song
        return "Art Song" if singers == 1 and kinds["keys"] else "Choral"
    if singers:
        return "Vocal-Orchestral"
    if not players:
        return "Keyboard"
    distinct = len(set(names))
    return "Orchestral" if distinct >= 6 else "Chamber"


def fits_label(metadata: list[str], instrumentation: str) -> bool:
    """Whether a header's parts are what `instrumentation` says. Chamber and Orchestral differ
    only in size, so either fits the other; labels this module cannot infer always fit."""
    if instrumentation not in LABELS:
        return True
    inferred = infer_instrumentation(metadata, unnamed=instrumentation)
    return inferred == instrumentation or {inferred, instrumentation} <= {"Chamber", "Orchestral"}
