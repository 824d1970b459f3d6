"""The studio served for real on localhost, driven by gradio_client as a script or a second user
would: streaming, stop and cancel, uploads, downloads, sessions kept apart, bad input."""
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import BACH, bach, free_port, tiny_model
from engine import api
from engine.symbolic.checkpoint import save_model
from engine.symbolic.prompts import Prompt, PromptTable
from engine.symbolic.sampling import SamplingSettings

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from webui.app import build_app  # noqa: E402
from engine.settings import ServerSettings, from_args, parse_auth  # noqa: E402
from engine.service.studio import Studio  # noqa: E402

PROMPTS = [BACH, Prompt("Baroque", "Bach, Johann Sebastian", "Keyboard"), Prompt("Romantic", "Chopin, Frederic", "Keyboard")]
KEY_A, KEY_B = "a" * 20 + "-session-A", "b" * 20 + "-session-B"


def tiny_folder(tmp: Path) -> Path:
    return save_model(tiny_model(seed=1), tmp / "tiny-model", prompts=PromptTable(PROMPTS))


def serve(config: ServerSettings):
    """The studio as ./run.sh serves it (same launch options), in the background."""
    from webui.app import start

    return start(config, quiet=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    config = ServerSettings(port=free_port(), outputs=str(tmp / "outputs"), model=str(tiny_folder(tmp)),
                          concurrency=2, max_upload_mb=1, max_patches=4096)
    demo, studio, url = serve(config)
    studio.model(config.model).get()
    yield url, studio, tmp
    demo.close()


def client(url, tmp: Path, name: str) -> Client:
    folder = tmp / f"downloads-{name}"
    folder.mkdir(exist_ok=True)
    return Client(url, verbose=False, download_files=str(folder))


CONTINUED = "X:1\nT:Begun\nL:1/8\nM:4/4\nK:C\nCDEF GABc|cBAG FEDC|\n"


def compose_args(key, prompt=BACH, seed=1, max_patches=40, variations=1, model=""):
    return (key, model, prompt.period, prompt.composer, prompt.instrumentation, seed, 1.2, 9, 0.9, max_patches, variations)


# --- building without serving ---------------------------------------------------------------------

def test_the_page_builds_without_launching_and_names_its_endpoints(tmp_path):
    config = ServerSettings(outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path)))
    demo = build_app(config)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    assert {"prompts", "compose", "render", "upload", "history", "piece", "audio", "perform"} <= names


def test_the_cascade_offers_only_combinations_in_the_table(tmp_path):
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path))))
    table = studio.prompts(studio.config.model)
    offered = set()
    for period in table.periods():
        p, composers, _, _ = studio.choices(studio.config.model, period)
        for c in composers:
            _, _, c2, instrumentations = studio.choices(studio.config.model, p, c)
            offered |= {(p, c2, i) for i in instrumentations}
    assert offered == {(x.period, x.composer, x.instrumentation) for x in PROMPTS}
    # a stale or made-up choice falls back to a valid one
    p, _, c, ins = studio.choices(studio.config.model, "Atonal", "Nobody")
    assert Prompt(p, c, ins[0]) in table


def test_command_line_and_environment_configure_serving(monkeypatch):
    monkeypatch.setenv("CADENZA_PORT", "7999")
    cfg = from_args(["--host", "0.0.0.0", "--auth", "ann:secret"])
    assert (cfg.host, cfg.port, cfg.auth, cfg.share) == ("0.0.0.0", 7999, ("ann", "secret"), False)
    with pytest.raises(Exception, match="user:password"):
        parse_auth("no-colon")


# --- served ---------------------------------------------------------------------------------------

def test_compose_streams_updates_then_gives_every_file(server):
    url, studio, tmp = server
    c = client(url, tmp, "a")
    job = c.submit(*compose_args(KEY_A, max_patches=48), api_name="/compose")
    info, files = job.result(timeout=300)
    updates = [o[0] for o in job.outputs() if o and o[0] and o[0].get("status") == "writing"]
    assert len(updates) >= 5  # one per patch (the queue may merge a few)
    assert updates[-1]["patches"] > updates[0]["patches"]
    piece = info["pieces"][0]
    assert info["status"] == "done" and piece["seed"] == 1 and piece["prompt"]["composer"] == BACH.composer
    assert files and all(Path(f).stat().st_size > 0 for f in files)
    assert any(f.endswith(".abc") for f in files) and any(f.endswith(".zip") for f in files)
    history = c.predict(KEY_A, api_name="/history")["pieces"]
    assert piece["id"] in [p["id"] for p in history]
    again, _ = c.predict(KEY_A, piece["id"], api_name="/piece")
    assert again["pieces"][0]["abc"] == piece["abc"]


def test_stop_keeps_and_renders_what_was_written(server):
    _, studio, _ = server
    key = "s" * 20 + "-stop"
    # a continued score: the tiny random model's text goes into its last bar at once (a new piece of
    # this model stays in its header, which Stop does not keep: the test below)
    request = bach(seed=5, max_patches=4000)
    items = studio.compose(key, request, continue_abc=CONTINUED)
    updates = 0
    for item in items:  # bounded: the request's 4000 patches, and Stop after 3 updates
        updates += not isinstance(item, list)
        if updates == 3:
            assert studio.stop(key)
    (kept,) = item
    assert kept.record.stop_reason == "cancelled" and kept.abc.startswith("X:1") and len(kept.abc) > len(CONTINUED)
    assert kept.record.files["abc"] and kept.record.files.get("pdf")  # rendered, not only the text


def test_stop_in_the_header_keeps_nothing(server):
    """Stopped before a bar is begun: a header with no music is not a piece, History stays as it was."""
    url, studio, tmp = server
    c = client(url, tmp, "stop-early")
    key = "s" * 20 + "-early"
    job = c.submit(*compose_args(key, max_patches=4000, seed=5), api_name="/compose")
    _wait_for_updates(job, 3)  # the tiny random model never leaves its header (no [r: or [V: line)
    assert studio.stop(key)
    info, files = job.result(timeout=120)
    assert info == {"status": "done", "pieces": []} and not files and studio.history(key) == []


def test_cancelling_a_request_stops_the_generation_and_keeps_the_text(server):
    url, studio, tmp = server
    c = client(url, tmp, "cancel")
    key = "c" * 20 + "-cancel"
    job = c.submit(*compose_args(key, max_patches=4000, seed=6), api_name="/compose")
    _wait_for_updates(job, 3)
    job.cancel()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and studio.running():
        time.sleep(0.2)
    assert not studio.running()  # the engine loop ended, well before its 4000 patches
    history = studio.history(key)
    assert history and history[0].stop_reason == "closed" and history[0].files["abc"]


THREE_BARS = "X:1\nT:Walk\nL:1/8\nM:4/4\nK:C\nCDEF GABc|cBAG FEDC|E2G2 c4|]\n"


def test_every_action_of_the_page_has_an_endpoint_named_in_words(server):
    """/continue, /rewrite and /transpose as the page's buttons, keyword arguments named for what they are."""
    url, studio, tmp = server
    c = client(url, tmp, "words")
    key = "w" * 20 + "-words"
    style = dict(model="", period=BACH.period, composer=BACH.composer, instrumentation=BACH.instrumentation, seed=4,
                 temperature=1.2, top_k=9, top_p=0.9, max_patches=12, variations=1)
    info, files = c.predict(session_key=key, abc=THREE_BARS, **style, api_name="/continue")
    (went_on,) = info["pieces"]
    assert went_on["kind"] == "continued" and went_on["title"] == "Walk (continued)" and went_on["seed"] == 4
    assert "CDEF GABc" in went_on["abc"].replace("\n", " ") and files
    info, _ = c.predict(session_key=key, abc=THREE_BARS, bar=2, **style, api_name="/rewrite")
    (rewritten,) = info["pieces"]
    assert rewritten["kind"] == "rewritten" and "CDEF GABc" in rewritten["abc"] and "cBAG FEDC" not in rewritten["abc"]
    info, files = c.predict(session_key=key, abc=THREE_BARS, music_key="G", api_name="/transpose")
    (moved,) = info["pieces"]
    assert moved["kind"] == "transposed" and moved["title"] == "Walk (in G)" and "\nK:G" in moved["abc"]
    assert {p["id"] for p in c.predict(key, api_name="/history")["pieces"]} >= {went_on["id"], rewritten["id"], moved["id"]}
    for call, said in ((dict(abc="", **style, api_name="/continue"), "there is no score to continue"),
                       (dict(abc=THREE_BARS, bar=40, **style, api_name="/rewrite"), "rewrite from must be a whole number from 1 to 3"),
                       (dict(abc=THREE_BARS, music_key=" ", api_name="/transpose"), "no key to transpose to")):
        with pytest.raises(Exception, match=said):
            c.predict(session_key=key, **call)


def test_two_users_at_once_get_separate_results_and_cannot_reach_each_other(server):
    url, studio, tmp = server
    a, b = client(url, tmp, "two-a"), client(url, tmp, "two-b")
    ka, kb = "x" * 20 + "-two-A", "y" * 20 + "-two-B"
    ja = a.submit(*compose_args(ka, seed=11), api_name="/compose")
    jb = b.submit(*compose_args(kb, seed=12, prompt=PROMPTS[2]), api_name="/compose")
    (ia, fa), (ib, fb) = ja.result(timeout=300), jb.result(timeout=300)
    assert ia["pieces"][0]["seed"] == 11 and ib["pieces"][0]["seed"] == 12
    assert fa and fb and {Path(f).name for f in fa}.isdisjoint(Path(f).name for f in fb)
    ha = [p["id"] for p in a.predict(ka, api_name="/history")["pieces"]]
    hb = [p["id"] for p in b.predict(kb, api_name="/history")["pieces"]]
    assert ia["pieces"][0]["id"] in ha and ib["pieces"][0]["id"] in hb and not set(ha) & set(hb)
    with pytest.raises(Exception, match="no piece"):
        b.predict(kb, ia["pieces"][0]["id"], api_name="/piece")
    # A's files on the server, asked for by path through Gradio's file route: refused
    a_file = studio.store.session(ka).piece_folder(ia["pieces"][0]["id"])
    target = next(a_file.glob("*.abc"))
    for route in ("gradio_api/file=", "file="):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + route + urllib.parse.quote(str(target)), timeout=10)
        assert e.value.code in (403, 404)


def test_an_uploaded_real_score_is_rendered(server):
    from music21 import corpus

    url, studio, tmp = server
    c = client(url, tmp, "upload")
    path = corpus.getWork("bach/bwv66.6")
    info, files = c.predict(KEY_A, handle_file(str(path)), api_name="/upload")
    piece = info["pieces"][0]
    assert piece["kind"] == "uploaded" and "V:1" in piece["abc"]
    kinds = {Path(f).suffix for f in files}
    assert {".abc", ".musicxml", ".mid", ".pdf", ".wav"} <= kinds, (kinds, piece["errors"])


@pytest.mark.parametrize("call,message", [
    (lambda c: c.predict(*compose_args(KEY_B, prompt=Prompt("Baroque", "Nobody, Jane", "Choral")), api_name="/compose"),
     "not in|prompt"),
    (lambda c: c.predict(*compose_args(KEY_B, max_patches=10**7), api_name="/compose"), "maximum length"),
    (lambda c: c.predict(*compose_args("short"), api_name="/compose"), "session"),
    (lambda c: c.predict(KEY_B, "hello, this is not music", api_name="/render"), "not ABC"),
    (lambda c: c.predict(KEY_B, "", api_name="/render"), "empty"),
])
def test_bad_input_gets_a_clear_message_and_the_server_goes_on(server, call, message):
    url, studio, tmp = server
    c = client(url, tmp, "bad")
    with pytest.raises(Exception, match=message):
        call(c)
    assert c.predict("", api_name="/prompts")["prompts"]  # still serving


def test_uploads_that_are_not_scores_or_too_big_are_refused(server):
    url, studio, tmp = server
    c = client(url, tmp, "bad-upload")
    text = tmp / "notes.txt"
    text.write_text("shopping list")
    with pytest.raises(Exception, match="not a score"):
        c.predict(KEY_B, handle_file(str(text)), api_name="/upload")
    broken = tmp / "broken.musicxml"
    broken.write_text("<score-partwise><part>")
    with pytest.raises(Exception, match="broken.musicxml|MusicXML|read"):
        c.predict(KEY_B, handle_file(str(broken)), api_name="/upload")
    big = tmp / "big.abc"
    big.write_text("X:1\nK:C\n" + "C" * (2 * 2**20))
    with pytest.raises(Exception, match="(?i)size|large|MB|limit"):
        c.predict(KEY_B, handle_file(str(big)), api_name="/upload")
    with pytest.raises(Exception, match="no file: expected an .abc, .musicxml, .xml or .mxl score or a .mid"):
        c.predict(KEY_B, None, api_name="/upload")
    from test_midi import _midi, _track

    drums = _midi(tmp / "drums.mid", _track([36, 38] * 4, channel=9))
    with pytest.raises(Exception, match="nothing to notate: it holds drums only"):
        c.predict(KEY_B, handle_file(str(drums)), api_name="/upload")
    assert c.predict("", api_name="/prompts")["prompts"]


def test_the_bundled_model_composes_a_seeded_piece_through_the_server(server):
    bundled = api.bundled_model()
    if bundled is None:
        pytest.skip("no bundled model")
    url, studio, tmp = server
    c = client(url, tmp, "bundled")
    info, files = c.predict(*compose_args(KEY_A, seed=0, max_patches=400, model=str(bundled)), api_name="/compose")
    piece = info["pieces"][0]
    assert piece["model"] == bundled.name and piece["bars"] >= 4
    assert not piece["errors"], piece["errors"]
    assert {Path(f).suffix for f in files} >= {".abc", ".musicxml", ".mid", ".pdf", ".wav", ".zip"}


def _wait_for_updates(job, n: int, timeout: float = 120, bars: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writing = [o[0] for o in job.outputs() if o and o[0] and o[0].get("status") == "writing"]
        if len(writing) >= n and writing[-1]["bars"] >= bars:
            return
        time.sleep(0.05)
    raise AssertionError("no streamed updates")


def test_threads_are_not_left_behind():
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "model-loader" and t.is_alive()]


def test_downloading_weights_offline_says_what_to_do_instead(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    from engine.errors import CadenzaError

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CadenzaError, match="no network and not in the cache.*copy the file here"):
        api.fetch_checkpoint("ElectricAlexis/NotaGen", "weights_notagenx.pth")
    with pytest.raises(CadenzaError, match="repo id"):
        api.fetch_checkpoint("not a repo", "x.pth")


def test_continue_carries_on_from_the_users_score(server):
    """Continue: a real chorale's first bars (as the ABC box would hold them) are the start of
    the new piece, and the model's bars follow."""
    from music21 import corpus

    from engine.symbolic.abcformat import musicxml_to_abc
    url, studio, tmp = server
    abc = musicxml_to_abc(corpus.getWork("bach/bwv66.6"))
    abc = re.sub(r"^[TC]:.*\n", "", abc, flags=re.M).replace("X:1\n", "X:1\nT:My chorale\nC:after J. S. Bach\n", 1)
    assert "|]" in abc  # the score ends with a final barline ...
    prefix = api.continuation_prefix(abc, more_bars=8)
    assert prefix.count("[r:") >= 8 and "[r:0/" in prefix
    assert "|]" not in prefix  # ... which must not stay mid-piece once the music goes on
    key = "k" * 20 + "-continue"
    items = list(studio.compose(key, bach(max_patches=24, seed=3), continue_abc=abc, title="My chorale"))
    (outcome,) = items[-1]
    assert outcome.record.kind == "continued" and outcome.record.title == "My chorale (continued)"
    from engine.symbolic.postprocess import to_abc

    music = lambda text: [ln for ln in text.splitlines() if not re.match(r"[TC]:", ln)][:14]  # noqa: E731
    opening = music(to_abc("".join(BACH.lines()) + prefix).abc)  # header and first bars
    assert music(outcome.abc) == opening  # the user's opening is kept as it was
    assert "T:My chorale" in outcome.abc and "C:after J. S. Bach" in outcome.abc  # and so are the user's titles
    from engine.errors import CadenzaError

    for bad in ("X:1\nK:C\n", "X:1\nK:C\n[V:1 ((( ]]] |"):  # no bars; unreadable
        with pytest.raises(CadenzaError, match="no bars|no notes|cannot be read|could not convert"):  # shown in the page
            list(studio.compose(key, bach(), continue_abc=bad))
    with pytest.raises(CadenzaError, match="not ABC notation"):  # as Render says it, not a new piece written
        list(studio.compose(key, bach(), continue_abc="please continue my melody"))


def test_the_seed_shown_while_writing_is_the_seed_of_the_kept_piece(server):
    """No seed asked for (the page's -1): the studio draws one before the first patch; every
    progress line and the record show it, and asking for it again writes the same piece."""
    from webui.forms import compose_request
    from engine.service.pieces import Progress

    url, studio, tmp = server
    key = "s" * 20 + "-seed-shown"
    request = compose_request(BACH.period, BACH.composer, BACH.instrumentation, 1.2, 9, 0.9, -1, 24, 1)
    assert request.seed is None
    items = list(studio.compose(key, request))
    (kept,) = items[-1]
    shown = {i.seed for i in items[:-1] if isinstance(i, Progress)}
    assert shown == {kept.record.seed}
    (manifest,) = kept.folder.glob("*.manifest.json")
    assert json.loads(manifest.read_text())["seed"] == kept.record.seed
    (again,) = list(studio.compose(key, bach(max_patches=24, seed=kept.record.seed)))[-1]
    assert again.abc == kept.abc


def test_controls_reach_the_piece_through_the_api(server):
    """/compose with bars, key, metre and tempo (the bundled model, real music): a piece of that
    length in that key and metre; a bad value is refused with what is accepted."""
    bundled = api.bundled_model()
    if bundled is None:
        pytest.skip("no bundled model")
    url, studio, tmp = server
    c = client(url, tmp, "controls")
    melody = Prompt("Folk", "Traditional, Irish", "Melody")
    info, files = c.predict(*compose_args(KEY_A, melody, seed=2, max_patches=400, model=str(bundled)), 8, "Am", "6/8",
                            120, api_name="/compose")
    piece = info["pieces"][0]
    assert piece["bars"] == 8 and piece["settings"]["controls"] == {"bars": 8, "key": "Am", "meter": "6/8", "tempo": 120}
    abc = Path(next(f for f in files if f.endswith(".abc"))).read_text()
    assert "\nK:Am" in abc and "\nM:6/8" in abc and "\nQ:1/4=120" in abc
    with pytest.raises(Exception, match="metre must be"):
        c.predict(*compose_args(KEY_A, melody, model=str(bundled)), 8, "", "7/0", 0, api_name="/compose")


def test_rewrite_from_a_bar_keeps_the_bars_before_it_as_a_new_piece(server):
    from music21 import corpus

    from engine.errors import CadenzaError
    from engine.symbolic.abcformat import musicxml_to_abc
    url, studio, tmp = server
    key = "r" * 20 + "-rewrite"
    abc = musicxml_to_abc(corpus.getWork("bach/bwv66.6"))
    items = list(studio.compose(key, bach(max_patches=12, seed=4), continue_abc=abc, rewrite_from=3))
    (outcome,) = items[-1]
    assert outcome.record.kind == "rewritten"
    kept = api.continuation_prefix(abc, rewrite_from=3)
    # the pickup (bar 0, as printed) and bars 1 and 2, numbered for the score's own length
    assert kept.count("[r:") == 3 and "[r:2/" in kept
    body = [ln for ln in outcome.abc.splitlines() if ln.startswith("[V:1]")]
    original = [ln for ln in api.to_abc("".join(BACH.lines()) + api.continuation_prefix(abc)).abc.splitlines()
                if ln.startswith("[V:1]")]
    assert body[:3] == original[:3] and len(body) > 3
    with pytest.raises(CadenzaError, match=r"bar 0 is this score's pickup\) must be a whole number from 0 to"):
        list(studio.compose(key, bach(), continue_abc=abc, rewrite_from=500))


def test_rewriting_bars_inside_a_piece_keeps_every_other_bar_as_a_new_piece(server):
    """Bars 3-4 of a real chorale written again (the bundled model: it writes whole bars), by the
    studio and by /rewrite with last_bar: one piece comes back, every other bar as it was."""
    from music21 import corpus

    from engine.errors import CadenzaError
    from engine.render.pipeline import interleaved
    from engine.symbolic.abcformat import musicxml_to_abc
    url, studio, tmp = server
    bundled = str(api.bundled_model())
    key = "r" * 20 + "-passage"
    abc = musicxml_to_abc(corpus.getWork("bach/bwv66.6"))

    def bars_of(text):
        return [ln for ln in "".join(interleaved(abc_text=text)).splitlines() if ln.startswith("[V:")]

    items = list(studio.compose(key, bach(seed=4), model=bundled, continue_abc=abc, rewrite_from=3, rewrite_to=4))
    (outcome,) = items[-1]
    assert outcome.record.kind == "rewritten" and outcome.record.settings["rewritten"] == [3, 4]
    before, after = bars_of(abc), bars_of(outcome.abc)
    assert len(after) == len(before) and after[:3] == before[:3] and after[5:] == before[5:]  # pickup, 1-2, 5-
    assert any("bars 3-4 rewritten: the best of 4 candidates" in w for w in outcome.record.warnings)
    c = client(url, tmp, "passage")
    style = dict(model=bundled, period=BACH.period, composer=BACH.composer, instrumentation=BACH.instrumentation,
                 seed=5, temperature=1.2, top_k=9, top_p=0.9, max_patches=400, variations=1)
    info, _ = c.predict(session_key=key, abc=abc, bar=2, last_bar=2, **style, api_name="/rewrite")
    (piece,) = info["pieces"]
    assert bars_of(piece["abc"])[3:] == before[3:] and bars_of(piece["abc"])[:2] == before[:2]
    with pytest.raises(CadenzaError, match="the last bar to rewrite"):
        list(studio.compose(key, bach(), model=bundled, continue_abc=abc, rewrite_from=3, rewrite_to=2))


def test_a_melody_is_harmonised_as_a_new_piece_by_the_studio_and_by_harmonise(server):
    """The bundled model harmonises a tune as a Bach chorale: the melody is its first voice, note for
    note; the piece is kept as "... (harmonised)"; a score of several voices is refused in words."""
    from engine.errors import CadenzaError
    url, studio, tmp = server
    bundled = str(api.bundled_model())
    key = "h" * 20 + "-harmonise"
    melody = "X:1\nT:Tune\nL:1/8\nM:3/4\nK:D\nV:1 treble\nD2 | F2 A2 d2 | c4 B2 | A6 |]\n"
    first = lambda abc: [ln.split("[V:2]")[0] for ln in abc.splitlines() if ln.startswith("[V:1]")]  # noqa: E731
    (outcome,) = list(studio.compose(key, bach(seed=2), model=bundled, harmonise_abc=melody, title="Tune"))[-1]
    assert outcome.record.kind == "harmonised" and outcome.record.title == "Tune (harmonised)"
    assert first(outcome.abc) == ["[V:1]D2|", "[V:1]F2 A2 d2|", "[V:1]c4 B2|", "[V:1]A6|]"]
    assert "\nV:4" in outcome.abc  # a chorale's four voices
    c = client(url, tmp, "harmonise")
    style = dict(model=bundled, period=BACH.period, composer=BACH.composer, instrumentation=BACH.instrumentation,
                 seed=3, temperature=1.2, top_k=9, top_p=0.9, max_patches=400, variations=1)
    info, files = c.predict(session_key=key, abc=melody, **style, api_name="/harmonise")
    (piece,) = info["pieces"]
    assert piece["kind"] == "harmonised" and first(piece["abc"]) == first(outcome.abc) and files
    with pytest.raises(Exception, match="the score has 2 voices: harmonise takes a melody"):
        c.predict(session_key=key, abc="X:1\nL:1/8\nM:4/4\nK:C\nV:1\nC8|]\nV:2\nC,8|]\n", **style,
                  api_name="/harmonise")
    with pytest.raises(CadenzaError, match="not both at once"):
        list(studio.compose(key, bach(), model=bundled, harmonise_abc=melody, continue_abc=melody))


def test_transpose_makes_a_new_piece_in_the_asked_key(server):
    from music21 import converter, corpus

    from engine.errors import CadenzaError
    from engine.symbolic.abcformat import musicxml_to_abc
    url, studio, tmp = server
    key = "t" * 20 + "-transpose"
    abc = musicxml_to_abc(corpus.getWork("bach/bwv66.6"))  # F# minor (three sharps)
    outcome = studio.transpose(key, abc, "Bbm")
    assert outcome.record.kind == "transposed" and "from F# minor to Bb minor" in outcome.record.warnings[0]
    xml = next(outcome.folder.glob("*.musicxml"))
    score = converter.parse(str(xml))
    assert score.parts[0].getElementsByClass("Measure")[0].keySignature.sharps == -5
    assert len(studio.history(key)) == 1  # the original was not a piece of this session; it is untouched
    with pytest.raises(CadenzaError, match="key must be"):
        studio.transpose(key, abc, "Q")


# --- continuous batching through the server (issue 19) ------------------------------------------------
def test_eight_clients_at_once_are_batched_and_each_gets_its_own_correct_piece(server):
    """Eight sessions compose together: every request completes, in the model's running batch, and
    each piece is the one its seed writes alone (the same text as without the scheduler)."""
    url, studio, tmp = server
    results: dict[int, dict] = {}

    def one(i):
        c = client(url, tmp, f"batch-{i}")
        args = list(compose_args(f"{'b' * 20}-batched-{i}", seed=100 + i, max_patches=24))
        args[7] = 1  # top-k 1: greedy, so the text cannot depend on the batch's rounding (sampling: bench.studio_load)
        info, _ = c.predict(*args, api_name="/compose")
        results[i] = info["pieces"][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == list(range(8))
    greedy = SamplingSettings(top_k=1, top_p=0.9, temperature=1.2)
    for i, piece in results.items():
        assert piece["seed"] == 100 + i
        # the same request alone afterwards (a batch of one, the same export path)
        (alone,) = list(studio.compose("a" * 20 + f"-alone-{i}", bach(seed=100 + i, max_patches=24, sampling=greedy)))[-1]
        assert piece["abc"] == alone.abc
    for i, piece in results.items():  # each session holds its own piece and no one else's
        assert [r.id for r in studio.history(f"{'b' * 20}-batched-{i}")] == [piece["id"]]
    assert max(s.status()["patches_per_s"] for s in studio.model(None).schedulers) > 0


def test_a_request_that_finds_every_row_in_use_is_shown_its_place_in_line(tmp_path):
    from engine.service.pieces import Progress

    # a context long enough that the first piece (random text, no bar lines) outlasts the test
    # instead of filling its context in 55 patches
    folder = save_model(tiny_model(patch_length=2048, seed=1), tmp_path / "long", prompts=PromptTable(PROMPTS))
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(folder), max_batch=1))
    first = studio.compose("w" * 20 + "-first", bach(seed=1, max_patches=4000, max_seconds=8,
                                                      prefix="L:1/8\nM:4/4\nK:C\nV:1\n"))
    started = next(first)  # at once, before the model's first patch: the page shows the new piece from now
    assert isinstance(started, Progress) and started.patches == 0 and "K:C" in started.abc and started.waiting is None
    assert next(first).patches >= 1  # its first patch: the only row is taken
    second = studio.compose("w" * 20 + "-second", bach(seed=2, max_patches=10))
    assert next(second).patches == 0  # started
    waiting = next(second)
    assert isinstance(waiting, Progress) and waiting.waiting == 1 and "position 1 in line" in waiting.line()
    first.close()  # a closed tab: its row frees, the second request goes on
    items = list(second)
    assert isinstance(items[-1], list) and items[-1][0].record.seed == 2


def test_the_pages_record_names_every_component_and_refuses_a_misspelt_one():
    from webui.page import Page

    ui = Page()
    with pytest.raises(AttributeError):
        ui.perfrom = None  # not a component of the page
    ui.key = "k"
    with pytest.raises(RuntimeError, match="the page was built without work, pages"):
        ui.check()
