"""Exports (sheet music, MusicXML, MIDI, WAV, PDF, the ZIP) and the score check: the CPU-heavy part
of a shared server, behind one interface.

`LocalRenderer` renders in this process's worker pool (the default). With `--ray --render-replicas
N` the studio sends the work to `RenderEngine` replicas on Ray Serve instead: a replica renders in a
folder of its own and sends the files back, and the studio writes them into the piece's folder, so
storage, sessions and History stay in front, and the replicas may be on other machines."""
from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine import api
from engine.errors import CadenzaError
from engine.files import write_atomic
from engine.symbolic.postprocess import Alignment

log = logging.getLogger("cadenza.rendering")
RENDER_S = 900.0  # one remote render at most: each conversion stage is bounded by RenderOptions.timeout_s
DEPLOYMENT = "RenderEngine"
APP = "cadenza-renderer"
MAX_NAME = 200  # a file name sent back by a replica


@dataclass
class Rendered:
    """A score's exports (result.out_dir: the piece's folder) and, when asked, its check: bars
    against the metre and between voices, and the musical analysis (api.check_score)."""
    result: api.RenderResult
    bars: Alignment | None = None
    analysis: dict = field(default_factory=dict)


def _checked(result: api.RenderResult, check: bool) -> Rendered:
    xml = result.paths("musicxml") if check else []
    bars, found = api.check_score(xml[0]) if xml else (None, {})
    return Rendered(result, bars, found)


class LocalRenderer:
    """Renders in this process (engine.render.pipeline's worker processes)."""

    def score(self, folder: Path, abc: str, formats, stem: str, options: api.RenderOptions, meta: dict | None = None,
              strict: bool = True, check: bool = False) -> Rendered:
        """ABC -> the exports in `folder` (api.render); strict=False for a generated piece."""
        return _checked(api.render(abc, folder, formats, stem, meta, options, strict=strict), check)

    def upload(self, folder: Path, path: Path, formats, stem: str, options: api.RenderOptions) -> Rendered:
        """A score file (MusicXML, MIDI) -> its ABC and exports in `folder`, checked."""
        return _checked(api.render_file(path, folder, formats, stem, options=options), True)

    def transpose(self, abc: str, to_key: str, options: api.RenderOptions) -> tuple[str, str]:
        return api.transpose(abc, to_key, options)

    def status(self) -> str:
        return "in the studio's process"


@dataclass
class Packed:
    """What a replica sends back: the exports' files by name, or the error in words."""
    rendered: Rendered | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    moved: tuple[str, str] | None = None  # a transposition: (abc, note)
    error: str | None = None


def folder_files(folder: Path) -> dict[str, bytes]:
    """A replica's work folder, to send back: its files by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def write_files(files: dict[str, bytes], folder: Path, sender: str) -> None:
    """Files a replica sent back, into the piece's folder: named, never pathed (a name with a
    path, a leading dot or over MAX_NAME characters is refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        if Path(name).name != name or name.startswith(".") or len(name) > MAX_NAME:
            raise CadenzaError(f"{sender} sent back a file named {name[:60]!r}: refused")
    for name, data in files.items():
        write_atomic(folder / name, data)


def _said(work) -> Packed:
    """A replica's work, or its refusal as words for the studio to say (not Ray's traceback)."""
    try:
        return work()
    except CadenzaError as e:
        return Packed(error=str(e))


class RenderEngine:
    """A Ray Serve replica that renders: each request in a temporary folder, sent back whole."""

    def __init__(self):
        self.local = LocalRenderer()

    def score(self, abc: str, formats, stem: str, options: api.RenderOptions, meta: dict | None, strict: bool,
              check: bool) -> Packed:
        with tempfile.TemporaryDirectory(prefix="cadenza-render-") as tmp:
            return _said(lambda: Packed(self.local.score(Path(tmp), abc, formats, stem, options, meta, strict, check),
                                        folder_files(Path(tmp))))

    def upload(self, name: str, data: bytes, formats, stem: str, options: api.RenderOptions) -> Packed:
        with tempfile.TemporaryDirectory(prefix="cadenza-render-") as tmp:
            src, out = Path(tmp) / "in" / Path(name).name, Path(tmp) / "out"
            src.parent.mkdir()
            src.write_bytes(data)
            return _said(lambda: Packed(self.local.upload(out, src, formats, stem, options), folder_files(out)))

    def transpose(self, abc: str, to_key: str, options: api.RenderOptions) -> Packed:
        return _said(lambda: Packed(moved=self.local.transpose(abc, to_key, options)))


def application(args: dict):
    """`serve deploy`'s entry for the renderer (import_path engine.service.rendering:application)."""
    from ray import serve

    return serve.deployment(RenderEngine, name=DEPLOYMENT).bind()


def deployment_options(replicas: int, cpus: float) -> dict:
    # a render runs its stages in worker processes of its own: a replica takes two at a time, the
    # rest wait in line at the handle
    return {"num_replicas": replicas, "max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": cpus}}


class RemoteRenderer:
    """The studio's side of the RenderEngine replicas: deployed on first use (or found running),
    the files written into the piece's folder as they come back."""

    def __init__(self, cluster, replicas: int, cpus: float):
        self.cluster, self.replicas, self.cpus = cluster, replicas, cpus
        self._handle = None
        self._lock = threading.Lock()

    def handle(self):
        with self._lock:
            if self._handle is None:
                self._handle = self.cluster.deploy_app(APP, DEPLOYMENT, RenderEngine, (),
                                                       deployment_options(self.replicas, self.cpus))
            return self._handle

    def _call(self, method: str, *args) -> Packed:
        from ray.exceptions import RayError

        try:
            packed = getattr(self.handle(), method).remote(*args).result(timeout_s=RENDER_S)
        except (RayError, TimeoutError) as e:  # a replica lost, or the call over its bound
            log.warning("a render replica failed: %s", e)
            raise CadenzaError("the renderer (a Ray Serve replica) failed while rendering: try again; what was "
                               "written is kept") from e
        if packed.error is not None:
            raise CadenzaError(packed.error)
        return packed

    @staticmethod
    def _unpack(packed: Packed, folder: Path) -> Rendered:
        write_files(packed.files, folder, "the renderer")
        rendered = packed.rendered
        rendered.result.out_dir = folder
        return rendered

    def score(self, folder: Path, abc: str, formats, stem: str, options: api.RenderOptions, meta: dict | None = None,
              strict: bool = True, check: bool = False) -> Rendered:
        return self._unpack(self._call("score", abc, tuple(formats), stem, options, meta, strict, check), folder)

    def upload(self, folder: Path, path: Path, formats, stem: str, options: api.RenderOptions) -> Rendered:
        return self._unpack(self._call("upload", path.name, path.read_bytes(), tuple(formats), stem, options), folder)

    def transpose(self, abc: str, to_key: str, options: api.RenderOptions) -> tuple[str, str]:
        return self._call("transpose", abc, to_key, options).moved

    def status(self) -> str:
        states = self.cluster.replica_states(APP, DEPLOYMENT) if self._handle is not None else "deployed on first use"
        return f"on Ray Serve: {self.replicas} RenderEngine replica(s) of {self.cpus:g} CPU ({states})"
