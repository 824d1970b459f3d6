"""NotaGen's hierarchical GPT-2 (arXiv 2502.18008), written for fast cached decoding.

Module and parameter names follow NotaGen's own code (transformers' GPT2Model / GPT2LMHeadModel
inside `patch_level_decoder.base` and `char_level_decoder.base`), and linear layers inside the
blocks keep GPT-2's Conv1D layout (in, out), so NotaGen's checkpoints load without any renaming.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.symbolic.config import NotaGenConfig


@functools.cache
def cpu_bf16_packing_available() -> bool:
    """oneDNN's packed bf16 linear (what torch.compile's CPU backend uses), on a CPU with native
    bf16 dot products. Plain bf16 addmm reaches under half of fp32's bandwidth on such CPUs; the
    packed kernel reads the weights at about fp32's bytes/s, so half the bytes take half the time."""
    try:
        return (hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Packed:
    """A oneDNN-packed copy of a bf16 CPU weight (out, in) for inference. It is used only while it
    matches the weight (no training step, no load since packing) and without autograd; anything
    else takes the plain path. It costs the weight's size again."""

    def __init__(self, weight_out_in: torch.Tensor, version: int):
        with torch.no_grad():
            self.tensor = torch.ops.mkldnn._reorder_linear_weight(weight_out_in.contiguous(), 1)
        self.version = version

    @staticmethod
    def wanted(weight: torch.Tensor) -> bool:
        return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and not weight.is_meta

    @classmethod
    def update(cls, current: "Packed | None", weight: torch.Tensor, out_in: torch.Tensor) -> "Packed | None":
        """`current` while it matches `weight`, else a new packing of `out_in` (its (out, in) view)."""
        if not cls.wanted(weight):
            return None
        if current is not None and current.version == weight._version:
            return current
        return cls(out_in, weight._version)

    def usable(self, weight: torch.Tensor) -> bool:
        # the version moves with every in-place change; the device and dtype with a .to()
        return (self.version == weight._version and self.wanted(weight)) and not torch.is_grad_enabled()

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation; fused, it costs nothing after the matmul
        return torch.ops.mkldnn._linear_pointwise(x2, self.tensor, bias, "gelu" if gelu else "none", [],
                                                  "tanh" if gelu else "")


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored as (in, out)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.packed: Packed | None = None  # set by NotaGenModel.prepare_for_generation

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """x @ W + b, then GPT-2's tanh-approximated gelu when `gelu`."""
        shape = x.shape[:-1] + (self.weight.shape[1],)
        x2 = x.reshape(-1, x.shape[-1])
        # compiled code (engine.symbolic.compiled) takes the plain path: inductor packs frozen weights itself
        if self.packed is not None and not torch.compiler.is_compiling() and self.packed.usable(self.weight):
            return self.packed(x2, self.bias, gelu).view(shape)
        y = torch.addmm(self.bias, x2, self.weight).view(shape)
        return F.gelu(y, approximate="tanh") if gelu else y

    def pack(self) -> None:
        self.packed = Packed.update(self.packed, self.weight, self.weight.t())


class KVCache:
    """Keys and values of one attention layer for a batch of rows: (rows, heads, positions, head_dim).
    Capacity grows by doubling up to `max_positions`, so a short piece never pays for a full
    context (NotaGen-small's is 2048 patches)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, max_positions: int):
        self.k, self.v, self.max_positions = k, v, max_positions

    @classmethod
    def allocate(cls, rows: int, heads: int, max_positions: int, head_dim: int, device, dtype,
                 initial: int = 256) -> "KVCache":
        # zeros, not empty: masked positions still enter SDPA's matmul, and 0 * NaN garbage is NaN
        k = torch.zeros(rows, heads, min(initial, max_positions), head_dim, device=device, dtype=dtype)
        return cls(k, torch.zeros_like(k), max_positions)

    def rows(self, index: torch.Tensor | slice) -> "KVCache":
        """A cache of some rows: a view for a slice, a copy for an index tensor."""
        if isinstance(index, slice):
            return KVCache(self.k[index], self.v[index], self.max_positions)
        index = index.to(self.k.device)  # a split model keeps each layer's cache on its layer's device
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index), self.max_positions)

    def ensure(self, positions: int) -> None:
        have = self.k.shape[2]
        if positions <= have:
            return
        if positions > self.max_positions:
            raise ValueError(f"{positions} positions asked of a cache of at most {self.max_positions}")
        grow = min(max(positions, 2 * have), self.max_positions) - have
        pad = self.k.new_zeros(self.k.shape[0], self.k.shape[1], grow, self.k.shape[3])
        self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad], 2)

    def take_rows(self, source: list[int]) -> None:
        """Row i becomes old row source[i], or an empty (zero) row where source[i] is -1."""
        index = torch.tensor([max(i, 0) for i in source], device=self.k.device)
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        empty = torch.tensor([i < 0 for i in source], device=self.k.device)
        if bool(empty.any()):
            self.k[empty], self.v[empty] = 0, 0


class Attention(nn.Module):
    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.c_attn = Conv1D(cfg.hidden_size, 3 * cfg.hidden_size)
        self.c_proj = Conv1D(cfg.hidden_size, cfg.hidden_size)

    def _qkv(self, x: torch.Tensor):
        b, t, h = x.shape
        q, k, v = self.c_attn(x).split(h, dim=-1)
        # (batch, heads, time, head_dim)
        return [y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for y in (q, k, v)]

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, row: int | None = None) -> torch.Tensor:
        """Causal attention over the whole of x (training, prefill). With a cache, x is one row
        starting at position 0 and its keys/values are written to cache row `row`."""
        q, k, v = self._qkv(x)
        if cache is not None:
            t = x.shape[1]
            cache.ensure(t)
            cache.k[row, :, :t] = k[0]
            cache.v[row, :, :t] = v[0]
        return self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor | int, kv_len: int,
             mask: torch.Tensor | None) -> torch.Tensor:
        """One new position per row: x (rows, 1, hidden) at positions `pos` (an int when every row is
        at the same position, else a (rows,) tensor); attends to the first kv_len cached positions,
        `mask` (rows, 1, 1, kv_len) hiding each row's future."""
        q, k, v = self._qkv(x)
        cache.ensure(kv_len)
        if isinstance(pos, int):  # the common case: a plain slice write, no scatter
            cache.k[:, :, pos] = k[:, :, 0]
            cache.v[:, :, pos] = v[:, :, 0]
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            cache.k[rows, :, pos] = k[:, :, 0]
            cache.v[rows, :, pos] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache.k[:, :, :kv_len], cache.v[:, :, :kv_len], attn_mask=mask)
        return self._out(y)


class MLP(nn.Module):
    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.c_fc = Conv1D(cfg.hidden_size, 4 * cfg.hidden_size)
        self.c_proj = Conv1D(4 * cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.c_fc(x, gelu=True))


class Block(nn.Module):
    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, row=None):
        x = x + self.attn(self.ln_1(x), cache, row)
        return x + self.mlp(self.ln_2(x))

    def step(self, x, cache, pos, kv_len, mask):
        x = x + self.attn.step(self.ln_1(x), cache, pos, kv_len, mask)
        return x + self.mlp(self.ln_2(x))


class GPT2Stack(nn.Module):
    """GPT-2's transformer (wte, wpe, h, ln_f) driven by input embeddings.

    Split across devices (engine.placement), each block runs where its weights are: the hidden
    state crosses to the next stage's device once per boundary, each layer's KV cache lives with
    its layer, and the output comes back to the device of the embeddings (the first stage)."""

    def __init__(self, cfg: NotaGenConfig, vocab: int, positions: int, layers: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, cfg.hidden_size)
        self.wpe = nn.Embedding(positions, cfg.hidden_size)
        self.h = nn.ModuleList(Block(cfg) for _ in range(layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.split = False  # set by engine.placement when the blocks sit on several devices

    def forward(self, embeds: torch.Tensor, caches: list[KVCache] | None = None, row: int | None = None):
        """embeds (batch, time, hidden) from position 0 -> hidden states (batch, time, hidden)."""
        x = embeds + self.wpe.weight[: embeds.shape[1]]
        home = x.device
        for i, block in enumerate(self.h):
            x = self._to_block(x, block)
            x = block(x, None if caches is None else caches[i], row)
        return self._home(self.ln_f(self._to_block(x, self.ln_f)), home)

    def step(self, embeds: torch.Tensor, caches: list[KVCache], pos: torch.Tensor | int, kv_len: int,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """embeds (rows, hidden) at positions pos (an int, or (rows,)) -> hidden states (rows, hidden)."""
        x = (embeds + (self.wpe.weight[pos] if isinstance(pos, int) else self.wpe(pos))).unsqueeze(1)
        home = x.device
        for block, cache in zip(self.h, caches):
            if self.split and x.device != block.ln_1.weight.device:
                x = self._to_block(x, block)
                pos = pos.to(x.device) if isinstance(pos, torch.Tensor) else pos
                mask = mask.to(x.device) if mask is not None else None
            x = block.step(x, cache, pos, kv_len, mask)
        return self._home(self.ln_f(self._to_block(x, self.ln_f)), home).squeeze(1)

    def _to_block(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        if not self.split:
            return x
        dev = next(module.parameters()).device
        return x if x.device == dev else x.to(dev)

    def _home(self, x: torch.Tensor, home: torch.device) -> torch.Tensor:
        return x if x.device == home else x.to(home)

    def new_caches(self, rows: int, positions: int, device, dtype) -> list[KVCache]:
        """One cache per layer, on that layer's device when the model is split."""
        a = self.h[0].attn if len(self.h) else None
        heads, dim = (a.n_heads, a.head_dim) if a else (1, 64)
        return [KVCache.allocate(rows, heads, positions, dim, block.ln_1.weight.device if self.split else device, dtype)
                for block in self.h]


class PatchLevelDecoder(nn.Module):
    """GPT-2 over patches; a patch enters as the flattened one-hot of its characters (16 x 128)."""

    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Linear(cfg.patch_size * cfg.vocab_size, cfg.hidden_size)
        # vocab 1: NotaGen's GPT2Model has a one-row wte that inputs_embeds never uses.
        self.base = GPT2Stack(cfg, 1, cfg.patch_length, cfg.patch_num_layers)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (..., patch_size) ids -> (..., hidden). one_hot @ W.T is a sum of 16 columns of W;
        gathering them skips a 2048-wide matmul that is almost all zeros."""
        offsets = torch.arange(self.cfg.patch_size, device=patches.device) * self.cfg.vocab_size
        cols = self.patch_embedding.weight.t()[patches + offsets]  # (..., patch_size, hidden)
        return cols.sum(-2) + self.patch_embedding.bias

    def forward(self, patches: torch.Tensor, caches=None, row=None) -> torch.Tensor:
        """patches (batch, n, patch_size) -> last hidden states (batch, n, hidden)."""
        return self.base(self.embed(patches), caches, row)

    def step(self, patches: torch.Tensor, caches, pos, kv_len, mask=None) -> torch.Tensor:
        """One new patch per row: patches (rows, patch_size) at positions pos -> (rows, hidden)."""
        return self.base.step(self.embed(patches), caches, pos, kv_len, mask)


class LMHeadStack(nn.Module):
    """GPT2LMHeadModel's layout: `transformer` plus an `lm_head` tied to the character embedding."""

    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.transformer = GPT2Stack(cfg, cfg.vocab_size, cfg.patch_size + 1, cfg.char_num_layers)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight


class CharLevelDecoder(nn.Module):
    """GPT-2 over the characters of one patch: position 0 is the patch-level hidden state, then the
    patch's characters; predicts each next character."""

    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.cfg = cfg
        self.base = LMHeadStack(cfg)
        self.packed_head: Packed | None = None  # set by NotaGenModel.prepare_for_generation

    def forward(self, hidden: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        """hidden (n, hidden), chars (n, t) -> logits (n, t + 1, vocab) for teacher forcing."""
        embeds = torch.cat([hidden.unsqueeze(1), self.base.transformer.wte(chars)], dim=1)
        return self.base.lm_head(self.base.transformer(embeds))

    def step(self, embeds: torch.Tensor, caches, t: int) -> torch.Tensor:
        """embeds (rows, hidden) at char position t for every row -> logits (rows, vocab)."""
        hidden = self.base.transformer.step(embeds, caches, t, t + 1)
        head = self.base.lm_head
        if self.packed_head is not None and self.packed_head.usable(head.weight):
            return self.packed_head(hidden, None)
        return head(hidden)

    def pack(self) -> None:
        w = self.base.lm_head.weight  # (vocab, hidden), tied to the character embedding
        self.packed_head = Packed.update(self.packed_head, w, w)

    def embed_chars(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.transformer.wte(ids)


class NotaGenModel(nn.Module):
    def __init__(self, cfg: NotaGenConfig):
        super().__init__()
        self.config = cfg
        self.patch_level_decoder = PatchLevelDecoder(cfg)
        self.char_level_decoder = CharLevelDecoder(cfg)

    @property
    def device(self) -> torch.device:
        return self.patch_level_decoder.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_level_decoder.patch_embedding.weight.dtype

    def prepare_for_generation(self) -> "NotaGenModel":
        """Packs the linear layers of a bf16 model on a CPU that has fast bf16 (no-op elsewhere,
        and for layers packed already)."""
        if self.dtype != torch.bfloat16 or self.device.type != "cpu" or not cpu_bf16_packing_available():
            return self
        for m in self.modules():
            if isinstance(m, (Conv1D, CharLevelDecoder)):
                m.pack()
        return self

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "NotaGenModel":
        """GPT-2's initialisation, for training from scratch and for tests' random models."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                    p.fill_(1.0)
                elif p.dim() == 1:
                    p.zero_()
                else:
                    scale = std / math.sqrt(2 * max(1, self.config.patch_num_layers)) if name.endswith("c_proj.weight") else std
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        return self
