"""Training and fine-tuning NotaGen-architecture models (`python -m engine train ...`).

NotaGen's recipe: pieces cut into patches (metadata by line, tune body by bar, bos and eos
patches around), cropped at a tune-body line when longer than the context; the patch-level
decoder runs over every patch, the character-level decoder over a random sample of them (patch
sampling); AdamW with warm-up then cosine decay, gradient clipping, bf16 autocast on a GPU.
Checkpoints are Cadenza model folders plus the optimizer state, so a run resumes exactly.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from engine.errors import CadenzaError
from engine.symbolic.checkpoint import save_model
from engine.symbolic.config import EOS_ID, PAD_ID, NotaGenConfig
from engine.symbolic.model import NotaGenModel
from engine.symbolic.patches import bos_patch, split_bars, split_patches, split_tunebody, to_ids
from engine.symbolic.harmony import Critic, beat_length, key_alterations
from engine.symbolic.postprocess import (R_MARKER, check_alignment, closes_section, count_voices, header_field, header_unit,
                                         line_segments, metre_bar)
from engine.symbolic.prompts import Prompt, PromptTable

STATE_FILE = "trainer_state.pt"


@dataclass
class TrainConfig:
    steps: int = 3000  # optimizer steps in all (a resumed run continues to this count)
    batch_pieces: int = 8  # pieces per step
    patch_sampling: int = 128  # patches the character decoder learns from per step (NotaGen's patch sampling)
    lr: float = 5e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250  # steps between validation losses (and checkpoints)
    eval_pieces: int = 64  # validation pieces per evaluation
    seed: int = 0
    min_prompt_pieces: int = 10  # a label needs this many training pieces to enter the prompt table
    always_prompts: list[str] = field(default_factory=list)  # labels kept whatever their count (fine-tuning)
    # How far to even out labels: a piece is drawn with weight (pieces of its label) ** -balance.
    # 0 draws every piece equally often (a label as often as it has pieces); 1 draws every label
    # equally often. Between them, small labels (Bach's 17 chamber pieces beside 346 chorales)
    # are seen often enough for the prompt lines to steer the music.
    balance: float = 0.0
    # Stop (with a checkpoint) once this much wall time has passed, whatever the step: a run sized
    # for a GPU lent for ten minutes must not overrun it. The schedule still follows `steps`.
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.balance <= 1.0:
            raise CadenzaError(f"balance must be between 0 (as the data is) and 1 (labels equally often), got {self.balance!r}")


def piece_patches(text: str, patch_size: int = 16) -> list[list[int]]:
    """NotaGen's training encoding: bos, metadata lines, tune-body bars, eos patch."""
    meta, body = split_tunebody(text)
    patches = [bos_patch(patch_size)]
    for line in meta:
        patches += [to_ids(p, patch_size) for p in split_patches(line, patch_size)]
    for bar in split_bars(body):
        patches += [to_ids(p, patch_size) for p in split_patches(bar, patch_size)]
    return patches + [[1] + [EOS_ID] * (patch_size - 1)]


def crop(text: str, patch_length: int, rng: random.Random, patch_size: int = 16) -> list[list[int]]:
    """A piece longer than the context keeps its metadata and starts at a random tune-body line."""
    patches = piece_patches(text, patch_size)
    if len(patches) <= patch_length:
        return patches
    meta, body = split_tunebody(text)
    starts = list(range(len(body)))
    rng.shuffle(starts)
    for start in starts[:8]:  # bounded tries; the head is the fallback
        p = piece_patches("".join(meta + body[start:]), patch_size)
        if len(p) <= patch_length:
            return p
    return patches[:patch_length]


def batch_tensor(pieces: list[list[list[int]]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> patches (B, N, 16) padded with PAD, mask (B, N) of real patches."""
    n = max(len(p) for p in pieces)
    size = len(pieces[0][0])
    ids = torch.full((len(pieces), n, size), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(pieces), n, dtype=torch.bool)
    for i, p in enumerate(pieces):
        ids[i, : len(p)] = torch.tensor(p)
        mask[i, : len(p)] = True
    return ids.to(device), mask.to(device)


def patch_logps(model: NotaGenModel, rows: list[list[list[int]]], starts: list[int] | None = None) -> torch.Tensor:
    """log p of each row of patches under the model (nats, summed over the characters of every patch
    from `starts[i]` on, the bos patch never), one teacher-forced pass; with gradients where the
    caller has them (train-dpo), in inference mode where it does not (a rewrite's seam)."""
    ids, mask = batch_tensor(rows, model.device)
    hidden = model.patch_level_decoder(ids)
    target = mask[:, 1:].clone()  # patch t+1 is predicted from the hidden state at t
    for i, start in enumerate(starts or []):
        target[i, : max(0, start - 1)] = False  # only the patches from `start` count
    src, tgt = hidden[:, :-1][target], ids[:, 1:][target]
    logits = model.char_level_decoder(src, tgt)[:, : tgt.shape[1]]  # (M, 16, vocab)
    per_char = -F.cross_entropy(logits.transpose(1, 2).float(), tgt, ignore_index=PAD_ID, reduction="none")
    return torch.zeros(len(rows), device=per_char.device).index_add(0, target.nonzero()[:, 0], per_char.sum(1))


def loss_on(model: NotaGenModel, ids: torch.Tensor, mask: torch.Tensor, sample: int | None,
            gen: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats) per character over the next patches; returns (loss, characters)."""
    hidden = model.patch_level_decoder(ids)  # (B, N, h)
    target_mask = mask[:, 1:]  # patch t+1 is predicted from the hidden state at t
    src = hidden[:, :-1][target_mask]  # (M, h)
    tgt = ids[:, 1:][target_mask]  # (M, 16)
    if sample is not None and src.shape[0] > sample:
        pick = torch.randperm(src.shape[0], generator=gen)[:sample].to(src.device)
        src, tgt = src[pick], tgt[pick]
    logits = model.char_level_decoder(src, tgt)[:, : tgt.shape[1]]  # (M, 16, vocab)
    chars = int((tgt != PAD_ID).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=PAD_ID)
    return loss, chars


@torch.no_grad()
def evaluate(model: NotaGenModel, pieces: list[dict], batch: int = 8) -> float:
    """Held-out bits per character (every patch, no sampling)."""
    model.eval()
    rng = random.Random(0)
    total, chars = 0.0, 0
    for i in range(0, len(pieces), batch):
        encoded = [crop(p["text"], model.config.patch_length, rng) for p in pieces[i: i + batch]]
        ids, mask = batch_tensor(encoded, model.device)
        loss, n = loss_on(model, ids, mask, None)
        total += float(loss) * n
        chars += n
    model.train()
    return total / max(chars, 1) / math.log(2)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def prompt_table(pieces: list[dict], cfg: TrainConfig, base: PromptTable | None = None) -> PromptTable:
    counts: dict[tuple, int] = {}
    for p in pieces:
        if "@t" not in p["id"]:  # transposed copies do not count as more pieces
            counts[tuple(p["labels"])] = counts.get(tuple(p["labels"]), 0) + 1
    keep = [Prompt(*k) for k, n in counts.items()
            if n >= cfg.min_prompt_pieces or "_".join(k) in cfg.always_prompts]
    return PromptTable(keep + (base.prompts if base else []))


TYPICAL_SHARE = 0.8  # the voice counts kept for a prompt cover at least this share of its pieces


def prompt_voices(pieces: list[dict], table: PromptTable) -> dict[str, list[int]]:
    """Each prompt's typical voice counts, most common first: the fewest that together cover
    TYPICAL_SHARE of its training pieces (4 for Bach's chorales; 4, 5 and 6 for Palestrina)."""

    counts: dict[str, Counter] = {}
    for p in pieces:
        if "@t" not in p["id"]:
            counts.setdefault("_".join(p["labels"]), Counter())[count_voices(split_tunebody(p["text"])[0])] += 1
    return {pr.key(): typical(counts[pr.key()]) for pr in table.prompts if pr.key() in counts}


RULE_SHARE = {"full": 0.99, "metre": 0.97, "harmony": 0.95}  # a prompt keeps a rule when this share of its bars do
OPEN_SHARE = 0.5  # "open": fewer than this share of a prompt's pieces end with a closing barline


def bar_rules(pieces: list[dict]) -> dict[str, list[str]]:
    """The bar rules each prompt's training pieces keep: "full", no declared voice left out of a
    bar (Bach's chorales: 99.86% of bars; Palestrina: 58%); "metre", every bar as long as the
    metre, pickups and split bars aside (Bach's chorales 99.6%, Irish tunes 98.8%, Beethoven's
    chamber music 81.5%); "harmony", bars of several voices the critic passes (harmony.Critic:
    Bach's chorales 96%, Palestrina 92%). A generated bar that breaks a rule its prompt keeps is
    written again. And "open": most of the prompt's pieces end without a closing barline (|] :| ||;
    the Essen German tunes, 71% of them), so the ending rule does not ask a generated piece for one
    (retries.ends_well)."""
    bars, kept, ends = Counter(), Counter(), Counter()
    for p in pieces:
        if "@t" in p["id"]:
            continue
        meta, body = split_tunebody(p["text"])
        key, declared = "_".join(p["labels"]), count_voices(meta)
        lines = [R_MARKER.sub("", ln) for ln in body]
        ends[key] += 1
        ends[key, "closed"] += bool(lines) and closes_section(lines[-1])
        bars[key] += len(lines)
        kept[key, "full"] += sum(len(line_segments(ln)) >= declared for ln in lines)
        kept[key, "metre"] += check_alignment(lines, metre_bar(meta), header_unit(meta)).aligned
        passed, judged = harmony_kept(meta, lines)
        kept[key, "harmony"] += passed
        bars[key, "harmony"] += judged
    out = {}
    for k, n in bars.items():
        if isinstance(k, str) and n:  # the critic judges bars of several voices only
            out[k] = [r for r, share in RULE_SHARE.items() if kept[k, r] >= share * bars.get((k, r), n) > 0]
            out[k] += ["open"] if ends[k, "closed"] < OPEN_SHARE * ends[k] else []
    return out


def harmony_kept(meta: list[str], lines: list[str]) -> tuple[int, int]:
    """(bars the critic passes, bars it judges: those of several voices; harmony.Critic)."""
    bar, beat = metre_bar(meta), beat_length(header_field(meta, "M"), header_field(meta, "L"))
    if not (bar and beat):
        return 0, 0
    critic, before, kept, judged = Critic(key_alterations(header_field(meta, "K") or "C"), beat, bar), None, 0, 0
    for line in lines:
        segments = list(line_segments(line).values())
        if len(segments) > 1:
            ok, before = critic.judge(segments, before)
            kept, judged = kept + ok, judged + 1
    return kept, judged


def typical(counts: Counter) -> list[int]:
    kept, covered, total = [], 0, sum(counts.values())
    for value, n in counts.most_common():
        if covered >= TYPICAL_SHARE * total:
            break
        kept.append(value)
        covered += n
    return kept


def label_weights(pieces: list[dict], balance: float) -> list[float] | None:
    """Each piece's drawing weight: (pieces sharing its labels) ** -balance; None when uniform."""
    if balance == 0:
        return None
    counts = Counter(tuple(p["labels"]) for p in pieces)
    return [counts[tuple(p["labels"])] ** -balance for p in pieces]


def draw(pieces: list[dict], weights: list[float] | None, n: int, rng: random.Random) -> list[dict]:
    """A step's pieces: distinct pieces, uniformly, or by weight (with replacement)."""
    if weights is None:
        return rng.sample(pieces, min(n, len(pieces)))
    return rng.choices(pieces, weights=weights, k=n)


def train(model: NotaGenModel, train_pieces: list[dict], val_pieces: list[dict], out: str | Path, cfg: TrainConfig,
          base_prompts: PromptTable | None = None, resume: bool = True, name: str = "cadenza-notagen",
          on_step: Callable[[dict], None] | None = None, base_voices: dict | None = None) -> dict:
    """Trains in place; checkpoints to `out` every eval_every steps and at the end. Returns the
    history (losses, validation bits per character, throughput). `base_prompts`/`base_voices`:
    the starting model's table and voice counts, kept beside the data's own."""

    if not train_pieces:
        raise CadenzaError("no training pieces: build a dataset first (python -m engine dataset ...)")
    for p in train_pieces + val_pieces:
        bad = {c for c in p["text"] if ord(c) > 127}
        if bad:
            raise CadenzaError(f"piece {p['id']} has non-ASCII characters {sorted(bad)[:5]}: rebuild the dataset")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = model.device
    model.train().requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    history = {"config": asdict(cfg), "model": model.config.to_dict(), "steps": [], "val_bpc": []}
    step = 0
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    table = prompt_table(train_pieces, cfg, base_prompts)
    keys = {p.key() for p in table.prompts}
    voices = {k: list(v) for k, v in (base_voices or {}).items() if k in keys} | prompt_voices(train_pieces, table)
    # what generation holds each prompt to, learnt from its training pieces (config.json)
    styles = {"prompt_voices": voices,
              "prompt_bar_rules": {k: v for k, v in bar_rules(train_pieces).items() if k in keys and v}}
    weights = label_weights(train_pieces, cfg.balance)
    t0, seen_patches = time.monotonic(), 0
    while step < cfg.steps:  # bounded by cfg.steps
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        encoded = [crop(p["text"], model.config.patch_length, rng) for p in draw(train_pieces, weights, cfg.batch_pieces, rng)]
        ids, mask = batch_tensor(encoded, device)
        with autocast:
            loss, _ = loss_on(model, ids, mask, cfg.patch_sampling, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        seen_patches += int(mask.sum())
        record = {"step": step, "loss": loss.detach().item(), "lr": lr_at(step - 1, cfg), "grad_norm": float(norm),
                  "patches_per_s": seen_patches / (time.monotonic() - t0)}
        history["steps"].append(record)
        out_of_time = cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            if val_pieces:
                record["val_bpc"] = evaluate(model, val_pieces[: cfg.eval_pieces])
                history["val_bpc"].append({"step": step, "bpc": record["val_bpc"]})
            _checkpoint(model, opt, step, history, rng, gen, out, table, styles, name, save_model)
        if on_step:
            on_step(record)
        if out_of_time:
            break
    model.eval().requires_grad_(False)
    return history


def _checkpoint(model, opt, step, history, rng, gen, out: Path, table, styles: dict, name, save_model) -> None:
    save_model(model, out, prompts=table, extra_config={"name": name, "trained_steps": step, **styles})
    (out / "history.json").write_text(json.dumps(history) + "\n")
    tmp = out / (STATE_FILE + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history,
                "rng": rng.getstate(), "gen": gen.get_state()}, tmp)
    tmp.replace(out / STATE_FILE)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def new_model(cfg: NotaGenConfig, seed: int = 0) -> NotaGenModel:
    return NotaGenModel(cfg).init_weights(seed=seed)
