"""MusicGen served by Ray Serve (`--ray --audio-replicas N`), behind the same slot as a MusicGen
loaded in this process.

Each MusicGen model is a Serve application of `AudioEngine` replicas (one copy of the model each).
A clip streams its progress back; the replica writes the WAVs, pictures and manifest in a folder
of its own and sends them back at the end, and the studio writes them into the piece's folder
(storage stays in front). Stop, and a closed page, reach the replica through a small named actor
(engine.service.board): the replica stops MusicGen within a step and still sends what it made, which is
kept, as in-process. (Cancelling the Serve request would stop the replica too, but the clip made
so far would go with the request.)"""
from __future__ import annotations

import logging
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine import api
from engine.errors import CadenzaError
from engine.files import slug
from engine.requests import AudioRequest
from engine.service.board import board, report_every
from engine.service.jobs import threaded
from engine.service.models import ServedSlot
from engine.service.rendering import folder_files, write_files

log = logging.getLogger("cadenza.remote_audio")
DEPLOYMENT = "AudioEngine"
CONNECT_S = 300.0  # a replica loading MusicGen, at most
STOP_POLL_S = 0.2  # how often a replica asks the board whether its clip was stopped


def app_name(spec: str) -> str:
    """One Serve application per MusicGen model, named for it (cadenza-audio-musicgen-small)."""
    return "cadenza-audio-" + slug(Path(str(spec)).name)


@dataclass
class RemoteAudio:
    """What the front needs of a MusicGen served by replicas."""
    name: str
    melody: bool
    where: list[str]
    plan: str | None = None

    def devices(self) -> list[str]:
        return self.where


@dataclass
class PackedAudio:
    """A clip's files from a replica, by name, with what api.AudioOutput says of them."""
    result: object  # musicgen.AudioResult
    wavs: list[str]
    pictures: list[str]
    manifest: str
    files: dict[str, bytes] = field(default_factory=dict)

    def unpack(self, folder: Path) -> api.AudioOutput:
        write_files(self.files, folder, "the MusicGen replica")
        return api.AudioOutput(self.result, [folder / n for n in self.wavs], [folder / n for n in self.pictures],
                               folder / self.manifest)


def _pack(out: api.AudioOutput, folder: Path) -> PackedAudio:
    return PackedAudio(out.result, [p.name for p in out.wavs], [p.name for p in out.pictures], out.manifest.name,
                       folder_files(folder))


class AudioEngine:
    """A Ray Serve replica: one MusicGen model; each clip in a folder of its own, sent back whole."""

    def __init__(self, spec: str, placement: api.PlacementOptions, local_only: bool, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.am = api.load_audio_model(spec, options=placement, local_only=local_only)
        self.making = 0  # clips being made now
        self.reporting = report_every(lambda: {"devices": self.am.devices(), "clips": self.making})

    def describe(self) -> RemoteAudio:
        plan = getattr(self.am, "plan", None)
        return RemoteAudio(self.am.name, bool(self.am.melody), self.am.devices(),
                           plan.summary() if plan is not None else None)

    async def make(self, request: AudioRequest, melody: tuple[str, bytes] | None, stem: str, job: str):
        """AudioProgress while MusicGen works, then the PackedAudio (or the refusal, a CadenzaError,
        as an item: said by the studio in its own words)."""
        b = board()
        cancel = threading.Event()

        def clip():  # in a folder of its own, sent back whole
            with tempfile.TemporaryDirectory(prefix="cadenza-audio-") as tmp:
                r, out = request, Path(tmp) / "out"
                if melody is not None:
                    path = Path(tmp) / "in" / Path(melody[0]).name
                    path.parent.mkdir()
                    path.write_bytes(melody[1])
                    r = request.update(melody=path)
                out.mkdir()
                for ev in api.audio_stream(self.am, r, out, stem, cancel):  # bounded by MusicGen's steps
                    yield _pack(ev, out) if isinstance(ev, api.AudioOutput) else ev

        self.making += 1
        try:  # Stop (on the board) ends MusicGen within a step; what it made still comes
            async for item in threaded(clip, cancel, poll=lambda: b.is_stopped.remote(job), every=STOP_POLL_S):
                yield item
        except CadenzaError as e:
            yield e
        except Exception as e:  # noqa: BLE001 - said to the caller in one line
            raise RuntimeError(f"MusicGen failed: {e}") from None
        finally:
            self.making -= 1


def application(args: dict):
    """`serve deploy`'s entry for a MusicGen model (import_path engine.service.remote_audio:application)."""
    from ray import serve

    return serve.deployment(AudioEngine, name=DEPLOYMENT).bind(
        args["model"], api.PlacementOptions(), bool(args.get("local_only", True)), int(args.get("threads", 1)))


def deployment_options(replicas: int, cpus: float, gpus: float) -> dict:
    # MusicGen writes one clip at a time per copy: a replica takes two, the rest wait at the handle
    return {"num_replicas": replicas, "max_ongoing_requests": 2,
            "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}}


class RemoteAudioSlot(ServedSlot):
    """A MusicGen model served by AudioEngine replicas, lent like a local one."""

    deployment = DEPLOYMENT

    def __init__(self, spec: str, device: str, cluster, placement: api.PlacementOptions, local_only: bool):
        super().__init__(spec, device, cluster)
        self.placement, self.local_only = placement, local_only
        self.board = None

    def _deploy(self, spec, device):
        self.app = app_name(spec)
        c = self.cluster
        gpus = c.gpus_for(spec, self.placement, c.audio_replicas, musicgen=True)
        self.handle = c.deploy_app(self.app, DEPLOYMENT, AudioEngine,
                                   (spec, self.placement, self.local_only, max(1, int(c.cpus))),
                                   deployment_options(c.audio_replicas, c.cpus, gpus))
        self.board = board()
        return self.handle.describe.remote().result(timeout_s=CONNECT_S)

    def audio_stream(self, am: RemoteAudio, request: AudioRequest, folder: Path, stem: str,
                     cancel: threading.Event) -> Iterator:
        """api.audio_stream's items from a replica: Stop (`cancel`) is posted on the board; the
        replica stops within a step and sends what it made."""
        from ray.exceptions import RayError

        job = secrets.token_hex(8)
        melody = (request.melody.name, request.melody.read_bytes()) if request.melody is not None else None
        response = self.handle.options(stream=True).make.remote(request.update(melody=None), melody, stem, job)
        over = threading.Event()
        threading.Thread(target=_post_stop, args=(self.board, job, cancel, over), name="cadenza-audio-stop",
                         daemon=True).start()
        ended = False
        try:
            for item in response:  # bounded by MusicGen's steps on the replica
                if isinstance(item, CadenzaError):
                    raise item
                yield item.unpack(folder) if isinstance(item, PackedAudio) else item
            ended = True
        except RayError as e:  # the replica died (a crash, a lost machine)
            log.warning("a MusicGen replica failed: %s", e)
            raise CadenzaError("the MusicGen replica stopped while making this clip (a crash or a lost machine): "
                               "try again; Serve starts a new replica") from e
        finally:
            over.set()
            if not ended:  # closed early or failed: the replica stops too
                response.cancel()


def _post_stop(board, job: str, cancel: threading.Event, over: threading.Event) -> None:
    """Stop pressed (or the page closed) while the clip is made: tell the replica's board."""
    while not over.is_set():  # bounded by the clip: `over` is set when its stream ends
        if cancel.wait(STOP_POLL_S):
            board.stop.remote(job)
            over.wait()
            break
    board.forget.remote(job)
