"""How the studio is served: one dataclass, filled from the command line and CADENZA_* variables."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import SettingsError
from engine.api import DECODE_MODES, MODELS_DIR, resolve_decode
from webui.guard import hf_cache


@dataclass
class StudioConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 serves the LAN
    port: int = 7860
    auth: tuple[str, str] | None = None  # (user, password) asked by the page
    share: bool = False  # Gradio's public share link: off unless asked for
    outputs: str = "outputs"  # every session's pieces live under here
    model: str | None = None  # None: the bundled model
    device: str = "auto"
    concurrency: int = 1  # compose requests handed to a model at once, at least max_batch + queue_size (see compose_limit)
    # rows written together per model copy (continuous batching: engine.symbolic.scheduler); a piece
    # takes as many rows as its search writes candidates of a bar (4 by default)
    max_batch: int = 32
    max_wait_s: float = 120.0  # a piece that finds no row in the batch for this long is told the server is busy
    # Rows shared between sessions (engine.symbolic.scheduler.Sharing): rows go to the session holding
    # the fewest, and one above its even share gives pieces back while another waits. These cap one
    # session's rows even when alone (None: the whole batch) and its pieces waiting for a row.
    session_rows: int | None = None
    session_waiting: int | None = 8
    decode: str = "auto"  # character steps: auto (compiled on CUDA, eager on CPU) | eager | compiled (engine.symbolic.compiled)
    queue_size: int = 32  # requests waiting at most; more get "busy, try again shortly"
    max_upload_mb: int = 20
    max_patches: int = 4096  # the most a user may ask for
    max_variations: int = 8
    max_seconds: float = 1200.0  # wall-clock bound per request
    devices: str | None = None  # GPUs for models, e.g. "0,1,2" (default: every visible one, else the CPU)
    placement: str = "auto"  # auto | single | split | replicate (see engine/placement.py)
    max_memory: str | None = None  # per-device budgets, e.g. "0=20GiB,1=20GiB"
    audio_model: str = "facebook/musicgen-small"  # MusicGen for the Audio page (hub id or folder)
    melody_model: str = "facebook/musicgen-melody"  # for melodies and "Perform with MusicGen"
    max_audio_seconds: float = 120.0  # the longest audio a user may ask for (the engine allows 300)
    formats: tuple[str, ...] = field(default=("abc", "musicxml", "midi", "wav", "svg", "pdf", "zip"))
    # --- what clients may reach (webui/guard.py) ---
    models_dirs: tuple[str, ...] = ()  # folders whose models clients may name (empty: assets/models); plus the HF cache
    allow_downloads: tuple[str, ...] = ()  # hub downloads: () off, ("*",) any repo, else these repo ids
    session_quota_mb: int = 2048  # disk one session may fill; then it is asked to delete pieces
    session_max_pieces: int = 500  # pieces one session may keep (History lists 500)
    min_free_mb: int = 1024  # below this much free disk, new work is refused for everyone
    # Every session's pieces together (keys are free to make up, so the per-session quota bounds a
    # browser, not a person): over it, pieces of sessions idle for evict_idle_hours go, least
    # recently opened first; then new work is refused. 0: no cap.
    max_outputs_gb: float = 50.0
    evict_idle_hours: float = 24.0
    max_wav_minutes: float = 10.0  # a piece longer than this gets no WAV (10 min of 44.1 kHz stereo is 106 MB)
    cache_hours: float = 6.0  # files served to browsers are deleted from Gradio's cache after this long
    cache_max_gb: float = 2.0  # and the oldest go sooner when the cache holds more than this
    login_free_tries: int = 5  # wrong passwords per client address before it must wait (1 s, 2 s, 4 s ...)
    trusted_proxies: str = ""  # addresses whose X-Forwarded-For is believed (a reverse proxy); none by default
    max_score_chars: int = 120_000  # an ABC score sent to Render / Continue (NotaGen's pieces stay under 102,400)
    shutdown_grace_s: float = 20.0  # on SIGTERM/Ctrl+C: how long running work has to stop and be kept

    def compose_limit(self) -> int:
        """Compose requests Gradio hands on at once: every row of the batch and its waiting line,
        so that Gradio's queue does not serialise users (the scheduler batches them)."""
        return max(self.concurrency, self.max_batch + self.queue_size)

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port must be from 1 to 65535, got {self.port}")
        if self.concurrency < 1 or self.queue_size < 1:
            raise SettingsError("concurrency and queue size must be at least 1")
        if not 1 <= self.max_batch <= 1024 or not 1 <= self.max_wait_s <= 3600:
            raise SettingsError(f"max batch must be from 1 to 1024 and max wait from 1 to 3600 s, got "
                                f"{self.max_batch} and {self.max_wait_s:g}")
        resolve_decode(self.decode, torch.device("cpu"))  # raises with the choices
        for what, cap in (("session rows", self.session_rows), ("session waiting", self.session_waiting)):
            if cap is not None and not 1 <= cap <= 4096:
                raise SettingsError(f"{what} must be from 1 to 4096 (or 0 for no cap), got {cap}")
        if not 1 <= self.max_audio_seconds <= 300:
            raise SettingsError(f"max audio seconds must be from 1 to 300, got {self.max_audio_seconds}")
        if not 1 <= self.max_upload_mb <= 1024:
            raise SettingsError(f"max upload must be from 1 to 1024 MB, got {self.max_upload_mb}")
        if not 0 <= self.max_outputs_gb <= 1e6 or not 0 < self.evict_idle_hours <= 24 * 365:
            raise SettingsError(f"max outputs must be from 0 (no cap) to 1000000 GB and evict-idle hours from a moment "
                                f"to a year, got {self.max_outputs_gb:g} and {self.evict_idle_hours:g}")
        if not 0.1 <= self.max_wav_minutes <= 60:
            raise SettingsError(f"max WAV minutes must be from 0.1 to 60, got {self.max_wav_minutes:g}")
        if self.session_quota_mb < 1 or self.session_max_pieces < 1 or self.min_free_mb < 0:
            raise SettingsError("the session quota (MB and pieces) must be at least 1 and the free-space floor at least 0")
        if not 0.01 <= self.cache_max_gb <= 1e4:
            raise SettingsError(f"cache max GB must be from 0.01 to 10000, got {self.cache_max_gb:g}")
        if not 0 < self.cache_hours <= 24 * 30:
            raise SettingsError(f"cache hours must be from a moment to 720, got {self.cache_hours}")
        if self.login_free_tries < 1 or not 0 <= self.shutdown_grace_s <= 25:
            raise SettingsError("login free tries must be at least 1, shutdown grace from 0 to 25 s")

    def model_roots(self) -> tuple[Path, ...]:
        """The models folders, then the Hugging Face cache (where Download puts checkpoints)."""
        given = [Path(d).expanduser() for d in self.models_dirs] or [Path(os.environ.get("CADENZA_MODELS_DIR", MODELS_DIR))]
        return (*given, hf_cache())


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SettingsError("auth must look like user:password")
    return user, password


def from_args(argv: list[str] | None = None) -> StudioConfig:
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="./run.sh", description="Cadenza studio: compose in the browser.")
    ap.add_argument("--host", default=env("CADENZA_HOST", "127.0.0.1"), help="address to serve on (0.0.0.0: the LAN)")
    ap.add_argument("--port", type=int, default=int(env("CADENZA_PORT", "7860")))
    ap.add_argument("--auth", default=env("CADENZA_AUTH"), help="user:password the page asks for")
    ap.add_argument("--share", action="store_true", default=env("CADENZA_SHARE") == "1",
                    help="also make a public gradio.live link (off by default)")
    ap.add_argument("--outputs", default=env("CADENZA_OUTPUTS", "outputs"), help="where pieces are kept")
    ap.add_argument("--model", default=env("CADENZA_MODEL"), help="NotaGen .pth or Cadenza model folder (default: bundled)")
    ap.add_argument("--device", default=env("CADENZA_DEVICE", "auto"))
    ap.add_argument("--concurrency", type=int, default=int(env("CADENZA_CONCURRENCY", "1")),
                    help="compose requests handed to the model at once (it batches them: see --max-batch)")
    ap.add_argument("--max-batch", type=int, default=int(env("CADENZA_MAX_BATCH", str(StudioConfig.max_batch))),
                    help="rows written together per model copy, every user's pieces in one batch; a piece takes "
                         "one row per candidate of its search (default 32)")
    ap.add_argument("--max-wait", type=float, default=float(env("CADENZA_MAX_WAIT", "120")),
                    help="seconds a piece may wait for a row in the batch before 'server busy' (default 120)")
    ap.add_argument("--decode", default=env("CADENZA_DECODE", "auto"), choices=DECODE_MODES,
                    help="character steps compiled with torch.compile or eager (default auto: compiled on CUDA only)")
    ap.add_argument("--session-rows", type=int, default=int(env("CADENZA_SESSION_ROWS", "0")),
                    help="rows of the batch one session may hold even alone (default 0: the whole batch; rows are "
                         "shared evenly whenever several sessions write)")
    ap.add_argument("--session-waiting", type=int, default=int(env("CADENZA_SESSION_WAITING", "8")),
                    help="pieces one session may have waiting for a row (default 8; 0: no cap)")
    ap.add_argument("--queue-size", type=int, default=int(env("CADENZA_QUEUE_SIZE", "32")))
    ap.add_argument("--max-upload-mb", type=int, default=int(env("CADENZA_MAX_UPLOAD_MB", "20")))
    ap.add_argument("--devices", default=env("CADENZA_DEVICES"), help="GPUs for models, e.g. 0,1,2 (default: all visible)")
    ap.add_argument("--placement", default=env("CADENZA_PLACEMENT", "auto"), choices=("auto", "single", "split", "replicate"),
                    help="how a model is placed on the GPUs (default auto: a copy per GPU when it fits, else split)")
    ap.add_argument("--max-memory", default=env("CADENZA_MAX_MEMORY"), help="budget per device, e.g. 0=20GiB,1=20GiB")
    ap.add_argument("--audio-model", default=env("CADENZA_AUDIO_MODEL", "facebook/musicgen-small"),
                    help="MusicGen for the Audio page: hub id (Hugging Face cache) or folder")
    ap.add_argument("--melody-model", default=env("CADENZA_MELODY_MODEL", "facebook/musicgen-melody"),
                    help="MusicGen melody model for melodies and 'Perform with MusicGen'")
    ap.add_argument("--max-audio-seconds", type=float, default=float(env("CADENZA_MAX_AUDIO_SECONDS", "120")))
    ap.add_argument("--models-dir", action="append", default=None,
                    help="a folder whose models clients may name (repeatable; default assets/models; "
                         "CADENZA_MODELS_DIRS, separated by ':'); the Hugging Face cache is always allowed")
    ap.add_argument("--allow-downloads", nargs="?", const="*", default=env("CADENZA_ALLOW_DOWNLOADS"), metavar="REPOS",
                    help="let clients download models from the Hugging Face Hub: any repo, or only these "
                         "(comma-separated); off by default")
    ap.add_argument("--session-quota-mb", type=int, default=int(env("CADENZA_SESSION_QUOTA_MB", "2048")))
    ap.add_argument("--session-max-pieces", type=int, default=int(env("CADENZA_SESSION_MAX_PIECES", "500")))
    ap.add_argument("--max-outputs-gb", type=float, default=float(env("CADENZA_MAX_OUTPUTS_GB", "50")),
                    help="every session's pieces together (default 50; 0: no cap); over it, pieces of sessions idle "
                         "for --evict-idle-hours go, least recently opened first, then new work is refused")
    ap.add_argument("--evict-idle-hours", type=float, default=float(env("CADENZA_EVICT_IDLE_HOURS", "24")))
    ap.add_argument("--max-wav-minutes", type=float, default=float(env("CADENZA_MAX_WAV_MINUTES", "10")),
                    help="longer pieces get every export but the WAV (default 10 minutes, 106 MB)")
    ap.add_argument("--cache-max-gb", type=float, default=float(env("CADENZA_CACHE_MAX_GB", "2")),
                    help="Gradio's cache of files served to browsers, at most (default 2 GB; the oldest go first)")
    ap.add_argument("--min-free-mb", type=int, default=int(env("CADENZA_MIN_FREE_MB", "1024")),
                    help="refuse new work while the outputs disk has less free space than this")
    ap.add_argument("--cache-hours", type=float, default=float(env("CADENZA_CACHE_HOURS", "6")),
                    help="how long files served to browsers stay in Gradio's cache")
    ap.add_argument("--trusted-proxies", default=env("CADENZA_TRUSTED_PROXIES", ""), metavar="ADDRESSES",
                    help="reverse proxies whose X-Forwarded-For names the client (comma-separated); none by default")
    a = ap.parse_args(argv)
    dirs = a.models_dir or [d for d in (env("CADENZA_MODELS_DIRS") or "").split(":") if d]
    downloads = tuple(r.strip() for r in (a.allow_downloads or "").split(",") if r.strip())
    cfg = StudioConfig(host=a.host, port=a.port, auth=parse_auth(a.auth), share=a.share, outputs=a.outputs,
                       model=a.model, device=a.device, concurrency=a.concurrency, queue_size=a.queue_size,
                       max_batch=a.max_batch, max_wait_s=a.max_wait, decode=a.decode,
                       session_rows=a.session_rows or None, session_waiting=a.session_waiting or None,
                       max_upload_mb=a.max_upload_mb, devices=a.devices, placement=a.placement,
                       max_memory=a.max_memory, audio_model=a.audio_model, melody_model=a.melody_model,
                       max_audio_seconds=a.max_audio_seconds, models_dirs=tuple(dirs), allow_downloads=downloads,
                       session_quota_mb=a.session_quota_mb, session_max_pieces=a.session_max_pieces,
                       min_free_mb=a.min_free_mb, max_outputs_gb=a.max_outputs_gb,
                       evict_idle_hours=a.evict_idle_hours, max_wav_minutes=a.max_wav_minutes, cache_max_gb=a.cache_max_gb, cache_hours=a.cache_hours, trusted_proxies=a.trusted_proxies)
    cfg.check()
    return cfg
