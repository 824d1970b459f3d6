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
Stages 1-2 are a backend (engine.symbolic.backend): FastBackend (KV caches, batched), or
ReferenceBackend, NotaGen's original algorithm (engine.symbolic.reference), passed to stream() to
check the first against the second. Stage 3 is the piece's own (engine.symbolic.piece), with the
retry rules apart (engine.symbolic.retries).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from engine.errors import SettingsError
from engine.symbolic import search
from engine.symbolic.backend import Backend, FastBackend
from engine.symbolic.model import NotaGenModel
from engine.symbolic.patches import patch_text
from engine.symbolic.piece import PatchEvent, Piece, PieceRequest, PieceState, context_problem


def stream(model: NotaGenModel, requests: list[PieceRequest],
           backend: Callable[[NotaGenModel, int], Backend] = FastBackend) -> Iterator[PatchEvent | Piece]:
    """Yields a PatchEvent for every patch written and a Piece when a piece ends, in the order they
    happen. The batch runs until every piece has ended; each piece's bounds stop it within one patch.
    backend(model, rows) makes stages 1-2 (FastBackend; ReferenceBackend for NotaGen's own)."""
    if not requests:
        return
    cfg = model.config
    for problem in {context_problem(r, cfg.patch_length, cfg.patch_size) for r in requests} - {None}:
        raise SettingsError(problem)
    states = [PieceState(i, r, cfg.patch_length, cfg.patch_size, model.device) for i, r in enumerate(requests)]
    # Inference mode is entered per step, never across a yield: a consumer may resume this
    # generator from another thread (Gradio does), and the mode belongs to the thread.
    with torch.inference_mode():
        stages = backend(model, sum(search.width(r.search) for r in requests))
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
            events = [ev for _, ev in step(stages, active)]
        yield from events


def step(backend: Backend, active: list[PieceState]) -> Iterator[tuple[PieceState, PatchEvent]]:
    """One step of every active piece: stages 1-3; -> (piece, its event) for each patch accepted.
    A piece searching over candidates of a line (engine.symbolic.search) steps them as rows of its
    own: their events are not reported; the line kept is, when the round settles."""
    for s in active:
        search.begin(s)
    rows = search.rows(active)
    for r in rows:
        search.enforce_limit(r)
    hidden = backend.encode(rows)  # every row, a waiting one's too: its cache stays up to date
    writing = [i for i, r in enumerate(rows) if not search.waiting(r)]
    if writing:
        if len(writing) < len(rows):
            hidden, rows = hidden[writing], [rows[i] for i in writing]
        yield from _write(backend, hidden, rows)
    for s in active:
        event = search.settle(s)
        if event is not None:
            yield s, event


def _write(backend: Backend, hidden: torch.Tensor, rows: list[PieceState]) -> Iterator[tuple[PieceState, PatchEvent]]:
    """Stages 2-3 for the rows that write a patch this step."""
    patches = backend.sample(hidden, rows, [s.next_prefix() for s in rows])
    # NotaGen numbers the first tune-body line 0: when a piece's first tune-body patch appears,
    # it is written again with "[r:0/" forced (the whole "[r:0/N]" with a length in bars).
    redo = [i for i, s in enumerate(rows)
            if not s.in_tunebody and patch_text(patches[i][len(s.tail):]).startswith("[r:")]
    if redo:
        forced = [rows[i].tail + [ord(c) for c in rows[i].tunebody_start()] for i in redo]
        again = backend.sample(hidden[redo], [rows[i] for i in redo], forced)
        for i, p in zip(redo, again):
            patches[i] = p
            rows[i].begin_tunebody()
    for s, ids in zip(rows, patches):
        event = s.accept(ids)
        if event is not None and s.candidate_of is None:
            yield s, event


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
