"""A piece as the service makes it: its progress while written (the status line), its text as
ABC while it grows, its name and title, and the kept result (a record and its files)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from engine import api
from engine.files import slug
from engine.render.identity import retitled, with_part_names
from engine.render.identity import title as piece_title
from engine.requests import ComposeRequest
from engine.store import PieceRecord
from engine.symbolic.postprocess import to_abc
from engine.symbolic.patches import split_tunebody
from engine.symbolic.prompts import Prompt

MARKER = re.compile(r"\[r:\d+/\d+\]")  # NotaGen's line markers: the model's bookkeeping, not music


@dataclass
class Progress:
    """One update while a piece is written (the first variation's text is the one shown)."""
    abc: str  # the piece so far as ABC (X:1, header, bars; NotaGen's line markers taken out)
    patches: int  # patches written, never fewer than before (a bar taken back counts as a retry)
    bars: int  # bars of the first variation so far (a continued score's own bars included)
    elapsed: float
    seed: int
    retries: int = 0  # bars taken back and written again so far
    target_bars: int | None = None  # the length asked for; else the model's own plan (planned)
    eta: float | None = None  # seconds still to go, from the time per bar so far (2 bars written at least)
    waiting: int | None = None  # not started yet: the place in the model's waiting line (1 = next; 0 paused)
    waiting_reason: str = ""  # why it waits, in words (engine.symbolic.scheduler.Waiting)
    planned: bool = False  # target_bars is the model's plan (its [r:i/j] line markers), not a length asked for
    variations: tuple[int, ...] = ()  # the bars of every variation, when there are several
    stopping: bool = False  # Stop was pressed: the pieces are kept as written
    keeping: tuple[int, int] | None = None  # the writing is over: (pieces rendered, of how many)

    def line(self) -> str:
        """The status line the page shows: bars toward the length (asked, or the model's plan), an
        estimate, retries; every variation's bars; stopping; the rendering of the pieces kept."""
        if self.keeping is not None:
            n, of = self.keeping
            what = "stopped: " if self.stopping else ""
            return f"{what}engraving and rendering {'the piece' if of == 1 else f'{of} pieces'}: {n} of {of} done"
        if self.waiting == 0:  # a piece paused for another session's (fair sharing)
            return f"waiting for the model: {self.waiting_reason}"
        if self.waiting is not None:
            why = self.waiting_reason or "every row of its batch is in use"
            return f"waiting for the model (position {self.waiting} in line; {why})"
        if self.stopping:
            return f"stopping: keeping what was written ({self.bars} bars) - {self.elapsed:.1f} s"
        of = f" of {'about ' if self.planned else ''}{self.target_bars}" if self.target_bars else ""
        if len(self.variations) > 1:
            bars = f"{len(self.variations)} variations at bars {', '.join(map(str, self.variations))}{of}"
            seeds = f"seeds {self.seed}-{self.seed + len(self.variations) - 1}"
        else:
            bars, seeds = f"bar {self.bars}{of}", f"seed {self.seed}"
        eta = f", about {self.eta:.0f} s to go" if self.eta is not None else ""
        again = f", {self.retries} bar(s) written again" if self.retries else ""
        return f"writing ({seeds}): {bars}{eta}{again} - {self.elapsed:.1f} s"


PLAN = re.compile(r"\[r:(\d+)/(\d+)\]")  # a line's marker: lines before it / lines the model means to write after it


def planned_bars(text: str) -> int | None:
    """The piece's length as the model plans it, from its latest line marker."""
    found = PLAN.findall(text[-4000:])
    return int(found[-1][0]) + int(found[-1][1]) + 1 if found else None


def seconds_to_go(target: int | None, bars: list[int], written: int, elapsed: float) -> float | None:
    """Seconds to go: the slowest variation's bars still to write at the time per bar so far."""
    if not target or written < 2 or not bars:
        return None
    return max(0, target - min(bars)) * elapsed / written


def wrote_music(piece, head: str) -> bool:
    """Some of a bar written after the header and any continued score (`head`)."""
    return len("".join(split_tunebody(piece.text)[1])) > len("".join(split_tunebody(head)[1]))


class LiveText:
    """The piece as ABC while it is written: the complete bars go through to_abc (voices restored,
    markers out) once per new bar; the bar being written is added as it stands, so the browser
    can engrave every patch without the server converting the whole text each time."""

    def __init__(self, head: str):
        self.head = head  # the prompt lines and any continued score, in the model's format
        self._done, self._bars = "", -1

    def abc(self, text: str, bars: int) -> str:
        whole, _, partial = (self.head + text).rpartition("\n")
        if bars != self._bars:
            self._done, self._bars = to_abc(whole + "\n").abc, bars
        return self._done + MARKER.sub("", partial)


@dataclass(frozen=True)
class Named:
    """What a written piece is called and keeps of the score it continues or rewrites: the open
    piece's title and the T:/C: lines of its ABC (the model's format has no room for them)."""
    title: str | None
    source: str  # the ABC continued or rewritten ("" for a new piece)
    kind: str  # composed | continued | rewritten | harmonised

    def title_for(self, prompt: Prompt) -> str:
        if not self.title:  # what the printed page's title says (engine.render.identity)
            return piece_title({"period": prompt.period, "composer": prompt.composer,
                                "instrumentation": prompt.instrumentation})
        base = re.sub(r"( \((continued|rewritten|harmonised)\))+$", "", self.title.strip())[:100]
        return base if self.kind == "composed" else f"{base} ({self.kind})"

    def head(self, abc: str, prompt: Prompt) -> str:
        """The written ABC under the source's T:/C: lines and part names, titled as History lists it."""
        if re.search(r"^[TC]:", self.source, flags=re.M):
            abc = api.with_titles(abc, self.source)
        return retitled(with_part_names(abc, self.source), self.title_for(prompt))

    def headed(self, comp: api.Composition) -> api.Composition:
        abc = self.head(comp.abc.abc, comp.piece.prompt)
        return comp if abc == comp.abc.abc else replace(comp, abc=replace(comp.abc, abc=abc))

    def stem(self, prompt: Prompt, seed: int) -> str:
        """The piece's file names: its title and seed (irish-melody-seed3.pdf)."""
        return f"{slug(self.title_for(prompt))}-seed{seed}"


@dataclass
class Outcome:
    """A piece kept in the session: its record and where its files are."""
    record: PieceRecord
    folder: Path
    abc: str

    def paths(self, fmt: str) -> list[Path]:
        return [self.folder / f for f in self.record.files.get(fmt, [])]

    def downloads(self) -> list[Path]:
        order = ("abc", "musicxml", "midi", "pdf", "wav", "soundfont", "png", "manifest", "zip")
        return [p for fmt in order for p in self.paths(fmt)]


def known_prompt(prompt) -> dict:
    """A prompt a page sent back with an edit: the three fields as short strings, or nothing."""
    fields = ("period", "composer", "instrumentation")
    if not isinstance(prompt, dict) or not all(isinstance(prompt.get(f), str) for f in fields):
        return {}
    return {f: prompt[f][:200] for f in fields}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def journal_about(lm, request: ComposeRequest, named: Named) -> dict:
    """What a journal keeps besides the texts: enough to make each piece's record after a crash."""
    r = request
    prompt = Prompt(r.period, r.composer, r.instrumentation)
    titles = "".join(re.findall(r"^[TC]:.*\n", named.source, flags=re.M))
    return {"created": now_iso(), "kind": named.kind, "title": named.title_for(prompt), "seed": r.seed,
            "prompt": {"period": r.period, "composer": r.composer, "instrumentation": r.instrumentation},
            "model": lm.name, "settings": r.settings(), "prefix": r.prefix, "titles": titles}
