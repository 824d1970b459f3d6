"""Writing pieces: NotaGen's patch-by-patch scheme with KV caches, batches, streaming and bounds.

Stages, per step of a batch:
  1. encode   - the patch-level decoder brings each piece's hidden state up to date: a prefill of
                the whole context for a new (or re-encoded) piece, else one cached step for the
                patch added last time;
  2. sample   - the character-level decoder writes the next patch of every piece at once, with a
                per-piece KV cache over the patch's characters, stopping at eos;
  3. accept   - the patch's text is appended and reported; bounds are checked; a full context is
                re-encoded from the metadata and the later half of the tune-body lines. With
                `bar_retries`, a finished tune-body line whose voices disagree in length is taken
                back (context and text return to the line's start) and written again; with
                `header_retries`, so is a header with another number of voices than `voices`.
Stages 1-2 are a backend: FastBackend (KV caches, batched), or ReferenceBackend, NotaGen's original
algorithm (engine.symbolic.reference), passed to stream() to check the first against the second.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator, Protocol

import torch

from engine.errors import SettingsError
from engine.symbolic.config import EOS_ID, PAD_ID
from engine.symbolic.model import NotaGenModel
from engine.symbolic.patches import (encode_for_generation, is_eos_patch, patch_text, prompt_patches,
                                     split_tunebody)
from engine.symbolic.labels import fits_label
from engine.symbolic.postprocess import (CLOSERS, OPENERS, bar_well_formed, count_voices, line_aligned,
                                         line_segments)
from engine.symbolic.prompts import Prompt, check_field
from engine.symbolic.sampling import SamplingSettings, sample

MAX_CHARS = 102_400  # NotaGen's own limit on a piece's text
TUNEBODY_START = "[r:0/"  # NotaGen forces the first tune-body line to be numbered 0
HEADER_LINE = re.compile(r"^(%|[A-Za-z]:)")  # a header field (K:, V:1 ...) or a comment


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

    def allowed_voices(self) -> frozenset[int] | None:
        """`voices` as a set (None: any number)."""
        if self.voices is None:
            return None
        return frozenset(self.voices) if isinstance(self.voices, (tuple, list, set, frozenset)) else frozenset([self.voices])

    def check(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise SettingsError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}")
        if isinstance(self.max_patches, bool) or not isinstance(self.max_patches, int) or not 1 <= self.max_patches <= 1_000_000:
            raise SettingsError(f"max_patches must be a whole number from 1 to 1,000,000, got {self.max_patches!r}")
        if not isinstance(self.max_seconds, (int, float)) or not 0 < self.max_seconds <= 86_400:
            raise SettingsError(f"max_seconds must be more than 0 and at most a day (86400), got {self.max_seconds!r}")
        if not isinstance(self.max_chars, int) or not 1 <= self.max_chars <= 10 * MAX_CHARS:
            raise SettingsError(f"max_chars must be from 1 to {10 * MAX_CHARS}, got {self.max_chars!r}")
        for name, most in (("bar_retries", 32), ("header_retries", 64)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= most:
                raise SettingsError(f"{name} must be a whole number from 0 to {most}, got {v!r}")
        counts = self.allowed_voices()
        if counts is not None:
            if not counts or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64 for v in counts):
                raise SettingsError(
                    f"voices must be a whole number from 1 to 64, several such numbers, or None, got {self.voices!r}")
        for name in ("period", "composer", "instrumentation"):
            check_field(name, getattr(self.prompt, name))
        bad = sorted({c for c in self.prefix if ord(c) > 127})
        if bad:
            raise SettingsError(f"the text to continue contains non-ASCII characters {bad[:5]}: the model reads ASCII only")


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
    stop_reason: str  # eos | max_patches | max_seconds | max_chars | cancelled | context
    patches: int
    chars: int
    bars: int
    elapsed: float
    context_resets: int  # times the context overflowed and was re-encoded
    lines_rewritten: int = 0  # bars and headers taken back and written again (bar/header retries)

    @property
    def complete(self) -> bool:
        return self.stop_reason == "eos"

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


class Verdict(Enum):
    """What a retry rule decides about what was just written."""
    KEEP = "keep"
    REWIND_LINE = "rewind line"  # the patch just written is dropped; go on from the current line's start
    REWIND = "rewind"  # the line (or the header) is taken back and written again


@dataclass(frozen=True)
class TakeBack:
    verdict: Verdict
    chars: int = 0  # characters of text taken back (REWIND)


KEEP = TakeBack(Verdict.KEEP)


class PieceState:
    """Where one piece stands: its text, its context in patches, its bounds."""

    def __init__(self, index: int, req: PieceRequest, patch_length: int, patch_size: int, device):
        self.index, self.req = index, req
        self.patch_length, self.patch_size = patch_length, patch_size
        self.prompt_text = "".join(req.prompt.lines())
        self.text = self.prompt_text + req.prefix
        self.generator = torch.Generator(device=device).manual_seed(req.seed)
        self.start = time.monotonic()
        self.patches = self.bars = self.resets = self.rewritten = 0
        self.epoch = 0  # bumped whenever the context is rebuilt, so caches know to prefill
        self.stop_reason: str | None = None
        meta, body = split_tunebody(self.text)
        self.in_tunebody = bool(body)
        self.body_start = 0  # first tune-body line inside the context
        if not body and self.text and not self.text.endswith("\n"):
            self.text += "\n"  # metadata lines are whole lines
        self.context, self.tail = self._encode(meta, body)
        self.line_start: Mark | None = None  # where the current line began (see _mark_line)
        self.retries = 0  # retries used on the current line
        self.header_tries = 0  # headers taken back so far
        # Where the header begins (just after the prompt lines), when the header is the model's,
        # and whether it is being checked (until the tune body begins with a header that passes).
        self.header_start = self._mark() if not req.prefix and not self.tail else None
        self.header_open = self.header_start is not None
        if len(self.context) >= patch_length:
            self._reencode()
        self._mark_line()

    def _encode(self, meta, body):
        if not body:
            return prompt_patches(meta, self.patch_size), []
        return encode_for_generation(meta, body, self.patch_size)

    @property
    def chars(self) -> int:
        return len(self.text) - len(self.prompt_text)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check_bounds(self) -> None:
        req = self.req
        if req.cancel is not None and req.cancel.is_set():
            self.stop_reason = "cancelled"
        elif self.patches >= req.max_patches:
            self.stop_reason = "max_patches"
        elif self.elapsed >= req.max_seconds:
            self.stop_reason = "max_seconds"
        elif self.chars >= req.max_chars:
            self.stop_reason = "max_chars"

    def accept(self, ids: list[int]) -> PatchEvent | None:
        """ids: the 16 ids of the next patch, the context's partial tail included."""
        new = ids[len(self.tail):]
        if is_eos_patch(new) and self.req.stop_at_eos:
            if not self.in_tunebody and self.header_open:
                # A piece cannot end in its header: write the header again while retries are left.
                back = self._take_back_header(finished=True, ended=True)
                if back.verdict is not Verdict.KEEP:
                    return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, list(ids),
                                      retract=back.chars)
            self.stop_reason = "eos"
            return None
        text = patch_text(new)
        if self.in_tunebody and self.header_open:
            back = self._take_back_header(finished=True)
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
        back = KEEP
        if text.endswith("\n"):
            if not self.in_tunebody and self.header_open:
                back = self._take_back_header(finished=False)  # never REWIND_LINE while unfinished
            else:
                back = self._take_back_misaligned_line()
            if back.verdict is Verdict.KEEP:
                self._mark_line()
        if len(self.context) >= self.patch_length:
            self._reencode()
        if back.verdict is not Verdict.KEEP:
            return PatchEvent(self.index, "", self.patches, self.chars, self.bars, self.elapsed, full,
                              retract=back.chars - len(text))
        return PatchEvent(self.index, text, self.patches, self.chars, self.bars, self.elapsed, full)

    def _mark_line(self) -> None:
        """Remembers the start of the next line, when it falls on a patch boundary."""
        self.retries = 0
        self.line_start = None
        if not self.tail and (not self.text or self.text.endswith("\n")):
            self.line_start = self._mark()

    def _mark(self) -> Mark:
        return Mark(len(self.text), len(self.context), self.patches, self.bars, self.in_tunebody, self.epoch)

    def _return_to(self, mark: Mark) -> None:
        self.patches, self.bars, self.in_tunebody = mark.patches, mark.bars, mark.in_tunebody
        self.text, self.context, self.tail = self.text[:mark.text], self.context[:mark.context], []
        if not self.in_tunebody and self.header_start is not None:
            self.header_open = True  # back before the tune body: the header is being written again

    def _take_back_header(self, finished: bool, ended: bool = False) -> TakeBack:
        """When the tune body begins (finished) the header must declare one of the request's numbers
        of voices, with part names that fit the prompt's instrumentation; while it is written, it
        must not declare more; the piece must not end in it (ended). Otherwise, while retries are
        left, the header is written again (REWIND, from its start; or REWIND_LINE, see below)."""
        meta = self.text[self.header_start.text:]
        wanted, tries = self.req.allowed_voices(), self.req.header_retries
        if wanted is None or self.header_tries >= tries or self.header_start.epoch != self.epoch:
            self.header_open = False  # no (more) checks: the header stays
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
        fits = (not finished or self.header_tries >= tries // 2
                or fits_label(lines, self.req.prompt.instrumentation))
        if header_like and not ended and fits and (declared is None or declared in wanted) and (
                (voices in wanted and declared in (None, voices)) or (not finished and voices < limit)):
            if finished:
                self.header_open = False  # checked: the header stays
            return KEEP
        if finished and header_like and declared in wanted and voices < declared and self._at_line_start():
            # %%score named every voice but a V: line is missing: write on from the header's last
            # line (the patch just written is dropped) rather than from its start.
            self._return_to(self.line_start)
            self.header_tries += 1
            self.rewritten += 1
            self._mark_line()
            return TakeBack(Verdict.REWIND_LINE)
        self._return_to(self.header_start)
        self.header_tries += 1
        self.rewritten += 1
        self._mark_line()
        # an eos straight after the prompt leaves no header to take back: the piece ends (ended)
        return TakeBack(Verdict.REWIND, len(meta)) if meta else KEEP

    def _at_line_start(self) -> bool:
        """The text ends where the current line began (nothing of it is in the text yet)."""
        mark = self.line_start
        return mark is not None and mark.epoch == self.epoch and mark.text == len(self.text)

    def _take_back_misaligned_line(self) -> TakeBack:
        """A tune-body line just ended: if its voices disagree and retries are left, the text and
        context return to the line's start (REWIND)."""
        if self.line_start is None or not self.in_tunebody or self.retries >= self.req.bar_retries:
            return KEEP
        line = self.text[self.line_start.text:]
        if self.line_start.epoch != self.epoch or line.count("\n") != 1 or (
                line_aligned(line) and all(bar_well_formed(t) for t in line_segments(line).values())):
            return KEEP
        self._return_to(self.line_start)
        self.retries += 1
        self.rewritten += 1
        return TakeBack(Verdict.REWIND, len(line))

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
        self.stop_reason = "context"  # one line (or the metadata) alone fills the context

    def result(self) -> Piece:
        r = self.req
        return Piece(self.index, r.prompt, r.seed, r.sampling, self.text, self.stop_reason or "eos",
                     self.patches, self.chars, self.bars, self.elapsed, self.resets, self.rewritten)


class FastBackend:
    """Stages 1-2 with KV caches in both decoders, a batch of pieces per forward pass."""

    def __init__(self, model: NotaGenModel, rows: int):
        self.model = model.prepare_for_generation()
        cfg = model.config
        dev, dt = model.device, model.dtype
        self.patch_caches = model.patch_level_decoder.base.new_caches(rows, cfg.patch_length, dev, dt)
        self.char_caches = model.char_level_decoder.base.transformer.new_caches(rows, cfg.patch_size + 1, dev, dt)
        self.rows: list[PieceState] = []  # cache row i holds self.rows[i]
        self.cached: dict[int, tuple[int, int]] = {}  # piece index -> (epoch, patches in cache)
        # Early exit from a patch needs a host sync per character: worth it on CPU, where the
        # skipped compute is the cost, not on a GPU, where the sync is.
        self.early_exit = model.device.type == "cpu"

    def retain(self, active: list[PieceState]) -> None:
        """Drops the cache rows of pieces that ended (active keeps the order of self.rows)."""
        if not self.rows:
            self.rows = list(active)
        if [s.index for s in active] == [s.index for s in self.rows]:
            return
        where = {s.index: i for i, s in enumerate(self.rows)}
        keep = torch.tensor([where[s.index] for s in active], device=self.model.device)
        for c in self.patch_caches:
            c.keep_rows(keep)
        self.rows = list(active)

    def encode(self, states: list[PieceState]) -> torch.Tensor:
        """Hidden state of each piece's last full patch: (rows, hidden)."""
        self.retain(states)
        dev = self.model.device
        hidden: list[torch.Tensor | None] = [None] * len(states)
        stepping = []
        for r, s in enumerate(states):
            epoch, n = self.cached.get(s.index, (-1, -1))
            # n >= len(context) after a line was taken back: the cache still holds the kept
            # patches' keys and values, and the step rewrites the last one's in place.
            if epoch == s.epoch and n >= len(s.context) - 1:
                stepping.append(r)
            else:
                ids = torch.tensor(s.context, device=dev)[None]  # (1, n, patch_size)
                hidden[r] = self.model.patch_level_decoder(ids, self.patch_caches, r)[0, -1]
            self.cached[s.index] = (s.epoch, len(s.context))
        if stepping:
            out = self._step([states[r] for r in stepping], stepping)
            for j, r in enumerate(stepping):
                hidden[r] = out[j]
        return torch.stack(hidden)

    def _step(self, states: list[PieceState], rows: list[int]) -> torch.Tensor:
        dev = self.model.device
        pos_list = [len(s.context) - 1 for s in states]
        patches = torch.tensor([s.context[-1] for s in states], device=dev)  # (rows, patch_size)
        kv_len = max(pos_list) + 1
        pos, mask = kv_len - 1, None
        if min(pos_list) != kv_len - 1:  # rows at different positions: scatter writes and a mask
            pos = torch.tensor(pos_list, device=dev)
            mask = (torch.arange(kv_len, device=dev)[None] <= pos[:, None])[:, None, None, :]
        caches = self.patch_caches
        for c in caches:
            c.ensure(kv_len)  # before any copy of rows, so the copies never outgrow the originals
        if len(rows) != len(self.rows):  # only some rows step: work on a copy of theirs
            idx = torch.tensor(rows, device=dev)
            caches = [c.rows(idx) for c in caches]
            out = self.model.patch_level_decoder.step(patches, caches, pos, kv_len, mask)
            for full, sub in zip(self.patch_caches, caches):
                i = idx.to(full.k.device)  # a split model keeps each layer's cache with its layer
                full.k[i], full.v[i] = sub.k, sub.v
            return out
        return self.model.patch_level_decoder.step(patches, caches, pos, kv_len, mask)

    def sample(self, hidden: torch.Tensor, states: list[PieceState], prefixes: list[list[int]]) -> list[list[int]]:
        """Writes one patch per row (rows, hidden); each row's `prefix` characters are forced."""
        cfg, dev = self.model.config, self.model.device
        rows, size = hidden.shape[0], cfg.patch_size
        char = self.model.char_level_decoder
        caches = [c.rows(slice(0, rows)) for c in self.char_caches]
        prefix = torch.tensor([p + [PAD_ID] * (size - len(p)) for p in prefixes], device=dev)
        plen = torch.tensor([len(p) for p in prefixes], device=dev)
        top_k, top_p, temp = _settings_tensors(states, dev)
        u = torch.stack([torch.rand(size, generator=s.generator, device=dev) for s in states])  # (rows, size)
        out = torch.full((rows, size), PAD_ID, dtype=torch.long, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        x = hidden
        for t in range(size):
            probs = torch.softmax(char.step(x, caches, t).float(), dim=-1)
            tok = sample(probs, top_k, top_p, temp, u[:, t])
            tok = torch.where(t < plen, prefix[:, t], tok)
            tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
            out[:, t] = tok
            done = done | (tok == EOS_ID)
            if self.early_exit and bool(done.all()):
                break
            x = char.embed_chars(tok)
        return out.tolist()


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


def _settings_tensors(states: list[PieceState], dev):
    s = [st.req.sampling for st in states]
    return (torch.tensor([x.top_k for x in s], device=dev),
            torch.tensor([float(x.top_p) for x in s], device=dev),
            torch.tensor([float(x.temperature) for x in s], device=dev))


class Backend(Protocol):
    """Stages 1-2 of a step: the patch-level decoder's hidden states, then the next patches."""

    def encode(self, states: list[PieceState]) -> torch.Tensor: ...

    def sample(self, hidden: torch.Tensor, states: list[PieceState], prefixes: list[list[int]]) -> list[list[int]]: ...


def stream(model: NotaGenModel, requests: list[PieceRequest],
           backend: Callable[[NotaGenModel, int], Backend] = FastBackend) -> Iterator[PatchEvent | Piece]:
    """Yields a PatchEvent for every patch written and a Piece when a piece ends, in the order they
    happen. The batch runs until every piece has ended; each piece's bounds stop it within one patch.
    backend(model, rows) makes stages 1-2 (FastBackend; ReferenceBackend for NotaGen's own)."""
    if not requests:
        return
    for r in requests:
        r.check()
    cfg = model.config
    states = [PieceState(i, r, cfg.patch_length, cfg.patch_size, model.device) for i, r in enumerate(requests)]
    # Inference mode is entered per step, never across a yield: a consumer may resume this
    # generator from another thread (Gradio does), and the mode belongs to the thread.
    with torch.inference_mode():
        stages = backend(model, len(states))
    active = states
    while True:  # bounded: every piece stops at its max_patches, max_seconds or max_chars
        for s in active:
            if s.stop_reason is None:
                s.check_bounds()
        for s in active:
            if s.stop_reason is not None:
                yield s.result()
        active = [s for s in active if s.stop_reason is None]
        if not active:
            return
        with torch.inference_mode():
            events = list(_step(stages, active))
        yield from events


def _step(backend: Backend, active: list[PieceState]) -> Iterator[PatchEvent]:
    hidden = backend.encode(active)
    patches = backend.sample(hidden, active, [s.tail for s in active])
    # NotaGen numbers the first tune-body line 0: when a piece's first tune-body patch appears,
    # it is written again with "[r:0/" forced.
    redo = [i for i, s in enumerate(active)
            if not s.in_tunebody and patch_text(patches[i][len(s.tail):]).startswith("[r:")]
    if redo:
        forced = [active[i].tail + [ord(c) for c in TUNEBODY_START] for i in redo]
        again = backend.sample(hidden[redo], [active[i] for i in redo], forced)
        for i, p in zip(redo, again):
            patches[i] = p
            active[i].in_tunebody = True
    for s, ids in zip(active, patches):
        event = s.accept(ids)
        if event is not None:
            yield event


def generate(model: NotaGenModel, requests: list[PieceRequest],
             backend: Callable[[NotaGenModel, int], Backend] = FastBackend,
             on_event: Callable[[PatchEvent], None] | None = None) -> list[Piece]:
    """Runs `stream` to the end; returns the pieces in request order."""
    pieces: dict[int, Piece] = {}
    for ev in stream(model, requests, backend):
        if isinstance(ev, Piece):
            pieces[ev.index] = ev
        elif on_event is not None:
            on_event(ev)
    return [pieces[i] for i in range(len(requests))]
