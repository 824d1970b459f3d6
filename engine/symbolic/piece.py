"""One piece being written: what was asked (PieceRequest), where it stands (PieceState), the
points it can return to (Mark), and what it reports (PatchEvent while written, Piece at the end).
The retry rules that decide to take text back live in engine.symbolic.retries."""
from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field

import torch

from engine.checks import SEED_LIMIT
from engine.errors import SettingsError
from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID
from engine.symbolic.controls import Controls, header_edit, marker
from engine.symbolic.patches import (encode_for_generation, is_eos_patch, patch_text, prompt_patches, split_bars,
                                     split_patches, split_tunebody, to_ids)
from engine.symbolic.prompts import Prompt
from engine.symbolic.postprocess import Metre
from engine.symbolic.retries import KEEP, TakeBack, Verdict, take_back_ending, take_back_header, take_back_line
from engine.symbolic.sampling import SamplingSettings
from engine.symbolic import search
from engine.symbolic.search import MAX_CANDIDATES, SEARCH_BY
from engine.stops import FINISHED, StopReason

MAX_CHARS = 102_400  # NotaGen's own limit on a piece's text
BARLINE_END = re.compile(r"[|\]:]$")  # a melody bar that ends with its barline (|, ||, |], :|, [|]...)
_UIDS = itertools.count()  # a piece's name in a backend's caches, unique in the process (index is per request)


def next_uid() -> int:
    return next(_UIDS)


@dataclass
class PieceRequest:
    prompt: Prompt
    seed: int = 0
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    max_patches: int = 4096  # patches to write at most (the prompt not counted)
    max_seconds: float = 1200.0  # wall-clock bound for this piece
    max_chars: int = MAX_CHARS  # bound on the piece's text
    cancel: threading.Event | None = None  # set from another thread to stop after the current patch
    prefix: str = ""  # text in the model's format to continue (metadata and/or tune-body lines)
    stop_at_eos: bool = True  # False only for benchmarks that need a fixed number of patches
    # Times one tune-body line whose voices disagree in length (or that leaves a chord, grace
    # note group or annotation open) is written again (then kept as it is). 0 is NotaGen's own
    # algorithm. Patches taken back do not count towards max_patches: the work is bounded by the
    # retries per line (and max_seconds).
    bar_retries: int = 0
    # The numbers of voices the header may declare (the counts most of the prompt's training
    # pieces have; one number or several), and how many times a header that declares another
    # number is written again. Only for new pieces (no prefix); None or 0 retries is NotaGen's own
    # algorithm.
    voices: int | tuple[int, ...] | None = None
    header_retries: int = 0
    # The bar rules the prompt's training pieces keep ("full": every declared voice in every bar;
    # "metre": bars as long as the metre), checked with the bar retries (engine.symbolic.retries).
    bar_rules: frozenset[str] = frozenset()
    # Length in bars, key, metre and tempo fixed by the composer (engine.symbolic.controls).
    controls: Controls = field(default_factory=Controls)
    # Candidates written at once for each tune-body line whose bar rules are checked (bar_retries),
    # the best kept (engine.symbolic.search); each is a row of the batch. 1: one at a time.
    search: int = 1
    # What a round of the search writes: "line", each candidate a whole line; "voice", each voice's
    # bar of a line in turn, the best kept before the next voice is written (engine.symbolic.search).
    search_by: str = "line"
    # The piece ends once it has this many tune-body lines (the prefix's counted): a passage written
    # inside a piece (engine.symbolic.passage), whose bars after it are kept. None: it ends at eos.
    end_lines: int | None = None
    # A melody to harmonise: line i of the tune body is forced to begin with its [r:i/j] marker and
    # melody[i] (the first voice's bar, "[V:1]...|"), and the model writes the other voices after it;
    # the piece has as many lines as the melody (controls.bars). Empty: nothing forced.
    melody: tuple[str, ...] = ()

    def allowed_voices(self) -> frozenset[int] | None:
        """`voices` as a set (None: any number)."""
        if self.voices is None:
            return None
        return frozenset(self.voices) if isinstance(self.voices, (tuple, list, set, frozenset)) else frozenset([self.voices])

    def __post_init__(self) -> None:
        """Made by api.compose_stream from a ComposeRequest, whose fields were checked when it was
        made (engine.requests); here only what a piece request alone holds: its voices, its text
        bound and its seed's place in the batch."""
        if not isinstance(self.prompt, Prompt):
            raise SettingsError(f"prompt must be a Prompt (period, composer, instrumentation), got {self.prompt!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise SettingsError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}")
        if not isinstance(self.max_chars, int) or not 1 <= self.max_chars <= 10 * MAX_CHARS:
            raise SettingsError(f"max_chars must be from 1 to {10 * MAX_CHARS}, got {self.max_chars!r}")
        if isinstance(self.search, bool) or not isinstance(self.search, int) or not 1 <= self.search <= MAX_CANDIDATES:
            raise SettingsError(f"search must be a whole number of candidates from 1 (off) to {MAX_CANDIDATES}, "
                                f"got {self.search!r}")
        if self.search_by not in SEARCH_BY:
            raise SettingsError(f"search_by must be one of {', '.join(SEARCH_BY)}, got {self.search_by!r}")
        if self.end_lines is not None and (isinstance(self.end_lines, bool) or not isinstance(self.end_lines, int)
                                           or not 1 <= self.end_lines <= 100_000):
            raise SettingsError(f"end_lines must be a whole number of lines from 1, got {self.end_lines!r}")
        if not isinstance(self.melody, tuple) or not all(isinstance(m, str) and "\n" not in m for m in self.melody):
            raise SettingsError("melody must be the first voice's bars, one string a line, without newlines")
        if self.melody and self.controls.bars != len(self.melody):
            raise SettingsError(f"a harmonised melody of {len(self.melody)} bars needs a length of as many bars, "
                                f"got {self.controls.bars}")
        counts = self.allowed_voices()
        if counts is not None:
            if not counts or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64 for v in counts):
                raise SettingsError(
                    f"voices must be a whole number from 1 to 64, several such numbers, or None, got {self.voices!r}")


@dataclass
class PatchEvent:
    """One patch of one piece: what it added and where the piece stands."""
    index: int  # the piece's position in the batch
    text: str  # the characters this patch added
    patches: int  # patches written so far
    chars: int  # characters written so far (prompt not counted)
    bars: int  # complete tune-body lines so far (a line is one bar of every voice)
    elapsed: float  # seconds since the piece started
    ids: list[int] = field(default_factory=list)  # the patch as it entered the context (padded after eos)
    # Characters to take off the end of the text reported so far before adding `text`: a line
    # taken back to be written again (bar_retries).
    retract: int = 0


@dataclass
class Piece:
    index: int
    prompt: Prompt
    seed: int
    sampling: SamplingSettings
    text: str  # everything in the model's format: prompt lines, metadata, tune body
    stop_reason: StopReason  # why it ended (engine.stops)
    patches: int
    chars: int
    bars: int
    elapsed: float
    context_resets: int  # times the context overflowed and was re-encoded
    lines_rewritten: int = 0  # bars and headers taken back and written again (bar/header retries)

    @property
    def complete(self) -> bool:
        return self.stop_reason in FINISHED

    @property
    def cut_short(self) -> bool:
        return not self.complete


@dataclass(frozen=True)
class Mark:
    """A point a piece can return to: the start of a line or of its header."""
    text: int  # characters of text
    context: int  # patches of context
    patches: int
    bars: int
    in_tunebody: bool
    epoch: int  # the context it belongs to (a re-encoded context cannot return to it)
    metre: Metre | None = None  # where the piece stood in its metre (None: before the tune body)


class PieceState:
    """Where one piece stands: its text, its context in patches, its bounds."""

    def __init__(self, index: int, req: PieceRequest, patch_length: int, patch_size: int, device):
        self.index, self.req = index, req
        self.uid = next_uid()
        self.patch_length, self.patch_size = patch_length, patch_size
        self.prompt_text = "".join(req.prompt.lines())
        self.text = self.prompt_text + req.prefix
        self.generator = torch.Generator(device=device).manual_seed(req.seed)
        self.start = time.monotonic()
        self.patches = self.bars = self.resets = self.rewritten = 0
        self.epoch = 0  # bumped whenever the context is rebuilt, so caches know to prefill
        self.restores = 0  # lines replaced by an earlier attempt (their patches are not in the cache)
        self.stop_reason: StopReason | None = None
        meta, body = split_tunebody(self.text)
        self.in_tunebody = bool(body)
        self.lines_before = sum(ln.endswith("\n") for ln in body)  # complete tune-body lines of the prefix
        self.body_start = 0  # first tune-body line inside the context
        if not body and self.text and not self.text.endswith("\n"):
            self.text += "\n"  # metadata lines are whole lines
        self.context, self.tail = self._encode(meta, body)
        self.line_start: Mark | None = None  # where the current line began (see mark_line)
        self.last_line: Mark | None = None  # where the line before it began (the ending rule returns there)
        self.metre: Metre | None = None  # the tune body's place in its metre (set by the first line's rules)
        self.declared = 0  # voices the header declares (set with the metre)
        self.voices: tuple[str, ...] = ()  # their ids, in the header's order (set with the metre)
        self.critic = None  # harmony.Critic for "harmony" prompts (set with the metre)
        self.home = None  # (key, tonic) a one-voice tune ends on (retries.cadences; set with the metre)
        self.sounding = None  # what the last kept bar's voices sound at its end (the critic's "before")
        self.ending_tries = 0  # endings taken back so far
        self.retries = 0  # retries used on the current line
        self.best_attempt = None  # retries.Attempt: the current line's best version that broke a rule
        self.header_tries = 0  # headers taken back so far
        # Where the header begins (just after the prompt lines), when the header is the model's,
        # and whether it is being checked (until the tune body begins with a header that passes).
        self.header_start = self.mark() if not req.prefix and not self.tail else None
        self.header_open = self.header_start is not None
        self.search = None  # search.LineSearch: the candidates of the line being written
        self.voice_at = None  # (epoch, text length) where a search by voice settled a voice's bar
        self.voice_tries = 0  # rounds of the current voice's bar written again (search.VOICE_RETRIES)
        self.candidate_of: PieceState | None = None  # on a candidate: the piece it writes a line for
        self.cache_from: int | None = None  # a uid whose cache row this row takes over (FastBackend.retain)
        if len(self.context) >= patch_length:
            self._reencode()
        self.mark_line()

    def _encode(self, meta, body):
        if not body:
            return prompt_patches(meta, self.patch_size), []
        return encode_for_generation(meta, body, self.patch_size)

    def next_prefix(self) -> list[int]:
        """The characters forced at the start of the next patch: the context's partial tail, and,
        with a length in bars, each line's [r:i/j] marker, then the end after the last line; with a
        melody, the marker and the melody's bar, patch by patch (`forced_patch`)."""
        bars = self.req.controls.bars
        if bars is not None and self.tail and self.text.endswith("\n"):
            # a continued score's last line, complete in a partial patch: the patch closes there (as
            # in training, a line ends its patch) so that the next line starts with its marker
            return self.tail + [EOS_ID]
        if self.req.melody and self.in_tunebody:
            forced = self.forced_patch()
            if forced is not None:
                return forced
        if bars is None or not self.in_tunebody or self.tail or not self.text.endswith("\n"):
            return self.tail
        index = self.lines_before + self.bars
        return [BOS_ID, EOS_ID] if index >= bars else [ord(c) for c in marker(index, bars)]

    def forced_patch(self) -> list[int] | None:
        """The next patch of the current line's forced start: its [r:i/j] marker, melody[i] and the
        start of the second voice's bar ("[V:2]" after the melody's barline: training cuts a line before
        each barline, so the melody's barline begins the next voice's segment). Cut into patches as
        training cuts them (EOS closes a short one; the last, partial, is completed by the model).
        None once it is written: the rest of the line is the model's. A context re-encoded mid-line
        leaves the patch being written begun (the tail): the forced patch then goes on from it."""
        index = self.lines_before + self.bars
        if index >= len(self.req.melody):
            return None
        bar = self.req.melody[index]
        text = marker(index, len(self.req.melody)) + bar + ("" if BARLINE_END.search(bar) else "|") + "[V:2]"
        # where the patch being written begins in the current line
        start = len(self.text) - (self.text.rfind("\n") + 1) - len(self.tail)
        segments, at = split_bars([text]), 0
        for n, seg in enumerate(segments):
            for chunk in split_patches(seg, self.patch_size, generate_last=n == len(segments) - 1):
                if at == start:
                    ids = [ord(c) for c in chunk]
                    return ids if ids[:len(self.tail)] == self.tail else None
                at += len(chunk.replace(chr(EOS_ID), ""))
        return None

    def tunebody_start(self) -> str:
        """What the first tune-body line is forced to begin with (NotaGen numbers it 0)."""
        bars = self.req.controls.bars
        if self.req.melody:
            return "".join(chr(i) for i in self.forced_patch() or [])
        return "[r:0/" if bars is None else marker(self.lines_before, bars)

    def eos_allowed(self) -> bool:
        """With a length in bars the piece may not end before its last line."""
        bars = self.req.controls.bars
        return bars is None or self.lines_before + self.bars >= bars

    @property
    def cache_version(self) -> tuple[int, int]:
        """Changes whenever a backend's cache of this piece's context can no longer be stepped on."""
        return self.epoch, self.restores

    @property
    def chars(self) -> int:
        return len(self.text) - len(self.prompt_text)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def resume(self, paused_s: float) -> None:
        """Back in a batch after waiting `paused_s` seconds outside it (fair sharing): the time
        paused does not count against max_seconds."""
        self.start += paused_s

    def check_bounds(self) -> None:
        req = self.req
        if req.cancel is not None and req.cancel.is_set():
            self.stop_reason = StopReason.CANCELLED
        elif self.patches >= req.max_patches:
            self.stop_reason = StopReason.MAX_PATCHES
        elif self.elapsed >= req.max_seconds:
            self.stop_reason = StopReason.MAX_SECONDS
        elif self.chars >= req.max_chars:
            self.stop_reason = StopReason.MAX_CHARS
        elif req.end_lines is not None and self.lines_before + self.bars >= req.end_lines and self.text.endswith("\n"):
            self.stop_reason = StopReason.PASSAGE

    def accept(self, ids: list[int]) -> PatchEvent | None:
        """ids: the 16 ids of the next patch, the context's partial tail included."""
        new = ids[len(self.tail):]
        if is_eos_patch(new) and self.req.stop_at_eos:
            if self.candidate_of is not None:  # a candidate may not end the piece: out of its round
                search.drop(self)
                return None
            search.abandon(self)
            if not self.in_tunebody and self.header_open:
                # A piece cannot end in its header: write the header again while retries are left.
                back = take_back_header(self, finished=True, ended=True)
                if back.verdict is not Verdict.KEEP:
                    return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, list(ids),
                                      retract=back.chars)
            if self.in_tunebody:
                back = take_back_ending(self)
                if back.verdict is not Verdict.KEEP:  # the last bar is written again
                    return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, list(ids),
                                      retract=back.chars)
            self.stop_reason = StopReason.EOS
            return None
        text = patch_text(new)
        if self.in_tunebody and self.header_open:
            back = take_back_header(self, finished=True)
            if back.verdict is not Verdict.KEEP:  # REWIND_LINE: the patch is dropped, the header goes on
                return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, list(ids),
                                  retract=back.chars)
        self.text += text
        self.patches += 1
        self.bars += text.count("\n") if self.in_tunebody else 0
        full = list(ids)
        if EOS_ID in full:
            cut = full.index(EOS_ID) + 1
            full[cut:] = [PAD_ID] * (len(full) - cut)
        self.context.append(full)
        self.tail = []
        event = PatchEvent(self.index, text, self.patches, self.chars, self.bars, self.elapsed, full)
        if self.search is not None and len(self.context) >= self.patch_length:
            search.abandon(self)  # the context is re-encoded: the line is judged alone
        if self.candidate_of is not None or self.search is not None:
            search.written(self, text, full)  # at the round's end, the round judges it (search.settle)
            return event
        back = KEEP
        if text.endswith("\n"):
            if not self.in_tunebody and self.header_open:
                back = take_back_header(self, finished=False)  # never REWIND_LINE while unfinished
            elif self.in_tunebody:
                back = take_back_line(self)
            if not self.in_tunebody and back.verdict is Verdict.KEEP:
                back = self._control_header()
            if back.verdict in (Verdict.KEEP, Verdict.RESTORE):
                self.mark_line()
        if len(self.context) >= self.patch_length:
            self._reencode()
        if back.verdict is Verdict.RESTORE:  # the reported line is replaced by its best attempt
            return PatchEvent(self.index, back.text, self.patches, self.chars, self.bars, self.elapsed, full,
                              retract=back.chars - len(text))
        if back.verdict is not Verdict.KEEP:
            return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, full,
                              retract=back.chars - len(text))
        return event

    def begin_tunebody(self) -> None:
        """The patch being written starts the tune body (generate.step forced its "[r:0/")."""
        self.in_tunebody = True

    def mark_line(self) -> None:
        """Remembers the start of the next line, when it falls on a patch boundary."""
        self.retries, self.best_attempt, self.voice_at, self.voice_tries = 0, None, None, 0
        self.rewriting_end = False  # set by the ending rule for the line it takes back (retries.take_back_ending)
        self.last_line, self.line_start = self.line_start, None
        if not self.tail and (not self.text or self.text.endswith("\n")):
            self.line_start = self.mark()

    def mark(self) -> Mark:
        return Mark(len(self.text), len(self.context), self.patches, self.bars, self.in_tunebody, self.epoch, self.metre)

    def return_to(self, mark: Mark) -> None:
        self.voice_at = None
        self.patches, self.bars, self.in_tunebody = mark.patches, mark.bars, mark.in_tunebody
        self.text, self.context, self.tail = self.text[:mark.text], self.context[:mark.context], []
        self.metre = mark.metre
        if not self.in_tunebody and self.header_start is not None:
            self.header_open = True  # back before the tune body: the header is being written again

    def _control_header(self) -> TakeBack:
        """A header line just finished: a K:/M:/Q: line the composer fixed is replaced by theirs,
        and the fields the header left out go in before its first V: line (controls.header_edit)."""
        mark = self.line_start
        if not self.req.controls or mark is None or mark.epoch != self.epoch or mark.text < len(self.prompt_text):
            return KEEP
        line = self.text[mark.text:]
        header = self.text[len(self.prompt_text):mark.text].splitlines(keepends=True)
        new = header_edit(line, header, self.req.controls) if line.count("\n") == 1 else None
        if new is None:
            return KEEP
        self.replace_line(new, [to_ids(p) for ln in new.splitlines(keepends=True) for p in split_patches(ln)])
        return TakeBack(Verdict.RESTORE, len(line), new)

    def replace_line(self, text: str, context: list[list[int]]) -> None:
        """Replaces the line just written (from line_start) by another version of it. Its
        patches differ from those in the backend's cache, which must prefill again (cache_version);
        the marks before the line still hold (same text and context), so the epoch stays."""
        mark = self.line_start
        self.text = self.text[:mark.text] + text
        self.context = self.context[:mark.context] + context
        bars = text.count("\n") if self.in_tunebody else 0  # (the mark may predate the tune body's start)
        self.patches, self.bars, self.tail = mark.patches + len(context), mark.bars + bars, []
        self.restores += 1

    def at_line_start(self) -> bool:
        """The text ends where the current line began (nothing of it is in the text yet)."""
        mark = self.line_start
        return mark is not None and mark.epoch == self.epoch and mark.text == len(self.text)

    def _reencode(self) -> None:
        """Context full: keep the metadata and the later half of the tune-body lines in context."""
        meta, body = split_tunebody(self.text)
        in_context = len(body) - self.body_start
        keep = in_context // 2
        while keep > 0:
            context, tail = encode_for_generation(meta, body[len(body) - keep:], self.patch_size)
            if len(context) < self.patch_length:
                self.context, self.tail = context, tail
                self.body_start = len(body) - keep
                self.epoch += 1
                self.resets += 1
                return
            keep //= 2
        self.stop_reason = StopReason.CONTEXT  # one line (or the metadata) alone fills the context

    def result(self) -> Piece:
        r = self.req
        return Piece(self.index, r.prompt, r.seed, r.sampling, self.text, self.stop_reason or StopReason.EOS,
                     self.patches, self.chars, self.bars, self.elapsed, self.resets, self.rewritten)




def context_problem(req: PieceRequest, patch_length: int, patch_size: int) -> str | None:
    """Why the model cannot write this request at all, found before any work: its context must hold
    the header (prompt lines, metadata) and the last bar of a continued score with room to write.
    PieceState would otherwise start with its context already full (stop_reason "context")."""
    meta, body = split_tunebody("".join(req.prompt.lines()) + req.prefix)
    if body:
        full, tail = encode_for_generation(meta, body[-1:], patch_size)
        need = len(full) + (1 if tail else 0)
    else:
        need = len(prompt_patches(meta, patch_size))
    if need < patch_length - 1:  # at least one patch of new text fits
        return None
    header = sum(len(ln) for ln in meta)
    what = "header and its last bar" if body else "header"
    return (f"this score is too long for the model: its {what} ({header:,} characters before the first bar) "
            f"take {need} patches of {patch_size} characters, and the model reads at most {patch_length} at once, "
            f"with room left to write. The header with one bar must fit in {patch_length - 2} patches, under "
            f"{(patch_length - 2) * patch_size:,} characters (each line starts a patch of its own): use fewer "
            "voices or parts")
