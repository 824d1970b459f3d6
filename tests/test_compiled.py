"""Compiled decoding (engine.symbolic.compiled, issue 20): the compiled character step writes what
the eager path writes, shares its compiled graphs across backends, and falls back to eager."""
import functools
import logging

import pytest
import torch

from conftest import BACH, tiny_model
from engine.errors import SettingsError
from engine.symbolic import compiled
from engine.symbolic.backend import FastBackend
from engine.symbolic.generate import PieceRequest, generate
from engine.symbolic.sampling import SamplingSettings

GREEDY = SamplingSettings(top_k=1, top_p=1.0, temperature=1.0)
EAGER = functools.partial(FastBackend, decode="eager")
COMPILED = functools.partial(FastBackend, decode="compiled")


def requests(n=3, sampling=GREEDY, patches=12):
    return [PieceRequest(BACH, seed=i + 1, sampling=sampling, max_patches=patches + 3 * i) for i in range(n)]


def test_the_step_function_run_eagerly_writes_what_the_eager_loop_writes():
    """char_step without compiling, over static 17-position caches and a mask, against the eager
    loop over caches sliced to the positions written: the same pieces, sampled, in a batch."""
    model = tiny_model(seed=3)
    sampled = SamplingSettings()
    eager = generate(model, requests(3, sampled), EAGER)

    class Uncompiled(compiled.CompiledChars):
        def __init__(self, model, rows):
            super().__init__(model, rows)
            self.fn = compiled.char_step

    table = model.__dict__.setdefault("_compiled_chars", {})
    for rows in (1, 2, 4):
        table[rows] = Uncompiled(model, rows)
    static = generate(model, requests(3, sampled), COMPILED)
    assert [p.text for p in static] == [p.text for p in eager]


def test_compiled_equals_eager_under_greedy_decoding_and_sampling():
    model = tiny_model(seed=11)
    eager = generate(model, requests(3), EAGER)
    fast = generate(model, requests(3), COMPILED)
    assert [p.text for p in fast] == [p.text for p in eager]
    assert [p.patches for p in fast] == [p.patches for p in eager] == [12, 15, 18]
    one = generate(model, [PieceRequest(BACH, seed=4, max_patches=10)], COMPILED)  # sampled, bucket 1
    assert one[0].text == generate(model, [PieceRequest(BACH, seed=4, max_patches=10)], EAGER)[0].text
    # 3 rows padded to 4, then 2 and 1 as pieces end; shared by every backend of the model
    assert set(model._compiled_chars) == {1, 2, 4}


def test_a_changed_weight_makes_a_new_graph_not_a_stale_one():
    model = tiny_model(seed=12)
    generate(model, requests(1, patches=4), COMPILED)
    first = model._compiled_chars[1]
    with torch.no_grad():
        model.char_level_decoder.base.lm_head.weight.mul_(1.5)  # frozen weights would now be stale
    fast = generate(model, requests(1, patches=6), COMPILED)
    assert model._compiled_chars[1] is not first
    assert fast[0].text == generate(model, requests(1, patches=6), EAGER)[0].text


def test_a_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    model = tiny_model(seed=13)

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler here\nlong trace")
    monkeypatch.setattr(compiled.CompiledChars, "write", broken)
    with caplog.at_level(logging.WARNING, logger="cadenza.compiled"):
        fast = generate(model, requests(2, patches=5), COMPILED)
        again = generate(model, requests(2, patches=5), COMPILED)
    assert [p.text for p in fast] == [p.text for p in generate(model, requests(2, patches=5), EAGER)]
    assert [p.text for p in again] == [p.text for p in fast]
    warned = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert warned == ["compiled decoding is unavailable (RuntimeError: no C++ compiler here); decoding eagerly"]


def test_decode_modes_and_buckets():
    assert compiled.resolve_decode("auto", torch.device("cpu")) == "eager"
    assert compiled.resolve_decode("auto", torch.device("cuda", 0)) == "compiled"
    assert compiled.resolve_decode("compiled", torch.device("cpu")) == "compiled"
    with pytest.raises(SettingsError, match="decode must be one of auto, eager, compiled, got 'fast'"):
        FastBackend(tiny_model(), 1, decode="fast")
    assert [compiled.bucket(n) for n in (1, 2, 3, 5, 8, 9, 64)] == [1, 2, 4, 8, 8, 16, 64]
    assert compiled.compiled_chars(tiny_model(), compiled.MAX_BUCKET + 1) is None  # too wide: eager
