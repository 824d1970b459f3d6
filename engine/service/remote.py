"""Models served by Ray Serve, behind the same slot as a model loaded in this process.

With `--ray` the studio stays one process in front (the page, sessions, storage, rendering) and
each model runs as a Ray Serve application of `SymbolicEngine` replicas: one copy of the model and
its batching scheduler per replica, on this machine (`--ray`, a local Ray started here) or on a
cluster (`--ray ADDRESS`). A piece streams back patch by patch, exactly as in-process. Stop and a
closed page cancel the remote request (its rows stop within a patch, the replica's other pieces go
on), and the pieces are kept from the text already streamed. Ray is imported only when asked for."""
from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine import api, placement
from engine.devices import gpu_count, inventory
from engine.errors import CadenzaError
from engine.files import slug, write_atomic
from engine.service import remote_audio, rendering
from engine.service.board import board, report_every
from engine.service.jobs import threaded
from engine.service.models import ServedSlot
from engine.stops import StopReason
from engine.symbolic.generate import PatchEvent, Piece
from engine.symbolic.postprocess import to_abc
from engine.symbolic.prompts import PromptTable, known_prompt

log = logging.getLogger("cadenza.remote")
ROOT = Path(__file__).resolve().parents[2]
CONNECT_S = 120.0  # joining a cluster, or starting a local Ray, at most
STOP_POLL_S = 0.1  # how often a streaming request looks at its Stop while no patch comes
BOARD_S = 5.0  # reading the replicas' reports, at most
STALL_S = 120.0  # beyond the scheduler's longest wait for a row: a replica silent this long is taken as lost
UPSCALE_S = 5.0  # autoscaling: the load a replica more is asked for after


@dataclass
class RemoteModel:
    """What the front needs of a model served by replicas: its prompts and rules (to shape a
    request and the pieces kept after Stop), and what a manifest and the System page say of it."""
    name: str
    prompts: PromptTable | None
    card: dict  # LoadedModel.about(): name, checksum, config
    where: list[str]  # the replica's devices
    plan: str | None = None  # the placement plan's summary
    warnings: list[str] = field(default_factory=list)

    def about(self) -> dict:
        return self.card

    def devices(self) -> list[str]:
        return self.where


class SymbolicEngine:
    """A Ray Serve replica: one copy of a NotaGen-style model and its batching scheduler; every
    request that reaches this replica joins its batch (engine.symbolic.scheduler)."""

    def __init__(self, spec: str | None, placement: api.PlacementOptions, batching: tuple, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))  # the CPUs Ray gave this replica, not the machine's
        loaded = api.load_placed(spec, placement)
        self.lm = loaded[0] if isinstance(loaded, list) else loaded
        rows, wait, decode, sharing = batching
        self.scheduler = api.Scheduler(self.lm.model, max_batch=rows, max_wait_s=wait, name=f"{self.lm.name}-replica",
                                       backend=functools.partial(api.FastBackend, decode=decode), sharing=sharing)
        self.reporting = report_every(lambda: {"devices": self.lm.devices(), **self.scheduler.status()})

    def describe(self) -> RemoteModel:
        plan = getattr(self.lm, "plan", None)
        return RemoteModel(self.lm.name, self.lm.prompts, self.lm.about(), self.lm.devices(),
                           plan.summary() if plan is not None else None, list(self.lm.warnings))

    async def write(self, request: api.ComposeRequest, owner: str):
        """The request's events as api.compose_stream gives them. The model runs on a thread of
        its own; a cancelled request (Stop, a closed page) stops its rows within a patch."""
        cancel = threading.Event()
        def piece():
            return api.compose_stream(self.lm, request, cancel, scheduler=self.scheduler, owner=owner)

        async for ev in threaded(piece, cancel):  # bounded by the request's patches and seconds, and by cancel
            yield ev


DEPLOYMENT = "SymbolicEngine"
# the settings a replica is made from: what `serve deploy` passes to application()
ENGINE_SETTINGS = ("model", "device", "devices", "placement", "max_memory", "max_batch", "max_variations",
                   "max_wait_s", "decode", "session_rows", "session_waiting", "replica_cpus")


def app_name(spec: str | None) -> str:
    """One Serve application per model, named for it: studios and admins find it by name."""
    return "cadenza-" + slug(Path(spec).stem if spec else "bundled")


def deployment_options(replicas: int, rows: int, cpus: float, gpus: float, replicas_max: int = 0) -> dict:
    """A replica takes up to twice its rows in pieces (the rest wait in its scheduler's line).
    Autoscaled, Serve aims at a quarter of the rows in pieces per replica (a piece searching a bar
    writes 4 candidates, so that is a full batch), and a replica takes twice that: the rest of a
    crowd waits at the handle and goes to the replicas Serve adds (taken by the first replica, a
    crowd that arrived together stayed in its line while the new replica idled: bench.ray_scale
    --autoscale, 9.2 patches/s before)."""
    target = max(1, rows // 4)
    options = {"max_ongoing_requests": max(8, rows * 2), "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}}
    if replicas_max > replicas:
        # a piece lasts a minute or so: scale up within seconds of a crowd arriving (Serve waits 30 s)
        return options | {"max_ongoing_requests": 2 * target,
                          "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas_max,
                                                 "target_ongoing_requests": target, "upscale_delay_s": UPSCALE_S}}
    return options | {"num_replicas": replicas}


def share_gpus(plan, replicas: int, cluster_gpus: float, gpu_bytes: int | None = None) -> float:
    """--replica-gpus auto: the GPUs Ray gives each replica of a model with this placement plan.
    A model split over k GPUs (too big for one) is one replica over k GPUs. Otherwise every replica
    gets a whole GPU while the cluster has enough; when replicas outnumber GPUs they share them
    evenly (Ray's fractions), at most as many per GPU as copies fit in one (`gpu_bytes`, a GPU's
    memory, when known: the plan's own bytes per copy, its weights and cache). 0 without GPUs."""
    if cluster_gpus <= 0:
        return 0.0
    on_gpu = [s for s in plan.stages if s.device != "cpu"]
    if plan.kind == "split" and len(on_gpu) > 1:
        return float(len(on_gpu))
    per_gpu = max(1, math.ceil(replicas / cluster_gpus))
    if gpu_bytes and plan.stages:
        fit = int(gpu_bytes * (1 - placement.HEADROOM)) // max(1, plan.stages[0].bytes)
        per_gpu = max(1, min(per_gpu, fit))
    return round(1.0 / per_gpu, 4)


def replica_gpus(asked, spec: str | None, options: api.PlacementOptions, replicas: int, cluster_gpus: float,
                 musicgen: bool = False) -> float:
    """--replica-gpus as asked, or (auto) share_gpus from the model's plan on this machine's GPUs
    (the meta device: no weights read), a GPU's memory from the first one here."""
    if asked != "auto":
        return float(asked)
    if cluster_gpus <= 0:
        return 0.0
    plan = placement.plan_for(spec if spec or musicgen else api.bundled_model(), options, musicgen=musicgen,
                              local_only=True)
    gpus = [d for d in inventory() if d.name != "cpu"]
    gpu_bytes = gpus[0].total if gpus and gpus[0].total else None
    share = share_gpus(plan, replicas, cluster_gpus, gpu_bytes)
    if share and math.floor(cluster_gpus / share + 1e-6) < replicas:
        log.warning("%g GPU(s) hold %d replica(s) of %g GPU each: the other replicas wait for GPUs", cluster_gpus,
                    math.floor(cluster_gpus / share + 1e-6), share)
    log.info("replicas of %s get %g GPU each (%d replica(s), %g GPU(s) in the cluster; %s)",
             Path(str(spec)).name if spec else "the bundled model", share, replicas, cluster_gpus, plan.summary())
    return share


def application(args: dict):
    """`serve deploy`'s entry (import_path engine.service.remote:application): the model's
    SymbolicEngine replicas, made from the settings --write-config wrote into `args`."""
    from ray import serve

    from engine.settings import ServerSettings

    settings = ServerSettings(**{k: v for k, v in args.items() if k in ENGINE_SETTINGS})
    return serve.deployment(SymbolicEngine, name=DEPLOYMENT).bind(
        settings.model, settings.placement_options(), settings.batching(), max(1, int(settings.replica_cpus)))


def serve_config(settings) -> dict:
    """The `serve deploy` config for these settings (./run.sh --write-config FILE writes it);
    --replica-gpus auto counts this machine's GPUs (the admin runs it on a machine like the cluster's)."""
    def app(name: str, import_path: str, args: dict, deployment: str, options: dict) -> dict:
        # called through handles, not HTTP; replicas import the engine from the same checkout
        return {"name": name, "route_prefix": None, "import_path": import_path,
                "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}}, "args": args,
                "deployments": [{"name": deployment, **options}]}

    c = settings
    apps = [app(app_name(c.model), "engine.service.remote:application", {k: getattr(c, k) for k in ENGINE_SETTINGS},
                DEPLOYMENT, deployment_options(c.replicas, c.max_batch, c.replica_cpus, replica_gpus(
                    c.replica_gpus, c.model, c.placement_options(), c.replicas_max or c.replicas, gpu_count()),
                    c.replicas_max))]
    apps += [app(remote_audio.app_name(spec), "engine.service.remote_audio:application",  # MusicGen's own replicas
                 {"model": spec, "local_only": True, "threads": max(1, int(c.replica_cpus))}, remote_audio.DEPLOYMENT,
                 remote_audio.deployment_options(c.audio_replicas, c.replica_cpus, replica_gpus(
                     c.replica_gpus, spec, c.placement_options(1), c.audio_replicas, gpu_count(), musicgen=True)))
             for spec in dict.fromkeys((c.audio_model, c.melody_model)) if spec and c.audio_replicas]
    if c.render_replicas:  # the exports on replicas of their own (engine/service/rendering.py)
        apps.append(app(rendering.APP, "engine.service.rendering:application", {}, rendering.DEPLOYMENT,
                        rendering.deployment_options(c.render_replicas, c.render_cpus)))
    return {"proxy_location": "Disabled", "applications": apps}


def write_config(settings, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    write_atomic(path, "# Cadenza's models as Ray Serve applications: serve deploy " + path.name + "\n"
                 + yaml.safe_dump(serve_config(settings), sort_keys=False))
    return path


class RayCluster:
    """The studio's connection to Ray: a local Ray started here, or a cluster joined."""

    def __init__(self, address: str, replicas: int, gpus_per_replica: float, cpus_per_replica: float,
                 replicas_max: int = 0, audio_replicas: int = 1):
        self.address, self.replicas, self.replicas_max = address, replicas, replicas_max
        self.audio_replicas = audio_replicas  # of each MusicGen model (engine.service.remote_audio)
        self.gpus, self.cpus = gpus_per_replica, cpus_per_replica
        self._lock = threading.Lock()
        self._started = False  # a local Ray started here
        self._joined = False  # ray.init called here (else this process was connected already)
        self._apps: list[str] = []  # the Serve applications deployed from here

    def connect(self) -> None:
        import ray

        with self._lock:
            if ray.is_initialized():
                return
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}}
            try:
                if self.address == "local":
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=env,
                             object_store_memory=200 * 2**20)
                    self._started = True
                else:
                    ray.init(address=self.address, log_to_driver=False, runtime_env=env)
                self._joined = True
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise CadenzaError(f"could not join the Ray cluster at {self.address!r}: {e}. Start one with "
                                   "`ray start --head` (see the README), or pass --ray alone for a local one") from e
            from ray import serve

            # the studio calls its replicas through handles: no Serve HTTP proxy (no port of its own to guard)
            serve.start(proxy_location="Disabled")

    def deploy(self, spec: str | None, options: api.PlacementOptions, batching: tuple):
        """The model's Serve application -> (handle, app name), see deploy_app."""
        name = app_name(spec)
        gpus = self.gpus_for(spec, options, self.replicas_max or self.replicas)
        options_ = deployment_options(self.replicas, batching[0], self.cpus, gpus, self.replicas_max)
        args = (spec, options, batching, max(1, int(self.cpus)))
        return self.deploy_app(name, DEPLOYMENT, SymbolicEngine, args, options_), name

    def gpus_for(self, spec: str | None, options: api.PlacementOptions, replicas: int, musicgen: bool = False) -> float:
        """The GPUs each replica of this model gets (--replica-gpus, or auto from its plan)."""
        import ray

        self.connect()
        return replica_gpus(self.gpus, spec, options, replicas, ray.cluster_resources().get("GPU", 0.0), musicgen)

    def deploy_app(self, name: str, deployment: str, cls, args: tuple, options: dict):
        """A Serve application's handle: the one running on the cluster (an admin's `serve deploy`
        of --write-config's file, or another studio's), else deployed from here with `options`."""
        from ray import serve

        self.connect()
        running = serve.status().applications.get(name)
        if running is not None and str(running.status).endswith("RUNNING"):
            log.info("using the Serve application %s already running on the cluster", name)
            return serve.get_app_handle(name)
        with self._lock:
            self._apps.append(name)
        return serve.run(serve.deployment(cls, name=deployment, **options).bind(*args), name=name, route_prefix=None)

    @staticmethod
    def replica_states(app: str, deployment: str) -> str:
        """The replicas' health as Serve sees it: "2 running", "1 running, 1 starting"."""
        from ray import serve

        try:
            states = serve.status().applications[app].deployments[deployment].replica_states
            return ", ".join(f"{n} {str(state).rsplit('.', 1)[-1].lower()}" for state, n in states.items()) or "none"
        except Exception:  # noqa: BLE001 - the report must not fail while Serve is busy
            return "state unknown"

    def delete(self, name: str) -> None:
        """A Serve application deployed from here goes (one found running stays for its owner)."""
        from ray import serve

        with self._lock:
            if name not in self._apps:
                return
            self._apps.remove(name)
        try:
            serve.delete(name, _blocking=False)
        except Exception as e:  # noqa: BLE001 - letting go of a model must not take the server down
            log.warning("could not delete the Serve application %s: %s", name, e)

    def close(self) -> None:
        """The applications deployed from here go; a Ray started here is stopped, a cluster joined
        stays up for its other users."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            if self._started:
                serve.shutdown()
            else:
                for name in list(self._apps):
                    self.delete(name)
        finally:
            if self._joined:  # this process leaves the cluster (a connection it found stays)
                ray.shutdown()


class RemoteSlot(ServedSlot):
    """A model served by SymbolicEngine replicas, lent like a local one: checkout gives the
    model's description (no weights here), compose_stream streams from a replica."""

    deployment = DEPLOYMENT

    def __init__(self, spec: str | None, device: str, cluster: RayCluster, placement: api.PlacementOptions,
                 batching: tuple):
        super().__init__(spec, device, cluster)
        self.placement, self.batching_remote = placement, batching

    def _deploy(self, spec, device):
        self.handle, self.app = self.cluster.deploy(spec, self.placement, self.batching_remote)
        return self.handle.describe.remote().result(timeout_s=CONNECT_S)

    def plan(self) -> str | None:
        return self.lm.plan if self.lm is not None else None

    def batches(self) -> list[dict]:
        """Each replica's batch as it last reported it (engine.service.board), with its machine."""
        import ray

        if self.app is None:
            return []
        try:
            return ray.get(board().replicas.remote(self.app), timeout=BOARD_S)
        except Exception as e:  # noqa: BLE001 - the report must not fail while Ray is busy
            log.warning("the replicas' reports could not be read: %s", e)
            return []

    def compose_stream(self, lm: RemoteModel, request: api.ComposeRequest, cancel: threading.Event, scheduler,
                       owner: str) -> Iterator:
        """api.compose_stream's events from a replica. On Stop the remote request is cancelled and
        the pieces still being written are kept from the text streamed so far, as in-process."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import RequestCancelledError

        request = request.seeded()
        response = self.handle.options(stream=True).write.remote(request, owner)
        texts: dict[int, str] = {}
        last: dict[int, PatchEvent] = {}
        finished: set[int] = set()
        over = threading.Event()
        threading.Thread(target=_cancel_when, args=(cancel, over, response), name="cadenza-remote-stop",
                         daemon=True).start()
        lost = None  # the replica's death, if it died writing
        try:  # bounded by the request's own limits and by STALL_S between events; Stop cancels it
            for ev in within(response, self.batching_remote[1] + STALL_S):
                if isinstance(ev, api.Composition):
                    finished.add(ev.piece.index)
                elif isinstance(ev, PatchEvent):
                    t = texts.get(ev.index, "")
                    texts[ev.index] = t[: len(t) - ev.retract] + ev.text
                    last[ev.index] = ev
                yield ev
        except RequestCancelledError:
            if not cancel.is_set():
                raise CadenzaError("the model's replica cancelled the piece") from None
        except (RayActorError, Stalled) as e:  # the replica died (a crash, a lost machine), or went silent
            log.warning("a replica of %s stopped while writing: %s", lm.name, e)
            lost = e
        finally:
            over.set()  # a closed iterator (a closed page) cancels the remote request too
            response.cancel()
        if cancel.is_set() or lost is not None:
            why = StopReason.REPLICA_LOST if lost is not None else StopReason.CANCELLED
            for i in range(request.variations):
                if i not in finished:
                    yield _cut_short(lm, request, i, texts.get(i, ""), last.get(i), why)


class Stalled(Exception):
    """No event from a replica for longer than a piece may wait for a row and write a patch."""


def within(items, stall_s: float):
    """`items` (a streaming response), each within `stall_s` of the one before: a replica that
    stops answering, or an application deleted under the studio (its requests then wait for a
    replica that never comes), ends the stream with Stalled instead of holding the page forever."""
    events: queue.Queue = queue.Queue()
    end = object()

    def pump() -> None:
        try:
            for item in items:  # bounded by the response
                events.put(item)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            events.put(e)
        finally:
            events.put(end)

    threading.Thread(target=pump, name="cadenza-remote-events", daemon=True).start()
    while True:  # bounded: each wait is at most stall_s, and the response ends
        try:
            item = events.get(timeout=stall_s)
        except queue.Empty:
            raise Stalled(f"no word from the model's replica for {stall_s:.0f} s") from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _cancel_when(cancel: threading.Event, over: threading.Event, response) -> None:
    while not over.is_set():  # bounded by the stream: `over` is set when it ends
        if cancel.wait(STOP_POLL_S):
            response.cancel()
            return


def _cut_short(lm: RemoteModel, request: api.ComposeRequest, index: int, written: str, last: PatchEvent | None,
               why: StopReason) -> api.Composition:
    """A piece stopped mid-way, from what the replica streamed (the Composition it would have
    made went with the request or the replica)."""
    prompt, warnings = known_prompt(request.prompt, lm.prompts)
    text = "".join(prompt.lines()) + request.prefix + written
    patches, chars, bars, elapsed = (last.patches, last.chars, last.bars, last.elapsed) if last else (0, 0, 0, 0.0)
    piece = Piece(index, prompt, request.seed + index, request.sampling, text, why, patches, chars, bars, elapsed, 0)
    result = to_abc(text)
    lost = ["the model's replica stopped while writing this piece (a crash, a lost machine, or no word from it "
            "for minutes): it was kept as far as it had come; Serve starts a new replica for the next one"
            ] if why == StopReason.REPLICA_LOST else []
    return api.Composition(piece, result, lost + list(lm.warnings) + warnings + result.warnings,
                           controls=request.controls)
