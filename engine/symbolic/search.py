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

Searching by voice (PieceRequest.search_by "voice"), a round ends at the end of a voice's bar
instead: NotaGen's format writes a line voice by voice ([V:1]...|[V:2]...|), so the best first voice
is kept, the second voice's candidates are written over it, and so on; the partial line is
ranked by the same rules (the voices still to come are not missing) and the critic's grade of the
voices so far, which lets a lower voice complete the chords the voices above it began and the bass
of a last line make the cadence; so the lowest voice's round writes K candidates and each round
above it K / UPPER (`round_size`). A voice whose every candidate breaks a rule is written again
(VOICE_RETRIES), spending the line's bar retries (but in the last line). The line rule judges the
line when its last voice's round settles.

Bounds: a member whose line (voice's bar) runs past twice the first finished member's patches (plus SLACK), that
would overflow the context, or that ends the piece is dropped from the round; a piece ending (eos),
re-encoding its context, or stopping drops its candidates. The candidates count against the
scheduler's rows (PieceRequest.search rows a piece).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.symbolic.config import EOS_ID
from engine.symbolic.harmony import bass_prepares
from engine.symbolic.postprocess import line_segments
from engine.symbolic.retries import FAULT_WEIGHTS, Verdict, ending_faults, line_faults, take_back_line

if TYPE_CHECKING:
    from engine.symbolic.piece import Mark, PatchEvent, PieceState

MAX_CANDIDATES = 16  # K at most (each is a row of the batch)
MARKER = re.compile(r"\[r:\d+/(\d+)\]")  # a line's [r:i/j] marker: j lines come after it
PREPARE = 0.5  # the grade a bar before the last loses when its bass prepares no V-I or IV-I
SEARCH_BY = ("line", "voice")  # what a round writes: a whole line, or one voice's bar of it
UPPER = 2  # searching by voice, the voices above a line's lowest write K / UPPER candidates each
VOICE_RETRIES = 3  # rounds of one voice's bar written again while its best candidate breaks a rule
SLACK = 2  # patches a member may write beyond twice the first finished member's line
ROOM = 32  # patches of context a fork leaves free (a member that would overflow it is dropped)


@dataclass
class LineSearch:
    """One round of candidates for the line a piece is writing (or, searching by voice, for the
    next voice's bar of it)."""
    members: list["PieceState"]  # the piece first, then its candidates
    start: "Mark | None" = None  # where the piece stood when the round began
    by_voice: bool = False  # the round ends at the end of a voice's bar, not of the line
    done: dict[int, str] = field(default_factory=dict)  # uid -> "line" (finished) or "dropped"
    limit: int | None = None  # patches a member's round may take (set when the first finishes)

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
    k = round_size(s)
    if (k <= 1 or s.search is not None or s.candidate_of is not None or s.stop_reason is not None
            or not s.in_tunebody or s.metre is None or not s.req.bar_retries
            or not (s.at_line_start() or at_voice_start(s))
            or s.tail or _ending(s) or len(s.context) + min(ROOM, s.patch_length // 4) >= s.patch_length):
        return
    seeds = torch.randint(0, 2**62, (k - 1,), generator=s.generator).tolist()
    s.search = LineSearch([s] + [_fork(s, seed) for seed in seeds], s.mark(),
                          by_voice=s.req.search_by == "voice" and s.declared > 1)


def round_size(s: "PieceState") -> int:
    """Candidates of the round beginning: K (the request's search) for a whole line or a line's lowest
    voice; K / UPPER for each voice above it. The lowest voice completes the chords the voices above
    it began, and in the last line closes the cadence: there more candidates pay (measured on 20
    chorales: 8 of every voice's bar, full-chord beats 0.735 and cadences 80%; 16 of the bass's,
    0.754 and 100%, as fast; 4 above a bass of 8, 0.66)."""
    k = s.req.search
    if s.req.search_by != "voice" or s.declared <= 1 or s.line_start is None:
        return k
    written = len(line_segments(s.text[s.line_start.text:]))  # voices of the line written so far
    return k if written >= s.declared - 1 else max(1, k // UPPER)


def at_voice_start(s: "PieceState") -> bool:
    """Searching by voice: the text ends where the round of the voice before ended, inside a line."""
    mark = s.line_start
    return (s.req.search_by == "voice" and s.declared > 1 and mark is not None and mark.epoch == s.epoch
            and s.voice_at == (s.epoch, len(s.text)))


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


def written(m: "PieceState", text: str, ids: list[int]) -> None:
    """Called by a member after each patch: a member whose line just ended (or that cannot go on),
    or, searching by voice, whose voice's bar ended, is held by its search until the round settles.
    NotaGen cuts a line before each barline and closes each piece with eos ([r:0/3][V:1]abc,
    |[V:2]def, ...): a patch closed before its end is a voice's bar ended. (One that fills its 16
    characters exactly runs on into the next voice's bar, which ends the member's round instead.)"""
    search = _search_of(m)
    if search is None:
        return
    line = text.endswith("\n") or len(m.context) >= m.patch_length
    if not (line or search.by_voice and EOS_ID in ids):
        return
    fits = len(m.context) < m.patch_length and (m.text.endswith("\n") or not line)
    search.done[m.uid] = "line" if fits else "dropped"
    if fits and search.limit is None:
        search.limit = 2 * (m.patches - search.start.patches) + SLACK


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
        if m.patches - search.start.patches > search.limit:
            search.done[m.uid] = "dropped"


def _search_of(m: "PieceState") -> LineSearch | None:
    owner = m.candidate_of or m
    return owner.search


def settle(s: "PieceState") -> "PatchEvent | None":
    """When every member of the piece's round has finished: the piece takes the best line (or
    voice's bar, searching by voice: the line goes on from it) and, at a line's end, the line rule
    judges it (kept, written again, or the best of all rounds restored). -> the event that tells the
    piece's listeners what replaced the text they saw, or None when it stays as shown."""
    from engine.symbolic.piece import PatchEvent

    search = s.search
    if search is None or not search.settled():
        return None
    s.search = None
    line_start = s.line_start.text
    seen = len(s.text)  # the piece's own text, as reported while written
    finished = [m for m in search.members if search.done[m.uid] == "line"]
    ranks = {m.uid: rank(s, m.text[line_start:], i) for i, m in enumerate(finished)}
    best = min(finished, key=lambda m: ranks[m.uid]) if finished else None
    if best is None:  # no member finished (cannot happen: the limit follows a finished one)
        s.return_to(s.line_start)
        return PatchEvent(s.index, "", s.patches, s.chars, s.bars, s.elapsed, [], retract=seen - line_start)
    ending = last_line(s, best.text[line_start:])
    if search.by_voice and ranks[best.uid][0] and s.voice_tries < VOICE_RETRIES and (
            ending or s.retries < s.req.bar_retries):
        # every candidate of this voice's bar breaks a rule: the voice is written again, not the line.
        # That spends one of the line's bar retries: a bar has one budget however it is written again
        # (when each line retry had its own voice retries, a bar the model could not fill cost 17 lines x
        # 4 voices x 4 rounds: 52 s for one chorale). A last line's do not: the ending rule bounds its
        # attempts, and its voices' rounds are where its cadence is found.
        s.voice_tries += 1
        s.retries += not ending
        s.return_to(search.start)
        s.voice_at = (s.epoch, len(s.text)) if not s.at_line_start() else None
        return PatchEvent(s.index, "", s.patches, s.chars, s.bars, s.elapsed, [], retract=seen - search.start.text)
    s.voice_tries = 0
    if best is not s:
        s.text, s.context, s.tail = best.text, best.context, []
        s.patches, s.bars = best.patches, best.bars
        s.cache_from = best.uid  # its row takes the winner's cached keys and values
    keep, verdict = search.start.text, Verdict.KEEP  # the text before the round was reported and stays
    if not s.text.endswith("\n"):  # a voice's bar: the next voice's round begins here
        s.voice_at = (s.epoch, len(s.text))
    else:
        verdict = take_back_line(s).verdict
        if verdict in (Verdict.KEEP, Verdict.RESTORE):
            s.mark_line()
        if verdict is not Verdict.KEEP:  # the line was taken back or replaced as a whole
            keep = line_start
    if best is s and verdict is Verdict.KEEP:
        return None
    ids = list(s.context[-1]) if s.context else []
    return PatchEvent(s.index, s.text[keep:], s.patches, s.chars, s.bars, s.elapsed, ids, retract=seen - keep)


def rank(s: "PieceState", line: str, order: int) -> tuple:
    """A member's line (so far, searching by voice), lower is better: the weighted rules it breaks
    (as a last line, also the ending rule: it closes every voice and cadences), the critic's grade
    (over the voices written so far), its order."""
    segments = list(line_segments(line).values())
    critic = s.critic if len(segments) > 1 else None
    partial = not line.endswith("\n")
    harmonious, thin, grade = critic.review(segments, s.sounding) if critic is not None else (True, False, 0.0)
    faults = line_faults(s, line, s.metre.after(line), harmonious, partial)
    if last_line(s, line):  # the cadence comes first (ranking thin last bars last halved the cadences)
        faults += FAULT_WEIGHTS["ending"] * ending_faults(s, line, s.line_start, partial)
    else:  # a thin bar is chosen last, and a voice's round written again for it; the line rule never takes it back
        faults += FAULT_WEIGHTS["harmony"] * thin
        if critic is not None and critic.tonic is not None and len(segments) == s.declared and next_to_last(s, line):
            # among the bar's good basses, one that ends on V or IV: the last bar can then close on one chord
            grade += PREPARE * (not bass_prepares(segments, critic.key, critic.tonic))
    return faults, grade, order


def next_to_last(s: "PieceState", line: str) -> bool:
    """The line being written is the one before the piece's last."""
    return not s.rewriting_end and lines_after(s, line) == 1


def last_line(s: "PieceState", line: str = "") -> bool:
    """The line being written is the piece's last: the ending rule took it back, or no line comes
    after it (lines_after)."""
    return s.rewriting_end or lines_after(s, line) == 0


def lines_after(s: "PieceState", line: str) -> int | None:
    """Lines the piece has after the one being written: by its length in bars, or (with no length
    asked) by the line's [r:i/j] marker; None before the marker is written."""
    bars = s.req.controls.bars
    if bars is not None:
        return bars - 1 - (s.lines_before + s.line_start.bars)
    m = MARKER.match(line)
    return int(m.group(1)) if m else None
