"""The engine's Python API: load a model, compose pieces, list prompts. The CLI and (later) the
web app call these functions and nothing deeper."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from engine.errors import CadenzaError, CheckpointError, SettingsError
from engine.render.pipeline import FORMATS, RenderOptions, RenderResult, render, render_file  # noqa: F401
from engine.symbolic.checkpoint import LoadedModel, load_model
from engine.symbolic.generate import FastBackend, PatchEvent, Piece, PieceRequest, stream
from engine.symbolic.postprocess import AbcResult, to_abc
from engine.symbolic.prompts import make_prompt
from engine.symbolic.reference import ReferenceBackend
from engine.symbolic.sampling import SamplingSettings

MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """None or 'auto': the first CUDA GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CheckpointError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} asked for, but this machine has no CUDA GPU (use 'cpu')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckpointError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                              "visible GPU(s) (CUDA_VISIBLE_DEVICES decides which)")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (as NotaGen runs), fp32 on the CPU (where bf16 matmuls are slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def bundled_model() -> Path | None:
    """The model shipped in assets/models (or $CADENZA_MODELS_DIR): the first folder with a config.json."""
    import os

    folder = Path(os.environ.get("CADENZA_MODELS_DIR", MODELS_DIR))
    if not folder.is_dir():
        return None
    found = sorted(p.parent for p in folder.glob("*/config.json"))
    return found[0] if found else None


def load(path: str | Path | None = None, device=None, dtype: torch.dtype | None = None) -> LoadedModel:
    """A model ready to compose: `path` (NotaGen .pth or Cadenza folder), else the bundled model."""
    if path is None:
        path = bundled_model()
        if path is None:
            raise CheckpointError(
                "no model given and no bundled model in assets/models: pass a NotaGen checkpoint "
                "(.pth, e.g. NotaGen-X from huggingface.co/ElectricAlexis/NotaGen) or a Cadenza model folder")
    dev = pick_device(device)
    return load_model(path, device=dev, dtype=dtype or default_dtype(dev))


@dataclass
class PlacementOptions:
    """Where a model goes: GPUs ("0,1,2"; default every visible one, or the CPU), the plan
    (auto | single | split | replicate), budgets ("0=20GiB,1=20GiB"), and the batch the KV cache
    is sized for."""
    devices: str | None = None
    placement: str = "auto"
    max_memory: str | None = None
    batch: int = 1


def load_placed(path: str | Path | None = None, options: PlacementOptions | None = None,
                dtype: torch.dtype | None = None) -> list[LoadedModel]:
    """A model placed by engine.placement: one LoadedModel (single device, or split across
    several), or one copy per device (replicate). The plan is made on the meta device from the
    checkpoint's sizes before anything is loaded; each copy carries it (`.plan`)."""
    import dataclasses

    from accelerate import init_empty_weights

    from engine import placement
    from engine.symbolic.checkpoint import read_config
    from engine.symbolic.model import NotaGenModel

    o = options or PlacementOptions()
    path = path or bundled_model()
    if path is None:
        return [load(None)]  # raises the clear "no model" error
    budget = placement.budgets(placement.parse_devices(o.devices), placement.parse_max_memory(o.max_memory))
    dtype = dtype or (torch.float32 if list(budget) == ["cpu"] else torch.bfloat16)
    with init_empty_weights():
        meta = NotaGenModel(read_config(path)).to(dtype)
    plan = placement.plan_notagen(meta, budget, o.placement, batch=o.batch)
    for stage in plan.stages:
        pick_device(stage.device)  # a plan for GPUs this machine lacks (--max-memory simulates them) stops here
    if plan.kind == "split":
        lm = load(path, device="cpu", dtype=dtype)  # memory-mapped; each stage then moves to its device
        placement.place_notagen(lm.model, plan)
        return [dataclasses.replace(lm, plan=plan)]
    return [dataclasses.replace(load(path, device=stage.device, dtype=dtype), plan=plan) for stage in plan.stages]


_SAMPLING = SamplingSettings()  # defaults for compose_stream's keywords


@dataclass
class Composition:
    piece: Piece
    abc: AbcResult
    warnings: list[str] = field(default_factory=list)
    rendered: RenderResult | None = None  # set by export()

    def stem(self) -> str:
        """A file name that says what the piece is: bach-choral-seed1234."""
        from engine.files import slug

        p = self.piece.prompt
        return f"{slug(p.composer.split(',')[0])}-{slug(p.instrumentation)}-seed{self.piece.seed}"

    def manifest(self, lm: LoadedModel) -> dict:
        p = self.piece
        return {
            "prompt": {"period": p.prompt.period, "composer": p.prompt.composer, "instrumentation": p.prompt.instrumentation},
            "seed": p.seed,
            "sampling": {"top_k": p.sampling.top_k, "top_p": p.sampling.top_p, "temperature": p.sampling.temperature},
            "model": {"name": lm.name, "checksum": lm.checksum(), "config": lm.model.config.to_dict()},
            "generation": {"stop_reason": p.stop_reason, "complete": p.complete, "patches": p.patches, "chars": p.chars,
                           "bars": p.bars, "seconds": round(p.elapsed, 3), "context_resets": p.context_resets},
            "bar_alignment": {"aligned": self.abc.alignment.aligned, "total": self.abc.alignment.total,
                              "misaligned_bars": self.abc.alignment.misaligned_lines},
            "generation_warnings": self.warnings,
        }


def export(lm: LoadedModel, composition: Composition, out_dir, formats=FORMATS,
           options: RenderOptions | None = None) -> RenderResult:
    """Writes every export of a composed piece, with a manifest of how it was made."""
    result = render(composition.abc.abc, out_dir, formats, composition.stem(), composition.manifest(lm), options,
                    strict=False)
    composition.rendered = result
    return result


def compose_stream(lm: LoadedModel, period: str, composer: str, instrumentation: str, *, seed: int | None = None,
                   top_k: int = _SAMPLING.top_k, top_p: float = _SAMPLING.top_p,
                   temperature: float = _SAMPLING.temperature, max_patches: int = 4096,
                   max_seconds: float = 1200.0, variations: int = 1, cancel: threading.Event | None = None,
                   reference: bool = False, bar_retries: int = 16, header_retries: int = 64,
                   prefix: str = "") -> Iterator[PatchEvent | Composition]:
    """Writes `variations` pieces for one prompt in one batch, yielding a PatchEvent per patch and
    a Composition as each piece ends. Variation i uses seed + i; the seed used is always in the
    result (a random one when none is given). Closing the iterator stops the batch within a patch.

    bar_retries: times a bar whose voices disagree in length is written again; header_retries:
    times a header with a number of voices that few of the prompt's training pieces have is written
    again (both 0: NotaGen's own sampling). prefix: text in the model's format to continue
    (see continuation_prefix)."""
    prompt, warnings = make_prompt(period, composer, instrumentation, lm.prompts)
    if seed is None:
        seed = random.randrange(2**31)
    settings = SamplingSettings(top_k=top_k, top_p=top_p, temperature=temperature)
    if isinstance(variations, bool) or not isinstance(variations, int) or not 1 <= variations <= 64:
        raise SettingsError(f"variations must be a whole number from 1 to 64, got {variations!r}")
    requests = [PieceRequest(prompt, seed=seed + i, sampling=settings, max_patches=max_patches,
                             max_seconds=max_seconds, cancel=cancel, prefix=prefix, bar_retries=bar_retries,
                             voices=lm.voices.get(prompt.key()), header_retries=header_retries)
                for i in range(variations)]
    for ev in stream(lm.model, requests, ReferenceBackend if reference else FastBackend):
        if isinstance(ev, Piece):
            notes = list(lm.warnings) + warnings
            if ev.cut_short:
                notes.append(f"cut short ({ev.stop_reason}) after {ev.patches} patches")
            result = to_abc(ev.text)
            yield Composition(ev, result, notes + result.warnings)
        else:
            yield ev


def compose(lm: LoadedModel, period: str, composer: str, instrumentation: str, *,
            on_event: Callable[[PatchEvent], None] | None = None, **kwargs) -> list[Composition]:
    """compose_stream run to the end: the pieces in variation order (same keyword arguments)."""
    done = []
    for ev in compose_stream(lm, period, composer, instrumentation, **kwargs):
        if isinstance(ev, Composition):
            done.append(ev)
        elif on_event is not None:
            on_event(ev)
    return sorted(done, key=lambda c: c.piece.index)


def continuation_prefix(abc_text: str, more_bars: int = 32) -> str:
    """A score in ABC (the user's, or a piece cut short) -> the model's format, ready to continue.
    The bar markers count `more_bars` bars still to come, so the model does not read the score
    as finished. Goes through MusicXML, so any voice layout ABC allows comes out interleaved."""
    from unidecode import unidecode

    from engine.render.convert import ConversionError, abc_to_musicxml
    from engine.symbolic.abcformat import interleave, reduce_rests, xml_to_abc
    from engine.symbolic.patches import split_tunebody

    if isinstance(more_bars, bool) or not isinstance(more_bars, int) or not 1 <= more_bars <= 10_000:
        raise SettingsError(f"more_bars must be a whole number from 1 to 10000, got {more_bars!r}")
    try:
        xml, _ = abc_to_musicxml(abc_text)
    except ConversionError as e:
        raise SettingsError(f"the score to continue cannot be read: {e}") from e
    meta, body = split_tunebody("".join(interleave(xml_to_abc(xml.encode()))))
    if not body:
        raise SettingsError("the score has no bars to continue: expected ABC with a header and some notes")
    n = len(body) + more_bars
    text = "".join(meta) + "".join(f"[r:{i}/{n - i - 1}]" + reduce_rests(ln) for i, ln in enumerate(body))
    return unidecode(text)  # the model reads ASCII only (lyrics and titles are gone already)


def fetch_checkpoint(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """A checkpoint from the Hugging Face Hub into the standard cache (huggingface_hub; progress
    bars through tqdm). Offline or unreachable: a CadenzaError saying what to do instead."""
    import re

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id.strip()):
        raise SettingsError(f"expected a Hugging Face repo id like 'ElectricAlexis/NotaGen', got {repo_id!r}")
    if not isinstance(filename, str) or not filename.strip() or ".." in filename:
        raise SettingsError("expected the checkpoint's file name in that repo, e.g. a .pth file")
    try:
        return Path(hf_hub_download(repo_id.strip(), filename.strip(), revision=revision))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"could not download {filename} from {repo_id}: no network and not in the cache. Download it on a "
            f"machine with network (huggingface-cli download {repo_id} {filename}) and copy the file here, then "
            "give its path as the model") from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise CheckpointError(f"{repo_id} has no file {filename}") from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"downloading {filename} from {repo_id} failed: {e}") from e


# --- audio (MusicGen) ----------------------------------------------------------------------------------
@dataclass
class AudioOutput:
    """What an audio request left on disk: a WAV and a picture per variation, and a manifest."""
    result: "musicgen.AudioResult"  # noqa: F821 - imported lazily (transformers is slow to import)
    wavs: list[Path]
    pictures: list[Path]
    manifest: Path


def load_audio_model(spec: str | Path | None = None, device=None, options: PlacementOptions | None = None,
                     local_only: bool = False):
    """A MusicGen model (default facebook/musicgen-small) from a folder or the Hugging Face cache.
    With placement options: planned on the meta device first; a split runs through accelerate's
    device map (decoder layers kept whole). A replicate plan loads one copy (one audio request
    runs at a time, so more copies would sit idle). local_only: the Hugging Face cache and local
    folders only, never the network (a server whose admin has not allowed downloads)."""
    from engine.audio import musicgen

    if options is None:
        return musicgen.load(spec, device=pick_device(device), local_only=local_only)
    from accelerate import init_empty_weights
    from transformers import AutoConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    from engine import placement

    spec = str(spec or musicgen.DEFAULT_MODEL)
    budget = placement.budgets(placement.parse_devices(options.devices), placement.parse_max_memory(options.max_memory))
    dtype = torch.float32 if list(budget) == ["cpu"] else torch.float16
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=local_only)
    except OSError as e:
        raise musicgen._offline_error(spec, e) from e
    cls = MusicgenMelodyForConditionalGeneration if config.model_type == "musicgen_melody" else MusicgenForConditionalGeneration
    with init_empty_weights():
        meta = cls(config).to(dtype)
    plan = placement.plan_musicgen(meta, budget, options.placement, batch=options.batch)
    for stage in plan.stages:
        pick_device(stage.device)
    if plan.kind == "split":
        device_map = {name: stage.device for stage in plan.stages for name in stage.units}
        am = musicgen.load(spec, dtype=dtype, device_map=device_map, local_only=local_only)
    else:
        am = musicgen.load(spec, device=plan.stages[0].device, dtype=dtype, local_only=local_only)
    am.plan = plan
    return am


def make_audio(am, prompt: str, settings, out_dir, stem: str = "audio", melody: str | Path | None = None,
               on_progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
               extra: dict | None = None) -> AudioOutput:
    """A text prompt (and, for melody models, a melody file) -> WAVs, pictures and a manifest in
    out_dir. Bad input is refused before any work; a cancelled run writes what was made."""
    import json

    from engine.audio import musicgen
    from engine.files import slug, write_atomic

    settings.check()
    prompt = musicgen.check_prompt(prompt)
    wave = None
    if melody is not None:
        musicgen.check_follows_melody(am)  # before decoding the file
        wave = musicgen.load_melody(melody, am.sampling_rate, max_seconds=max(musicgen.WINDOW_SECONDS, settings.duration))
    result = musicgen.generate(am, prompt, settings, on_progress=on_progress, cancel=cancel, melody=wave,
                               melody_name=Path(melody).name if melody is not None else None)
    out_dir = Path(out_dir)
    stem = slug(stem)
    wavs, pictures = [], []
    for i, clip in enumerate(result.audio):
        name = stem if len(result.audio) == 1 else f"{stem}-{i + 1}"
        wavs.append(musicgen.write_wav(out_dir / f"{name}.wav", clip, result.sampling_rate))
        if clip.shape[-1] > 0:
            pictures.append(musicgen.write_picture(out_dir / f"{name}.png", clip, result.sampling_rate, prompt))
    manifest = out_dir / f"{stem}.manifest.json"
    write_atomic(manifest, json.dumps({**result.manifest(), **(extra or {})}, indent=1) + "\n")
    return AudioOutput(result, wavs, pictures, manifest)


def perform(am, abc_text: str, style: str, settings, out_dir, stem: str = "performance",
            on_progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            options: RenderOptions | None = None) -> AudioOutput:
    """A score played by MusicGen: the ABC is rendered to audio with the SoundFont, and a melody
    model plays it again in `style` ("string quartet, warm hall"), following that melody. The
    piece lasts as long as the score, up to settings.duration. The SoundFont WAV is kept beside it."""
    import dataclasses
    import soundfile as sf

    from engine.audio import musicgen

    if not am.melody:
        raise SettingsError(f"performing a score needs a melody model ({musicgen.DEFAULT_MELODY_MODEL} or "
                            f"-melody-large); {am.name} follows text only")
    out_dir = Path(out_dir)
    rendered = render(abc_text, out_dir, ("wav",), f"{stem}-soundfont", options=options, strict=True)
    if not rendered.paths("wav"):
        raise CadenzaError(f"the score could not be played to give the melody: {rendered.failed.get('wav', 'no audio')}")
    sf_wav = rendered.paths("wav")[0]
    seconds = sf.info(str(sf_wav)).duration
    settings = dataclasses.replace(settings, duration=round(max(0.5, min(settings.duration, seconds)), 2))
    return make_audio(am, style, settings, out_dir, stem, melody=sf_wav, on_progress=on_progress, cancel=cancel,
                      extra={"score_seconds": round(seconds, 2), "soundfont_wav": sf_wav.name})
