"""Search over candidates of a bar (issue 32, step 3): where the bar rules apply, a tune-body line
is written K times at once, as K rows of the batch, and the best is kept; retries then take back
only a line whose best candidate still breaks a rule.

At a line's start the piece forks K-1 candidates (`begin`): copies of its state with their own
random stream (seeded from the piece's, so a piece writes the same text whatever else is in the
batch), whose patch-decoder caches are copies of the piece's row (PieceState.cache_from). Every
member writes its line; a member that has finished waits (its row is kept, it writes nothing) until
the others have (`settle`). The members' lines are ranked by the rules they break
(retries.line_faults), then by a graded musical score (harmony.Critic.grade: parallels, crossings,
beats off any chord, for prompts with the critic), then by their order (the piece's own first). The
piece takes the winner's text, context and cache row, and the usual line rule (retries.take_back_line)
judges it: kept, written again (a new round of K) or, when the retries have run out, replaced by the
best line of all rounds.

Bounds: a member whose line runs past twice the first finished member's patches (plus SLACK), that
would overflow the context, or that ends the piece is dropped from the round; a piece ending (eos),
re-encoding its context, or stopping drops its candidates. The candidates count against the
scheduler's rows (PieceRequest.search rows a piece).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.symbolic.postprocess import line_segments
from engine.symbolic.retries import FAULT_WEIGHTS, Verdict, ending_faults, line_faults, take_back_line

if TYPE_CHECKING:
    from engine.symbolic.piece import PatchEvent, PieceState

MAX_CANDIDATES = 16  # K at most (each is a row of the batch)
SLACK = 2  # patches a member may write beyond twice the first finished member's line
ROOM = 32  # patches of context a fork leaves free (a member that would overflow it is dropped)


@dataclass
class LineSearch:
    """One round of candidates for the line a piece is writing."""
    members: list["PieceState"]  # the piece first, then its candidates
    done: dict[int, str] = field(default_factory=dict)  # uid -> "line" (finished) or "dropped"
    limit: int | None = None  # patches a member's line may take (set when the first finishes)

    def settled(self) -> bool:
        return len(self.done) == len(self.members)


def rows(active: list["PieceState"]) -> list["PieceState"]:
    """Every row a step computes: each piece, then its candidates."""
    out = []
    for s in active:
        out.append(s)
        if s.search is not None:
            out.extend(s.search.members[1:])
    return out


def width(k: int) -> int:
    """Rows a piece with search K holds in a batch."""
    return max(1, k)


def begin(s: "PieceState") -> None:
    """At the start of a tune-body line whose bar rules are checked, forks the piece's candidates."""
    k = s.req.search
    if (k <= 1 or s.search is not None or s.candidate_of is not None or s.stop_reason is not None
            or not s.in_tunebody or s.metre is None or not s.req.bar_retries or not s.at_line_start()
            or s.tail or _ending(s) or len(s.context) + min(ROOM, s.patch_length // 4) >= s.patch_length):
        return
    seeds = torch.randint(0, 2**62, (k - 1,), generator=s.generator).tolist()
    s.search = LineSearch([s] + [_fork(s, seed) for seed in seeds])


def _ending(s: "PieceState") -> bool:
    """The next patch is the forced end of a piece with a length in bars: nothing to search."""
    bars = s.req.controls.bars
    return bars is not None and s.lines_before + s.bars >= bars


def _fork(s: "PieceState", seed: int) -> "PieceState":
    from engine.symbolic.piece import next_uid

    c = copy.copy(s)
    c.uid = next_uid()
    c.context, c.tail = list(s.context), list(s.tail)
    c.generator = torch.Generator(device=s.generator.device).manual_seed(seed)
    # its cache row starts as a copy of the piece's (of the row the piece itself takes over, when its
    # last line was a candidate's and the backend has not moved it yet)
    c.search, c.candidate_of = None, s
    c.cache_from = s.cache_from if s.cache_from is not None else s.uid
    return c


def line_ended(m: "PieceState") -> None:
    """Called by a member whose line just ended (or that cannot go on): its search holds it until
    the round settles."""
    search = _search_of(m)
    if search is None:
        return
    start = search.members[0].line_start
    fits = len(m.context) < m.patch_length and m.text.endswith("\n")
    search.done[m.uid] = "line" if fits else "dropped"
    if fits and search.limit is None:
        search.limit = 2 * (m.patches - start.patches) + SLACK


def drop(m: "PieceState") -> None:
    """A candidate that ended the piece or overflowed: out of the round."""
    search = _search_of(m)
    if search is not None:
        search.done[m.uid] = "dropped"


def abandon(s: "PieceState") -> None:
    """The piece itself ended or re-encoded mid-search: its candidates go."""
    s.search = None


def waiting(m: "PieceState") -> bool:
    """A member that has finished its line (or was dropped) writes nothing until the round settles."""
    search = _search_of(m)
    return search is not None and m.uid in search.done


def enforce_limit(m: "PieceState") -> None:
    """A member whose line has run past the round's limit is dropped (the others have finished)."""
    search = _search_of(m)
    if search is not None and search.limit is not None and m.uid not in search.done:
        if m.patches - search.members[0].line_start.patches > search.limit:
            search.done[m.uid] = "dropped"


def _search_of(m: "PieceState") -> LineSearch | None:
    owner = m.candidate_of or m
    return owner.search


def settle(s: "PieceState") -> "PatchEvent | None":
    """When every member of the piece's round has finished: the piece takes the best line and the
    line rule judges it (kept, written again, or the best of all rounds restored). -> the event that
    tells the piece's listeners what replaced the line they saw, or None when it stays as shown."""
    from engine.symbolic.piece import PatchEvent

    search = s.search
    if search is None or not search.settled():
        return None
    s.search = None
    start = s.line_start
    shown = len(s.text) - start.text  # the piece's own line, as reported while written
    finished = [m for m in search.members if search.done[m.uid] == "line"]
    best = min(finished, key=lambda m: rank(s, m.text[start.text:], finished.index(m))) if finished else None
    if best is None:  # no member finished a line (cannot happen: the limit follows a finished one)
        s.return_to(start)
        return PatchEvent(s.index, "", s.patches, s.chars, s.bars, s.elapsed, [], retract=shown)
    if best is not s:
        s.text, s.context, s.tail = best.text, best.context, []
        s.patches, s.bars = best.patches, best.bars
        s.cache_from = best.uid  # its row takes the winner's cached keys and values
    back = take_back_line(s)
    if back.verdict in (Verdict.KEEP, Verdict.RESTORE):
        s.mark_line()
    now = s.text[start.text:]
    if best is s and back.verdict is Verdict.KEEP:
        return None
    ids = list(s.context[-1]) if s.context else []
    return PatchEvent(s.index, now, s.patches, s.chars, s.bars, s.elapsed, ids, retract=shown)


def rank(s: "PieceState", line: str, order: int) -> tuple:
    """A member's line, lower is better: the weighted rules it breaks (as a last line, also the ending
    rule: it closes every voice and cadences), the critic's grade, its order."""
    segments = list(line_segments(line).values())
    critic = s.critic if len(segments) > 1 else None
    harmonious, grade = True, 0.0
    if critic is not None:
        harmonious = critic.judge(segments, s.sounding)[0]
        grade = critic.grade(segments, s.sounding)
    faults = line_faults(s, line, s.metre.after(line), harmonious)
    if last_line(s):
        faults += FAULT_WEIGHTS["ending"] * ending_faults(s, line, s.line_start)
    return faults, grade, order


def last_line(s: "PieceState") -> bool:
    """The line being written is the piece's last: the ending rule took it back, or it is the last
    of a length in bars."""
    bars = s.req.controls.bars
    return s.rewriting_end or (bars is not None and s.lines_before + s.line_start.bars == bars - 1)
