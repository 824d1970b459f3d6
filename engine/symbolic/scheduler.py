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

from engine.errors import CadenzaError, SettingsError
from engine.symbolic import search
from engine.symbolic.backend import FastBackend
from engine.symbolic.generate import step
from engine.symbolic.model import NotaGenModel
from engine.symbolic.piece import PatchEvent, Piece, PieceRequest, PieceState, context_problem
from engine.stops import StopReason

log = logging.getLogger("cadenza.scheduler")

IDLE_WAIT_S = 0.5  # how long the idle worker sleeps between looks at the waiting line (it is woken on submit)
# An idle worker ends after this long and submit() starts a new one: a live thread that has run
# torch keeps its own OpenMP thread team, and on a small CPU the teams of idle workers (another
# model's, another studio's) were measured to make the busy one 3x slower.
IDLE_EXIT_S = 5.0
WAITING_EVERY_S = 1.0  # a waiting job reports its place in line this often
# A job's deadline is its wait for a row plus its longest piece's max_seconds plus this: every piece
# ends by its own bounds long before, so a job past it has been lost by the worker (a bug) and its
# consumer is told so instead of waiting forever.
DEADLINE_GRACE_S = 60.0


@dataclass
class Waiting:
    """A job not yet admitted, or one of its pieces paused: its place in the waiting line (1 = next;
    0 for a paused piece) and why it waits, in words for the composer."""
    position: int
    reason: str = "every row of the model's batch is in use"


@dataclass(frozen=True)
class Sharing:
    """How one model's rows are shared between sessions (a session is one composer's browser or
    API key). Rows go first to the session holding the fewest; while another session waits, one
    holding more than its even share (the batch over the sessions with work) gives pieces back to
    the line (paused, their text kept, resumed from there when a row frees). A lone session may use
    the whole batch. None: no cap."""
    rows: int | None = None  # rows one session may hold at most, even alone
    waiting: int | None = None  # pieces one session may have waiting for a row; more are refused


@dataclass
class _Paused:
    state: PieceState
    job: "Job"
    since: float


@dataclass
class _Failed:
    message: str


_DONE = object()


class Job:
    """One request's pieces in a scheduler: iterate it for their events. cancel() (or closing the
    iterator) stops them within a patch; a piece that was never admitted ends at once."""

    def __init__(self, requests: list[PieceRequest], scheduler: "Scheduler", owner: str = ""):
        self.owner = owner  # the session whose rows these are (fair sharing); "" for a lone caller
        self._stop = threading.Event()
        # every piece also stops on the job's own event (the caller's cancel, if any, still counts)
        self.requests = [r if r.cancel is not None else replace(r, cancel=self._stop) for r in requests]
        self.submitted = time.monotonic()
        self.deadline = (self.submitted + scheduler.max_wait_s + max(r.max_seconds for r in requests)
                         + DEADLINE_GRACE_S)
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
            while True:  # bounded by the deadline; the worker ends every job well before it
                try:
                    item = self._events.get(timeout=WAITING_EVERY_S)
                except queue.Empty:
                    if time.monotonic() > self.deadline:
                        self.cancel()
                        raise CadenzaError(
                            f"the piece did not end within {self.deadline - self.submitted:.0f} s, its time "
                            "allowed plus the wait for a row; it was stopped: try again") from None
                    if not self.admitted:
                        yield Waiting(self.position(), self._scheduler.why_waiting(self))
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
                 backend: Callable[[NotaGenModel, int], FastBackend] = FastBackend, name: str = "model",
                 sharing: Sharing = Sharing()):
        if not 1 <= max_batch <= 1024:
            raise CadenzaError(f"max_batch must be from 1 to 1024, got {max_batch}")
        for what, cap in (("rows", sharing.rows), ("waiting", sharing.waiting)):
            if cap is not None and not 1 <= cap <= 4096:
                raise CadenzaError(f"a session's {what} cap must be from 1 to 4096 (or none), got {cap}")
        self.model, self.max_batch, self.max_wait_s, self.sharing = model, max_batch, max_wait_s, sharing
        self._backend_factory = backend
        self._waiting: collections.deque[tuple[Job, int]] = collections.deque()  # (job, piece index)
        self._paused: list[_Paused] = []  # pieces given back to the line for another session (fair sharing)
        self._held: collections.Counter = collections.Counter()  # rows each session holds (read under the lock)
        self._lock = threading.Condition()
        self._closed = False
        self.running = 0  # rows in use (read by status())
        self.patches = 0  # patches written since start (for patches/s)
        self.started = time.monotonic()
        self.name = name
        self._worker = False  # a worker thread is running (started on demand, ends when idle)
        self._thread: threading.Thread | None = None  # the latest worker, for close() to join

    # --- from any thread ------------------------------------------------------------------------
    def submit(self, requests: list[PieceRequest], owner: str = "") -> Job:
        """Puts a request's pieces in the waiting line; `owner` names the session for fair sharing."""
        if not requests:
            raise CadenzaError("nothing to write: a request needs at least one piece")
        cfg = self.model.config
        for problem in {context_problem(r, cfg.patch_length, cfg.patch_size) for r in requests} - {None}:
            raise SettingsError(problem)
        wide = max(search.width(r.search) for r in requests)
        if wide > self.max_batch:
            raise SettingsError(f"a search over {wide} candidates a bar needs {wide} rows of the model's batch, "
                                f"and this server's batch has {self.max_batch}: ask for at most {self.max_batch}")
        job = Job(requests, self, owner)
        with self._lock:
            if self._closed:
                raise CadenzaError("the model is shutting down: try again when it is back")
            cap = self.sharing.waiting
            mine = sum(1 for j, _ in self._waiting if j.owner == owner)
            if cap is not None and mine + len(requests) > cap:
                raise CadenzaError(f"{mine} of your pieces are already waiting for the model and at most {cap} may "
                                   f"wait per session; this request adds {len(requests)}: wait for them or press Stop")
            self._waiting.extend((job, i) for i in range(len(requests)))
            if not self._worker:
                self._worker = True
                self._thread = threading.Thread(target=self._run, name=f"scheduler-{self.name}", daemon=True)
                self._thread.start()
            self._lock.notify()
        return job

    def why_waiting(self, job: Job) -> str:
        """Why a job's pieces wait, in words: the batch is full, or its rows are shared out."""
        with self._lock:
            held = self._held[job.owner]
            others = len({j.owner for j, _ in self._waiting} | set(o for o, n in self._held.items() if n)) - 1
            cap = self.sharing.rows
        if cap is not None and held >= cap:
            return f"your session holds {held} rows of the model's batch, the most one session may"
        if others > 0:
            return (f"every row of the model's batch is in use; rows are shared evenly between the {others + 1} "
                    "sessions writing, and yours come as pieces end")
        return "every row of the model's batch is in use"

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
            paused = len(self._paused)
            sessions = sum(1 for n in self._held.values() if n)
        seconds = max(1e-9, time.monotonic() - self.started)
        return {"rows_in_use": self.running, "max_batch": self.max_batch, "waiting_requests": waiting,
                "paused_pieces": paused, "sessions_writing": sessions, "patches_per_s": round(self.patches / seconds, 2)}

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
        owner: dict[int, Job] = {}  # a running piece's uid -> its job
        try:
            self._loop(owner)
        except Exception as e:  # noqa: BLE001 - a bug here must end its jobs with a message, not hang them
            log.exception("the scheduler's worker failed; its jobs end and the next request starts a new one")
            message = f"the model's worker failed ({type(e).__name__}: {str(e)[:200]}); try again"
            with self._lock:
                self._worker = False
                self._fail_waiting(message)
            for job in {id(j): j for j in owner.values()}.values():
                job._fail(message)
            self.running = 0

    def _loop(self, owner: dict) -> None:
        backend, active = None, []
        idle_since = time.monotonic()
        while True:  # bounded by close() and by IDLE_EXIT_S without work; idle, it waits on the condition
            with self._lock:
                if self._closed and not active:
                    self._fail_waiting("the model is shutting down: try again when it is back")
                    self._worker = False
                    return
                self._refuse_overdue()
                active = self._share(active, owner)
                self._held = collections.Counter(owner[s.uid].owner for s in active)
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
            self.running = _rows(active)
            with self._lock:
                self._held = collections.Counter(owner[s.uid].owner for s in active)
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
        """Waiting pieces into free rows (called with the lock held): paused pieces and new ones,
        each time for the session holding the fewest rows, first come first served among equals. A
        cancelled job's pieces end without taking a row, wherever they are in the line."""
        out: list[tuple[PieceState, Job]] = []
        held = collections.Counter(self._held)
        used = _rows(active)
        while used < self.max_batch:  # bounded: each pass takes one piece from the line
            pick = self._next_in_line(held, self.max_batch - used)
            if pick is None:
                break
            if isinstance(pick, _Paused):
                s, job, paused = pick.state, pick.job, time.monotonic() - pick.since
                s.resume(paused)
                job.deadline += paused  # the time paused counts neither against the piece nor its job
            else:
                job = pick[0]
                s = self._start(job, pick[1])
            if s is not None:
                out.append((s, job))
                held[job.owner] += 1
                used += search.width(s.req.search)
        for p in [p for p in self._paused if p.job.cancelled]:  # stopped while paused: ends now, text kept
            self._paused.remove(p)
            p.state.stop_reason = StopReason.CANCELLED
            p.job._put(p.state.result())
        cancelled = [w for w in self._waiting if w[0].cancelled]
        if cancelled:
            self._waiting = collections.deque(w for w in self._waiting if not w[0].cancelled)
            for job, i in cancelled:
                self._start(job, i)
        return out

    def _next_in_line(self, held: collections.Counter, free: int):
        """Takes the next piece to admit out of the line (a _Paused or a (job, index)), or None: the
        session holding the fewest rows first (a paused piece before a new one), then the oldest,
        skipping sessions at their row cap and pieces wider than the `free` rows (a search's
        candidates are rows: engine.symbolic.search). Lock held."""
        cap = self.sharing.rows
        best, best_key = None, None
        for n, p in enumerate(self._paused):
            if search.width(p.state.req.search) > free and not p.job.cancelled:
                continue
            if p.job.cancelled or cap is None or held[p.job.owner] < cap:
                key = (0 if p.job.cancelled else held[p.job.owner], 0, n)
                best, best_key = (p, key) if best_key is None or key < best_key else (best, best_key)
        seen = set()
        for n, (job, i) in enumerate(self._waiting):
            if job.owner in seen:  # only each session's oldest waiting piece can be next
                continue
            seen.add(job.owner)
            if search.width(job.requests[i].search) > free and not job.cancelled:
                continue
            if job.cancelled or cap is None or held[job.owner] < cap:
                key = (0 if job.cancelled else held[job.owner], 1, n)
                best, best_key = ((job, i), key) if best_key is None or key < best_key else (best, best_key)
        if isinstance(best, _Paused):
            self._paused.remove(best)
        elif best is not None:
            self._waiting.remove(best)
        return best

    def _share(self, active: list[PieceState], owner: dict) -> list[PieceState]:
        """Fair sharing (lock held): while a session with fewer rows than its even share has pieces
        waiting and no row is free, sessions above their share give back their newest pieces (paused,
        text kept). The even share is the batch over the sessions with work, at least one row."""
        if _rows(active) < self.max_batch:
            return active
        wants = collections.Counter(j.owner for j, _ in self._waiting if not j.cancelled)
        wants.update(p.job.owner for p in self._paused if not p.job.cancelled)
        if not wants:
            return active
        held = collections.Counter(owner[s.uid].owner for s in active)
        share = max(1, self.max_batch // len(set(held) | set(wants)))
        given: list[PieceState] = []
        for needy in sorted(wants, key=lambda o: held[o]):
            while held[needy] < share and wants[needy] > 0:  # bounded: each pass moves one row
                rich = max(held, key=lambda o: held[o])
                if held[rich] <= share:
                    break
                victim = next(s for s in reversed(active) if owner[s.uid].owner == rich and s not in given)
                given.append(victim)
                held[rich] -= 1
                held[needy] += 1
                wants[needy] -= 1
        now = time.monotonic()
        for s in given:
            job = owner.pop(s.uid)
            self._paused.append(_Paused(s, job, now))
            job._events.put(Waiting(0, "paused: another composer's piece took this row so that the model's batch "
                                       "is shared evenly; it resumes where it stopped when a row frees"))
        return [s for s in active if s not in given]

    def _start(self, job: Job, i: int) -> PieceState | None:
        """Piece i of a job as a PieceState, or None when it ends here: a cancelled job's piece, or
        one that cannot start (its context full already), ends at once with no row, and its job is
        told; a piece that cannot even be read fails its job."""
        cfg = self.model.config
        job._admitted += 1
        try:
            s = PieceState(i, job.requests[i], cfg.patch_length, cfg.patch_size, self.model.device)
        except Exception as e:  # noqa: BLE001 - one request's odd text must not stop the worker
            log.warning("piece %d of a job could not start: %s", i, e)
            self._waiting = collections.deque(w for w in self._waiting if w[0] is not job)
            job._fail(f"this piece could not start ({type(e).__name__}: {str(e)[:200]})")
            return None
        if job.cancelled:
            s.stop_reason = StopReason.CANCELLED
        if s.stop_reason is not None:
            job._put(s.result())
            return None
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
        """Ends every piece in the line (lock held): paused ones with the text they have, new ones
        with the message."""
        for p in self._paused:
            p.state.stop_reason = StopReason.CANCELLED
            p.job._put(p.state.result())
        self._paused.clear()
        for job in {j for j, _ in self._waiting}:
            job._fail(message)
        self._waiting.clear()

    def _fault(self, e: Exception, active: list[PieceState], owner: dict) -> None:
        jobs = {id(owner[s.uid]): owner.pop(s.uid) for s in active}
        with self._lock:  # their pieces still waiting go too: the job has ended
            self._waiting = collections.deque(w for w in self._waiting if id(w[0]) not in jobs)
            self._paused = [p for p in self._paused if id(p.job) not in jobs]
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


def _rows(active: list[PieceState]) -> int:
    """Rows the running pieces hold: a piece searching over K candidates holds K."""
    return sum(search.width(s.req.search) for s in active)
