"""General MIDI programs for part names, so a choir sings, a quartet bows and a piano plays."""
from __future__ import annotations

import re

# (keywords, 0-based General MIDI program). The first match wins, so longer names come first.
GM_PROGRAMS: list[tuple[tuple[str, ...], int]] = [
    (("violoncello", "cello", "vc."), 42),
    (("contrabass", "double bass", "kontrabass", "cb."), 43),
    (("viola", "vla", "va."), 41),
    (("violin", "violino", "fiddle", "vl.", "vln", "vn."), 40),
    (("harpsichord", "cembalo", "clavecin"), 6),
    (("organ", "organo", "orgel"), 19),
    (("piano", "klavier", "keyboard", "pianoforte", "pf.", "pno"), 0),
    (("soprano", "alto", "tenor", "baritone", "basso", "bass", "voice", "voce", "choir", "chorus", "canto",
      "cantus", "altus", "bassus", "tenore", "singstimme", "gesang", "mezzo", "contralto", "contratenor",
      "quinto", "quintus", "sesto", "sextus", "superius", "discantus", "triplum", "tripl", "motetus", "duplum",
      "dupl", "cfirm", "s.", "a.", "t.", "b.", "c.", "ct.", "cp."), 52),
    (("flute", "flauto", "fl."), 73),
    (("piccolo",), 72),
    (("recorder", "flauto dolce"), 74),
    (("oboe", "ob."), 68),
    (("english horn", "cor anglais"), 69),
    (("clarinet", "clarinetto", "klarinette", "cl."), 71),
    (("bassoon", "fagotto", "fg."), 70),
    (("horn", "corno", "cor.", "hn."), 60),
    (("trumpet", "tromba", "tpt", "cornet"), 56),
    (("trombone", "trb"), 57),
    (("tuba",), 58),
    (("timpani", "timp"), 47),
    (("harp", "arpa"), 46),
    (("guitar", "chitarra", "lute", "liuto"), 24),
]
DEFAULT_PROGRAM = 0  # acoustic grand piano


def gm_program(part_name: str | None) -> int:
    name = (part_name or "").lower().strip()
    for keywords, program in GM_PROGRAMS:
        for k in keywords:
            if k.endswith("."):
                if name == k or name.startswith(k + " ") or name == k[:-1]:
                    return program
            elif re.search(r"\b" + re.escape(k), name):
                return program
    return DEFAULT_PROGRAM
