"""Text (and optionally a melody) to audio with Meta's MusicGen through Hugging Face transformers.

Stages: load (lazily, from a local folder or the standard Hugging Face cache) -> condition (the
prompt's tokens; for melody models the melody's chroma) -> generate codes window by window (each
window after the first continues from the last ~10 s of codes, so there is no seam to hide: the
codes are joined and decoded once) -> decode with EnCodec -> trim to the asked duration ->
normalise loudness (ITU-R BS.1770 via torchaudio) -> 16-bit WAV, a picture, a manifest.

Each window runs transformers' own `generate` (the reference implementation), with a stopping
criterion that reports progress, honours cancellation within a step, and hands back the codes
instead of letting generate decode every window. Speed comes from half precision on a GPU and
guidance run as one batch; a static KV cache (so transformers compiles the decoder step) is
opt-in on a GPU (see load).

MusicGen's weights are CC-BY-NC 4.0 (non-commercial); see the README.
"""
from __future__ import annotations

import math
import threading
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.checks import check_seed, draw_seed, real, whole, with_checked
from engine.errors import CheckpointError, SettingsError
from engine.stops import StopReason

DEFAULT_MODEL = "facebook/musicgen-small"
DEFAULT_MELODY_MODEL = "facebook/musicgen-melody"
KNOWN_MODELS = ("facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
                "facebook/musicgen-melody", "facebook/musicgen-melody-large",
                "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium",
                "facebook/musicgen-stereo-large", "facebook/musicgen-stereo-melody",
                "facebook/musicgen-stereo-melody-large")
WINDOW_SECONDS = 30.0  # MusicGen was trained on 30 s clips: one window at most
CONTEXT_SECONDS = 10.0  # each later window continues from this much of what came before
MAX_SECONDS = 300.0
TARGET_LUFS = -14.0
PEAK_DBFS = -1.0
MELODY_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MAX_MELODY_MB = 50
MAX_MELODY_SECONDS = 600.0  # longer files are refused before decoding; a melody is cut to one window anyway
MAX_PROMPT_CHARS = 2000
# transformers samples MusicGen with torch's global generator, so two calls at once would mix
# their seeds' random streams (and a static KV cache belongs to one call): one at a time.
_SAMPLING_LOCK = threading.Lock()


@dataclass(frozen=True)
class AudioSettings:
    """How MusicGen samples; checked once, when made (engine.requests says why)."""
    duration: float = 10.0  # seconds of audio; over 30 s runs as windows
    guidance_scale: float = 3.0  # <= 1: no guidance
    top_k: int = 250
    top_p: float = 0.0  # 0: off
    temperature: float = 1.0
    seed: int | None = None  # None: drawn by seeded() (engine.checks.draw_seed), reported in the result
    variations: int = 1  # generated together, as one batch

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        put("duration", real(self.duration, "duration (seconds)", 0.5, MAX_SECONDS))
        put("guidance_scale", real(self.guidance_scale, "guidance scale", 0, 20))
        put("top_k", whole(self.top_k, "top-k", 0, 4096))
        put("top_p", real(self.top_p, "top-p", 0, 1))
        put("temperature", real(self.temperature, "temperature", 0, 5, above=True))
        put("seed", check_seed(self.seed))
        put("variations", whole(self.variations, "variations", 1, 8))

    def seeded(self) -> "AudioSettings":
        return self if self.seed is not None else with_checked(self, seed=draw_seed())


@dataclass
class AudioModel:
    model: torch.nn.Module
    processor: object
    name: str
    static_cache: bool = False  # a static KV cache (on a GPU transformers then compiles the decoder step)
    plan: object | None = None  # engine.placement.Plan when placed by api.load_audio_model(options=...)

    @property
    def config(self):
        return self.model.config

    def devices(self) -> list[str]:
        return sorted({str(p.device) for p in self.model.parameters()})

    @property
    def sampling_rate(self) -> int:
        return int(self.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return int(self.config.audio_encoder.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self.config.decoder.num_codebooks)

    @property
    def channels(self) -> int:
        return int(self.config.decoder.audio_channels)

    @property
    def delays(self) -> list[int]:
        """How many steps each codebook row runs behind the first (stereo interleaves left/right)."""
        return [j // self.channels for j in range(self.num_codebooks)]

    @property
    def melody(self) -> bool:
        return self.config.model_type == "musicgen_melody"

    @property
    def device(self) -> torch.device:
        """Where inputs go: the text encoder's device (the first stage of a split model)."""
        return next(self.model.text_encoder.parameters()).device


@dataclass
class AudioResult:
    audio: np.ndarray  # (variations, channels, samples), float32 in [-1, 1], loudness-normalised
    sampling_rate: int
    prompt: str
    settings: AudioSettings
    model: str
    seconds: float  # compute time, all stages
    stop_reason: StopReason  # DONE or CANCELLED (engine.stops)
    loudness_lufs: list[float] = field(default_factory=list)  # after normalisation, per variation
    windows: int = 1
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    melody: str | None = None  # where the melody came from

    @property
    def audio_seconds(self) -> float:
        return self.audio.shape[-1] / self.sampling_rate

    def manifest(self) -> dict:
        return {"prompt": self.prompt, "model": self.model, "settings": asdict(self.settings),
                "melody": self.melody, "sampling_rate": self.sampling_rate, "channels": int(self.audio.shape[1]),
                "seconds": round(self.seconds, 3), "audio_seconds": round(self.audio_seconds, 3),
                "windows": self.windows, "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "stop_reason": self.stop_reason, "loudness_lufs": [round(x, 2) for x in self.loudness_lufs]}


def _offline_error(spec: str, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not load MusicGen '{spec}': it is neither a local folder nor in the Hugging Face cache, and it "
        f"cannot be downloaded here ({str(e).splitlines()[0][:160]}). On a machine with network run "
        f"`hf download {spec}` and copy ~/.cache/huggingface/hub here, or pass a folder saved with "
        "save_pretrained")


def load(spec: str | Path | None = None, device=None, dtype: torch.dtype | None = None,
         static_cache: bool | None = None, device_map: dict | None = None, local_only: bool = False) -> AudioModel:
    """A MusicGen model (text-only or melody, mono or stereo) from a local folder or a hub id (the
    standard Hugging Face cache, downloading when there is network). Half precision on a GPU,
    fp32 on the CPU. static_cache (default: $CADENZA_MUSICGEN_STATIC_CACHE=1, GPU only) lets
    transformers compile the decoder step; it is opt-in until measured on a GPU (on the CPU it
    is slower: 11.3-12.4 s against 9.9-10.5 s for 2 s of audio at musicgen-small's size).
    local_only: never reach the network (folders and the cache only)."""
    import os

    from transformers import (AutoConfig, AutoProcessor, MusicgenForConditionalGeneration,
                              MusicgenMelodyForConditionalGeneration)

    spec = str(spec or DEFAULT_MODEL)
    dev = torch.device(device) if device not in (None, "auto") else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=local_only)
        if config.model_type not in ("musicgen", "musicgen_melody"):
            raise CheckpointError(f"{spec} is a {config.model_type} model, not MusicGen")
        cls = MusicgenMelodyForConditionalGeneration if config.model_type == "musicgen_melody" \
            else MusicgenForConditionalGeneration
        # device_map (engine.placement's split): accelerate places each module and moves
        # activations between devices with hooks; without it the model goes to `dev` whole.
        model = cls.from_pretrained(spec, dtype=dtype, device_map=device_map, local_files_only=local_only)
        processor = AutoProcessor.from_pretrained(spec, local_files_only=local_only)
    except OSError as e:
        raise _offline_error(spec, e) from e
    name = Path(spec).name if Path(spec).is_dir() else spec
    if device_map is not None:
        return AudioModel(model.eval(), processor, name, static_cache=False)
    if static_cache is None:
        static_cache = dev.type == "cuda" and os.environ.get("CADENZA_MUSICGEN_STATIC_CACHE") == "1"
    return AudioModel(model.to(dev).eval(), processor, name, static_cache=static_cache)


# --- melody input ------------------------------------------------------------------------------------
def load_melody(path: str | Path, sampling_rate: int, max_seconds: float = WINDOW_SECONDS,
                max_mb: float = MAX_MELODY_MB) -> np.ndarray:
    """An audio file -> mono float32 at `sampling_rate`, at most `max_seconds` long. Size, format,
    duration and rate are checked before anything is decoded (soundfile reads only the header)."""
    import soundfile as sf
    import torchaudio.functional as AF

    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"melody file {path.name} does not exist")
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise SettingsError(f"the melody file {path.name} is {size / 2**20:.1f} MB: at most {max_mb:g} MB")
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - soundfile raises its own error types for every kind of bad file
        raise SettingsError(f"{path.name} is not an audio file that can be read: expected WAV, FLAC, OGG or MP3") from e
    if info.samplerate < 4000 or info.samplerate > 384000 or info.channels < 1 or info.channels > 16:
        raise SettingsError(f"{path.name}: {info.samplerate} Hz, {info.channels} channels is not plausible audio")
    if info.duration > MAX_MELODY_SECONDS:
        raise SettingsError(f"{path.name} lasts {info.duration:.0f} s: a melody may last at most "
                            f"{MAX_MELODY_SECONDS:g} s (only the first {max_seconds:g} s are used)")
    if info.duration < 0.5:
        raise SettingsError(f"{path.name} lasts {info.duration:.2f} s: a melody needs at least half a second")
    try:
        data, sr = sf.read(str(path), frames=int(max_seconds * info.samplerate), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise SettingsError(f"{path.name} could not be decoded ({e}): expected WAV, FLAC, OGG or MP3") from e
    mono = torch.from_numpy(data.mean(axis=1))
    if sr != sampling_rate:
        mono = AF.resample(mono, sr, sampling_rate)
    if not torch.isfinite(mono).all():
        raise SettingsError(f"{path.name} holds samples that are not numbers")
    return mono.numpy().astype(np.float32)


# --- generation --------------------------------------------------------------------------------------
class _Stop(Exception):
    def __init__(self, ids: torch.Tensor, cancelled: bool):
        self.ids, self.cancelled = ids, cancelled


class _Steps:
    """A stopping criterion that reports progress across windows, stops within a step when asked,
    and at a window's last step leaves generate() with the codes (transformers would otherwise
    decode every window to audio, and cannot hand back a sequence cut short)."""

    def __init__(self, last_length: int, done: int, total: int, on_progress, cancel: threading.Event | None):
        self.last_length, self.done, self.total = last_length, done, total
        self.on_progress, self.cancel = on_progress, cancel

    def __call__(self, input_ids, scores, **kwargs):
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(min(self.done, self.total), self.total)
        if self.cancel is not None and self.cancel.is_set():
            raise _Stop(input_ids.detach().clone(), cancelled=True)
        if input_ids.shape[-1] >= self.last_length:
            raise _Stop(input_ids.detach().clone(), cancelled=False)
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _windows(frames: int, window: int, context: int) -> list[tuple[int, int]]:
    """(prompt frames, new frames) per window: the first window from nothing, each later one
    continuing from the last `context` frames."""
    plan = [(0, min(frames, window))]
    made = plan[0][1]
    for _ in range(math.ceil(frames / max(1, window - context)) + 1):  # bounded: each adds window-context
        if made >= frames:
            break
        new = min(window - context, frames - made)
        plan.append((context, new))
        made += new
    return plan


def _codes(am: AudioModel, ids: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
    """generate()'s ids (batch * codebooks, 1 start token + steps), delay pattern and all ->
    codes (batch, codebooks, frames) for the frames every codebook has reached. Prompt frames are
    taken from the prompt itself (the raw ids hold unused samples where the pattern forced them)."""
    k, delays = am.num_codebooks, am.delays
    rows = ids.reshape(-1, k, ids.shape[-1])
    frames = ids.shape[-1] - 1 - max(delays)
    p = 0 if prompt is None else prompt.shape[-1]
    if frames <= p:
        return prompt if prompt is not None else rows[:, :, :0]
    codes = torch.stack([rows[:, j, 1 + d: 1 + d + frames] for j, d in enumerate(delays)], dim=1)
    if prompt is not None:
        codes[..., :p] = prompt
    return codes


def _conditioning(am: AudioModel, prompt: str, batch: int, melody: np.ndarray | None, start: int, window: int) -> dict:
    """The processor's inputs for one window: the text, and for melody models the melody from
    this window's start (looped when the piece outlasts it, as audiocraft does)."""
    if not am.melody or melody is None:
        return dict(am.processor(text=[prompt] * batch, padding=True, return_tensors="pt"))
    hop = am.sampling_rate // am.frame_rate
    segment = np.take(melody, np.arange(start * hop, (start + window) * hop), mode="wrap")
    return dict(am.processor(text=[prompt] * batch, audio=[segment] * batch, sampling_rate=am.sampling_rate,
                             padding=True, return_tensors="pt"))


def generate_codes(am: AudioModel, prompt: str, s: AudioSettings, melody: np.ndarray | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   cancel: threading.Event | None = None) -> tuple[torch.Tensor, str, int]:
    """Codes (variations, codebooks, frames) for `s.duration` seconds, window by window.
    Returns (codes, stop_reason, windows run)."""
    from transformers import StoppingCriteriaList

    frames = int(round(s.duration * am.frame_rate))
    window, context = int(WINDOW_SECONDS * am.frame_rate), int(CONTEXT_SECONDS * am.frame_rate)
    plan = _windows(frames, window, context)
    tail = max(am.delays)  # the delay pattern: the last frame needs this many steps more
    total, done = sum(new + tail for _, new in plan), 0
    codes: torch.Tensor | None = None
    if s.seed is None:
        raise SettingsError("generate_codes needs a seed: pass settings.seeded()")
    torch.manual_seed(s.seed)  # transformers samples with the global generator
    for i, (p, new) in enumerate(plan):
        prompt_codes = None if p == 0 else codes[..., -p:]
        start = 0 if codes is None else codes.shape[-1] - p
        inputs = {k: v.to(am.device) for k, v in _conditioning(am, prompt, s.variations, melody, start, window).items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(am.model.dtype)
        if prompt_codes is not None:
            inputs["decoder_input_ids"] = prompt_codes.reshape(-1, p).to(am.device)
        steps = new + tail
        stepper = _Steps(1 + p + steps, done, total, on_progress, cancel)
        extra = {"cache_implementation": "static"} if am.static_cache else {}
        with torch.inference_mode():
            try:
                # top_p 0 means "off" (audiocraft's convention); transformers would keep one token.
                am.model.generate(**inputs, do_sample=True, guidance_scale=s.guidance_scale, top_k=s.top_k,
                                  top_p=s.top_p or 1.0, temperature=s.temperature, max_new_tokens=steps,
                                  stopping_criteria=StoppingCriteriaList([stepper]), **extra)
                raise RuntimeError("MusicGen's generate ended before its last step")  # _Steps always stops it
            except _Stop as stop:
                made, cancelled = _codes(am, stop.ids, prompt_codes), stop.cancelled
        done = stepper.done
        codes = made if codes is None else torch.cat([codes, made[..., p:]], dim=-1)
        if cancelled:
            return codes, StopReason.CANCELLED, i + 1
    return codes, StopReason.DONE, len(plan)


def decode(am: AudioModel, codes: torch.Tensor) -> torch.Tensor:
    """Codes (batch, codebooks, frames) -> audio (batch, channels, samples) with EnCodec, in one go
    (so windows have no seams)."""
    batch = codes.shape[0]
    if codes.shape[-1] == 0:
        return torch.zeros(batch, am.channels, 0)
    scales = [None] * batch
    with torch.inference_mode():
        if am.channels == 1:
            return am.model.audio_encoder.decode(codes[None], audio_scales=scales).audio_values
        left = am.model.audio_encoder.decode(codes[None, :, ::2], audio_scales=scales).audio_values
        right = am.model.audio_encoder.decode(codes[None, :, 1::2], audio_scales=scales).audio_values
        return torch.cat([left, right], dim=1)


def check_follows_melody(am: AudioModel) -> None:
    if not am.melody:
        raise SettingsError(f"{am.name} cannot follow a melody: choose a melody model such as {DEFAULT_MELODY_MODEL}")


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingsError("the prompt is empty: describe the music, e.g. 'warm string quartet, slow'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SettingsError(f"the prompt is {len(prompt)} characters: at most {MAX_PROMPT_CHARS}")
    return prompt.strip()


def generate(am: AudioModel, prompt: str, settings: AudioSettings | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None, melody: np.ndarray | None = None,
             melody_name: str | None = None) -> AudioResult:
    """`settings.duration` seconds of audio for a text prompt (checked by engine.requests.AudioRequest)
    and, for melody models, a melody from load_melody, `settings.variations` at once. A cancelled
    run keeps what was made. One call runs at a time (see _SAMPLING_LOCK); others wait."""
    s = (settings or AudioSettings()).seeded()
    if melody is not None:
        check_follows_melody(am)
    t0 = time.monotonic()
    with _SAMPLING_LOCK:
        codes, stop_reason, windows = generate_codes(am, prompt, s, melody, on_progress, cancel)
    t1 = time.monotonic()
    audio = decode(am, codes).float().cpu().numpy()[..., : int(round(s.duration * am.sampling_rate))]
    t2 = time.monotonic()
    audio, lufs = normalise(audio, am.sampling_rate)
    t3 = time.monotonic()
    return AudioResult(audio, am.sampling_rate, prompt, s, am.name, t3 - t0, stop_reason, lufs, windows,
                       {"generate": t1 - t0, "decode": t2 - t1, "normalise": t3 - t2}, melody_name)


# --- output ------------------------------------------------------------------------------------------
def normalise(audio: np.ndarray, sr: int) -> tuple[np.ndarray, list[float]]:
    """Each variation to about -14 LUFS (ITU-R BS.1770, torchaudio), peaks at most -1 dBFS."""
    import torchaudio.functional as AF

    out, measured = np.empty_like(audio, dtype=np.float32), []
    peak_cap = 10 ** (PEAK_DBFS / 20)
    for i, clip in enumerate(audio):
        x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
        gain = 1.0
        if x.shape[-1] >= int(0.4 * sr) and float(x.abs().max()) > 0:  # BS.1770 needs 400 ms blocks
            lufs = float(AF.loudness(x, sr))
            if np.isfinite(lufs):
                gain = 10 ** ((TARGET_LUFS - lufs) / 20)
        y = x * gain
        peak = float(y.abs().max()) if y.numel() else 0.0
        if peak > peak_cap:
            y = y * (peak_cap / peak)
        out[i] = y.numpy()
        measured.append(float(AF.loudness(y, sr)) if y.shape[-1] >= int(0.4 * sr) and peak > 0 else float("-inf"))
    return out, measured


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> Path:
    """(channels, samples) float -> 16-bit PCM WAV (the standard library's wave module)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    tmp = path.with_name(f".{path.name}.part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.T.tobytes())
    tmp.replace(path)
    return path


def write_picture(path: str | Path, audio: np.ndarray, sr: int, title: str = "") -> Path:
    """(channels, samples) -> a PNG with the waveform above a log-frequency spectrogram."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt
    import torchaudio.transforms as T

    path = Path(path)
    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0), dtype=np.float32))
    seconds = mono.shape[-1] / sr
    fig, (wave_ax, spec_ax) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, dpi=100,
                                           gridspec_kw={"height_ratios": [1, 2]})
    # The waveform as a min/max envelope over ~2000 columns: plotting every sample of minutes of
    # audio is slow and draws the same picture.
    cols = max(1, min(2000, mono.shape[-1]))
    env = mono[: mono.shape[-1] // cols * cols].reshape(cols, -1) if mono.shape[-1] >= cols else mono[:, None]
    xs = np.linspace(0, seconds, env.shape[0])
    wave_ax.fill_between(xs, env.min(dim=1).values.numpy(), env.max(dim=1).values.numpy(), color="#3b6ea5", lw=0)
    wave_ax.set_ylim(-1, 1)
    wave_ax.set_yticks([])
    wave_ax.set_title(title[:100], fontsize=9, loc="left")
    hop = max(1, mono.shape[-1] // 1500)
    mel = T.MelSpectrogram(sample_rate=sr, n_fft=max(2048, hop), hop_length=hop, n_mels=96)(mono)
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    spec_ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, 96),
                   vmin=float(db.max()) - 80, vmax=float(db.max()))
    spec_ax.set_yticks([])
    spec_ax.set_ylabel("mel", fontsize=8)
    spec_ax.set_xlabel("seconds", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
