"""Musical controls (issue 17): length in bars, key, metre, tempo; checked values, forced markers,
header lines replaced or inserted, across a context reset and with bar retries."""
import re

import pytest
import torch

from conftest import BACH, bach, tiny_model
from engine.errors import SettingsError
from engine.symbolic import generate as gen_mod
from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID
from engine.symbolic.controls import Controls, check_key, check_meter, fit_prefix, header_edit
from engine.symbolic.generate import FastBackend, PieceRequest, PieceState, generate
from engine.symbolic.postprocess import R_MARKER


class Writer:
    """Stands in for a model that writes a header (L, M:2/4, K:G, V:1) then short one-voice lines,
    numbering them its own way and wanting to end after `ends_after` lines. It takes the forced
    prefixes as a real model does (they start the patch) and, like FastBackend, writes no eos
    patch while the piece may not end."""

    HEADER = ["L:1/8\n", "M:2/4\n", "K:G\n", "V:1 treble\n"]

    def __init__(self, model=None, rows=1, ends_after=3, bad_lines=()):
        self.ends_after, self.bad_lines, self.prefixes = ends_after, set(bad_lines), []

    def encode(self, states):
        return torch.zeros(len(states), 4)

    def sample(self, hidden, states, prefixes):
        self.prefixes.append(["".join(map(chr, p)) for p in prefixes])
        return [self._patch(s, "".join(map(chr, p))) for s, p in zip(states, prefixes)]

    def _patch(self, s, forced):
        if forced == chr(BOS_ID) + chr(EOS_ID) or forced.endswith(chr(EOS_ID)):
            return _ids(forced.rstrip(chr(EOS_ID))) if forced != chr(BOS_ID) + chr(EOS_ID) else \
                [BOS_ID, EOS_ID] + [PAD_ID] * 14
        meta = s.text[len(s.prompt_text):]
        written = meta.splitlines(keepends=True)
        if not s.in_tunebody and not forced.startswith("[r:"):
            n = len([ln for ln in written if ln.endswith("\n")])
            line = self.HEADER[n] if n < len(self.HEADER) else "[r:7/7][V:1]GA|\n"
            return _ids(line)
        current = "" if s.text.endswith("\n") else s.text.rsplit("\n", 1)[-1]
        lines_done = s.lines_before + s.bars
        if not current and not forced and lines_done >= self.ends_after and s.eos_allowed():
            return [BOS_ID, EOS_ID] + [PAD_ID] * 14
        body = "[V:1]GA Bc|" if lines_done not in self.bad_lines else "[V:1]GA Bc d|"
        own = R_MARKER.match(current).group(0) if current else forced if forced.endswith("]") else f"[r:{lines_done}/9]"
        line = own + body + "\n"
        rest = line[len(current):]
        if forced and not forced.endswith("]"):  # "[r:0/": the writer completes the number its way
            rest = forced + line[len(forced):]
        return _ids(rest[:16])


def _ids(text):
    ids = [ord(c) for c in text] + ([EOS_ID] if len(text) < 16 else [])
    return ids + [PAD_ID] * (16 - len(ids))


def _write(controls, backend=None, **kw):
    backend = backend or Writer()
    req = PieceRequest(BACH, controls=controls, **kw)
    piece, = generate(tiny_model(), [req], lambda m, r: backend)
    return piece, backend


def _body(text):
    return [ln for ln in text.splitlines() if ln.startswith("[r:")]


@pytest.mark.parametrize("bars", [1, 2, 5, 12])
def test_every_line_is_numbered_for_the_length_asked_and_the_piece_ends_after_the_last(bars):
    piece, _ = _write(Controls(bars=bars))
    assert piece.complete and piece.bars == bars
    assert [R_MARKER.match(ln).group(0) for ln in _body(piece.text)] == [f"[r:{i}/{bars - 1 - i}]" for i in range(bars)]


def test_without_a_length_the_model_numbers_and_ends_the_piece():
    piece, _ = _write(Controls())
    assert piece.bars == 3 and _body(piece.text)[1].startswith("[r:1/9]")


def test_the_asked_header_fields_replace_the_models_or_come_before_its_first_voice():
    piece, _ = _write(Controls(key="Eb dorian", meter="3/4", tempo=96))
    meta = piece.text.split("[r:")[0].splitlines()
    assert meta[-5:] == ["L:1/8", "M:3/4", "K:Ebdor", "Q:1/4=96", "V:1 treble"]  # M, K replaced; Q inserted
    assert not any(ln in ("M:2/4", "K:G") for ln in meta)


def test_header_edits_reach_the_events_the_context_and_the_cache():
    backend = Writer()
    req = PieceRequest(BACH, controls=Controls(meter="6/8"))
    state = PieceState(0, req, 64, 16, "cpu")
    events = []
    for _ in range(4):
        events += [e for _, e in gen_mod.step(backend, [state])]
    replay = state.prompt_text
    for ev in events:
        replay = replay[: len(replay) - ev.retract] + ev.text
    assert replay == state.text and "M:6/8\n" in state.text and "M:2/4" not in state.text
    context_text = "".join(chr(c) for p in state.context for c in p if c > 2)
    assert "M:6/8\n" in context_text and "M:2/4" not in context_text
    assert state.cache_version != (0, 0)  # FastBackend prefills again


def test_the_length_holds_with_bar_retries_and_across_a_context_reset():
    piece, _ = _write(Controls(bars=40), Writer(bad_lines={3, 17}), bar_retries=2, bar_rules=frozenset({"metre"}))
    assert piece.complete and piece.bars == 40 and piece.lines_rewritten == 6  # two bad lines and the ending (no |]), two retries each
    body = _body(piece.text)
    assert len(body) == 40 and all(ln.startswith(f"[r:{i}/{39 - i}]") for i, ln in enumerate(body))
    small = tiny_model(patch_length=32)
    backend = Writer()
    long, = generate(small, [PieceRequest(BACH, controls=Controls(bars=30))], lambda m, r: backend)
    assert long.context_resets >= 1 and long.bars == 30
    assert [ln[:ln.index("]") + 1] for ln in _body(long.text)] == [f"[r:{i}/{29 - i}]" for i in range(30)]


def test_a_continued_score_is_renumbered_to_the_whole_length_and_keeps_its_key():
    prefix = "L:1/8\nM:2/4\nK:G\nV:1 treble\n" + "".join(f"[r:{i}/2][V:1]GA Bc|\n" for i in range(3))
    fitted = fit_prefix(prefix, Controls(bars=8, key="G"))
    assert _body(fitted)[2].startswith("[r:2/5]")
    piece, _ = _write(Controls(bars=8), prefix=fitted)
    assert piece.complete and piece.bars == 5 and len(_body(piece.text)) == 8
    with pytest.raises(SettingsError, match="already has 3 bars"):
        fit_prefix(prefix, Controls(bars=3))
    with pytest.raises(SettingsError, match="transpose it first"):
        fit_prefix(prefix, Controls(key="D"))
    with pytest.raises(SettingsError, match="metre"):
        fit_prefix(prefix, Controls(meter="3/4"))
    assert "Q:1/4=60\nV:1" in fit_prefix(prefix, Controls(tempo=60))
    header_only = fit_prefix("L:1/8\nM:2/4\nK:G\nV:1 treble\n", Controls(key="D", meter="3/4"))
    assert header_only == "L:1/8\nM:3/4\nK:D\nV:1 treble\n"  # no notes yet: anything goes


def test_fastbackend_writes_no_eos_before_the_last_bar(monkeypatch):
    """A model that wants to end at once (bos first in every patch) is held to its length."""
    model = tiny_model()
    step = model.char_level_decoder.step

    def eager_to_end(embeds, caches, t):
        logits = step(embeds, caches, t)
        logits[:, (BOS_ID, EOS_ID)[min(t, 1)]] += 100.0  # bos, then eos: NotaGen's end patch
        return logits

    monkeypatch.setattr(model.char_level_decoder, "step", eager_to_end)
    prefix = "L:1/8\nM:2/4\nK:G\nV:1 treble\n[r:0/1][V:1]GA|\n"  # its last line fills a patch: no tail
    free, = generate(model, [PieceRequest(BACH, prefix=prefix, max_patches=4)], FastBackend)
    held, = generate(model, [PieceRequest(BACH, prefix=prefix, max_patches=4, controls=Controls(bars=20))],
                     FastBackend)
    assert free.complete and free.patches == 0
    assert held.stop_reason == "max_patches" and held.patches == 4 and held.text.split("\n")[-1].startswith("[r:1/18]")


@pytest.mark.parametrize("field,value,message", [
    ("bars", 0, "length"), ("bars", 10_000, "length"), ("bars", 2.5, "length"), ("tempo", 0, "tempo"),
    ("key", "H", "key must be"), ("key", "G#", "seven sharps"), ("key", "D foo", "key must be"),
    ("meter", "7/0", "metre"), ("meter", "3/5", "metre"), ("meter", "fast", "metre"),
])
def test_bad_values_are_refused_before_any_work_naming_what_is_accepted(field, value, message):
    with pytest.raises(SettingsError, match=message):
        bach(controls=Controls(**{field: value}))
    with pytest.raises(SettingsError, match=message):
        bach().update(**{field: value})


def test_values_are_written_as_abc_and_empty_boxes_leave_it_to_the_model():
    assert [check_key(k) for k in ("D", "Bb", "F#m", "Dmin", "Eb dorian", "a minor")] == \
        ["D", "Bb", "F#m", "Dm", "Ebdor", "Am"]
    assert [check_meter(m) for m in ("3/4", " 6/8 ", "C", "C|")] == ["3/4", "6/8", "C", "C|"]
    assert not Controls.from_page(0, "", None, 0) and Controls.from_page(16, " ", "3/4", 0) == Controls(16, None, "3/4")
    r = bach().update(bars=24, key="D", meter="3/4", tempo=100)
    assert r.controls == Controls(24, "D", "3/4", 100) and r.settings()["controls"] == \
        {"bars": 24, "key": "D", "meter": "3/4", "tempo": 100}
    assert header_edit("K:D\n", [], Controls(key="D")) is None  # already as asked
    assert re.search(r"bars|key", str(Controls(bars=3)))
