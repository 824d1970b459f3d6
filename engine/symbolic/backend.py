"""Stages 1-2 of a generation step (engine.symbolic.generate): the patch-level decoder's hidden
state for each piece, then the next patch of every piece. FastBackend keeps KV caches in both
decoders and runs a batch per forward pass; engine.symbolic.reference.ReferenceBackend is
NotaGen's own algorithm and follows the same Backend protocol."""
from __future__ import annotations

from typing import Protocol

import torch

from engine.symbolic import compiled
from engine.symbolic.compiled import PatchInputs
from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID
from engine.symbolic.model import NotaGenModel
from engine.symbolic.piece import PieceState
from engine.symbolic.sampling import sample


class Backend(Protocol):
    """Stages 1-2 of a step: the patch-level decoder's hidden states, then the next patches."""

    def encode(self, states: list[PieceState]) -> torch.Tensor: ...

    def sample(self, hidden: torch.Tensor, states: list[PieceState], prefixes: list[list[int]]) -> list[list[int]]: ...



class FastBackend:
    """Stages 1-2 with KV caches in both decoders, a batch of pieces per forward pass."""

    def __init__(self, model: NotaGenModel, rows: int, decode: str = "auto"):
        self.model = model.prepare_for_generation()
        # the character step as one compiled graph (engine.symbolic.compiled) or op by op
        self.compiled = compiled.resolve_decode(decode, model.device) == "compiled"
        cfg = model.config
        dev, dt = model.device, model.dtype
        self.patch_caches = model.patch_level_decoder.base.new_caches(rows, cfg.patch_length, dev, dt)
        self.char_caches = model.char_level_decoder.base.transformer.new_caches(rows, cfg.patch_size + 1, dev, dt)
        self.rows: list[PieceState] = []  # cache row i holds self.rows[i]
        self.cached: dict[int, tuple[tuple, int]] = {}  # piece uid -> (its cache_version, patches in cache)
        # Early exit from a patch needs a host sync per character: worth it on CPU, where the
        # skipped compute is the cost, not on a GPU, where the sync is.
        self.early_exit = model.device.type == "cpu"

    def retain(self, active: list[PieceState]) -> None:
        """Cache rows follow `active`: the rows of pieces that ended go (their compute stops), and a
        piece that joined (continuous batching, engine.symbolic.scheduler) gets an empty row that
        encode() prefills. Pieces are named by uid: index is only their place in their request. A
        row with `cache_from` takes over that uid's row and what it has cached (a search's
        candidate forked from its piece, or a piece taking its winning candidate's line)."""
        if [s.uid for s in active] == [s.uid for s in self.rows] and all(s.cache_from is None for s in active):
            return
        where = {s.uid: i for i, s in enumerate(self.rows)}
        source, cached = [], {}
        for s in active:
            uid = s.cache_from if s.cache_from in where else s.uid
            s.cache_from = None
            source.append(where.get(uid, -1))
            if uid in self.cached and uid in where:
                cached[s.uid] = self.cached[uid]
        for c in self.patch_caches:
            c.take_rows(source)
        self.rows = list(active)
        self.cached = cached

    def encode(self, states: list[PieceState]) -> torch.Tensor:
        """Hidden state of each piece's last full patch: (rows, hidden)."""
        self.retain(states)
        dev = self.model.device
        hidden: list[torch.Tensor | None] = [None] * len(states)
        stepping = []
        for r, s in enumerate(states):
            version, n = self.cached.get(s.uid, (None, -1))
            # n >= len(context) after a line was taken back: the cache still holds the kept
            # patches' keys and values, and the step rewrites the last one's in place.
            if version == s.cache_version and n >= len(s.context) - 1:
                stepping.append(r)
            else:
                ids = torch.tensor(s.context, device=dev)[None]  # (1, n, patch_size)
                hidden[r] = self.model.patch_level_decoder(ids, self.patch_caches, r)[0, -1]
            self.cached[s.uid] = (s.cache_version, len(s.context))
        if stepping:
            out = self._step([states[r] for r in stepping], stepping)
            for j, r in enumerate(stepping):
                hidden[r] = out[j]
        return torch.stack(hidden)

    def _step(self, states: list[PieceState], rows: list[int]) -> torch.Tensor:
        dev = self.model.device
        pos_list = [len(s.context) - 1 for s in states]
        patches = torch.tensor([s.context[-1] for s in states], device=dev)  # (rows, patch_size)
        kv_len = max(pos_list) + 1
        pos, mask = kv_len - 1, None
        if min(pos_list) != kv_len - 1:  # rows at different positions: scatter writes and a mask
            pos = torch.tensor(pos_list, device=dev)
            mask = (torch.arange(kv_len, device=dev)[None] <= pos[:, None])[:, None, None, :]
        caches = self.patch_caches
        for c in caches:
            c.ensure(kv_len)  # before any copy of rows, so the copies never outgrow the originals
        if len(rows) != len(self.rows):  # only some rows step: work on a copy of theirs
            idx = torch.tensor(rows, device=dev)
            caches = [c.rows(idx) for c in caches]
            out = self.model.patch_level_decoder.step(patches, caches, pos, kv_len, mask)
            for full, sub in zip(self.patch_caches, caches):
                i = idx.to(full.k.device)  # a split model keeps each layer's cache with its layer
                full.k[i], full.v[i] = sub.k, sub.v
            return out
        return self.model.patch_level_decoder.step(patches, caches, pos, kv_len, mask)

    def sample(self, hidden: torch.Tensor, states: list[PieceState], prefixes: list[list[int]]) -> list[list[int]]:
        """Writes one patch per row (rows, hidden); each row's `prefix` characters are forced."""
        inputs = self._inputs(states, prefixes)
        chars = compiled.compiled_chars(self.model, hidden.shape[0]) if self.compiled else None
        if chars is not None:
            try:
                return chars.write(hidden, inputs, self.early_exit).tolist()
            except Exception as e:  # noqa: BLE001 - inductor/dynamo raise many types; eager still works
                compiled.mark_failed(self.model, e)
                self.compiled = False
        return self._write_eager(hidden, inputs).tolist()

    def _inputs(self, states: list[PieceState], prefixes: list[list[int]]) -> PatchInputs:
        dev, size = self.model.device, self.model.config.patch_size
        prefix = torch.tensor([p + [PAD_ID] * (size - len(p)) for p in prefixes], device=dev)
        plen = torch.tensor([len(p) for p in prefixes], device=dev)
        top_k, top_p, temp = _settings_tensors(states, dev)
        u = torch.stack([torch.rand(size, generator=s.generator, device=dev) for s in states])  # (rows, size)
        # a piece that may not end yet (a length in bars) never starts a free patch with bos: no eos patch
        no_eos = torch.tensor([not s.eos_allowed() for s in states], device=dev) & (plen == 0)
        return PatchInputs(prefix, plen, top_k, top_p, temp, u, no_eos)

    def _write_eager(self, hidden: torch.Tensor, inputs: PatchInputs) -> torch.Tensor:
        """The 16 character steps op by op, over caches sliced to the positions written so far."""
        rows, size, dev = hidden.shape[0], self.model.config.patch_size, self.model.device
        char = self.model.char_level_decoder
        caches = [c.rows(slice(0, rows)) for c in self.char_caches]
        out = torch.full((rows, size), PAD_ID, dtype=torch.long, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        x = hidden
        for t in range(size):
            probs = torch.softmax(char.step(x, caches, t).float(), dim=-1)
            if t == 0 and bool(inputs.no_eos.any()):
                probs[inputs.no_eos, BOS_ID] = 0.0
            tok = sample(probs, inputs.top_k, inputs.top_p, inputs.temperature, inputs.u[:, t])
            tok = torch.where(t < inputs.plen, inputs.prefix[:, t], tok)
            tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
            out[:, t] = tok
            done = done | (tok == EOS_ID)
            if self.early_exit and bool(done.all()):
                break
            x = char.embed_chars(tok)
        return out


def _settings_tensors(states: list[PieceState], dev):
    s = [st.req.sampling for st in states]
    return (torch.tensor([x.top_k for x in s], device=dev),
            torch.tensor([float(x.top_p) for x in s], device=dev),
            torch.tensor([float(x.temperature) for x in s], device=dev))


