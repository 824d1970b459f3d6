"""How the studio is served: one dataclass. Each field is a setting with its default, its flag
(`--max-batch`) and its environment variable (`CADENZA_MAX_BATCH`), both made from the field, so a
default is written once. The page, the HTTP API, the scheduler and the bench read these fields."""
from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

import torch

from engine import api
from engine.api import DECODE_MODES, MODELS_DIR, resolve_decode
from engine.errors import SettingsError
from engine.files import hf_cache
from engine.placement import PLACEMENTS
from engine.symbolic.search import MAX_CANDIDATES


def _count_or_none(text: str) -> int | None:
    """0 means no cap."""
    return int(text) or None


def _yes(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _folders(value: str | list[str]) -> tuple[str, ...]:
    """Repeated --models-dir, or CADENZA_MODELS_DIRS separated by ':'."""
    parts = value if isinstance(value, list) else value.split(":")
    return tuple(p for p in parts if p)


def _gpus(text: str) -> float | str:
    """A number of GPUs, or auto (from the placement plan: engine.service.remote.share_gpus)."""
    return "auto" if text.strip().lower() == "auto" else float(text)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SettingsError("auth must look like user:password")
    return user, password


WHAT = {int: "a whole number", _count_or_none: "a whole number (0: no cap)", float: "a number",
        _yes: "1 or 0", parse_auth: "user:password",
        _gpus: "a number or auto"}


def setting(default, help: str, *, parse: Callable = str, flag: str | None = None, env: str | None = None,
            **argparse_kw):
    """A field of ServerSettings: `parse` reads the flag's or the variable's text; `flag` and `env`
    default to the field's name (`max_batch`: --max-batch, CADENZA_MAX_BATCH)."""
    meta = {"help": help, "parse": parse, "flag": flag, "env": env, "argparse": argparse_kw}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServerSettings:
    # --- where and for whom ---
    host: str = setting("127.0.0.1", "address to serve on (0.0.0.0: the LAN)")
    port: int = setting(7860, "port to serve on", parse=int)
    auth: tuple[str, str] | None = setting(None, "user:password the page asks for", parse=parse_auth)
    share: bool = setting(False, "also make a public gradio.live link", parse=_yes, action="store_const", const="1")
    outputs: str = setting("outputs", "where every session's pieces are kept (a folder per session)")
    # --- models and devices ---
    model: str | None = setting(None, "NotaGen .pth or Cadenza model folder (default: the bundled model)")
    device: str = setting("auto", "device for models: auto (first CUDA GPU, else the CPU), cpu, cuda, cuda:1")
    devices: str | None = setting(None, "GPUs for models, e.g. 0,1,2 (default: every visible one, else the CPU)")
    placement: str = setting("auto", "how a model is placed on the GPUs: a copy per GPU when it fits, else split",
                             choices=PLACEMENTS)
    max_memory: str | None = setting(None, "budget per device, e.g. 0=20GiB,1=20GiB (default: free memory)")
    decode: str = setting("auto", "character steps compiled with torch.compile or eager (auto: compiled on CUDA only)",
                          choices=DECODE_MODES)
    audio_model: str = setting("facebook/musicgen-small", "MusicGen for the Audio page: hub id (Hugging Face cache) "
                               "or folder")
    melody_model: str = setting("facebook/musicgen-melody", "MusicGen melody model for melodies and 'Perform with "
                                "MusicGen'")
    # --- beyond one machine (engine/service/remote.py) ---
    ray: str = setting("", "serve the models as Ray Serve replicas: --ray starts a local Ray, --ray ADDRESS joins a "
                       "cluster (ray start --head ...); off by default: the models run in this process",
                       nargs="?", const="local", metavar="ADDRESS")
    replicas: int = setting(1, "Ray Serve replicas of each model (one copy and its batch each)", parse=int)
    replicas_max: int = setting(0, "autoscale each model from --replicas up to this many replicas on the pieces "
                                "each replica is writing (0: fixed at --replicas)", parse=int)
    replica_cpus: float = setting(1.0, "CPUs Ray gives each replica (its torch threads)", parse=float)
    replica_gpus: float | str = setting("auto", "GPUs Ray gives each replica: a number (a fraction lets copies share "
                                        "one), or auto: a whole GPU each while the cluster has enough, an even share "
                                        "when replicas outnumber GPUs (as many copies as fit in one), the GPUs of its "
                                        "split for a model too big for one; 0 on a cluster without GPUs",
                                        parse=_gpus)
    audio_replicas: int = setting(0, "Ray Serve replicas of each MusicGen model (with --ray; CPUs and GPUs as "
                                  "--replica-cpus, --replica-gpus); 0: MusicGen runs in the studio's process",
                                  parse=int)
    render_replicas: int = setting(0, "Ray Serve replicas that render the exports (sheet music, MIDI, WAV, PDF) and "
                                   "check scores, with --ray; 0: the studio renders them itself", parse=int)
    render_cpus: float = setting(1.0, "CPUs Ray reserves for each render replica (0: none, when it shares the models' "
                                 "machine; its conversions run in processes of their own either way)", parse=float)
    write_config: str = setting("", "write the Ray Serve config (`serve deploy FILE`) of these settings' model and "
                                "replicas to FILE, and exit", metavar="FILE")
    # --- batching and the waiting line ---
    concurrency: int = setting(1, "compose requests handed to the model at once (raised to at least max batch + "
                               "queue size: the model batches them)", parse=int)
    # rows written together per model copy (continuous batching: engine.symbolic.scheduler); a piece
    # takes as many rows as its search writes candidates of a bar (16 by default)
    max_batch: int = setting(32, "rows written together per model copy, every user's pieces in one batch; a piece "
                             "takes one row per candidate of its search", parse=int)
    # a search's candidates are rows: 16 (the engine's default) holds two chorales in a batch of 32;
    # lower, more composers write at once, at a cost to the music (the model card has the figures)
    max_search: int = setting(MAX_CANDIDATES, "candidates of a bar one piece's search writes at most (the rows it "
                              "holds): lower it to batch more composers at once, at a cost to the music",
                              parse=int)
    max_wait_s: float = setting(120.0, "seconds a piece may wait for a row in the batch before 'server busy'",
                                parse=float, flag="--max-wait", env="CADENZA_MAX_WAIT")
    # Rows shared between sessions (engine.symbolic.scheduler.Sharing): rows go to the session holding
    # the fewest, and one above its even share gives pieces back while another waits. These cap one
    # session's rows even when alone (None: the whole batch) and its pieces waiting for a row.
    session_rows: int | None = setting(None, "rows of the batch one session may hold even alone (0: the whole batch; "
                                       "rows are shared evenly whenever several sessions write)", parse=_count_or_none)
    session_waiting: int | None = setting(8, "pieces one session may have waiting for a row (0: no cap)",
                                          parse=_count_or_none)
    queue_size: int = setting(32, "requests waiting at most; more get 'busy, try again shortly'", parse=int)
    # --- what one request may ask ---
    max_patches: int = setting(4096, "patches (16 characters) one piece may ask for at most", parse=int)
    max_variations: int = setting(8, "variations one request may ask for at most", parse=int)
    max_seconds: float = setting(1200.0, "wall-clock seconds one request may run at most", parse=float)
    max_audio_seconds: float = setting(120.0, "the longest audio a user may ask for (the engine allows 300)",
                                       parse=float)
    max_upload_mb: int = setting(20, "largest upload (scores and melodies), MB", parse=int)
    max_score_chars: int = setting(120_000, "characters of ABC sent to Render / Continue at most (NotaGen's pieces "
                                   "stay under 102,400)", parse=int)
    formats: tuple[str, ...] = setting(("abc", "musicxml", "midi", "wav", "svg", "pdf", "zip"),
                                       "files made for each piece, comma-separated", parse=_words)
    # --- what clients may reach (webui/guard.py) ---
    models_dirs: tuple[str, ...] = setting((), "a folder whose models clients may name (repeatable; the variable "
                                           "separates folders with ':'; default assets/models); the Hugging Face "
                                           "cache is always allowed", parse=_folders, flag="--models-dir",
                                           action="append")
    allow_downloads: tuple[str, ...] = setting((), "let clients download models from the Hugging Face Hub: any repo, "
                                               "or only these (comma-separated); off by default", parse=_words,
                                               nargs="?", const="*", metavar="REPOS")
    session_quota_mb: int = setting(2048, "disk one session may fill; then it is asked to delete pieces", parse=int)
    session_max_pieces: int = setting(500, "pieces one session may keep (History lists 500)", parse=int)
    min_free_mb: int = setting(1024, "refuse new work while the outputs disk has less free space than this",
                               parse=int)
    # Every session's pieces together (keys are free to make up, so the per-session quota bounds a
    # browser, not a person): over it, pieces of sessions idle for evict_idle_hours go, least
    # recently opened first; then new work is refused. 0: no cap.
    max_outputs_gb: float = setting(50.0, "every session's pieces together, GB (0: no cap); over it, pieces of "
                                    "sessions idle for --evict-idle-hours go, least recently opened first",
                                    parse=float)
    evict_idle_hours: float = setting(24.0, "hours a session must be idle before its pieces may go", parse=float)
    max_wav_minutes: float = setting(10.0, "longer pieces get every export but the WAV (10 min of 44.1 kHz stereo is "
                                     "106 MB)", parse=float)
    cache_hours: float = setting(6.0, "how long files served to browsers stay in Gradio's cache", parse=float)
    cache_max_gb: float = setting(2.0, "Gradio's cache of files served to browsers, at most (the oldest go first)",
                                  parse=float)
    login_free_tries: int = setting(5, "wrong passwords per client address before it must wait (1 s, 2 s, 4 s ...)",
                                    parse=int)
    trusted_proxies: str = setting("", "reverse proxies whose X-Forwarded-For names the client (comma-separated); "
                                   "none by default", metavar="ADDRESSES")
    shutdown_grace_s: float = setting(20.0, "on SIGTERM/Ctrl+C: seconds running work has to stop and be kept",
                                      parse=float, flag="--shutdown-grace", env="CADENZA_SHUTDOWN_GRACE")

    def placement_options(self, batch: int | None = None) -> api.PlacementOptions:
        """Where a model goes (--device cpu or cuda:N stands in for --devices); its KV caches are
        planned for `batch` rows (default: the whole batch, every row of every user at once)."""
        devices = self.devices or (self.device if self.device not in (None, "auto") else None)
        batch = max(self.max_batch, self.max_variations) if batch is None else batch
        return api.PlacementOptions(devices, self.placement, self.max_memory, batch)

    def batching(self) -> tuple:
        """A model copy's scheduler: (rows, max wait, decode, sharing between sessions)."""
        return self.max_batch, self.max_wait_s, self.decode, api.Sharing(self.session_rows, self.session_waiting)

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
        if not 1 <= self.max_search <= MAX_CANDIDATES:
            raise SettingsError(f"max search must be from 1 (no search) to {MAX_CANDIDATES} candidates, got {self.max_search}")
        resolve_decode(self.decode, torch.device("cpu"))  # raises with the choices
        gpus = self.replica_gpus
        if (not 1 <= self.replicas <= 256 or not 0 < self.replica_cpus <= 256
                or not (gpus == "auto" or isinstance(gpus, (int, float)) and 0 <= gpus <= 16)):
            raise SettingsError(f"replicas must be from 1 to 256, CPUs per replica above 0 and at most 256, GPUs per "
                                f"replica auto or from 0 to 16, got {self.replicas}, {self.replica_cpus:g}, {gpus}")
        if not 0 <= self.audio_replicas <= 256:
            raise SettingsError(f"audio replicas must be from 0 to 256, got {self.audio_replicas}")
        if not 0 <= self.render_replicas <= 256 or not 0 <= self.render_cpus <= 256:
            raise SettingsError(f"render replicas must be from 0 to 256 and CPUs per render replica from 0 to 256, "
                                f"got {self.render_replicas} and {self.render_cpus:g}")
        if self.replicas_max and not self.replicas <= self.replicas_max <= 256:
            raise SettingsError(f"replicas max must be 0 (no autoscaling) or from --replicas ({self.replicas}) to 256, "
                                f"got {self.replicas_max}")
        if self.placement not in PLACEMENTS:
            raise SettingsError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        for what, cap in (("session rows", self.session_rows), ("session waiting", self.session_waiting)):
            if cap is not None and not 1 <= cap <= 4096:
                raise SettingsError(f"{what} must be from 1 to 4096 (or 0 for no cap), got {cap}")
        if not 1 <= self.max_patches <= 1_000_000 or not 1 <= self.max_variations <= 64:
            raise SettingsError(f"max patches must be from 1 to 1000000 and max variations from 1 to 64, got "
                                f"{self.max_patches} and {self.max_variations}")
        if not 1 <= self.max_seconds <= 86400 or not 1000 <= self.max_score_chars <= 10_000_000:
            raise SettingsError(f"max seconds must be from 1 to 86400 and max score chars from 1000 to 10000000, got "
                                f"{self.max_seconds:g} and {self.max_score_chars}")
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


def flag(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def variable(f) -> str:
    return f.metadata["env"] or "CADENZA_" + f.name.upper()


def default(f):
    return f.default_factory() if f.default is MISSING else f.default


def parser() -> argparse.ArgumentParser:
    """./run.sh's flags, one per setting; each also read from its CADENZA_* variable."""
    ap = argparse.ArgumentParser(prog="./run.sh", description="Cadenza studio: compose in the browser.")
    for f in fields(ServerSettings):
        shown = default(f)
        shown = ",".join(shown) if isinstance(shown, tuple) else shown
        help_text = f"{f.metadata['help']} (default {shown if shown not in (None, '', ()) else 'none'}; ${variable(f)})"
        kw = dict(f.metadata["argparse"])
        if kw.get("action") != "store_const":
            kw.setdefault("metavar", flag(f)[2:].upper().replace("-", "_"))
        ap.add_argument(flag(f), dest=f.name, default=None, help=help_text.replace("%", "%%"), **kw)
    return ap


def from_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """The settings from the command line, else the environment, else the field's default; checked."""
    environ = os.environ if environ is None else environ
    given = parser().parse_args(argv)
    values = {}
    for f in fields(ServerSettings):
        raw, where = getattr(given, f.name), flag(f)
        if raw is None and environ.get(variable(f)) not in (None, ""):
            raw, where = environ[variable(f)], variable(f)
        if raw is None:
            continue
        parse = f.metadata["parse"]
        try:
            values[f.name] = parse(raw)
        except ValueError:
            raise SettingsError(f"{where} must be {WHAT.get(parse, 'text')}, got {raw!r}") from None
    settings = ServerSettings(**values)
    settings.check()
    return settings
