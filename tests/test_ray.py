"""The models as Ray Serve replicas (--ray): a local Ray started by the studio (the fixture), two
SymbolicEngine replicas of a tiny random model. A piece streams and is kept as in-process, the
same seed gives the same text, Stop keeps what was written, and the page's HTTP API works on it."""
import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from conftest import BACH, bach, tiny_model  # noqa: E402
from engine.service.pieces import Progress  # noqa: E402
from engine.service.studio import Studio  # noqa: E402
from engine.settings import ServerSettings  # noqa: E402
from engine.symbolic.checkpoint import save_model  # noqa: E402
from engine.symbolic.prompts import PromptTable  # noqa: E402

BEGUN = "X:1\nT:Begun\nL:1/8\nM:4/4\nK:C\nCDEF GABc|\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A studio page in front of a local Ray; and an in-process studio on the same model."""
    from webui.app import start

    tmp = tmp_path_factory.mktemp("ray")
    model = save_model(tiny_model(seed=1), tmp / "tiny", prompts=PromptTable([BACH]))
    config = ServerSettings(port=free_port(), outputs=str(tmp / "ray-out"), model=str(model), min_free_mb=0,
                            ray="local", replicas=2, replica_cpus=1)
    demo, studio, url = start(config, quiet=True)
    studio.model(None).get(300)
    local = Studio(ServerSettings(outputs=str(tmp / "local-out"), model=str(model), min_free_mb=0))
    yield studio, local, url, tmp
    demo.close()
    studio.shutdown(1)
    import ray

    assert not ray.is_initialized()  # the Ray started by the studio went with it


def test_a_piece_streams_from_a_replica_and_equals_the_in_process_one(served):
    studio, local, _, _ = served
    assert "2 Ray Serve replica(s)" in studio.model(None).status()
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
