"""Continuous batching: every user's piece written in one running batch (issue 19), as LLM servers
(vLLM, TGI) batch requests.

One Scheduler per loaded model copy owns a worker thread and the model's caches (a FastBackend
with `max_batch` rows). `submit(requests) -> Job` from any thread; a Job is an iterator of the
events `generate.stream` yields (PatchEvent, then a Piece as each of its pieces ends), plus
Waiting(position) while it waits for a row. At every patch boundary the worker:
  1. admits waiting pieces into free rows, first come first served (a request's variations are
     rows like any other); a piece never waits while a row is free;
  2. ends the pieces whose bounds or cancel say so, at once (their rows and compute go);
  3. runs one step (engine.symbolic.generate.step) of every running piece: the new rows'
     prefill and the running rows' step in the same pass (FastBackend.encode).
Each piece keeps its own seed, sampling, bounds, retries and context resets (all in its
PieceState), so its text does not depend on what else is in the batch. A fault in a step fails
that step's jobs with a clear message, frees their rows, and the worker goes on with fresh caches.
"""
from __future__ import annotations

import collections
import gc
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from engine.errors import CadenzaError
from engine.symbolic.backend import FastBackend
from engine.symbolic.generate import step
from engine.symbolic.model import NotaGenModel
from engine.symbolic.piece import PatchEvent, Piece, PieceRequest, PieceState

log = logging.getLogger("cadenza.scheduler")

IDLE_WAIT_S = 0.5  # how long the idle worker sleeps between looks at the waiting line (it is woken on submit)
# An idle worker ends after this long and submit() starts a new one: a live thread that has run
# torch keeps its own OpenMP thread team, and on a small CPU the teams of idle workers (another
# model's, another studio's) were measured to make the busy one 3x slower.
IDLE_EXIT_S = 5.0
WAITING_EVERY_S = 1.0  # a waiting job reports its place in line this often


@dataclass
class Waiting:
    """A job not yet admitted: its place in the waiting line (1 = next)."""
    position: int


@dataclass
class _Failed:
    message: str


_DONE = object()


class Job:
    """One request's pieces in a scheduler: iterate it for their events. cancel() (or closing the
    iterator) stops them within a patch; a piece that was never admitted ends at once."""

    def __init__(self, requests: list[PieceRequest], scheduler: "Scheduler"):
        self._stop = threading.Event()
        # every piece also stops on the job's own event (the caller's cancel, if any, still counts)
        self.requests = [r if r.cancel is not None else replace(r, cancel=self._stop) for r in requests]
        self.submitted = time.monotonic()
        self.pieces: dict[int, Piece] = {}
        self._events: queue.Queue = queue.Queue()
        self._left = len(requests)
        self._admitted = 0
        self._scheduler = scheduler

    def cancel(self) -> None:
        self._stop.set()
        for r in self.requests:
            r.cancel.set()

    @property
    def cancelled(self) -> bool:
        return any(r.cancel.is_set() for r in self.requests)

    @property
    def admitted(self) -> bool:
        return self._admitted > 0

    def position(self) -> int:
        """Its place in the waiting line (1 = next), 0 once a piece of it is running."""
        return 0 if self.admitted else self._scheduler.place(self)

    def __iter__(self) -> Iterator[PatchEvent | Piece | Waiting]:
        try:
            while True:  # bounded: the worker ends every job (its pieces' bounds, a fault, close)
                try:
                    item = self._events.get(timeout=WAITING_EVERY_S)
                except queue.Empty:
                    if not self.admitted:
                        yield Waiting(self.position())
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise CadenzaError(item.message)
                yield item
        except GeneratorExit:  # the consumer went away (a closed tab): stop this job's rows
            self.cancel()
            raise

    def result(self) -> list[Piece]:
        """Runs the job to its end; its pieces in request order."""
        for _ in self:
            pass
        return [self.pieces[i] for i in sorted(self.pieces)]

    # --- called by the worker -----------------------------------------------------------------
    def _put(self, item) -> None:
        if isinstance(item, Piece):
            self.pieces[item.index] = item
            self._left -= 1
        self._events.put(item)
        if self._left == 0:
            self._events.put(_DONE)

    def _fail(self, message: str) -> None:
        self._left = 0
        self._events.put(_Failed(message))


class Scheduler:
    """One model copy's worker: admits, steps and ends every submitted piece (see the module)."""

    def __init__(self, model: NotaGenModel, max_batch: int = 8, max_wait_s: float = 120.0,
                 backend: Callable[[NotaGenModel, int], FastBackend] = FastBackend, name: str = "model"):
        if not 1 <= max_batch <= 1024:
            raise CadenzaError(f"max_batch must be from 1 to 1024, got {max_batch}")
        self.model, self.max_batch, self.max_wait_s = model, max_batch, max_wait_s
        self._backend_factory = backend
        self._waiting: collections.deque[tuple[Job, int]] = collections.deque()  # (job, piece index)
        self._lock = threading.Condition()
        self._closed = False
        self.running = 0  # rows in use (read by status())
        self.patches = 0  # patches written since start (for patches/s)
        self.started = time.monotonic()
        self.name = name
        self._worker = False  # a worker thread is running (started on demand, ends when idle)
        self._thread: threading.Thread | None = None  # the latest worker, for close() to join

    # --- from any thread ------------------------------------------------------------------------
    def submit(self, requests: list[PieceRequest]) -> Job:
        if not requests:
            raise CadenzaError("nothing to write: a request needs at least one piece")
        job = Job(requests, self)
        with self._lock:
            if self._closed:
                raise CadenzaError("the model is shutting down: try again when it is back")
            self._waiting.extend((job, i) for i in range(len(requests)))
            if not self._worker:
                self._worker = True
                self._thread = threading.Thread(target=self._run, name=f"scheduler-{self.name}", daemon=True)
                self._thread.start()
            self._lock.notify()
        return job

    def place(self, job: Job) -> int:
        with self._lock:
            jobs = list(dict.fromkeys(j for j, _ in self._waiting))
        return jobs.index(job) + 1 if job in jobs else 0

    def free_rows(self) -> int:
        with self._lock:
            return self.max_batch - self.running - len(self._waiting)

    def status(self) -> dict:
        with self._lock:
            waiting = len({id(j) for j, _ in self._waiting})
        seconds = max(1e-9, time.monotonic() - self.started)
        return {"rows_in_use": self.running, "max_batch": self.max_batch, "waiting_requests": waiting,
                "patches_per_s": round(self.patches / seconds, 2)}

    def close(self, timeout: float = 10.0) -> None:
        """No new work; the worker ends once its running pieces have (waits at most `timeout`)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        backend, active, owner = None, [], {}
        idle_since = time.monotonic()
        while True:  # bounded by close() and by IDLE_EXIT_S without work; idle, it waits on the condition
            with self._lock:
                if self._closed and not active:
                    self._fail_waiting("the model is shutting down: try again when it is back")
                    self._worker = False
                    return
                self._refuse_overdue()
                admitted = self._admit(active)
                if not active and not admitted:
                    if not self._waiting and time.monotonic() - idle_since > IDLE_EXIT_S:
                        self._worker = False  # submit() starts a new worker (fresh caches)
                        return
                    self._lock.wait(IDLE_WAIT_S)
                    continue
                idle_since = time.monotonic()
            for s, job in admitted:
                owner[s.uid] = job
                active.append(s)
            active = self._end_finished(active, owner)
            self.running = len(active)
            if not active:
                continue
            try:
                if backend is None:
                    with torch.inference_mode():
                        backend = self._backend_factory(self.model, self.max_batch)
                with torch.inference_mode():
                    events = list(step(backend, active))
            except Exception as e:  # noqa: BLE001 - a fault (e.g. out of memory) fails this step's jobs, not the server
                self._fault(e, active, owner)
                backend, active = None, []
                continue
            self.patches += len(events)
            for s, ev in events:
                owner[s.uid]._put(ev)

    def _admit(self, active: list[PieceState]) -> list[tuple[PieceState, Job]]:
        """Waiting pieces into free rows, in order (called with the lock held). A cancelled job's
        pieces end without taking a row, whether at the head of the line or further back."""
        out = []
        while self._waiting and len(active) + len(out) < self.max_batch:
            job, i = self._waiting.popleft()
            s = self._start(job, i)
            if s.stop_reason is None:
                out.append((s, job))
        cancelled = [w for w in self._waiting if w[0].cancelled]
        if cancelled:
            self._waiting = collections.deque(w for w in self._waiting if not w[0].cancelled)
            for job, i in cancelled:
                self._start(job, i)
        return out

    def _start(self, job: Job, i: int) -> PieceState:
        """Piece i of a job as a PieceState; a cancelled job's piece ends at once, with no row."""
        cfg = self.model.config
        s = PieceState(i, job.requests[i], cfg.patch_length, cfg.patch_size, self.model.device)
        job._admitted += 1
        if job.cancelled:
            s.stop_reason = "cancelled"
            job._put(s.result())
        return s

    def _end_finished(self, active: list[PieceState], owner: dict) -> list[PieceState]:
        for s in active:
            if s.stop_reason is None:
                s.check_bounds()
        for s in active:
            if s.stop_reason is not None:
                owner.pop(s.uid)._put(s.result())
        return [s for s in active if s.stop_reason is None]

    def _refuse_overdue(self) -> None:
        """A request not admitted within max_wait_s gets a clear 'busy' message (lock held)."""
        now = time.monotonic()
        late = {j for j, _ in self._waiting if not j.admitted and now - j.submitted > self.max_wait_s}
        if late:
            self._waiting = collections.deque(w for w in self._waiting if w[0] not in late)
            for job in late:
                job._fail(f"the server is busy: no room for this piece within {self.max_wait_s:.0f} s "
                          "(every row of the model's batch was in use); try again in a moment")

    def _fail_waiting(self, message: str) -> None:
        for job in {j for j, _ in self._waiting}:
            job._fail(message)
        self._waiting.clear()

    def _fault(self, e: Exception, active: list[PieceState], owner: dict) -> None:
        jobs = {id(owner[s.uid]): owner.pop(s.uid) for s in active}
        with self._lock:  # their pieces still waiting go too: the job has ended
            self._waiting = collections.deque(w for w in self._waiting if id(w[0]) not in jobs)
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        what = "ran out of memory" if oom else f"failed ({type(e).__name__}: {str(e)[:200]})"
        log.warning("a generation step %s: %d request(s) ended, the scheduler goes on", what, len(jobs))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for job in jobs.values():
            job._fail(f"the model {what} while writing {len(active)} piece(s) together: these pieces "
                      "were stopped, the model stays loaded; try again, or ask for fewer variations")
        self.running = 0
