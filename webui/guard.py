"""The HTTP side of the server's limits: how fast a wrong password may be retried, and how big
Gradio's cache of served files may grow (what a client may reach is engine/service/policy.py)."""
from __future__ import annotations

import threading
import time
from pathlib import Path


# --- logins -------------------------------------------------------------------------------------
class LoginBackoff:
    """ASGI middleware: after `free_tries` wrong passwords from one client address, that address
    must wait (1 s, 2 s, 4 s ... at most `cap_s`) before its next try, which is refused with 429
    meanwhile. Other addresses are not slowed; a right password clears the address. The address
    is the connection's: forwarding headers count only from proxies named with --trusted-proxies."""

    def __init__(self, app, free_tries: int = 5, cap_s: float = 300.0, max_clients: int = 10_000):
        self.app, self.free_tries, self.cap_s, self.max_clients = app, free_tries, cap_s, max_clients
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (failures, may try again at)
        self._lock = threading.Lock()

    def wait_for(self, address: str, now: float | None = None) -> float:
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        return max(0.0, until - (time.monotonic() if now is None else now))

    def attempt(self, address: str) -> float:
        """A login starts: 0 and it is counted as a failure until it succeeds (so a burst of
        parallel tries is counted at once), or the seconds this address must still wait."""
        with self._lock:
            wait = self._failures.get(address, (0, 0.0))[1] - time.monotonic()
            if wait > 0:
                return wait
            self._count(address)
        return 0.0

    def failed(self, address: str) -> None:
        with self._lock:
            self._count(address)

    def _count(self, address: str) -> None:  # with the lock held
        n = self._failures.get(address, (0, 0.0))[0] + 1
        delay = 0.0 if n < self.free_tries else min(self.cap_s, 2.0 ** (n - self.free_tries))
        if len(self._failures) >= self.max_clients and address not in self._failures:
            oldest = min(self._failures, key=lambda a: self._failures[a][1])
            del self._failures[oldest]
        self._failures[address] = (n, time.monotonic() + delay)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != "/login":
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.attempt(address)
        if wait > 0:
            await _refuse(send, wait)
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.succeeded(address)  # counted as a failure when it started


async def _refuse(send, wait: float) -> None:
    import json

    body = json.dumps({"detail": f"too many wrong logins from your address: try again in {wait:.0f} s"}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(int(wait) + 1).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def trim_folder(folder: Path, max_bytes: int) -> tuple[int, int]:
    """Keeps a cache folder (Gradio's copies of files served to browsers) under max_bytes: the
    oldest files go first until it holds at most 80% of it. -> (files removed, bytes freed)."""
    files = []
    for f in Path(folder).rglob("*") if Path(folder).is_dir() else ():
        try:
            st = f.stat()
        except OSError:
            continue
        if f.is_file():
            files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    removed = freed = 0
    if total <= max_bytes:
        return 0, 0
    for _, size, f in sorted(files, key=lambda x: x[0]):  # bounded: each file once
        if total - freed <= 0.8 * max_bytes:
            break
        f.unlink(missing_ok=True)
        removed, freed = removed + 1, freed + size
    return removed, freed
