"""The retry rules: after a patch, keep what was written, or take a line or the header back to
write it again. Each rule reads a PieceState and, when it takes text back, returns it to a Mark
and says how much text went (a TakeBack with its Verdict).

- header: when the tune body begins the header must declare one of the request's numbers of
  voices, with part names that fit the instrumentation (header_retries);
- bar: a tune-body line whose voices disagree in length, or that leaves a chord, grace-note group
  or annotation open, is written again (bar_retries); when the retries run out, the attempt that
  broke the fewest rules is kept (Attempt), not merely the last.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from enum import Enum
from typing import TYPE_CHECKING

from engine.symbolic.labels import fits_label
from engine.symbolic.harmony import (Critic, beat_length, cadence_ready, ends_on, ends_together, final_cadence,
                                     key_alterations, tonic_class)
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import (BARLINE, CLOSERS, OPENERS, SECTION_END, Metre, bar_well_formed, closes_section,
                                         count_voices, header_field, header_unit, line_aligned, line_segments, metre_bar,
                                         voice_ids)

if TYPE_CHECKING:  # the state calls these rules; the rules only read and rewind it
    from engine.symbolic.piece import PieceState

HEADER_LINE = re.compile(r"^(%|[A-Za-z]:)")  # a header field (K:, V:1 ...) or a comment


class Verdict(Enum):
    """What a retry rule decides about what was just written."""
    KEEP = "keep"
    REWIND_LINE = "rewind line"  # the patch just written is dropped; go on from the current line's start
    REWIND = "rewind"  # the line (or the header) is taken back and written again
    RESTORE = "restore"  # the retries ran out: the line is replaced by its best earlier attempt


@dataclass(frozen=True)
class TakeBack:
    verdict: Verdict
    chars: int = 0  # characters of text taken back (REWIND, RESTORE)
    text: str = ""  # the text put in their place (RESTORE)


@dataclass(frozen=True)
class Attempt:
    """One written version of a line that broke a rule: kept while it is the best so far."""
    faults: int  # line_faults: lower is better
    text: str
    context: tuple[tuple[int, ...], ...]  # its patches as they entered the context
    metre: "Metre | None"  # where the metre stands after it
    sounding: object = None  # the critic's "before" for the next bar


KEEP = TakeBack(Verdict.KEEP)


def take_back_header(s: "PieceState", finished: bool, ended: bool = False) -> TakeBack:
    """When the tune body begins (finished) the header must declare one of the request's numbers
    of voices, with part names that fit the prompt's instrumentation; while it is written, it
    must not declare more; the piece must not end in it (ended). Otherwise, while retries are
    left, the header is written again (REWIND, from its start; or REWIND_LINE, see below)."""
    meta = s.text[s.header_start.text:]
    wanted, tries = s.req.allowed_voices(), s.req.header_retries
    if wanted is None or s.header_tries >= tries or s.header_start.epoch != s.epoch:
        s.header_open = False  # no (more) checks: the header stays
        return KEEP
    lines = meta.splitlines()
    voices = count_voices(lines)
    # A header line is a field (K:, V:1 ...) or a comment; anything else is a bar written
    # without its [r:] marker, so the header never ended properly.
    header_like = all(header_line_ok(ln) for ln in lines)
    # %%score, the header's first line when there are several voices, names them all: a
    # wrong count is known there, before the V: lines are written, so a retry costs a line.
    declared = next((score_voices(ln) for ln in lines if ln.startswith("%%score")), None)
    limit = max(wanted) if declared is None else declared
    # a finished header's part names must fit the prompt's instrumentation too (four singers
    # are no Vocal-Orchestral piece), but only in the first half of the retries: the last
    # header written is kept when they run out, and a right voice count matters more
    fits = (not finished or s.header_tries >= tries // 2
            or fits_label(lines, s.req.prompt.instrumentation))
    if header_like and not ended and fits and (declared is None or declared in wanted) and (
            (voices in wanted and declared in (None, voices)) or (not finished and voices < limit)):
        if finished:
            s.header_open = False  # checked: the header stays
        return KEEP
    if finished and header_like and declared in wanted and voices < declared and s.at_line_start():
        # %%score named every voice but a V: line is missing: write on from the header's last
        # line (the patch just written is dropped) rather than from its start.
        s.return_to(s.line_start)
        s.header_tries += 1
        s.rewritten += 1
        s.mark_line()
        return TakeBack(Verdict.REWIND_LINE)
    s.return_to(s.header_start)
    s.header_tries += 1
    s.rewritten += 1
    s.mark_line()
    # an eos straight after the prompt leaves no header to take back: the piece ends (ended)
    return TakeBack(Verdict.REWIND, len(meta)) if meta else KEEP



def take_back_line(s: "PieceState") -> TakeBack:
    """A tune-body line just ended: if it breaks a bar rule and retries are left, the text and
    context return to the line's start (REWIND). The rules: every voice lasts as long as the others
    and closes what it opens (always, with bar_retries); and those the prompt's training pieces
    keep (PieceRequest.bar_rules): "full", every declared voice is in the bar (a voice left out
    becomes a whole-bar rest); "metre", the bar is as long as the metre (postprocess.Metre)."""
    if s.line_start is None or not s.in_tunebody:
        return KEEP
    line = s.text[s.line_start.text:]
    if s.line_start.epoch != s.epoch or line.count("\n") != 1:
        return KEEP
    if s.metre is None:  # the first line: the header is complete
        meta = split_tunebody(s.text)[0]
        s.metre = Metre(metre_bar(meta), unit=header_unit(meta))
        s.declared, s.voices = count_voices(meta), tuple(voice_ids(meta))
        beat = beat_length(header_field(meta, "M"), header_field(meta, "L"))
        tonic = tonic_class(header_field(meta, "K"))
        s.critic = Critic(key_alterations(header_field(meta, "K") or "C"), beat, s.metre.bar, tonic) \
            if beat and s.metre.bar and "harmony" in s.req.bar_rules else None
        s.home = (key_alterations(header_field(meta, "K")), tonic) \
            if s.declared <= 1 and tonic is not None and s.req.bar_rules else None
    after = s.metre.after(line)
    segments = list(line_segments(line).values())
    # the critic reads the bar once: its verdict now, and what sounds at its end for the next bar
    judged = s.critic.judge(segments, s.sounding) if s.critic is not None and len(segments) > 1 else None
    faults = line_faults(s, line, after, judged is None or judged[0]) if s.req.bar_retries else 0
    if faults:
        attempt = Attempt(faults, line, tuple(map(tuple, s.context[s.line_start.context:])), after,
                          judged[1] if judged else s.sounding)
        if s.best_attempt is None or faults < s.best_attempt.faults:
            s.best_attempt = attempt
        if s.retries < s.req.bar_retries:
            s.return_to(s.line_start)
            s.retries += 1
            s.rewritten += 1
            return TakeBack(Verdict.REWIND, len(line))
        if s.best_attempt is not attempt:  # out of retries: an earlier attempt was better
            best = s.best_attempt
            s.replace_line(best.text, [list(p) for p in best.context])
            s.metre, s.sounding = best.metre or Metre(s.metre.bar, Fraction(0), False, s.metre.unit), best.sounding
            return TakeBack(Verdict.RESTORE, len(line), best.text)
    s.metre = after or Metre(s.metre.bar, Fraction(0), False, s.metre.unit)
    if judged is not None:
        s.sounding = judged[1]
    return KEEP


# What each broken rule weighs when attempts are compared: a bar whose voices disagree or leave a
# chord open is unreadable; a voice left out, a last bar that does not close (search.rank) or a bar
# the wrong length is heard; a dissonant bar is only less idiomatic.
VOICE_FIELD = re.compile(r"\[V:\s*([^\]\s]+)")
FAULT_WEIGHTS = {"form": 8, "full": 4, "ending": 4, "metre": 2, "harmony": 1}


def line_faults(s: "PieceState", line: str, after: Metre | None, harmonious: bool, partial: bool = False) -> int:
    """The weighted rules a line breaks (0: it keeps them all); `partial`: the line so far (a search
    by voice), whose voices still to come are not missing."""
    segments = line_segments(line)
    rules = s.req.bar_rules
    # a line so far misses a voice when one was skipped: its voices are not the header's first ones
    # (the prompts whose pieces keep every voice keep them in the header's order: Bach's chorales all do)
    if partial:
        missing = bool(s.voices) and list(segments) != list(s.voices[:len(segments)])
    else:
        missing = len(segments) < s.declared
    broken = [not (line_aligned(line) and all(bar_well_formed(t) for t in segments.values())
                   and one_bar(line)) and "form",
              "full" in rules and missing and "full",
              "metre" in rules and after is None and "metre",
              not harmonious and "harmony"]
    return sum(FAULT_WEIGHTS[b] for b in broken if b)


def one_bar(line: str) -> bool:
    """A tune-body line is one bar of each voice: no voice twice, no second [r:] marker (the model
    sometimes runs on into the next line without its newline)."""
    voices = VOICE_FIELD.findall(line)
    return len(voices) == len(set(voices)) and line.count("[r:") <= 1


def take_back_ending(s: "PieceState") -> TakeBack:
    """The piece ends (eos): its last line must be complete, close every voice together with a
    final barline (|] :| || ::) and, for "full" prompts, hold every voice. Otherwise, while bar
    retries are left for endings, the last line is taken back and written again (REWIND)."""
    unfinished = not s.text.endswith("\n")  # eos in the middle of a line: that line is written again
    mark = s.line_start if unfinished else s.last_line
    if s.req.bar_retries == 0 or s.ending_tries >= s.req.bar_retries or mark is None or not mark.in_tunebody \
            or mark.epoch != s.epoch:
        return KEEP
    line = s.text[mark.text:]
    if not unfinished and (line.count("\n") != 1 or ends_well(s, line, mark)):
        return KEEP
    s.return_to(mark)
    s.ending_tries += 1
    s.rewritten += 1
    s.mark_line()
    s.rewriting_end = True  # a search ranks this line's candidates as endings too (search.rank)
    # the line written again for the ending gets one bar retry, not a fresh budget: an ending the
    # model cannot close (a length in bars ends it where it would not) costs at most twice the
    # ending's retries, not their product with the bar retries
    s.retries = max(0, s.req.bar_retries - 1)
    return TakeBack(Verdict.REWIND, len(line))


def ends_well(s: "PieceState", line: str, mark) -> bool:
    return not ending_faults(s, line, mark)


def ending_faults(s: "PieceState", line: str, mark, partial: bool = False) -> int:
    """What a last line fails of the ending rule (0: it ends well): it closes every voice with a
    final barline (unless the prompt's real pieces mostly end "open"), holds every voice for "full"
    prompts, ends every voice together (each written once, its last note sounding to the end), and
    cadences (retries.cadences: V-I for "harmony" prompts, the tonic for a tune). `partial`: the line
    so far (a search by voice), judged on its voices: the missing ones wait for the whole line, and
    the cadence asks only that the voices so far end on the tonic's triad (harmony.cadence_ready)."""
    rules = s.req.bar_rules
    segments = list(line_segments(line).values())
    together = line_aligned(line) and one_bar(line) and (len(segments) < 2 or ends_together(segments))
    # a voice's closing barline begins the next voice's patch (NotaGen cuts a line before each
    # barline): in a line so far, the last voice written has not closed yet
    closed = closes_section(line) if not partial else all(SECTION_END.search(t) for t in segments[:-1])
    return sum((not ("open" in rules or closed),
                "full" in rules and not partial and len(segments) < s.declared,
                not together,
                not cadences(s, line, mark, partial)))


def cadences(s: "PieceState", line: str, mark, partial: bool = False) -> bool:
    """For "harmony" prompts, the last bar closes with a V-I or IV-I cadence (harmony.final_cadence;
    `partial`, its voices so far end on the tonic's triad); a tune of one voice (of a prompt with bar
    rules) ends on its key's tonic. Both in the first half of the ending's retries: the second half
    only asks that it closes every voice."""
    if s.ending_tries >= s.req.bar_retries // 2:
        return True
    segments = list(line_segments(line).values())
    if partial:
        return s.critic is None or s.critic.tonic is None or not segments or \
            cadence_ready(segments, s.critic.key, s.critic.tonic)
    if s.home is not None and len(segments) == 1:
        key, tonic = s.home
        return ends_on([b for b in BARLINE.split(segments[0]) if b and not BARLINE.fullmatch(b)], key, tonic) is not False
    if s.critic is None:
        return True
    before = s.text[:mark.text].rsplit("\n", 2)
    previous = list(line_segments(before[-2]).values()) if len(before) >= 2 else []
    return final_cadence(list(line_segments(line).values()), previous, s.critic.key)


def score_voices(line: str) -> int:
    """Voices a %%score line names (1 [ 2 | 3 ] { 4 | 5 } names five; a repeated one counts once)."""
    return len(set(re.findall(r"[A-Za-z0-9_]+", line[len("%%score"):])))


def header_line_ok(line: str) -> bool:
    """A field (K:, V:1 ...) or a comment, with its quotes closed (part names) and, for %%score,
    its brackets balanced: a header that ABC readers can take."""
    if not HEADER_LINE.match(line) or line.count('"') % 2:
        return False
    if line.startswith("%%score"):
        stack = []
        for c in line:
            if c in OPENERS:
                stack.append(CLOSERS[OPENERS.index(c)])
            elif c in CLOSERS and (not stack or stack.pop() != c):
                return False
        return not stack
    return True


