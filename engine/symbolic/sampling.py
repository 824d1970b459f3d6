"""Sampling of the next character: top-k, then top-p, then temperature (NotaGen's order).

Every row has its own settings and its own uniform random number, so a batch samples in one set
of tensor operations on the model's device. The random numbers come from each piece's own
generator, so a piece's result depends on its seed, not on what else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.checks import real, whole


@dataclass(frozen=True)
class SamplingSettings:
    top_k: int = 9  # keep the k most likely characters (0: all)
    top_p: float = 0.9  # then the smallest set holding this much probability (1: all)
    temperature: float = 1.2  # then p ** (1 / temperature); 0 means greedy

    def __post_init__(self) -> None:
        # checked once, here; a page's 9.0 becomes 9 (frozen: set through object.__setattr__)
        object.__setattr__(self, "top_k", whole(self.top_k, "top_k (0: off)", 0, 128))
        object.__setattr__(self, "top_p", real(self.top_p, "top_p", 0, 1, above=True))
        object.__setattr__(self, "temperature", real(self.temperature, "temperature (0: greedy)", 0, 10))

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0


def sample(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor,
           u: torch.Tensor) -> torch.Tensor:
    """probs (rows, vocab) float; top_k (rows,) long (0 = off); top_p, temperature, u (rows,) float.
    Returns the sampled ids (rows,). Inverse-CDF sampling with the given uniforms."""
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    vocab = probs.shape[-1]
    ranks = torch.arange(vocab, device=probs.device)
    k = torch.where(top_k > 0, top_k, vocab)
    sorted_p = sorted_p * (ranks < k[:, None])
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely characters
    keep = (before < top_p[:, None]) | (ranks == 0)
    sorted_p = sorted_p * keep
    greedy = temperature == 0
    inv_t = torch.where(greedy, torch.ones_like(temperature), 1.0 / temperature)
    sorted_p = torch.where(sorted_p > 0, sorted_p.clamp_min(1e-30).pow(inv_t[:, None]), torch.zeros_like(sorted_p))
    cdf = sorted_p.cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_max(vocab - 1)
    pick = torch.where(greedy[:, None], torch.zeros_like(pick), pick)
    return order.gather(-1, pick).squeeze(-1)


def sample_numpy(probs: np.ndarray, settings: SamplingSettings, u: float) -> int:
    """The same maths on the host for one row (reference mode, as NotaGen samples with numpy)."""
    vocab = probs.shape[-1]
    order = np.argsort(-probs, kind="stable")
    p = probs[order].astype(np.float64)
    if settings.top_k > 0:
        p[settings.top_k:] = 0
    p = p / p.sum()
    before = np.cumsum(p) - p
    keep = before < settings.top_p
    keep[0] = True
    p = p * keep
    if settings.temperature == 0:
        return int(order[0])
    p = np.where(p > 0, np.power(np.maximum(p, 1e-30), 1.0 / settings.temperature), 0.0)
    cdf = np.cumsum(p)
    pick = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), vocab - 1)
    return int(order[pick])
