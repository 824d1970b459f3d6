"""The engine's Python API: load a model, compose pieces, list prompts. The CLI and (later) the
web app call these functions and nothing deeper."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.errors import CheckpointError, SettingsError
from engine.render.pipeline import FORMATS, RenderOptions, RenderResult, render, render_file  # noqa: F401
from engine.symbolic.checkpoint import LoadedModel, load_model
from engine.symbolic.generate import PatchEvent, Piece, PieceRequest, generate
from engine.symbolic.postprocess import AbcResult, to_abc
from engine.symbolic.prompts import make_prompt
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


def compose(lm: LoadedModel, period: str, composer: str, instrumentation: str, *, seed: int | None = None,
            top_k: int = 9, top_p: float = 0.9, temperature: float = 1.2, max_patches: int = 4096,
            max_seconds: float = 1200.0, variations: int = 1, cancel: threading.Event | None = None,
            on_event: Callable[[PatchEvent], None] | None = None, mode: str = "fast",
            bar_retries: int = 16, header_retries: int = 8, prefix: str = "") -> list[Composition]:
    """Writes `variations` pieces for one prompt in one batch; variation i uses seed + i.
    The seed used is always in the result (a random one when none is given).

    bar_retries: times a bar whose voices disagree in length is written again; header_retries:
    times a header with another number of voices than the prompt's training pieces is written
    again (both 0: NotaGen's own sampling). prefix: text in the model's format to continue."""
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
    pieces = generate(lm.model, requests, mode=mode, on_event=on_event)
    out = []
    for piece in pieces:
        notes = list(lm.warnings) + warnings
        if piece.cut_short:
            notes.append(f"cut short ({piece.stop_reason}) after {piece.patches} patches")
        result = to_abc(piece.text)
        out.append(Composition(piece, result, notes + result.warnings))
    return out
