"""Compiled decoding of a patch (issue 20): the character decoder's step and the sampling after it
as one torch.compile graph over static caches (gpt-fast's `decode_one_token` shape).

The eager path (engine.symbolic.backend.FastBackend) runs 17 character steps per patch, each a few
dozen small ops; most of its time is per-op and Python overhead, not arithmetic. Here one step is
one graph with fixed shapes:
- the character caches are preallocated per bucket of rows (1, 2, 4, 8, ...) with all 17
  positions, and the position is a tensor, so the 16 steps of a patch replay the same graph;
- the step writes its keys/values by index and attends through a mask over all 17 positions
  (stale keys of the previous patch are masked, never read);
- softmax, the bos ban, top-k/top-p/temperature sampling, the forced prefix and the done mask are
  inside the graph, so a step is one call with no host sync (the CPU's early exit syncs once per
  character, as the eager path does).

On CUDA the graph is captured as a CUDA graph (mode "reduce-overhead"); on the CPU it is inductor's
C++ code with the weights frozen in. Compiling costs seconds per bucket (measured by
bench.notagen_speed), once per model and bucket; inductor's on-disk FX graph cache
(TORCHINDUCTOR_CACHE_DIR) keeps the artefacts for the next start. When compilation fails the
caller gets None once and a one-line warning, and decodes eagerly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.errors import SettingsError
from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID
from engine.symbolic.model import KVCache, NotaGenModel
from engine.symbolic.sampling import sample

log = logging.getLogger("cadenza.compiled")

DECODE_MODES = ("auto", "eager", "compiled")
MAX_BUCKET = 64  # rows; a batch above this decodes eagerly (the recompile budget is per bucket)


def resolve_decode(mode: str, device: torch.device) -> str:
    """'auto' is compiled on CUDA, where launch overhead dominates a character step, and eager on the
    CPU, where compiling costs 15-30 s per batch size for about 15% per patch (bench.notagen_speed)."""
    if mode not in DECODE_MODES:
        raise SettingsError(f"decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    if mode == "auto":
        return "compiled" if torch.device(device).type == "cuda" else "eager"
    return mode


def bucket(rows: int) -> int:
    """The smallest power of two holding `rows`: the padded batch a compiled graph is made for."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass
class PatchInputs:
    """What sampling a patch needs per row besides the hidden state, as tensors on the model's device."""
    prefix: torch.Tensor  # (rows, patch_size) forced characters, PAD after each row's prefix
    plen: torch.Tensor  # (rows,) forced characters per row
    top_k: torch.Tensor  # (rows,) long
    top_p: torch.Tensor  # (rows,) float
    temperature: torch.Tensor  # (rows,) float
    u: torch.Tensor  # (rows, patch_size) uniforms from each piece's own generator
    no_eos: torch.Tensor  # (rows,) bool: bos banned at the first character

    def padded(self, rows: int) -> "PatchInputs":
        """The same rows, then padding rows that write nothing (they start done)."""
        extra = rows - self.plen.shape[0]
        if extra == 0:
            return self

        def pad(x: torch.Tensor, value) -> torch.Tensor:
            return torch.cat([x, x.new_full((extra, *x.shape[1:]), value)])
        return PatchInputs(pad(self.prefix, PAD_ID), pad(self.plen, 0), pad(self.top_k, 0), pad(self.top_p, 1.0),
                           pad(self.temperature, 0.0), pad(self.u, 0.5), pad(self.no_eos, False))


def char_step(model: NotaGenModel, ks: list[torch.Tensor], vs: list[torch.Tensor], x: torch.Tensor,
              t: torch.Tensor, done: torch.Tensor, inputs: PatchInputs):
    """One character of every row: x (rows, hidden) enters at position t (a 0-d long tensor);
    returns (characters (rows,), done (rows,), the next step's input (rows, hidden)). The function
    that is compiled; it also runs eagerly (the tests compare the two)."""
    char = model.char_level_decoder
    positions = ks[0].shape[2]
    rows = x.shape[0]
    caches = [KVCache(k, v, positions) for k, v in zip(ks, vs)]
    mask = (torch.arange(positions, device=x.device) <= t)[None, None, None, :]  # (1, 1, 1, positions)
    hidden = char.base.transformer.step(x, caches, t.expand(rows), positions, mask)
    probs = torch.softmax(char.base.lm_head(hidden).float(), dim=-1)
    ban = inputs.no_eos & (t == 0)
    probs[:, BOS_ID] = torch.where(ban, torch.zeros_like(probs[:, BOS_ID]), probs[:, BOS_ID])
    u = inputs.u.gather(1, t.expand(rows, 1)).squeeze(1)
    tok = sample(probs, inputs.top_k, inputs.top_p, inputs.temperature, u)
    forced = inputs.prefix.gather(1, t.expand(rows, 1)).squeeze(1)
    tok = torch.where(t < inputs.plen, forced, tok)
    tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
    return tok, done | (tok == EOS_ID), char.embed_chars(tok)


class CompiledChars:
    """The compiled character step of one model for one bucket of rows, with its static caches."""

    def __init__(self, model: NotaGenModel, rows: int):
        cfg = model.config
        self.model, self.rows = model, rows
        caches = model.char_level_decoder.base.transformer.new_caches(rows, cfg.patch_size + 1, model.device, model.dtype)
        self.ks, self.vs = [c.k for c in caches], [c.v for c in caches]
        self.version = weights_version(model)
        cuda = model.device.type == "cuda"
        if cuda:  # CUDA graphs replay fixed addresses: the caches never move
            for x in self.ks + self.vs:
                torch._dynamo.mark_static_address(x)
        options = None if cuda else {"freezing": True}  # weights as constants: inductor packs them for oneDNN
        self.fn = torch.compile(char_step, fullgraph=True, dynamic=False,
                                mode="reduce-overhead" if cuda else None, options=options)
        self.ready = False

    def write(self, hidden: torch.Tensor, inputs: PatchInputs, early_exit: bool) -> torch.Tensor:
        """One patch per row of hidden (rows <= self.rows, hidden) -> characters (rows, patch_size)."""
        n, size = hidden.shape[0], self.model.config.patch_size
        inputs = inputs.padded(self.rows)
        x = torch.cat([hidden, hidden.new_zeros(self.rows - n, hidden.shape[1])]) if n < self.rows else hidden
        done = torch.arange(self.rows, device=hidden.device) >= n
        out = torch.full((self.rows, size), PAD_ID, dtype=torch.long, device=hidden.device)
        if not self.ready:
            log.warning("compiling the character step for %d rows (once per batch size and model)", self.rows)
        for t in range(size):
            tok, done, x = self.fn(self.model, self.ks, self.vs, x, self._position(t), done, inputs)
            out[:, t] = tok
            self.ready = True
            if early_exit and bool(done.all()):
                break
            x, done = x.clone(), done.clone()  # CUDA graph outputs are overwritten by the next replay
        return out[:n]

    def _position(self, t: int) -> torch.Tensor:
        return torch.tensor(t, device=self.model.device)


def weights_version(model: NotaGenModel) -> tuple:
    """Changes whenever a weight is changed in place or replaced: frozen graphs are then stale."""
    return tuple((id(p), p._version, p.device, p.dtype) for p in model.parameters())


def compiled_chars(model: NotaGenModel, rows: int) -> CompiledChars | None:
    """The model's compiled step for `rows` rows (padded to a bucket), made on first use and kept on
    the model, so every backend, stream and scheduler run of one model shares it. None when the
    batch is above MAX_BUCKET or compilation failed (once warned, the model then decodes eagerly)."""
    size = bucket(rows)
    if size > MAX_BUCKET or getattr(model, "_compile_failed", False):
        return None
    table: dict[int, CompiledChars] = model.__dict__.setdefault("_compiled_chars", {})
    have = table.get(size)
    if have is None or have.version != weights_version(model):
        # every (model, bucket) is a recompile of one function: allow as many as tests and servers make
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        have = table[size] = CompiledChars(model, size)
    return have


def mark_failed(model: NotaGenModel, error: Exception) -> None:
    log.warning("compiled decoding is unavailable (%s: %s); decoding eagerly", type(error).__name__,
                str(error).splitlines()[0] if str(error) else "")
    model.__dict__["_compile_failed"] = True
    model.__dict__.pop("_compiled_chars", None)
