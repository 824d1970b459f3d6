"""Growing a trained model deeper without forgetting it (`python -m engine train --init M --patch-layers N`).

A bigger bundled model trained from scratch on a 2-core CPU would spend hours relearning what the
small one knows. Instead the small model's blocks are spread through a deeper stack and the new
blocks start as the identity: their two output projections (attention's and the MLP's `c_proj`)
are zero, so each adds nothing to the residual stream and the grown model computes exactly what
the small one did (a test checks the logits). Training then only has to use the new depth. This is
the function-preserving half of Net2Net (Chen et al., 2016) for residual stacks, as used by
progressive-stacking recipes for BERT/GPT (Gong et al., 2019).
"""
from __future__ import annotations

import dataclasses

import torch

from engine.errors import CadenzaError
from engine.symbolic.model import Block, GPT2Stack, NotaGenModel


def deepen(model: NotaGenModel, patch_layers: int, char_layers: int, seed: int = 0) -> NotaGenModel:
    """A new model with `patch_layers`/`char_layers` blocks computing what `model` computes."""
    cfg = model.config
    if patch_layers < cfg.patch_num_layers or char_layers < cfg.char_num_layers:
        raise CadenzaError(f"a model can only be grown: it has {cfg.patch_num_layers} patch and {cfg.char_num_layers} "
                           f"character layers, asked for {patch_layers} and {char_layers}")
    grown = NotaGenModel(dataclasses.replace(cfg, patch_num_layers=patch_layers, char_num_layers=char_layers))
    grown.init_weights(seed=seed).to(device=model.device, dtype=model.dtype)
    state = grown.state_dict()
    old = model.state_dict()
    for name in state:  # everything outside the blocks (embeddings, final norms) is copied
        if ".h." not in name:
            state[name] = old[name].clone()
    grown.load_state_dict(state)
    _spread(model.patch_level_decoder.base, grown.patch_level_decoder.base)
    _spread(model.char_level_decoder.base.transformer, grown.char_level_decoder.base.transformer)
    return grown


def placement_of(old: int, new: int) -> list[int]:
    """Where each of `old` blocks goes among `new`: evenly spread, first and last kept at the ends
    (6 into 12: 0, 2, 4, 7, 9, 11)."""
    if old == 0:
        return []
    if old == 1:
        return [0]
    return [round(i * (new - 1) / (old - 1)) for i in range(old)]


def _spread(small: GPT2Stack, big: GPT2Stack) -> None:
    places = placement_of(len(small.h), len(big.h))
    with torch.no_grad():
        for i, block in enumerate(big.h):
            if i in places:
                block.load_state_dict(small.h[places.index(i)].state_dict())
            else:
                _make_identity(block)


def _make_identity(block: Block) -> None:
    """Zero output projections: the block's attention and MLP add nothing until trained."""
    for proj in (block.attn.c_proj, block.mlp.c_proj):
        proj.weight.zero_()
        proj.bias.zero_()
