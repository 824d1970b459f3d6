"""Loading and saving NotaGen-architecture models.

Two formats:
- NotaGen's own `.pth`: `torch.save({'model': state_dict})`, loaded unchanged. Sizes are inferred
  from the tensors. The file is memory-mapped and the model is built on the meta device, so the
  weights are never held twice in RAM.
- Cadenza's folder: `model.safetensors`, `config.json` and `prompts.txt` (the model's prompt table).
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.files import file_checksum
from engine.symbolic.config import NotaGenConfig
from engine.symbolic.model import NotaGenModel
from engine.symbolic.prompts import PromptTable

PATCH_PREFIX = "patch_level_decoder."
CHAR_PREFIX = "char_level_decoder."
TIED_KEY = "char_level_decoder.base.transformer.wte.weight"
HEAD_KEY = "char_level_decoder.base.lm_head.weight"
WEIGHTS_FILE, CONFIG_FILE, PROMPTS_FILE = "model.safetensors", "config.json", "prompts.txt"


@dataclass
class LoadedModel:
    model: NotaGenModel
    prompts: PromptTable | None  # None: the model accepts any prompt (with a warning)
    name: str  # what the user called it: a file or folder name
    source: Path
    warnings: list[str] = field(default_factory=list)
    # The voice counts most of each prompt's training pieces have ("period_composer_instrumentation"
    # -> counts, most common first): generation writes a header again when it declares another
    # number (see PieceRequest.voices).
    voices: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # The bar rules each prompt's training pieces keep ("full": no voice left out of a bar;
    # "metre": bars as long as the metre): a generated bar that breaks one is written again
    # (see PieceRequest.bar_rules and engine.symbolic.train.bar_rules).
    bar_rules: dict[str, frozenset[str]] = field(default_factory=dict)
    plan: object | None = None  # engine.placement.Plan when placed by api.load_placed
    _checksum: str | None = None

    def checksum(self) -> str:
        """sha256 of the weights file (computed once, on first use: a 2 GB file takes seconds)."""
        if self._checksum is None:
            self._checksum = file_checksum(self.source / WEIGHTS_FILE if self.source.is_dir() else self.source)
        return self._checksum

    def about(self) -> dict:
        """What a piece's manifest says of the model that wrote it."""
        return {"name": self.name, "checksum": self.checksum(), "config": self.model.config.to_dict()}

    def devices(self) -> list[str]:
        return sorted({str(p.device) for p in self.model.parameters()})


def infer_config(state: dict[str, torch.Tensor]) -> NotaGenConfig:
    """Reads every size from the tensors' shapes: nothing else describes a NotaGen checkpoint."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"the checkpoint has no tensor '{key}', which every NotaGen model has")
        return tuple(state[key].shape)

    hidden, flat = shape(PATCH_PREFIX + "patch_embedding.weight")
    vocab = shape(HEAD_KEY)[0]
    patch_length = shape(PATCH_PREFIX + "base.wpe.weight")[0]
    char_positions = shape(CHAR_PREFIX + "base.transformer.wpe.weight")[0]
    patch_size = char_positions - 1
    if flat != patch_size * vocab:
        raise CheckpointError(f"patch embedding takes {flat} inputs, expected patch size {patch_size} x vocab {vocab}")

    def layers(prefix: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"h\.(\d+)\.", k))}
        if found != set(range(len(found))):
            raise CheckpointError(f"the layers under {prefix}h are not numbered 0..n-1: {sorted(found)}")
        return len(found)

    return NotaGenConfig(
        patch_size=patch_size, patch_length=patch_length, hidden_size=hidden, vocab_size=vocab,
        patch_num_layers=layers(PATCH_PREFIX + "base."), char_num_layers=layers(CHAR_PREFIX + "base.transformer."),
    )


def build_model(cfg: NotaGenConfig, state: dict[str, torch.Tensor], device=None, dtype=None) -> NotaGenModel:
    """Puts `state`'s tensors into a model built on the meta device (no second copy of the weights)."""
    state = dict(state)
    # NotaGen's char decoder ties lm_head to wte; loading both keys into the tied parameter leaves
    # the lm_head value, so that is the one we keep.
    state[TIED_KEY] = state.get(HEAD_KEY, state.get(TIED_KEY))
    state.pop(HEAD_KEY, None)
    with torch.device("meta"):
        model = NotaGenModel(cfg)
    expected = {k for k in model.state_dict() if k != HEAD_KEY}
    missing, unexpected = expected - set(state), set(state) - expected - {HEAD_KEY}
    unexpected = {k for k in unexpected if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # old GPT-2 buffers
    if missing or unexpected:
        raise CheckpointError(
            "the weights do not match a NotaGen model of the inferred size "
            f"(missing: {sorted(missing)[:3]}, unexpected: {sorted(unexpected)[:3]})")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k in expected:
        if tuple(state[k].shape) != shapes[k]:
            raise CheckpointError(f"tensor '{k}' has shape {tuple(state[k].shape)}, expected {shapes[k]}")
    model.load_state_dict({k: state[k] for k in expected}, strict=False, assign=True)
    model.char_level_decoder.base.lm_head.weight = model.char_level_decoder.base.transformer.wte.weight
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict: expected {{'model': state_dict}} as NotaGen saves it")
    if not any(k.startswith(PATCH_PREFIX) for k in state) or not any(k.startswith(CHAR_PREFIX) for k in state):
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"{path} is a checkpoint of another model: expected keys starting with '{PATCH_PREFIX}' and "
            f"'{CHAR_PREFIX}', found e.g. {sample}")
    return state


def load_notagen_checkpoint(path: str | Path, device=None, dtype=None) -> LoadedModel:
    """Loads a NotaGen `.pth` unchanged; picks its prompt table (a prompts.txt beside it, or the
    NotaGen-X table for a NotaGen-X-shaped checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a NotaGen .pth file or a Cadenza model folder")
    state = _read_pth(path)
    cfg = infer_config(state)
    model = build_model(cfg, state, device, dtype)
    prompts, warnings = PromptTable.for_checkpoint(path, cfg)
    return LoadedModel(model, prompts, path.name, path, warnings)


def save_model(model: NotaGenModel, folder: str | Path, prompts: PromptTable | None = None,
               extra_config: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Writes Cadenza's format: safetensors weights, config JSON and the prompt table."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items() if k != HEAD_KEY}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "cadenza-notagen"})
    config = {"architecture": "notagen", **model.config.to_dict(), **(extra_config or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if prompts is not None:
        prompts.save(folder / PROMPTS_FILE)
    return folder


def load_model_folder(folder: str | Path, device=None, dtype=None) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a Cadenza model folder: {name} is missing")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        cfg = NotaGenConfig.from_dict(config)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a valid model config ({e})") from e
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({e})") from e
    if TIED_KEY in state and infer_config(state | {HEAD_KEY: state[TIED_KEY]}) != cfg:
        raise CheckpointError(f"{folder / CONFIG_FILE} does not match the weights' shapes")
    model = build_model(cfg, state, device, dtype)
    warnings: list[str] = []
    prompts = PromptTable.load(folder / PROMPTS_FILE) if (folder / PROMPTS_FILE).is_file() else None
    if prompts is None:
        warnings.append(f"{folder} has no {PROMPTS_FILE}: any prompt is accepted")
    voices = {str(k): read_voices(v) for k, v in config.get("prompt_voices", {}).items()}
    rules = {str(k): frozenset(map(str, v)) for k, v in config.get("prompt_bar_rules", {}).items()}
    return LoadedModel(model, prompts, config.get("name", folder.name), folder, warnings, voices, rules)


def read_voices(value) -> tuple[int, ...]:
    """A prompt's voice counts from config.json: a list, or one number (models before v3)."""
    counts = value if isinstance(value, list) else [value]
    try:
        return tuple(int(v) for v in counts)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"prompt_voices holds {value!r}: expected a number of voices or a list of them") from e


def read_config(path: str | Path) -> NotaGenConfig:
    """A model's sizes without building it: a folder's config.json, or a .pth's tensor shapes
    (memory-mapped, nothing is read into RAM)."""
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            return NotaGenConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is not a Cadenza model folder with a valid {CONFIG_FILE} ({e})") from e
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a NotaGen .pth file or a Cadenza model folder")
    return infer_config(_read_pth(path))


def load_model(path: str | Path, device=None, dtype=None) -> LoadedModel:
    """A Cadenza model folder or a NotaGen `.pth` file, in eval mode on `device` (default CPU)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_model_folder(path, device, dtype)
    return load_notagen_checkpoint(path, device, dtype)
