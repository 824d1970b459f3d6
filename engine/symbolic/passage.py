"""Rewriting a passage inside a piece (issue 35): bars N..M are written anew, the bars before them are
the prefix and the bars after them are kept verbatim.

The new bars must lead into the kept ones, and the model itself judges the join: K candidates of the
passage are written at once (rows of the batch, seeds seed..seed+K-1), each stopping when its last
bar is written (PieceRequest.end_lines), and the one after which the model finds the kept bars most
likely (one teacher-forced pass, `seam_logps`) is kept and joined to them. Candidates whose new bars
break the bar rules (voices of unequal length, bars that do not fill the metre) or move into the kept
bars in parallel fifths or octaves (`faults`) rank after those that do not, whatever their
likelihood. The markers of every line count the whole piece ([r:i/j] forced with the piece's
length), so the model writes the passage as the middle of a piece, not as its end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import SettingsError
from engine.symbolic.model import NotaGenModel
from engine.symbolic.patches import split_tunebody
from engine.symbolic.harmony import bar_harmony, beat_length, key_alterations, parallels
from engine.symbolic.postprocess import check_alignment, header_field, header_unit, line_segments, metre_bar
from engine.symbolic.train import patch_logps, piece_patches

SEAM_BARS = 4  # kept bars the join is judged on (the first ones after the passage)
CANDIDATES = 4  # candidates of a passage written at once, by default (each a row of the batch)
MAX_PASSAGE_CANDIDATES = 16


@dataclass(frozen=True)
class Passage:
    """Bars `first`..`last` (numbered as printed: a pickup is bar 0) written anew; `before` tune-body
    lines precede them (the prefix) and `kept` follow them, in the model's format, kept verbatim;
    `replaced` are the score's own lines of the passage (what a rewrite is compared with)."""
    first: int
    last: int
    before: int
    kept: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.first, int) and isinstance(self.last, int) and 0 <= self.first <= self.last):
            raise SettingsError(f"the bars to rewrite must run from a bar to the same or a later one, got "
                                f"{self.first!r}-{self.last!r}")
        for lines in (self.kept, self.replaced):
            if not isinstance(lines, tuple) or not all(isinstance(ln, str) and ln.endswith("\n") for ln in lines):
                raise SettingsError("the bars of a passage must be whole lines of the model's format")

    @property
    def lines(self) -> int:
        """Tune-body lines (bars of every voice) the passage has."""
        return self.last - self.first + 1

    @property
    def total(self) -> int:
        """Lines in the whole piece: its markers count these."""
        return self.before + self.lines + len(self.kept)

    def describe(self) -> str:
        return f"bar {self.first}" if self.first == self.last else f"bars {self.first}-{self.last}"


def fitted(text: str, patch_length: int, patch_size: int) -> tuple[list[list[int]], int]:
    """`text` in the training encoding cut to the context: the metadata and the latest tune-body lines
    that fit (the streaming scheme's window), without the eos patch. -> (patches, lines dropped)."""
    meta, body = split_tunebody(text)
    for drop in range(len(body) + 1):  # bounded by the lines
        patches = piece_patches("".join(meta + body[drop:]), patch_size)[:-1]
        if len(patches) <= patch_length:
            return patches, drop
    raise SettingsError("the piece's header alone fills the model's context: no bars can be judged after it")


def seam_logps(model: NotaGenModel, befores: list[str], kept: tuple[str, ...], bars: int = SEAM_BARS) -> list[float]:
    """log p(the first `bars` kept lines | each text before them) in nats, one teacher-forced pass of
    the model per text: how well each candidate leads into what follows it. Each text is cut to the
    context as writing cuts it (metadata and the latest lines)."""
    follow = "".join(kept[:bars])
    if not befores or not follow:
        return [0.0] * len(befores)
    cfg = model.config
    # the kept lines' patches are the last ones: a line starts a patch, so they are as many as alone
    tail = len(piece_patches(follow, cfg.patch_size)) - 2  # minus bos and eos
    rows = [fitted(text + follow, cfg.patch_length, cfg.patch_size)[0] for text in befores]
    with torch.inference_mode():
        return patch_logps(model, rows, [len(r) - tail for r in rows]).cpu().tolist()


def faults(text: str, p: Passage) -> int:
    """Lines of the passage whose voices disagree in length or do not fill the metre (as the page
    counts bars that fit), in a candidate's text (its prefix and passage), and the parallel fifths or
    octaves from its last sound into the first kept bar (the critic over the seam)."""
    meta, body = split_tunebody(text)
    bad = check_alignment(body, metre_bar(meta), header_unit(meta)).misaligned_lines  # 1-based
    last = body[p.before + p.lines - 1] if len(body) >= p.before + p.lines else ""
    return sum(p.before < n <= p.before + p.lines for n in bad) + (seam_parallels(meta, last, p.kept[0]) if p.kept else 0)


def seam_parallels(meta: list[str], last: str, kept: str) -> int:
    """Parallel fifths or octaves between what the passage's last bar sounds at its end and the first
    sound of the kept bar after it (harmony.parallels); 0 where the two bars do not hold the same
    voices or the metre cannot be read."""
    before, after = line_segments(last), line_segments(kept)
    beat, bar = beat_length(header_field(meta, "M"), header_field(meta, "L")), metre_bar(meta)
    if len(before) < 2 or list(before) != list(after) or not beat or not bar:
        return 0
    key = key_alterations(header_field(meta, "K") or "C")
    end, start = (bar_harmony(list(x.values()), key, beat, bar).moments for x in (before, after))
    return parallels(end[-1], start[0])[1] if end and start else 0


def best(model: NotaGenModel, texts: list[str], p: Passage) -> tuple[int, list[int], list[float]]:
    """The candidate to keep among `texts` (each a prompt, prefix and passage): the fewest faults,
    then the kept bars most likely after it, then the first. -> (its index, faults, seam scores)."""
    found = [faults(t, p) for t in texts]
    scores = seam_logps(model, texts, p.kept)
    return min(range(len(texts)), key=lambda i: (found[i], -scores[i], i)), found, scores
