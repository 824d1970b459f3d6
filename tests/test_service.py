"""The serving core is UI-free: engine/service runs a studio (compose, stop, render, history)
with no Gradio loaded, as the CLI, scripts and a Ray Serve deployment would."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = r"""
import sys, tempfile
from pathlib import Path
from conftest import BACH, bach, tiny_model
from engine.settings import ServerSettings
from engine.service.studio import Studio
from engine.symbolic.checkpoint import save_model
from engine.symbolic.prompts import PromptTable

tmp = Path(tempfile.mkdtemp())
model = save_model(tiny_model(seed=1), tmp / "tiny", prompts=PromptTable([BACH]))
studio = Studio(ServerSettings(outputs=str(tmp / "out"), model=str(model), min_free_mb=0))
studio.model(None).get()
key = "k" * 20 + "-service"
items = list(studio.compose(key, bach(seed=3, max_patches=24)))
(kept,) = items[-1]
assert kept.record.seed == 3 and kept.record.kind == "composed" and kept.abc.startswith("X:1"), kept.record
assert [r.id for r in studio.history(key)] == [kept.record.id]
rendered = studio.render(key, "X:1\nT:Mine\nL:1/8\nM:2/4\nK:G\nGABc|d2B2|\n")
assert rendered.record.title == "Mine" and rendered.paths("pdf")
print("gradio loaded:", "gradio" in sys.modules)
"""


def test_the_service_composes_renders_and_keeps_history_with_no_gradio_loaded():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT / "tests", capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gradio loaded: False" in out.stdout


def test_every_stop_reason_is_said_in_words_and_a_record_keeps_its_value():
    import json

    from engine.stops import FINISHED, StopReason
    from webui.views import STOPS

    # the ends that need no word: the model ended it, the passage asked for was written, the clip is made
    assert set(StopReason) - set(STOPS) == FINISHED == {StopReason.EOS, StopReason.PASSAGE, StopReason.DONE}
    assert json.loads(json.dumps({"stop_reason": StopReason.CANCELLED})) == {"stop_reason": "cancelled"}
    assert StopReason("max_patches") is StopReason.MAX_PATCHES  # read back from a record


def test_render_replicas_without_ray_are_refused_in_words(tmp_path):
    import pytest

    from engine.errors import SettingsError
    from engine.service.studio import Studio
    from engine.settings import ServerSettings

    with pytest.raises(SettingsError, match=r"render replicas run on Ray Serve: add --ray"):
        Studio(ServerSettings(outputs=str(tmp_path / "out"), render_replicas=2, min_free_mb=0))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_render_replica_cannot_write_outside_the_pieces_folder(tmp_path):
    """The files a replica sends back are named, not pathed: '../x' or a hidden name is refused."""
    import pytest

    from engine.errors import CadenzaError
    from engine.service.rendering import Packed, Rendered, RemoteRenderer

    for name in ("../escape.abc", "/etc/passwd", ".hidden", "a/b.abc", "x" * 300):
        with pytest.raises(CadenzaError, match="the renderer sent back a file named"):
            RemoteRenderer._unpack(Packed(Rendered(None), {name: b"X:1"}), tmp_path / "piece")
    assert not (tmp_path / "escape.abc").exists() and not list((tmp_path / "piece").iterdir())


def test_a_replica_that_goes_silent_ends_the_piece_in_words_with_its_text_kept(monkeypatch):
    """A stream from a replica that stops answering (a hung replica, an application deleted under
    the studio) ends after the stall bound, as a lost replica does, instead of holding the page."""
    import threading
    import time

    from conftest import BACH, bach
    from engine import api
    from engine.service import remote
    from engine.symbolic.generate import PatchEvent
    from engine.symbolic.prompts import PromptTable

    released = threading.Event()

    class Silent:  # one patch, then nothing until cancelled
        def __iter__(self):
            yield PatchEvent(0, "[r:0/3][V:1]CDEF", 1, 16, 0, 0.1)
            released.wait(30)

        def cancel(self):
            released.set()

    class Handle:
        def options(self, **_):
            return self

        @property
        def write(self):
            return self

        def remote(self, *_):
            return Silent()

    monkeypatch.setattr(remote, "STALL_S", 0.5)
    slot = remote.RemoteSlot(None, "cpu", None, api.PlacementOptions(), (4, 0.0, "eager", api.Sharing()))
    slot.handle = Handle()
    lm = remote.RemoteModel("tiny", PromptTable([BACH]), {}, ["cpu"])
    t = time.monotonic()
    events = list(slot.compose_stream(lm, bach(seed=1, max_patches=50), threading.Event(), None, "s"))
    assert time.monotonic() - t < 10 and released.is_set()  # the stream was cancelled, not waited on
    (piece,) = [e for e in events if isinstance(e, api.Composition)]
    assert piece.piece.stop_reason == "replica_lost" and "[V:1]CDEF" in piece.piece.text
    assert "no word from it" in " ".join(piece.warnings)
