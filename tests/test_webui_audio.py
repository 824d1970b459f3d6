"""The studio's audio side served for real (tiny random MusicGen models, no downloads): the /audio
and /perform endpoints, progress, melodies, stop, history, and bad input that leaves the server up."""
import time
from pathlib import Path

import pytest

from test_audio import TUNE, tiny_musicgen, write_tone
from test_webui import client, free_port, serve, tiny_folder

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

from engine.audio.musicgen import AudioSettings  # noqa: E402
from engine.requests import AudioRequest  # noqa: E402
from engine.settings import ServerSettings  # noqa: E402

KEY = "u" * 20 + "-audio"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio-studio")
    config = ServerSettings(port=free_port(), outputs=str(tmp / "outputs"), model=str(tiny_folder(tmp)),
                          audio_model=str(tiny_musicgen(tmp / "musicgen")),
                          melody_model=str(tiny_musicgen(tmp / "melody", melody=True)),
                          max_upload_mb=1, max_audio_seconds=60)
    demo, studio, url = serve(config)
    yield url, studio, tmp
    demo.close()


def audio_args(key=KEY, prompt="warm string quartet", model="", duration=1.0, seed=3, variations=1, melody=None):
    return (key, prompt, model, duration, seed, 3.0, 250, 0.0, 1.0, variations, melody)


def test_audio_streams_progress_then_gives_wavs_pictures_and_a_manifest(server):
    url, studio, tmp = server
    c = client(url, tmp, "audio")
    job = c.submit(*audio_args(duration=2.0, variations=2), api_name="/audio")
    info, files = job.result(timeout=300)
    piece = info["pieces"][0]
    assert info["status"] == "done" and piece["kind"] == "audio" and piece["seed"] == 3
    assert piece["settings"]["audio_seconds"] == 2.0 and piece["stop_reason"] == "done"
    names = sorted(Path(f).name for f in files)
    assert names == ["audio-1.png", "audio-1.wav", "audio-2.png", "audio-2.wav", "audio.manifest.json"]
    steps = [o[0] for o in job.outputs() if o and o[0] and o[0].get("status") == "working"]
    assert steps and steps[-1]["steps"] == steps[-1]["total"] == 103
    history = c.predict(KEY, api_name="/history")["pieces"]
    assert piece["id"] in [p["id"] for p in history]
    assert not c.predict("o" * 20 + "-other", api_name="/history")["pieces"]  # another session sees none of it


def test_audio_past_one_window_through_the_server(server, monkeypatch):
    from engine.audio import musicgen

    url, studio, tmp = server
    monkeypatch.setattr(musicgen, "WINDOW_SECONDS", 1.0)  # the server runs in this process
    monkeypatch.setattr(musicgen, "CONTEXT_SECONDS", 0.4)
    info, _ = client(url, tmp, "long").predict(*audio_args(duration=2.2), api_name="/audio")
    assert info["pieces"][0]["settings"]["windows"] == 3 and info["pieces"][0]["settings"]["audio_seconds"] == 2.2


def test_a_melody_upload_is_followed_by_the_melody_model(server):
    url, studio, tmp = server
    tone = write_tone(tmp / "hum.wav", 3.0)
    info, files = client(url, tmp, "mel").predict(*audio_args(model=studio.config.melody_model,
                                                              melody=handle_file(str(tone))), api_name="/audio")
    assert info["pieces"][0]["prompt"]["melody"].endswith(".wav")


def test_a_score_is_performed_through_the_server(server):
    url, studio, tmp = server
    info, files = client(url, tmp, "perf").predict(KEY, TUNE, "string quartet, warm hall", "", 30.0, 4,
                                                   api_name="/perform")
    piece = info["pieces"][0]
    assert piece["kind"] == "performed" and piece["model"] == "melody" and piece["abc"] == TUNE
    assert {"performance.wav", "performance-soundfont.wav"} <= {Path(f).name for f in files}


@pytest.mark.parametrize("args,message", [
    (audio_args(prompt="   "), "prompt is empty"),
    (audio_args(duration=100), "duration must be from 0.5 to 60 seconds on this server"),
    (audio_args(duration=1000), "duration .seconds. must be a number from 0.5 to 300"),  # past the engine's own limit
    (audio_args(variations=50), "variations"),
    (audio_args(key="short"), "session"),
    (audio_args(model="no/such-musicgen"), "no model 'no/such-musicgen' on this server"),
])
def test_bad_audio_requests_get_a_clear_message_and_the_server_goes_on(server, args, message):
    url, studio, tmp = server
    c = client(url, tmp, "bad")
    with pytest.raises(Exception, match=message):
        c.predict(*args, api_name="/audio")
    assert c.predict("", api_name="/prompts")["prompts"]  # still serving


def test_bad_melody_uploads_are_refused_clearly(server):
    url, studio, tmp = server
    c = client(url, tmp, "badmel")
    melody_model = studio.config.melody_model
    fake = tmp / "fake.wav"
    fake.write_text("this is not audio")
    with pytest.raises(Exception, match="not an audio file"):
        c.predict(*audio_args(model=melody_model, melody=handle_file(str(fake))), api_name="/audio")
    notes = tmp / "notes.txt"
    notes.write_text("la la la")
    with pytest.raises(Exception, match="not an audio file"):
        c.predict(*audio_args(model=melody_model, melody=handle_file(str(notes))), api_name="/audio")
    big = write_tone(tmp / "big.wav", 8.0)  # 1.4 MB against a 1 MB limit
    with pytest.raises(Exception, match="(?i)MB|size|large|limit"):
        c.predict(*audio_args(model=melody_model, melody=handle_file(str(big))), api_name="/audio")
    with pytest.raises(Exception, match="cannot follow a melody"):
        c.predict(*audio_args(model=studio.config.audio_model, melody=handle_file(str(write_tone(tmp / "ok.wav", 1.0)))),
                  api_name="/audio")
    with pytest.raises(Exception, match="no score to perform"):
        c.predict(KEY, "  ", "strings", "", 10.0, 1, api_name="/perform")
    assert c.predict(KEY, api_name="/history")  # still serving


def test_stop_and_a_closed_page_keep_the_audio_made_so_far(server):
    url, studio, tmp = server
    key = "t" * 20 + "-stop-audio"
    s = AudioSettings(duration=55.0, seed=1)
    run = studio.audio(key, AudioRequest("slow piano", s))
    first = next(run)  # progress: the worker is running
    assert first.total > 2700
    while first.steps < 60:  # some frames made (the engine finishes long before its 2700 steps)
        first = next(run)
    assert studio.stop(key)
    for item in run:
        last = item
    record = last[0].record
    assert record.stop_reason == "cancelled" and 0 < record.settings["audio_seconds"] < 55
    # a closed page: the iterator is closed, the worker stops and still keeps its piece
    run = studio.audio(key, AudioRequest("fast jazz", AudioSettings(duration=55.0, seed=2)))
    next(run)
    run.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [r for r in studio.history(key) if r.prompt["text"] == "fast jazz"]:
        time.sleep(0.2)
    kept = [r for r in studio.history(key) if r.prompt["text"] == "fast jazz"]
    assert kept and kept[0].stop_reason == "cancelled" and kept[0].files["wav"]


def test_a_session_composing_and_making_audio_at_once_stops_each_on_its_own(server):
    """Jobs are keyed by job: the audio Stop leaves the score being written alone, and the other
    way round (they were keyed by session, so one overwrote the other's stop)."""
    from conftest import bach

    url, studio, tmp = server
    key = "w" * 20 + "-both-at-once"
    # a continued score: Stop keeps the tiny random model's text (a new piece of it stays in its header)
    score = studio.compose(key, bach(seed=3, max_patches=4000), continue_abc="X:1\nL:1/8\nM:4/4\nK:C\nCDEF GABc|\n")
    next(score)
    sound = studio.audio(key, AudioRequest("slow piano", AudioSettings(duration=55.0, seed=4)))
    next(sound)
    assert studio.stop(key, "audio")
    for item in sound:
        last_audio = item
    assert last_audio[0].record.stop_reason == "cancelled"
    assert studio.running() == 1  # the score is still being written
    for _ in range(3):
        assert next(score).patches > 0
    assert studio.stop(key, "compose")
    for item in score:
        last_score = item
    assert last_score[0].record.stop_reason == "cancelled" and not studio.running()


def test_the_seed_shown_while_making_audio_is_the_seed_of_the_kept_clip(server):
    import soundfile as sf

    from engine.api import AudioProgress
    from webui.forms import audio_request

    url, studio, tmp = server
    key = "v" * 20 + "-audio-seed"
    request = audio_request("slow piano", 1.0, -1)  # the page's -1: a random seed
    assert request.settings.seed is None
    items = list(studio.audio(key, request))
    (kept,) = items[-1]
    shown = {i.seed for i in items[:-1] if isinstance(i, AudioProgress)}
    assert shown == {kept.record.seed} and kept.record.settings["seed"] == kept.record.seed
    (again,) = list(studio.audio(key, AudioRequest("slow piano", AudioSettings(duration=1.0, seed=kept.record.seed))))[-1]
    first, second = (sf.read(str(o.paths("wav")[0]))[0] for o in (kept, again))
    assert (first == second).all()


def test_system_lists_a_loaded_musicgen_with_its_device(server):
    url, studio, tmp = server
    list(studio.audio("y" * 20 + "-system", AudioRequest("slow piano", AudioSettings(duration=1.0, seed=1))))
    audio = [m for m in studio.system()["models"] if m.get("kind") == "MusicGen"]
    assert audio and all("ready on cpu" in m["status"] for m in audio), audio
