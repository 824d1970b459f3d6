"""How the studio is served: one dataclass, filled from the command line and CADENZA_* variables."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from engine.errors import SettingsError


@dataclass
class StudioConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 serves the LAN
    port: int = 7860
    auth: tuple[str, str] | None = None  # (user, password) asked by the page
    share: bool = False  # Gradio's public share link: off unless asked for
    outputs: str = "outputs"  # every session's pieces live under here
    model: str | None = None  # None: the bundled model
    device: str = "auto"
    concurrency: int = 1  # pieces composed at once per model (each may hold several variations)
    queue_size: int = 32  # requests waiting at most; more get "busy, try again shortly"
    max_upload_mb: int = 20
    max_patches: int = 4096  # the most a user may ask for
    max_variations: int = 8
    max_seconds: float = 1200.0  # wall-clock bound per request
    preview_every_bars: int = 8  # sheet music redrawn while composing
    devices: str | None = None  # GPUs for models, e.g. "0,1,2" (default: every visible one, else the CPU)
    placement: str = "auto"  # auto | single | split | replicate (see engine/placement.py)
    max_memory: str | None = None  # per-device budgets, e.g. "0=20GiB,1=20GiB"
    audio_model: str = "facebook/musicgen-small"  # MusicGen for the Audio page (hub id or folder)
    melody_model: str = "facebook/musicgen-melody"  # for melodies and "Perform with MusicGen"
    max_audio_seconds: float = 120.0  # the longest audio a user may ask for (the engine allows 300)
    formats: tuple[str, ...] = field(default=("abc", "musicxml", "midi", "wav", "svg", "pdf", "zip"))

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port must be from 1 to 65535, got {self.port}")
        if self.concurrency < 1 or self.queue_size < 1:
            raise SettingsError("concurrency and queue size must be at least 1")
        if not 1 <= self.max_audio_seconds <= 300:
            raise SettingsError(f"max audio seconds must be from 1 to 300, got {self.max_audio_seconds}")
        if not 1 <= self.max_upload_mb <= 1024:
            raise SettingsError(f"max upload must be from 1 to 1024 MB, got {self.max_upload_mb}")


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
                    help="requests composed at once per model")
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
    a = ap.parse_args(argv)
    cfg = StudioConfig(host=a.host, port=a.port, auth=parse_auth(a.auth), share=a.share, outputs=a.outputs,
                       model=a.model, device=a.device, concurrency=a.concurrency, queue_size=a.queue_size,
                       max_upload_mb=a.max_upload_mb, devices=a.devices, placement=a.placement,
                       max_memory=a.max_memory, audio_model=a.audio_model, melody_model=a.melody_model,
                       max_audio_seconds=a.max_audio_seconds)
    cfg.check()
    return cfg
