"""Sizes of a NotaGen-architecture model, with presets for the published checkpoints."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

PAD_ID = 0  # padding after a patch's eos
BOS_ID = 1  # first id of the bos patch and the char decoder's start symbol
EOS_ID = 2  # ends a patch (and, as the eos patch, a piece)
VOCAB_SIZE = 128  # characters are 7-bit ASCII


@dataclass
class NotaGenConfig:
    patch_size: int = 16  # characters per patch
    patch_length: int = 1024  # patches the patch-level decoder can attend to (its context)
    patch_num_layers: int = 20  # GPT-2 blocks in the patch-level decoder
    char_num_layers: int = 6  # GPT-2 blocks in the character-level decoder
    hidden_size: int = 1280  # width of both decoders; heads = hidden_size / 64
    vocab_size: int = VOCAB_SIZE  # character ids, 0..127
    layer_norm_epsilon: float = 1e-5  # GPT-2's default

    def __post_init__(self) -> None:
        if self.hidden_size % 64:
            raise ValueError(f"hidden_size must be a multiple of 64 (heads = hidden / 64), got {self.hidden_size}")

    @property
    def n_heads(self) -> int:
        return self.hidden_size // 64

    @property
    def head_dim(self) -> int:
        return 64

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NotaGenConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def block_parameters(self) -> int:
        """One GPT-2 block: attn (4h^2 + 4h) + mlp (8h^2 + 5h) + 2 layer norms (4h)."""
        h = self.hidden_size
        return 12 * h * h + 13 * h

    def num_parameters(self) -> int:
        h, p = self.hidden_size, self.patch_size
        block = self.block_parameters()
        patch = p * self.vocab_size * h + h + h + self.patch_length * h + self.patch_num_layers * block + 2 * h
        char = self.vocab_size * h + (p + 1) * h + self.char_num_layers * block + 2 * h
        return patch + char  # lm_head is tied to the char embedding


# Published NotaGen checkpoints (arXiv 2502.18008) and small sizes for tests and the bundled model.
PRESETS: dict[str, NotaGenConfig] = {
    "notagen-small": NotaGenConfig(patch_length=2048, patch_num_layers=12, char_num_layers=3, hidden_size=768),
    "notagen-medium": NotaGenConfig(patch_length=2048, patch_num_layers=16, char_num_layers=3, hidden_size=1024),
    "notagen-large": NotaGenConfig(patch_length=1024, patch_num_layers=20, char_num_layers=6, hidden_size=1280),
    "notagen-x": NotaGenConfig(patch_length=1024, patch_num_layers=20, char_num_layers=6, hidden_size=1280),
    "tiny": NotaGenConfig(patch_length=64, patch_num_layers=2, char_num_layers=1, hidden_size=128),
}
