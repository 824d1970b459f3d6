"""The models as Ray Serve replicas (--ray): a local Ray started by the studio (the fixture), two
SymbolicEngine replicas of a tiny random model. A piece streams and is kept as in-process, the
same seed gives the same text, Stop keeps what was written, and the page's HTTP API works on it."""
import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from conftest import BACH, bach, free_port, tiny_model  # noqa: E402
from test_audio import tiny_musicgen, write_tone  # noqa: E402
from engine.service.pieces import Progress  # noqa: E402
from engine.service.studio import Studio  # noqa: E402
from engine.settings import ServerSettings  # noqa: E402
from engine.symbolic.checkpoint import save_model  # noqa: E402
from engine.symbolic.prompts import PromptTable  # noqa: E402

BEGUN = "X:1\nT:Begun\nL:1/8\nM:4/4\nK:C\nCDEF GABc|\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A studio page in front of a local Ray (the model's replicas and a render replica); and an
    in-process studio on the same model."""
    from webui.app import start

    tmp = tmp_path_factory.mktemp("ray")
    model = save_model(tiny_model(seed=1), tmp / "tiny", prompts=PromptTable([BACH]))
    audio = {"audio_model": str(tiny_musicgen(tmp / "musicgen")),
             "melody_model": str(tiny_musicgen(tmp / "melody", melody=True))}
    # 2 CPUs: two model replicas and a MusicGen replica of 0.5 each (one torch thread each), the renderer none
    config = ServerSettings(port=free_port(), outputs=str(tmp / "ray-out"), model=str(model), min_free_mb=0,
                            ray="local", replicas=2, replica_cpus=0.5, render_replicas=1, render_cpus=0,
                            audio_replicas=1, **audio)
    demo, studio, url = start(config, quiet=True)
    studio.model(None).get(300)
    local = Studio(ServerSettings(outputs=str(tmp / "local-out"), model=str(model), min_free_mb=0, **audio))
    yield studio, local, url, tmp
    demo.close()
    studio.cluster.close()  # not studio.shutdown(): that also closes this process's render pipeline for good
    import ray

    assert not ray.is_initialized()  # the Ray started by the studio went with it


def test_a_piece_streams_from_a_replica_and_equals_the_in_process_one(served):
    studio, local, _, _ = served
    assert "Ray Serve (2 running)" in studio.model(None).status(), studio.model(None).status()
    key = "r" * 20 + "-ray-same"
    items = list(studio.compose(key, bach(seed=3, max_patches=24)))
    progress = [i for i in items[:-1] if isinstance(i, Progress)]
    assert len(progress) >= 5 and progress[-1].patches > progress[0].patches  # streamed patch by patch
    (remote,) = items[-1]
    (here,) = list(local.compose(key, bach(seed=3, max_patches=24)))[-1]
    assert remote.abc == here.abc and remote.record.seed == here.record.seed == 3
    assert remote.record.model == "tiny" and remote.paths("abc"), sorted(p.name for p in remote.folder.iterdir())
    manifest = json.loads(next(remote.folder.glob("*.manifest.json")).read_text())
    assert manifest["model"]["name"] == "tiny" and manifest["model"]["checksum"]  # what the replica said of its model


def test_system_shows_each_replica_with_its_machine_devices_and_batch(served):
    import socket

    from webui.views import system_tables

    studio, _, _, _ = served
    deadline = time.monotonic() + 30
    while True:  # bounded: replicas report every 2 s
        (model,) = [m for m in studio.system()["models"] if m.get("kind") != "MusicGen"]
        if len(model["batching"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    replicas = model["batching"]
    assert len({r["replica"] for r in replicas}) == 2 and len({r["pid"] for r in replicas}) == 2, replicas
    for r in replicas:
        assert r["node"] == socket.gethostname() and r["devices"] == ["cpu"] and r["max_batch"] == 32
        assert r["heard_s"] < 10 and r["app"] == "cadenza-tiny" and r["rows_in_use"] >= 0
    _, rows, _ = system_tables(studio.system())
    assert rows[0][4].count("replica ") == 2 and "rows" in rows[0][4], rows


def test_stop_cancels_the_remote_rows_and_keeps_what_was_written(served):
    studio, _, _, _ = served
    key = "r" * 20 + "-ray-stop"
    items = studio.compose(key, bach(seed=4, max_patches=4000), continue_abc=BEGUN)
    updates, stopped_at = 0, None
    for item in items:  # bounded: 4000 patches, and Stop after 5 updates
        updates += not isinstance(item, list)
        if updates == 5 and stopped_at is None:
            stopped_at = time.monotonic()
            assert studio.stop(key)
    (kept,) = item
    assert time.monotonic() - stopped_at < 10  # the replica stopped within a patch (26 s before the fix)
    assert kept.record.stop_reason == "cancelled" and kept.abc.startswith("X:1") and "CDEF GABc" in kept.abc
    (after,) = list(studio.compose(key, bach(seed=5, max_patches=12)))[-1]  # the replicas go on serving
    assert after.record.seed == 5


def test_two_sessions_at_once_each_get_their_own_piece(served):
    studio, _, _, _ = served
    results = {}

    def one(name, seed):
        results[name] = list(studio.compose("s" * 20 + name, bach(seed=seed, max_patches=24)))[-1][0]

    threads = [threading.Thread(target=one, args=(n, s)) for n, s in (("-ray-a", 11), ("-ray-b", 12))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["-ray-a"].record.seed == 11 and results["-ray-b"].record.seed == 12
    assert [r.seed for r in studio.history("s" * 20 + "-ray-a")] == [11]


def test_the_http_api_composes_through_the_replicas(served):
    from gradio_client import Client

    _, _, url, tmp = served
    c = Client(url, verbose=False, download_files=str(tmp / "downloads"))
    info, files = c.predict(session_key="h" * 20 + "-ray-http", model="", period=BACH.period, composer=BACH.composer,
                            instrumentation=BACH.instrumentation, seed=7, temperature=1.2, top_k=9, top_p=0.9,
                            max_patches=24, variations=2, api_name="/compose")
    assert [p["seed"] for p in info["pieces"]] == [7, 8] and files
    assert all(Path(f).stat().st_size > 0 for f in files)


def test_scores_render_on_the_render_replica_as_they_do_in_process(served, tmp_path):
    """The exports, the check and the words of a refusal are the same from a RenderEngine replica."""
    import ray

    from engine.errors import CadenzaError

    studio, local, _, _ = served
    key = "r" * 20 + "-ray-render"
    score = ("X:1\nT:Two voices\nL:1/4\nM:4/4\nK:G\nV:1\nV:2 clef=bass\n[V:1] d2 B2|c2 A2|B2 G2|]\n"
             "[V:2] G,2 G,2|A,2 D2|G,4|]\n")
    remote, here = studio.render(key, score), local.render(key, score)
    names = sorted(p.name for p in remote.folder.iterdir() if p.name != "record.json")
    assert names == sorted(p.name for p in here.folder.iterdir() if p.name != "record.json")
    assert {"abc", "musicxml", "midi", "pdf"} <= set(remote.record.files) and not remote.record.errors
    assert remote.abc == here.abc and remote.record.bars == here.record.bars == 3
    assert remote.record.alignment == here.record.alignment and remote.record.analysis == here.record.analysis
    assert [a for a in ray.util.list_named_actors(all_namespaces=True) if "RenderEngine" in a["name"]]
    assert "1 running" in studio.renderer.status() and "RenderEngine" in studio.system()["rendering"]
    moved = studio.transpose(key, score, "A")  # music21 on the replica
    assert "K:A" in moved.abc and moved.record.title == "Two voices (in A)"
    (tmp_path / "two.musicxml").write_bytes(next(here.folder.glob("*.musicxml")).read_bytes())
    up = studio.upload(key, tmp_path / "two.musicxml")  # the file's bytes go to the replica
    up_here = local.upload(key, tmp_path / "two.musicxml")
    assert up.record.kind == "uploaded" and up.record.bars == 3 and "d4 B4 | c4 A4" in up.abc
    assert up.abc == up_here.abc and up.record.analysis == up_here.record.analysis
    with pytest.raises(CadenzaError, match="the text is not ABC notation"):  # in words, not Ray's traceback
        studio.render(key, "hello, this is not music")
    assert len(studio.history(key)) == 3  # the refusal kept nothing, the pieces before it stay


def test_musicgen_on_an_audio_replica_makes_the_in_process_clip_and_stop_keeps_what_was_made(served):
    import ray
    import soundfile as sf

    from engine.audio.musicgen import AudioSettings
    from engine.requests import AudioRequest

    studio, local, _, tmp = served
    key = "a" * 20 + "-ray-audio"
    request = AudioRequest("warm string quartet", AudioSettings(duration=1.0, seed=3, variations=2))
    items = list(studio.audio(key, request))
    assert items[:-1] and items[-2].steps == items[-2].total  # progress streamed from the replica
    (remote,), (here,) = items[-1], list(local.audio(key, request))[-1]
    assert remote.record.files == here.record.files and remote.record.seed == 3
    for name in remote.record.files["wav"]:  # the same clip, sent back as files
        a, b = sf.read(str(remote.folder / name))[0], sf.read(str(here.folder / name))[0]
        assert a.shape == b.shape and abs(a - b).max() < 1e-3, name
    assert "Ray Serve (1 running)" in studio.audio_model(None).status(), studio.audio_model(None).status()
    assert [a for a in ray.util.list_named_actors(all_namespaces=True) if "AudioEngine" in a["name"]]
    # a melody file: its bytes go to the melody model's replica
    tone = write_tone(tmp / "tone.wav", 1.0)
    (followed,) = list(studio.audio(key, AudioRequest("slow piano", AudioSettings(duration=1.0, seed=4),
                                                      melody=tone)))[-1]
    assert followed.record.prompt["melody"] == "tone.wav" and followed.record.files["wav"]
    # Stop: the replica stops within a step and still sends what it made
    run = studio.audio(key, AudioRequest("slow piano", AudioSettings(duration=55.0, seed=1)))
    first = next(run)
    while first.steps < 60:  # bounded: 2700 steps
        first = next(run)
    assert studio.stop(key)
    stopped_at = time.monotonic()
    for item in run:
        last = item
    record = last[0].record
    assert time.monotonic() - stopped_at < 10
    assert record.stop_reason == "cancelled" and 0 < record.settings["audio_seconds"] < 55, record
    assert (last[0].folder / record.files["wav"][0]).stat().st_size > 44
    # a closed page: the replica is told through the board, and its clip is still kept
    run = studio.audio(key, AudioRequest("fast jazz", AudioSettings(duration=55.0, seed=2)))
    next(run)
    run.close()
    kept = [r for r in studio.history(key) if r.prompt["text"] == "fast jazz"]
    assert kept and kept[0].stop_reason == "cancelled" and kept[0].files["wav"]


def test_the_cli_composes_on_the_replicas_as_it_does_in_process(served, tmp_path, capsys):
    """`compose --ray`: the model's application already running is used (not deployed again, nor
    deleted after), and the piece equals the CLI's own in-process one for the same seed."""
    from engine.cli import main

    studio, _, _, _ = served
    args = ["compose", "--model", studio.config.model, "--period", BACH.period, "--composer", BACH.composer,
            "--instrumentation", BACH.instrumentation, "--seed", "9", "--max-patches", "24", "--formats", "abc",
            "--quiet"]
    assert main(args + ["--ray", "-o", str(tmp_path / "ray")]) == 0
    assert main(args + ["-o", str(tmp_path / "here")]) == 0
    (remote,), (here,) = (list((tmp_path / d).glob("*.abc")) for d in ("ray", "here"))
    assert remote.name == here.name and remote.read_text() == here.read_text()
    assert "Ray Serve (2 running)" in studio.model(None).status()  # the studio's replicas, left as they were
    (after,) = list(studio.compose("c" * 20 + "-ray-cli", bach(seed=2, max_patches=12)))[-1]  # still deployed
    assert after.record.seed == 2


def test_write_config_gives_a_serve_deploy_file_that_ray_accepts_and_builds(tmp_path, capsys):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from engine.devices import gpu_count
    from engine.service.remote import application
    from engine.service.remote_audio import application as audio_application
    from engine.service.rendering import application as rendering_application
    from webui.__main__ import main

    path = tmp_path / "serve.yaml"
    assert main(["--write-config", str(path), "--replicas", "3", "--replica-gpus", "0.5", "--max-batch", "16"]) == 0
    config = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks
    (app,) = config["applications"]
    assert app["name"] == "cadenza-bundled" and app["deployments"][0]["num_replicas"] == 3
    assert app["deployments"][0]["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert application(app["args"]) is not None  # the import_path's builder takes the args as written
    assert main(["--write-config", str(path), "--replicas", "2", "--replicas-max", "6"]) == 0  # autoscaled
    auto = yaml.safe_load(path.read_text())["applications"][0]["deployments"][0]["ray_actor_options"]
    assert auto["num_gpus"] == (0.0 if not gpu_count() else auto["num_gpus"])  # --replica-gpus auto, no GPU here
    (app,) = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications
    scaling = app.deployments[0].autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (2, 6, 8)
    assert main(["--write-config", str(path), "--render-replicas", "2", "--render-cpus", "1.5", "--audio-replicas",
                 "2", "--audio-model", "facebook/musicgen-small", "--melody-model", "facebook/musicgen-melody"]) == 0
    model_app, audio, melody, renderer = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications
    assert renderer.name == "cadenza-renderer" and renderer.import_path == "engine.service.rendering:application"
    assert renderer.deployments[0].num_replicas == 2 and renderer.deployments[0].ray_actor_options.num_cpus == 1.5
    assert rendering_application(renderer.args) is not None
    assert (audio.name, melody.name) == ("cadenza-audio-musicgen-small", "cadenza-audio-musicgen-melody")
    assert audio.import_path == "engine.service.remote_audio:application" and audio.args["model"] == "facebook/musicgen-small"
    assert audio.deployments[0].num_replicas == 2 and audio_application(audio.args) is not None
    assert main(["--write-config", str(path), "--replicas", "3", "--replicas-max", "2"]) == 2
    assert "replicas max must be 0 (no autoscaling) or from --replicas (3) to 256, got 2" in capsys.readouterr().err


def test_a_studio_finds_the_models_application_already_running_and_does_not_deploy_another(served):
    from engine.service.remote import RayCluster

    studio, _, _, _ = served
    slot = studio.model(None)
    joined = RayCluster("local", 1, 0.0, 1.0)  # Ray is up in this process: it joins, starts nothing
    handle, name = joined.deploy(slot.spec, studio.config.placement_options(), studio.config.batching())
    assert name == slot.app == "cadenza-tiny" and joined._apps == []  # found by name, not deployed again
    assert handle.describe.remote().result(timeout_s=60).name == "tiny"


def test_a_replica_that_dies_mid_piece_ends_it_in_words_with_its_text_kept_and_serve_replaces_it(served):
    """Last in this module: it kills the replicas."""
    import ray

    studio, _, _, _ = served
    key = "r" * 20 + "-ray-lost"
    items = studio.compose(key, bach(seed=6, max_patches=4000), continue_abc=BEGUN)
    updates = 0
    for item in items:  # bounded: 4000 patches; the replicas are killed after 5 updates
        updates += not isinstance(item, list)
        if updates == 5:
            replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if "SymbolicEngine" in a["name"]]
            assert len(replicas) == 2, replicas
            for name in replicas:
                ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)
    (kept,) = item
    assert kept.record.stop_reason == "replica_lost", kept.record
    assert "replica stopped while writing this piece" in " ".join(kept.record.warnings)
    assert "CDEF GABc" in kept.abc and len(kept.abc) > len(BEGUN)  # what was streamed is kept
    deadline = time.monotonic() + 120
    while True:  # bounded: Serve starts new replicas within seconds
        try:
            (after,) = list(studio.compose(key, bach(seed=7, max_patches=12)))[-1]
            break
        except Exception:  # noqa: BLE001 - a request routed to a replica already dead
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    assert after.record.seed == 7 and after.record.stop_reason != "replica_lost"
