"""Text (and later a melody) to audio with Meta's MusicGen through Hugging Face transformers.

Stages: load (lazily, from a local folder or the standard Hugging Face cache) -> tokenize the
prompt -> generate codes (one window; progress and cancellation through a stopping criterion,
so a stopped piece keeps what was made) -> decode with EnCodec -> trim to the asked duration ->
normalise loudness (ITU-R BS.1770 via torchaudio) -> 16-bit WAV.

MusicGen's weights are CC-BY-NC 4.0 (non-commercial); see the README.
"""
from __future__ import annotations

import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.errors import CheckpointError, SettingsError

DEFAULT_MODEL = "facebook/musicgen-small"
KNOWN_MODELS = ("facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
                "facebook/musicgen-melody", "facebook/musicgen-melody-large",
                "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium",
                "facebook/musicgen-stereo-large", "facebook/musicgen-stereo-melody",
                "facebook/musicgen-stereo-melody-large")
WINDOW_SECONDS = 30.0  # MusicGen was trained on 30 s clips
TARGET_LUFS = -14.0
PEAK_DBFS = -1.0


@dataclass
class AudioSettings:
    duration: float = 10.0  # seconds of audio
    guidance_scale: float = 3.0
    top_k: int = 250
    top_p: float = 0.0  # 0: off
    temperature: float = 1.0
    seed: int = 0
    variations: int = 1  # generated together, as one batch

    def check(self) -> None:
        if not isinstance(self.duration, (int, float)) or not 0.5 <= self.duration <= WINDOW_SECONDS:
            raise SettingsError(f"duration must be from 0.5 to {WINDOW_SECONDS:g} seconds, got {self.duration!r}")
        if not 0.0 <= float(self.guidance_scale) <= 20.0:
            raise SettingsError(f"guidance scale must be from 0 to 20, got {self.guidance_scale!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= 4096:
            raise SettingsError(f"top-k must be a whole number from 0 to 4096, got {self.top_k!r}")
        if not 0.0 <= float(self.top_p) <= 1.0:
            raise SettingsError(f"top-p must be from 0 to 1, got {self.top_p!r}")
        if not 0.0 < float(self.temperature) <= 5.0:
            raise SettingsError(f"temperature must be more than 0 and at most 5, got {self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise SettingsError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}")
        if isinstance(self.variations, bool) or not isinstance(self.variations, int) or not 1 <= self.variations <= 8:
            raise SettingsError(f"variations must be a whole number from 1 to 8, got {self.variations!r}")


@dataclass
class AudioModel:
    model: torch.nn.Module
    processor: object
    name: str

    @property
    def sampling_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return int(self.model.config.audio_encoder.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self.model.config.decoder.num_codebooks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class AudioResult:
    audio: np.ndarray  # (variations, channels, samples), float32 in [-1, 1], loudness-normalised
    sampling_rate: int
    prompt: str
    settings: AudioSettings
    model: str
    seconds: float  # compute time
    stop_reason: str  # done | cancelled
    loudness_lufs: list[float] = field(default_factory=list)  # after normalisation, per variation

    def manifest(self) -> dict:
        from dataclasses import asdict

        return {"prompt": self.prompt, "model": self.model, "settings": asdict(self.settings),
                "sampling_rate": self.sampling_rate, "seconds": round(self.seconds, 3),
                "audio_seconds": self.audio.shape[-1] / self.sampling_rate, "stop_reason": self.stop_reason,
                "loudness_lufs": [round(x, 2) for x in self.loudness_lufs]}


def load(spec: str | Path | None = None, device=None, dtype: torch.dtype | None = None) -> AudioModel:
    """A MusicGen model from a local folder or a hub id (standard Hugging Face cache). Half
    precision on a GPU, fp32 on the CPU."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    spec = str(spec or DEFAULT_MODEL)
    dev = torch.device(device) if device not in (None, "auto") else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    if "melody" in spec.lower():
        raise CheckpointError(f"{spec}: melody models are not supported yet; use facebook/musicgen-small/-medium/-large")
    try:
        model = MusicgenForConditionalGeneration.from_pretrained(spec, dtype=dtype)
        processor = AutoProcessor.from_pretrained(spec)
    except OSError as e:
        raise CheckpointError(
            f"could not load MusicGen '{spec}': it is neither a local folder nor in the Hugging Face cache, and it "
            f"cannot be downloaded here ({str(e).splitlines()[0][:160]}). On a machine with network run "
            f"`hf download {spec}` and copy ~/.cache/huggingface/hub here, or pass a folder saved with "
            "save_pretrained") from e
    return AudioModel(model.to(dev).eval(), processor, Path(spec).name if Path(spec).is_dir() else spec)


class _Cancelled(Exception):
    def __init__(self, codes: torch.Tensor):
        self.codes = codes  # (batch * codebooks, steps) as generated so far, delay pattern and all


class _Progress:
    """A stopping criterion that reports (steps done, total) and, when asked to stop, leaves
    generate() with the codes so far (transformers' MusicGen cannot return a sequence cut short:
    its delay-pattern undo expects every step)."""

    def __init__(self, total: int, on_progress, cancel: threading.Event | None):
        self.total, self.on_progress, self.cancel = total, on_progress, cancel
        self.steps = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.steps += 1
        if self.on_progress is not None:
            self.on_progress(min(self.steps, self.total), self.total)
        if self.cancel is not None and self.cancel.is_set():
            raise _Cancelled(input_ids.detach().clone())
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _decode_partial(am: AudioModel, ids: torch.Tensor) -> torch.Tensor:
    """Codes cut short -> audio: undo the delay pattern (drop each codebook's pad positions),
    keep the frames every codebook has reached, decode with EnCodec."""
    k = am.num_codebooks
    rows = ids.reshape(-1, k, ids.shape[-1])  # (batch, codebooks, 1 start token + steps)
    frames = ids.shape[-1] - k  # codebook j runs j steps behind: frame t of it is at column 1 + j + t
    if frames <= 0:
        return torch.zeros(rows.shape[0], am.model.config.decoder.audio_channels, 0)
    codes = torch.stack([rows[:, j, 1 + j: 1 + j + frames] for j in range(k)], dim=1)[None]
    scales = [None] * codes.shape[1]
    if am.model.config.decoder.audio_channels == 1:
        return am.model.audio_encoder.decode(codes, audio_scales=scales).audio_values
    left = am.model.audio_encoder.decode(codes[:, :, ::2], audio_scales=scales).audio_values
    right = am.model.audio_encoder.decode(codes[:, :, 1::2], audio_scales=scales).audio_values
    return torch.cat([left, right], dim=1)


def generate(am: AudioModel, prompt: str, settings: AudioSettings | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None) -> AudioResult:
    """One window of audio for a text prompt, `settings.variations` at once."""
    from transformers import StoppingCriteriaList

    s = settings or AudioSettings()
    s.check()
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingsError("the prompt is empty: describe the music, e.g. 'warm string quartet, slow'")
    if len(prompt) > 2000:
        raise SettingsError(f"the prompt is {len(prompt)} characters: at most 2000")
    frames = int(round(s.duration * am.frame_rate))
    inputs = am.processor(text=[prompt] * s.variations, padding=True, return_tensors="pt").to(am.device)
    # MusicGen's delay pattern: codebook k runs k steps behind, so the last frame needs
    # num_codebooks - 1 steps more.
    steps = frames + am.num_codebooks - 1
    progress = _Progress(steps, on_progress, cancel)
    t0 = time.monotonic()
    torch.manual_seed(s.seed)  # transformers samples with the global generator
    stop_reason = "done"
    with torch.inference_mode():
        try:
            # top_p 0 means "off" (audiocraft's convention); transformers would keep one token.
            audio = am.model.generate(**inputs, do_sample=True, guidance_scale=s.guidance_scale, top_k=s.top_k,
                                      top_p=s.top_p or 1.0, temperature=s.temperature, max_new_tokens=steps,
                                      stopping_criteria=StoppingCriteriaList([progress]))
        except _Cancelled as stopped:
            audio, stop_reason = _decode_partial(am, stopped.codes), "cancelled"
    audio = audio.float().cpu().numpy()[..., : int(round(s.duration * am.sampling_rate))]
    audio, lufs = normalise(audio, am.sampling_rate)
    return AudioResult(audio, am.sampling_rate, prompt, s, am.name, time.monotonic() - t0, stop_reason, lufs)


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
