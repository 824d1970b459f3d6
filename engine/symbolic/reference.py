"""NotaGen's original generation algorithm, for equivalence tests and the speed benchmark only.

For every patch the whole context goes through the patch-level decoder again, and for every
character the character-level decoder runs again over the patch so far; all 16 characters are
drawn even after eos; probabilities go to the host and are sampled there with numpy. The decoders
are transformers' GPT2Model / GPT2LMHeadModel with eager attention, as in NotaGen's code.
"""
from __future__ import annotations

import torch

from engine.symbolic.config import BOS_ID, NotaGenConfig
from engine.symbolic.model import NotaGenModel
from engine.symbolic.sampling import sample_numpy


def _gpt2_configs(cfg: NotaGenConfig):
    from transformers import GPT2Config

    common = dict(n_embd=cfg.hidden_size, n_head=cfg.n_heads, layer_norm_epsilon=cfg.layer_norm_epsilon,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                  bos_token_id=None, eos_token_id=None)
    patch = GPT2Config(n_layer=cfg.patch_num_layers, n_positions=cfg.patch_length, vocab_size=1, **common)
    char = GPT2Config(n_layer=cfg.char_num_layers, n_positions=cfg.patch_size + 1, vocab_size=cfg.vocab_size, **common)
    for c in (patch, char):
        c._attn_implementation = "eager"
    return patch, char


class ReferenceModel(torch.nn.Module):
    """NotaGen's modules (transformers GPT-2) holding the same weights as a NotaGenModel."""

    def __init__(self, model: NotaGenModel):
        super().__init__()
        from transformers import GPT2LMHeadModel, GPT2Model

        cfg = model.config
        self.config = cfg
        patch_cfg, char_cfg = _gpt2_configs(cfg)
        self.patch_embedding = torch.nn.Linear(cfg.patch_size * cfg.vocab_size, cfg.hidden_size)
        self.patch_base = GPT2Model(patch_cfg)
        self.char_base = GPT2LMHeadModel(char_cfg)
        state = model.state_dict()
        self.patch_embedding.load_state_dict({k.split(".")[-1]: state["patch_level_decoder.patch_embedding." + k.split(".")[-1]]
                                              for k in ("weight", "bias")})
        self._load(self.patch_base, state, "patch_level_decoder.base.")
        self._load(self.char_base, state, "char_level_decoder.base.")
        self.to(device=model.device, dtype=model.dtype).eval()

    @staticmethod
    def _load(module, state, prefix):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        assert not missing and not unexpected, (missing, unexpected)

    def patch_hidden(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (1, n, patch_size) -> last hidden states (1, n, hidden): NotaGen's PatchLevelDecoder."""
        cfg = self.config
        onehot = torch.nn.functional.one_hot(patches, num_classes=cfg.vocab_size).to(self.patch_embedding.weight.dtype)
        embeds = self.patch_embedding(onehot.reshape(patches.shape[0], -1, cfg.patch_size * cfg.vocab_size))
        return self.patch_base(inputs_embeds=embeds).last_hidden_state

    def char_probs(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden (hidden,), tokens (t,) starting with bos -> next-character probabilities (vocab,)."""
        embeds = torch.nn.functional.embedding(tokens.reshape(1, -1), self.char_base.transformer.wte.weight)
        embeds = torch.cat([hidden.reshape(1, 1, -1), embeds[:, 1:]], dim=1)
        logits = self.char_base(inputs_embeds=embeds).logits
        return torch.softmax(logits[0, -1].float(), dim=-1)


class ReferenceBackend:
    """Stages 1-2 of engine.symbolic.generate, one piece at a time, nothing cached."""

    def __init__(self, model: NotaGenModel, rows: int = 1):  # one piece at a time: rows is not used
        self.ref = ReferenceModel(model)
        self.device = model.device

    def encode(self, states) -> torch.Tensor:
        out = []
        for s in states:
            ids = torch.tensor(s.context, device=self.device)[None]
            out.append(self.ref.patch_hidden(ids)[0, -1])
        return torch.stack(out)

    def sample(self, hidden, states, prefixes) -> list[list[int]]:
        size = self.ref.config.patch_size
        result = []
        for h, s, prefix in zip(hidden, states, prefixes):
            u = torch.rand(size, generator=s.generator, device=self.device).tolist()
            tokens = [BOS_ID] + list(prefix)
            generated: list[int] = []
            while True:  # NotaGen's loop: 16 - len(prefix) characters, eos or not
                probs = self.ref.char_probs(h, torch.tensor(tokens, device=self.device)).cpu().numpy()
                if len(tokens) == 1 and not s.eos_allowed():  # as FastBackend: no eos patch before the last bar
                    probs[BOS_ID] = 0.0
                token = sample_numpy(probs, s.req.sampling, u[len(tokens) - 1])
                generated.append(token)
                if len(tokens) >= size:
                    break
                tokens.append(token)
            result.append(list(prefix) + generated)
        return result
