"""Preference tuning from the musical check (issue 32, step 4): NotaGen's CLaMP-DPO with this
project's judge (engine.symbolic.analysis) where NotaGen uses CLaMP 2.

A round: the current model writes `pieces` pieces per prompt with NotaGen's own sampling (no bar
retries, no critic, no search: the pieces are the model's own, as DPO's pairs must be); each is
graded (grade()); per prompt the best `keep` share is paired with the worst; the model is tuned on
the pairs with DPOP (NotaGen's RL/train.py: DPO's loss with a penalty when the chosen piece's
likelihood falls below the reference's, beta 0.1, lambda 10), the round's starting model the
reference. The next round samples from the tuned model, so a round's mean grade is the measure of
the one before it.

    python -m engine train-dpo --out runs/dpo [--init MODEL] [--rounds 3] [--pieces 24] [--max-minutes 60]

Each round's folder holds its samples with their grades and reference likelihoods
(samples.jsonl.gz), the trainer's state while it runs and, when the round is done, the model; a run
stopped by --max-minutes resumes where it stopped with the same command.
"""
from __future__ import annotations

import gzip
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from engine.errors import CadenzaError
from engine.files import write_atomic
from engine.symbolic.analysis import analyse
from engine.symbolic.model import NotaGenModel
from engine.symbolic.postprocess import to_abc
from engine.symbolic.prompts import Prompt
from engine.symbolic.train import TrainConfig, batch_tensor, crop, evaluate, loss_on, patch_logps, piece_patches

SAMPLES_FILE = "samples.jsonl.gz"
STATE_FILE = "dpo_state.pt"
REPORT_FILE = "dpo_report.json"
PATCH_SAMPLING = TrainConfig.patch_sampling  # the ptx term's patches per step, as in training
UNFINISHED = -1.0  # the grade of a piece cut short (no eos) or with no bar: below any finished piece


@dataclass
class DpoConfig:
    rounds: int = 3
    pieces: int = 24  # pieces per prompt per round
    keep: float = 0.25  # the best and the worst share of a prompt's pieces, paired every best with every worst
    min_gap: float = 0.05  # a pair's grades differ at least this much (ties teach nothing)
    steps: int = 100  # optimizer steps per round (about one pass over 400 pairs; 300 overfit them: loss 0.0003)
    batch_pairs: int = 4  # pairs per step
    beta: float = 0.1  # DPO's beta (NotaGen's)
    penalty: float = 10.0  # DPOP's lambda (NotaGen's): the chosen piece's likelihood must not fall
    lr: float = 1e-5
    warmup: int = 20  # linear warm-up steps, then constant (NotaGen's schedule)
    grad_clip: float = 1.0
    # Weight of the training data's own loss added to every step (InstructGPT's "ptx" term): the
    # pairs teach what the judge prefers, the real pieces keep the model's likelihood of music as
    # written (held-out bits per character). 0 is NotaGen's DPOP alone (measured: +4.3% bits per
    # character in one round, against +1.2% with 1.0; MODEL_CARD.md).
    ptx: float = 1.0
    ptx_pieces: int = 8  # training pieces per step for that term
    max_patches: int = 1024  # a sampled piece's length at most (pieces longer than the context are not paired)
    header_retries: int = 64  # the header is held to the prompt's voices, as every piece's is
    eval_pieces: int = 64  # held-out pieces for bits per character after each round
    seed: int = 0
    prompts: list[str] | None = None  # prompt keys ("Baroque_Bach, Johann Sebastian_Choral"); None: all of the model's
    max_minutes: float | None = None  # stop with a checkpoint after this long (resume with the same command)

    def __post_init__(self) -> None:
        checks = [(1 <= self.rounds <= 20, "rounds must be 1 to 20"),
                  (2 <= self.pieces <= 64, "pieces per prompt must be 2 to 64"),
                  (0 < self.keep <= 0.5, "keep must be above 0 and at most 0.5 (the best and the worst share)"),
                  (1 <= self.steps <= 100_000, "steps per round must be 1 to 100000"),
                  (1 <= self.batch_pairs <= 64, "pairs per step must be 1 to 64"),
                  (0 < self.beta <= 10, "beta must be above 0 and at most 10"),
                  (0 <= self.penalty <= 100, "penalty (DPOP's lambda) must be 0 to 100"),
                  (0 <= self.ptx <= 100, "ptx (the weight of the training data's loss) must be 0 to 100"),
                  (0 < self.lr <= 1e-2, "learning rate must be above 0 and at most 0.01"),
                  (self.max_minutes is None or self.max_minutes > 0, "max minutes must be above 0")]
        for ok, message in checks:
            if not ok:
                raise CadenzaError(message)


def grade(text: str) -> float:
    """One number for a piece in the model's format, higher is better: the share of bars that fill
    the metre, and for several voices full-chord beats less no-chord beats, less the share of bars
    with parallels and half that with crossings, a half for a final cadence and a half for voices
    ending together; for one voice a half for ending on the tonic. Unfinished, empty or unreadable:
    UNFINISHED."""
    try:
        a = analyse(to_abc(text).abc)
    except Exception:  # noqa: BLE001 - a piece the check cannot read ranks last; the run goes on
        return UNFINISHED
    if not a.bars:
        return UNFINISHED
    share = lambda bars: len(bars) / a.bars  # noqa: E731
    fit = 1.0 - share(a.unfit_bars)
    if a.voices > 1 and a.full_chord_beats is not None:
        return (fit + a.full_chord_beats - a.no_chord_beats - share(a.parallel_bars) - 0.5 * share(a.crossing_bars)
                + 0.5 * bool(a.final_cadence) + 0.5 * bool(a.voices_end_together))
    return fit + 0.5 * bool(a.ends_on_tonic)


def sequence_logps(model: NotaGenModel, texts: list[str]) -> torch.Tensor:
    """log p(text) under the model (nats, summed over every character after the bos patch) per text,
    in the training encoding (engine.symbolic.train.piece_patches, cut to the context)."""
    cfg = model.config
    return patch_logps(model, [piece_patches(t, cfg.patch_size)[: cfg.patch_length] for t in texts])


def dpop_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
              beta: float, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mean loss, share of pairs the policy prefers the chosen piece more than the reference does)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -F.logsigmoid(beta * (margin - penalty * torch.clamp(ref_chosen - chosen, min=0)))
    return loss.mean(), (margin > 0).float().mean()


def pair_up(samples: list[dict], keep: float, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) indices into `samples`: per prompt, each of the best `keep` share against
    each of the worst, where their grades differ by `min_gap` or more. Pieces that do not fit the
    model's context (`fits` False) are left out."""
    by_prompt: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s["fits"]:
            by_prompt.setdefault(s["prompt"], []).append(i)
    pairs = []
    for idx in by_prompt.values():
        ranked = sorted(idx, key=lambda i: -samples[i]["grade"])
        k = max(1, round(len(ranked) * keep))
        best, worst = ranked[:k], ranked[-k:]
        pairs += [(c, r) for c in best for r in worst if samples[c]["grade"] - samples[r]["grade"] >= min_gap]
    return pairs


def _prompts(lm, cfg: DpoConfig) -> list[Prompt]:
    known = {p.key(): p for p in (lm.prompts.prompts if lm.prompts else [])}
    if cfg.prompts is None:
        return list(known.values())
    unknown = [k for k in cfg.prompts if k not in known]
    if unknown:
        raise CadenzaError(f"the model has no prompt {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
    return [known[k] for k in cfg.prompts]


def sample_round(lm, prompts: list[Prompt], cfg: DpoConfig, seed: int, out_of_time: Callable[[], bool]) -> list[dict] | None:
    """The round's pieces, graded and with their likelihood under the sampling model (the round's
    reference); None when time ran out first."""
    from engine import api  # the engine's front door (api imports this package's modules)

    samples = []
    for n, prompt in enumerate(prompts):
        if out_of_time():
            return None
        request = api.ComposeRequest(prompt.period, prompt.composer, prompt.instrumentation, seed=seed + 1000 * n,
                                     variations=cfg.pieces, max_patches=cfg.max_patches, bar_retries=0,
                                     header_retries=cfg.header_retries, critic=False, search=1)
        for c in api.compose(lm, request):
            text = c.piece.text
            samples.append({"prompt": prompt.key(), "seed": c.piece.seed, "text": text, "complete": c.piece.complete,
                            "grade": round(grade(text), 4) if c.piece.complete else UNFINISHED,
                            "fits": len(piece_patches(text, lm.model.config.patch_size)) <= lm.model.config.patch_length})
    with torch.no_grad():
        lm.model.eval()
        for i in range(0, len(samples), 8):
            logps = sequence_logps(lm.model, [s["text"] for s in samples[i: i + 8]])
            for s, lp in zip(samples[i: i + 8], logps.tolist()):
                s["ref_logp"] = lp
    return samples


def _write_samples(path: Path, samples: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    tmp.replace(path)


def _read_samples(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def summary(samples: list[dict]) -> dict:
    """Per prompt: pieces, finished, mean grade (of finished pieces)."""
    out = {}
    for key in dict.fromkeys(s["prompt"] for s in samples):
        mine = [s for s in samples if s["prompt"] == key]
        done = [s["grade"] for s in mine if s["complete"]]
        out[key] = {"pieces": len(mine), "finished": len(done),
                    "mean_grade": round(sum(done) / len(done), 4) if done else None}
    return out


def train_round(model: NotaGenModel, samples: list[dict], pairs: list[tuple[int, int]], folder: Path, cfg: DpoConfig,
                out_of_time: Callable[[], bool], on_step: Callable[[dict], None] | None = None,
                real: list[dict] | None = None) -> dict | None:
    """DPOP steps on the pairs (plus cfg.ptx times the loss on `real` training pieces) from the
    round's checkpoint (if any); -> the round's training record, None when time ran out first (the
    state is saved)."""
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    step, steps = 0, []
    state_path = folder / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, steps = state["step"], state["steps"]
        rng.setstate(state["rng"])
    ref = torch.tensor([s["ref_logp"] for s in samples])
    while step < cfg.steps:  # bounded by cfg.steps
        if out_of_time():
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "steps": steps,
                        "rng": rng.getstate()}, state_path)
            model.eval().requires_grad_(False)
            return None
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(cfg.batch_pairs)]
        chosen, rejected = [c for c, _ in batch], [r for _, r in batch]
        logps = sequence_logps(model, [samples[i]["text"] for i in chosen + rejected]).cpu()
        loss, accuracy = dpop_loss(logps[: len(batch)], logps[len(batch):], ref[chosen], ref[rejected],
                                   cfg.beta, cfg.penalty)
        if cfg.ptx and real:
            loss = loss + cfg.ptx * _data_loss(model, real, cfg.ptx_pieces, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4), "accuracy": accuracy.item()}
        steps.append(record)
        if on_step:
            on_step(record)
    model.eval().requires_grad_(False)
    state_path.unlink(missing_ok=True)
    last = steps[-20:]
    return {"steps": step, "loss_last20": round(sum(s["loss"] for s in last) / len(last), 4),
            "accuracy_last20": round(sum(s["accuracy"] for s in last) / len(last), 3)}


def _data_loss(model: NotaGenModel, real: list[dict], n: int, rng: random.Random) -> torch.Tensor:
    """The pretraining loss (engine.symbolic.train's: cropped pieces, sampled patches) on n pieces."""
    encoded = [crop(p["text"], model.config.patch_length, rng) for p in rng.sample(real, min(n, len(real)))]
    ids, mask = batch_tensor(encoded, model.device)
    return loss_on(model, ids, mask, PATCH_SAMPLING)[0]


def tune(lm, val_pieces: list[dict], out: str | Path, cfg: DpoConfig, save: Callable[[NotaGenModel, Path], None],
         on_event: Callable[[str], None] = lambda line: None, train_pieces: list[dict] | None = None) -> dict:
    """Runs (or resumes) cfg.rounds rounds on lm.model in place; `save(model, folder)` writes a model
    folder; `train_pieces` are the real pieces of the cfg.ptx term. -> the report (also in out/dpo_report.json): per round the samples' grades by prompt,
    the pairs, the training record and held-out bits per character; "stopped" when out of time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    out_of_time = lambda: cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes  # noqa: E731
    prompts = _prompts(lm, cfg)
    report_path = out / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"config": asdict(cfg), "rounds": []}
    if "start_bpc" not in report and val_pieces:
        report["start_bpc"] = round(evaluate(lm.model, val_pieces[: cfg.eval_pieces]), 4)
    report["stopped"] = False
    for r in range(1, cfg.rounds + 1):
        folder = out / f"round-{r}"
        folder.mkdir(exist_ok=True)
        if r <= len(report["rounds"]):  # done before: go on from its model
            lm.model.load_state_dict(_load_weights(folder / "model", lm.model))
            continue
        started = time.monotonic()
        samples_path = folder / SAMPLES_FILE
        if samples_path.is_file():
            samples = _read_samples(samples_path)
        else:
            on_event(f"round {r}: writing {cfg.pieces} pieces for each of {len(prompts)} prompts")
            samples = sample_round(lm, prompts, cfg, cfg.seed + 100_000 * r, out_of_time)
            if samples is None:
                report["stopped"] = True
                break
            _write_samples(samples_path, samples)
        pairs = pair_up(samples, cfg.keep, cfg.min_gap)
        if not pairs:
            raise CadenzaError(f"round {r}: no pair of pieces differs by {cfg.min_gap} in grade: nothing to learn from")
        on_event(f"round {r}: {len(pairs)} pairs; tuning {cfg.steps} steps")
        trained = train_round(lm.model, samples, pairs, folder, cfg, out_of_time, real=train_pieces)
        if trained is None:
            report["stopped"] = True
            break
        save(lm.model, folder / "model")
        entry = {"round": r, "samples": summary(samples), "pairs": len(pairs), **trained,
                 "minutes": round((time.monotonic() - started) / 60, 2)}
        if val_pieces:
            entry["val_bpc"] = round(evaluate(lm.model, val_pieces[: cfg.eval_pieces]), 4)
        report["rounds"].append(entry)
        write_atomic(report_path, json.dumps(report, indent=1) + "\n")
        on_event(f"round {r} done: " + json.dumps({k: v for k, v in entry.items() if k != "samples"}))
    write_atomic(report_path, json.dumps(report, indent=1) + "\n")
    return report


def _load_weights(folder: Path, model: NotaGenModel) -> dict:
    """A saved round's weights as `model`'s state (the tied head read as checkpoint.py reads it)."""
    from engine.symbolic.checkpoint import load_model_folder

    return load_model_folder(folder, device=model.device, dtype=model.dtype).model.state_dict()
