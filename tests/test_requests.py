"""Requests are checked once, when they are made: each bad field is refused there with a message
that names it, and nothing downstream checks it again; the seed a result reports is the seed used;
many threads composing and rendering at once keep their own pieces and leave sys.stdout alone."""
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import bach
from engine import api, checks, requests
from engine.audio.musicgen import AudioSettings
from engine.errors import CadenzaError, SettingsError
from engine.requests import AudioRequest, ComposeRequest
from engine.symbolic import prompts, sampling
from test_webui import tiny_folder


@pytest.mark.parametrize("fields,message", [
    ({"period": ""}, "period is empty"),
    ({"composer": "Dvo\u0159\u00e1k, Anton\u00edn"}, "7-bit ASCII"),
    ({"instrumentation": "Key_board"}, "without '_'"),
    ({"seed": -1}, r"seed must be a whole number from 0 to 9,223,372,036,854,775,807, got -1"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": "7"}, "seed must be a whole number"),
    ({"seed": 2**63 - 2, "variations": 4}, "leaves no room for 4 variations"),
    ({"variations": 0}, "variations must be a whole number from 1 to 64, got 0"),
    ({"variations": True}, "variations must be a whole number"),
    ({"max_patches": 0}, r"maximum length \(patches\) must be a whole number from 1"),
    ({"max_seconds": 0}, r"maximum time \(seconds\) must be a number more than 0"),
    ({"max_seconds": float("nan")}, r"maximum time \(seconds\) must be a number"),
    ({"bar_retries": -1}, "bar retries must be a whole number from 0 to 32"),
    ({"bar_retries": 33}, "bar retries must be a whole number from 0 to 32"),
    ({"header_retries": 1.5}, "header retries must be a whole number"),
    ({"header_retries": 65}, "header retries must be a whole number from 0 to 64"),
    ({"prefix": "caf\u00e9"}, "non-ASCII"),
    ({"temperature": 11}, r"temperature \(0: greedy\) must be a number from 0 to 10, got 11"),
    ({"top_k": 129}, r"top_k \(0: off\) must be a whole number from 0 to 128"),
    ({"top_p": 0}, "top_p must be a number more than 0 and at most 1, got 0"),
    ({"colour": "blue"}, "unknown setting.*colour"),
])
def test_a_compose_request_refuses_each_bad_field_with_a_message_naming_it(fields, message):
    with pytest.raises(CadenzaError, match=message):
        bach().update(**fields)


def test_a_request_is_made_of_checked_values_and_never_changes():
    r = bach().update(temperature=1, top_k=9.0, variations=2.0)  # a page's floats
    assert (r.sampling.temperature, r.sampling.top_k, r.variations) == (1.0, 9, 2)
    assert type(r.sampling.top_k) is int and type(r.variations) is int
    assert r.seed is None and r.seeded().seed is not None and r.seeded() is not r
    seeded = r.update(seed=5)
    assert seeded.seeded() is seeded and r.seed is None  # update makes a new request
    with pytest.raises(Exception):
        r.variations = 3  # frozen
    assert ComposeRequest(" Baroque ", "Bach, Johann Sebastian", "Choral").period == "Baroque"


def test_a_server_holds_a_request_to_its_own_limits():
    r = bach(max_patches=2000, variations=3, max_seconds=5000)
    with pytest.raises(CadenzaError, match="maximum length .patches. must be from 1 to 1,024 on this server, got 2,000"):
        r.within(1024, 8, 600)
    with pytest.raises(CadenzaError, match="variations must be from 1 to 2 on this server, got 3"):
        r.within(4096, 2, 600)
    assert r.within(4096, 8, 600).max_seconds == 600 and r.within(4096, 8, 9000).max_seconds == 5000
    # a search wider than the server's rows (--max-batch, --max-search) is lowered to them, not refused
    assert r.search == 16 and r.within(4096, 8, 600, max_rows=4).search == 4 and r.within(4096, 8, 600).search == 16


@pytest.mark.parametrize("prompt,settings,melody,score,message", [
    ("", {}, None, None, "prompt is empty"),
    ("x" * 3000, {}, None, None, "at most 2000"),
    ("jazz", {"duration": 0.1}, None, None, r"duration \(seconds\) must be a number from 0.5 to 300"),
    ("jazz", {"guidance_scale": 30}, None, None, "guidance scale"),
    ("jazz", {"top_p": 2}, None, None, "top-p"),
    ("jazz", {"seed": 2**63}, None, None, "seed must be a whole number"),
    ("jazz", {}, "tune.txt", None, "tune.txt is not an audio file"),
    ("strings", {}, None, "  ", "no score to perform"),
])
def test_an_audio_request_refuses_each_bad_field_with_a_message_naming_it(prompt, settings, melody, score, message):
    with pytest.raises(CadenzaError, match=message):
        AudioRequest(prompt, AudioSettings(**settings), melody=melody, score=score)


def test_each_field_is_checked_once_from_the_request_to_the_pieces(tmp_path, monkeypatch):
    """Counting the checks while a request is made and composed (two variations): every field
    went through its check exactly once, none in the layers below."""
    lm = api.load(tiny_folder(tmp_path))  # (its prompt table is checked as it loads)
    seen = Counter()

    def counting(module, name, label_at):
        real = getattr(module, name)

        def check(*args, **kwargs):
            seen[args[label_at]] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, check)

    for module in (requests, sampling):
        counting(module, "whole", 1)
        counting(module, "real", 1)
    counting(prompts, "check_field", 0)
    request = bach(max_patches=8, variations=2).seeded()
    comps = api.compose(lm, request)
    assert [c.piece.seed for c in comps] == [request.seed, request.seed + 1]
    assert set(seen.values()) == {1}, seen
    assert {"period", "composer", "instrumentation", "variations", "bar retries", "top_p"} <= set(seen)


def test_the_seed_a_piece_reports_is_the_seed_that_writes_it_again(tmp_path):
    lm = api.load(tiny_folder(tmp_path))
    request = bach(max_patches=24).seeded()  # what the studio does first, so its progress can show it
    (first,) = api.compose(lm, request)
    assert first.piece.seed == request.seed and first.manifest(lm)["seed"] == request.seed
    (again,) = api.compose(lm, bach(max_patches=24, seed=first.piece.seed))
    assert again.abc.abc == first.abc.abc
    drawn = {checks.draw_seed() for _ in range(20)}
    assert len(drawn) > 1  # a fresh seed each time


def test_eight_threads_composing_and_rendering_at_once_keep_their_own_pieces(tmp_path, capfd):
    lm = api.load(tiny_folder(tmp_path))

    def work(s: int, where: str):
        (comp,) = api.compose(lm, bach(seed=s, max_patches=24))
        rendered = api.export(lm, comp, tmp_path / where / str(s), ("abc", "musicxml"))
        files = [p.read_text() for p in rendered.paths("abc") + rendered.paths("musicxml")]
        return comp.piece.seed, comp.abc.abc, files, sorted(rendered.failed.items())  # (random weights: some fail)

    alone = [work(s, "alone") for s in range(8)]
    out, err = sys.stdout, sys.stderr
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda s: work(s, "together"), range(8)))
    assert sys.stdout is out and sys.stderr is err
    assert together == alone  # each thread's own piece and files, as written alone
    assert [seed for seed, *_ in together] == list(range(8)) and all(files for _, _, files, _ in together)
    printed = capfd.readouterr()
    assert "list index out of range" not in printed.out + printed.err  # abctoolkit's prints stayed caught


def test_a_refused_value_is_quoted_short_not_echoed_whole():
    from engine.symbolic.controls import check_key

    with pytest.raises(SettingsError) as e:
        check_key("G" * 1000)
    assert "e.g. D, Bb, F#m" in str(e.value) and len(str(e.value)) < 300 and str(e.value).endswith("...")
    with pytest.raises(SettingsError, match=r"got 'xxxxx.*\.\.\.$"):
        bach(max_patches="x" * 500)
