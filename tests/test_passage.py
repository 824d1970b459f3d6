"""Rewriting bars N..M inside a piece and keeping the rest (issue 35; engine.symbolic.passage)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import bach, tiny_model
from engine import api
from engine.errors import SettingsError
from engine.stops import StopReason
from engine.symbolic.config import PAD_ID
from engine.symbolic import passage
from engine.symbolic.passage import Passage, fitted, seam_logps
from engine.symbolic.patches import split_tunebody
from engine.symbolic.train import piece_patches

# two voices, a pickup (bar 0), a change of metre at bar 6
SCORE = """X:1
T:Test
M:4/4
L:1/8
K:G
V:1 treble
V:2 bass
[V:1] D2 | G2 A2 B2 c2 | d4 B4 | c2 B2 A2 G2 | A8 | B2 c2 d2 e2 |[M:3/4] d4 B2 | c2 A2 F2 | G6 |]
[V:2] z2 | G,4 D,4 | G,4 G,4 | C,4 D,4 | D,8 | G,4 C,4 |[M:3/4] D,6 | D,6 | G,,6 |]
"""


@pytest.fixture(scope="module")
def lm():
    return api.load(api.bundled_model())


def test_a_passage_request_keeps_the_bars_before_and_after_numbered_for_the_whole_piece():
    r = api.passage_request(bach(seed=1), SCORE, 2, 3, candidates=3)
    p = r.passage
    assert (p.first, p.last, p.before, p.lines, len(p.kept), p.total) == (2, 3, 2, 2, 5, 9)
    assert r.variations == 3 and r.controls.bars == 9  # the candidates; every marker counts the whole piece
    _, body = split_tunebody(r.prefix)
    assert [ln[:8] for ln in body] == ["[r:0/8][", "[r:1/7]["]  # the pickup and bar 1
    assert p.kept[0].startswith("[r:4/4][V:1]A8|") and p.kept[-1].startswith("[r:8/0][V:1]G6|]")
    assert [ln[:20] for ln in p.replaced] == ["[r:2/6][V:1]d4 B4|[V", "[r:3/5][V:1]c2 B2 A2"]  # the score's own
    # everything from a bar on, when no last bar is given
    assert api.passage_request(bach(), SCORE, 7).passage.kept == ()


@pytest.mark.parametrize("first, last, said", [
    (2, 6, "bars 2-6 cross a change of metre at bar 6: choose bars in one metre (up to bar 5, or from bar 6)"),
    (9, 9, "the first bar to rewrite (bar 0 is this score's pickup) must be a whole number from 0 to 8, got 9"),
    (3, 2, "must be a whole number from 3 to 8, got 2"),
    ("x", 3, "must be a whole number"),
])
def test_bars_out_of_range_or_across_a_metre_change_are_refused_in_words(first, last, said):
    with pytest.raises(SettingsError, match=said.replace("(", r"\(").replace(")", r"\)")):
        api.passage_request(bach(), SCORE, first, last)


def test_a_metre_change_on_the_passages_first_bar_is_not_crossing_it():
    assert api.passage_request(bach(), SCORE, 6, 8).passage.lines == 3
    with pytest.raises(SettingsError, match="candidates for the passage must be a whole number from 1 to 16"):
        api.passage_request(bach(), SCORE, 6, 8, candidates=0)
    with pytest.raises(SettingsError, match="must run from a bar to the same or a later one"):
        Passage(5, 4, 0)


def test_the_seam_score_is_the_log_likelihood_of_the_kept_lines_only():
    """Checked against a plain per-patch computation, and batched texts against one at a time."""
    model = tiny_model(patch_length=64)
    r = api.passage_request(bach(), SCORE, 2, 3)
    head = "".join(bach().prompt.lines()) + r.prefix
    befores = [head + "[r:2/6][V:1]d4 B4|[V:2]G,8|\n[r:3/5][V:1]c8|[V:2]C,8|\n",
               head + "[r:2/6][V:1]B8|[V:2]G,8|\n[r:3/5][V:1]A4 c4|[V:2]D,8|\n"]
    together = seam_logps(model, befores, r.passage.kept, bars=2)
    alone = [seam_logps(model, [b], r.passage.kept, bars=2)[0] for b in befores]
    assert together == pytest.approx(alone, abs=1e-3)
    follow = "".join(r.passage.kept[:2])
    for before, got in zip(befores, together):
        patches = torch.tensor(piece_patches(before + follow)[:-1])
        n_follow = len(piece_patches(follow)) - 2
        with torch.inference_mode():
            hidden = model.patch_level_decoder(patches[None])[0]
            want = 0.0
            for t in range(len(patches) - n_follow, len(patches)):
                logits = model.char_level_decoder(hidden[t - 1:t], patches[t:t + 1])[:, :patches.shape[1]]
                lp = -F.cross_entropy(logits[0].float(), patches[t], ignore_index=PAD_ID, reduction="sum")
                want += float(lp)
        assert got == pytest.approx(want, rel=1e-4)
    assert got < 0


def test_a_piece_longer_than_the_context_is_judged_on_its_latest_lines():
    text = "".join(bach().prompt.lines()) + api.continuation_prefix(SCORE)
    patches, dropped = fitted(text, 12, 16)
    assert len(patches) <= 12 and dropped > 0
    assert seam_logps(tiny_model(patch_length=12), [text], ("[r:9/0][V:1]G8|[V:2]G,8|\n",))[0] < 0


def test_a_rewritten_passage_keeps_every_other_bar_and_the_best_candidate_by_the_seam(lm):
    r = api.passage_request(bach(seed=5), SCORE, 2, 3, candidates=3)
    out = api.compose(lm, r)
    assert len(out) == 1  # one piece: the best candidate joined to the kept bars
    c = out[0]
    assert c.piece.stop_reason == StopReason.PASSAGE and c.piece.complete
    _, body = split_tunebody(c.piece.text)
    _, prefix_body = split_tunebody(r.prefix)
    assert len(body) == 9
    assert body[:2] == prefix_body and tuple(body[4:]) == r.passage.kept  # byte for byte
    assert [ln.split("]")[0] for ln in body[2:4]] == ["[r:2/6", "[r:3/5"]  # the passage in the middle
    note = next(w for w in c.warnings if w.startswith("bars 2-3 rewritten: the best of 3 candidates"))
    assert f"seed {c.piece.seed}" in note
    assert c.abc.alignment.total == 9


def test_a_passage_stopped_before_it_was_written_comes_back_as_written_with_a_note():
    lm = api.LoadedModel(tiny_model(seed=1), None, "tiny", Path("tiny"))
    r = api.passage_request(bach(seed=2, max_patches=3), SCORE, 2, 3, candidates=2)
    out = api.compose(lm, r)
    assert len(out) == 1 and out[0].piece.stop_reason == StopReason.MAX_PATCHES
    assert any("the bars after them are not joined" in w for w in out[0].warnings)


def test_a_candidate_whose_bars_do_not_fit_ranks_after_one_whose_bars_do():
    r = api.passage_request(bach(), SCORE, 2, 3)
    head = "".join(bach().prompt.lines()) + r.prefix
    short = head + "[r:2/6][V:1]d4|[V:2]G,8|\n[r:3/5][V:1]c8|[V:2]C,8|\n"  # bar 2: the voices disagree
    fits = head + "[r:2/6][V:1]d4 B4|[V:2]G,8|\n[r:3/5][V:1]c8|[V:2]C,8|\n"
    assert passage.faults(short, r.passage) == 1 and passage.faults(fits, r.passage) == 0
    chosen, found, scores = passage.best(tiny_model(), [short, fits], r.passage)
    assert (chosen, found) == (1, [1, 0]) and len(scores) == 2


def test_parallel_octaves_into_the_kept_bar_are_a_fault_of_the_seam():
    """The passage ends on G over G (an octave) and the kept bar starts on A over A: parallel octaves
    across the seam; ending on B over G does not."""
    r = api.passage_request(bach(), SCORE, 2, 3)
    head = "".join(bach().prompt.lines()) + r.prefix
    meta = split_tunebody(head)[0]
    kept = "[r:4/4][V:1]A8|[V:2]A,8|\n"
    assert passage.seam_parallels(meta, "[r:3/5][V:1]G8|[V:2]G,8|\n", kept) == 1
    assert passage.seam_parallels(meta, "[r:3/5][V:1]B8|[V:2]G,8|\n", kept) == 0
    assert passage.seam_parallels(meta, "[r:3/5][V:1]G8|\n", kept) == 0  # not the same voices: not judged
