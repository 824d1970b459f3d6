"""A small named Ray actor shared by the studio and its replicas: what cannot travel on a Serve
request. Replicas post how they are every few seconds (System shows each one: its machine,
devices, batch and line), and the studio posts Stop for a MusicGen clip (the replica stops within
a step and still sends what it made; cancelling the request would lose it)."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

log = logging.getLogger("cadenza.board")
NAME, NAMESPACE = "cadenza-board", "cadenza"
REPORT_S = 2.0  # a replica's report, this often
GONE_S = 30.0  # a replica not heard from for this long is left out of System (Serve replaces dead ones)


class Board:
    def __init__(self):
        self.stopped: dict[str, float] = {}
        self.reports: dict[str, tuple[float, dict]] = {}  # replica id -> (when, its report)

    def stop(self, job: str) -> None:
        self.stopped[job] = time.monotonic()

    def is_stopped(self, job: str) -> bool:
        return job in self.stopped

    def forget(self, job: str) -> None:
        self.stopped.pop(job, None)

    def report(self, replica: str, status: dict) -> None:
        self.reports[replica] = (time.monotonic(), status)

    def replicas(self, app: str) -> list[dict]:
        """The application's replicas heard from lately, each with how many seconds ago."""
        now = time.monotonic()
        for k in [k for k, (t, _) in self.reports.items() if now - t > GONE_S]:
            del self.reports[k]
        return [{**s, "replica": k, "heard_s": round(now - t, 1)} for k, (t, s) in sorted(self.reports.items())
                if s.get("app") == app]


def board():
    """The board's actor: found by name, or made (detached: it outlives whoever made it, a studio
    or a replica deployed by an admin; it holds a few small dicts and no CPU)."""
    import ray

    return ray.remote(num_cpus=0)(Board).options(name=NAME, namespace=NAMESPACE, get_if_exists=True,
                                                 lifetime="detached").remote()


def report_every(status: Callable[[], dict], every: float = REPORT_S) -> threading.Event:
    """In a replica: post `status()` (with the app, machine and process) to the board every
    `every` seconds until the returned event is set."""
    from ray import serve

    try:
        ctx = serve.get_replica_context()
        app, replica = ctx.app_name, ctx.replica_tag
    except Exception:  # noqa: BLE001 - outside Serve (a test calling the class): named by its process
        app, replica = "", f"pid{os.getpid()}"
    where = {"app": app, "node": socket.gethostname(), "pid": os.getpid()}
    done = threading.Event()

    def run() -> None:
        b = board()
        while True:  # bounded by the replica's life: `done` or the process ending
            try:
                b.report.remote(replica, {**where, **status()})
            except Exception as e:  # noqa: BLE001 - a report missed is not worth a replica
                log.debug("report missed: %s", e)
            if done.wait(every):
                return

    threading.Thread(target=run, name="cadenza-report", daemon=True).start()
    return done
