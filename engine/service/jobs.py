"""A running piece or clip is a job: keyed by its own id, cancelled by Stop; a piece written for
the page runs on a thread of its own (Live), so a reload reattaches and a closed tab lets it finish."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator


LIVE_KEEP_S = 600.0  # a piece that ended with no page to take it is offered to the session's next page this long


class Live:
    """A piece being written for the page, on a thread of its own: a reload or a closed tab does not
    stop it (only Stop, a shutdown or its own bounds do). A page follows it; a page loaded later in
    the same session follows it from where it is (reattaches), and takes the pieces if none did."""

    def __init__(self, items: Iterator, first, about: dict):
        self.about = about  # the prompt and settings it is written with (the page restores them)
        self.started = time.monotonic()
        self._cond = threading.Condition()
        self._seq, self._latest = 1, first  # updates are whole (the piece so far): the latest is enough
        self._result: list | None = None
        self._error: BaseException | None = None
        self.done_at: float | None = None
        self.taken = False
        threading.Thread(target=self._run, args=(items,), name="cadenza-live", daemon=True).start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:  # bounded by the request's own limits (patches, seconds) and Stop
                with self._cond:
                    if isinstance(item, list):
                        self._result = item
                    else:
                        self._seq, self._latest = self._seq + 1, item
                    self._cond.notify_all()
        except BaseException as e:  # handed to the page following it, which says it in words
            with self._cond:
                self._error = e
        finally:
            with self._cond:
                self.done_at = time.monotonic()
                self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self.done_at is not None

    def follow(self, limit_s: float, gap_s: float = 0.0) -> Iterator:
        """Progress as it comes (the latest when the page falls behind), at most one update every
        `gap_s`, then the kept pieces; the writing's error is raised here. Gives up after `limit_s`
        (the page may reload)."""
        seen, deadline, last = 0, time.monotonic() + limit_s, 0.0
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(gap_s, last + gap_s - time.monotonic())))
            with self._cond:
                self._cond.wait_for(lambda: self._seq != seen or self.done, timeout=1.0)
                seq, latest, done, result, error = self._seq, self._latest, self.done, self._result, self._error
            if seq != seen:
                seen, last = seq, time.monotonic()
                yield latest
            if done:
                if error is not None:
                    raise error
                if result is not None:
                    self.taken = True
                    yield result
                return


@dataclass
class Job:
    """One piece being made (a score, an audio clip, a render), keyed by its own id: Stop and a
    shutdown reach it through its cancel event; it ends when its record is written."""
    id: str
    session: str  # the session's folder id
    kind: str  # compose | audio | render
    cancel: threading.Event = field(default_factory=threading.Event)


async def threaded(produce: Callable[[], Iterator], cancel: threading.Event,
                   poll: Callable[[], Awaitable[bool]] | None = None, every: float = 0.2):
    """The items of produce(), a blocking iterator run on a thread of its own, as an async
    generator (a Serve replica's streaming method); its exception is raised here. `poll`, when
    given, is awaited at most every `every` s and sets `cancel` when true (a replica asking the
    board whether Stop was pressed). Leaving (the end, or the request cancelled) sets `cancel`,
    which the work is bounded by."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    end = object()

    def run() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(events.put_nowait, item)
        except BaseException as e:  # noqa: BLE001 - raised in the caller
            loop.call_soon_threadsafe(events.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, end)

    threading.Thread(target=run, name="cadenza-replica-work", daemon=True).start()
    asked = time.monotonic()
    try:
        while True:  # bounded by the work, which `cancel` ends
            try:
                item = await asyncio.wait_for(events.get(), every if poll is not None else None)
            except asyncio.TimeoutError:
                item = None
            if poll is not None and not cancel.is_set() and time.monotonic() - asked >= every:
                asked = time.monotonic()
                if await poll():
                    cancel.set()
            if item is None:
                continue
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
