"""Models held by the service: each loads in the background, then is lent to one request at a
time per copy (a model placed as several copies lends each), with the out-of-memory message."""
from __future__ import annotations

import functools
import gc
import threading
import time
from pathlib import Path

import torch

from engine import api
from engine.errors import CadenzaError
from engine.requests import ComposeRequest

MAX_MODELS = 3  # models held at once (each costs memory); the server's own counts; a new one lets go of the least recently used
MAX_AUDIO_MODELS = 2  # MusicGen models held at once (likewise)
RETRY_FAILED_S = 30.0  # a model that failed to load is tried again after this long (never holds a slot)
MAX_FAILED = 8  # failed loads remembered (for their message) at most


class ModelSlot:
    """One model, loaded in a background thread so the page is usable at once (`loader`:
    api.load_placed for NotaGen-family models, which may give a copy per GPU;
    api.load_audio_model for MusicGen). Requests check out the least-loaded copy."""

    def __init__(self, spec: str | None, device: str, loader=None,
                 batching: tuple[int, float, str, api.Sharing] | None = None):
        self.spec, self.device = spec, device
        self.loader = loader or (lambda spec, device: api.load(spec, device=device))
        self.batching = batching  # (max_batch, max_wait_s, decode, sharing): a batching scheduler per copy (NotaGen)
        self.backend = api.FastBackend  # without batching (ReferenceBackend: NotaGen's own algorithm, the CLI's --mode)
        self.lm = None  # the first copy: prompts, name, plan
        self.copies: list = []
        self.schedulers: list = []  # one per copy, when batching
        self.busy: list[int] = []  # requests running on each copy
        self.error: str | None = None
        self.started = self.used = time.monotonic()
        self.loaded_in: float | None = None
        self._ready = threading.Event()
        self._count = threading.Lock()

    def start(self) -> "ModelSlot":
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            loaded = self.loader(self.spec, device=self.device)
            self.copies = loaded if isinstance(loaded, list) else [loaded]
            self.busy = [0] * len(self.copies)
            if self.batching is not None:
                rows, wait, decode, sharing = self.batching
                backend = functools.partial(api.FastBackend, decode=decode)
                self.schedulers = [api.Scheduler(c.model, max_batch=rows, max_wait_s=wait, name=f"{c.name}-{i}",
                                                 backend=backend, sharing=sharing)
                                   for i, c in enumerate(self.copies)]
            self.lm = self.copies[0]
            self.loaded_in = time.monotonic() - self.started
        except Exception as e:  # noqa: BLE001 - the message is shown on the page, the server stays up
            self.error = str(e)
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        """Loading has finished (well or not)."""
        return self._ready.is_set()

    @property
    def failed(self) -> bool:
        return self._ready.is_set() and self.lm is None

    @property
    def idle(self) -> bool:
        """Loaded and running no request: it can be let go of without wasting work."""
        with self._count:
            return self._ready.is_set() and self.lm is not None and not any(self.busy)

    def get(self, wait: float = 600.0):
        if not self._ready.wait(wait):
            raise CadenzaError("the model is still loading: try again in a moment")
        if self.lm is None:
            raise CadenzaError(f"the model could not be loaded: {self.error}")
        return self.lm

    def checkout(self, wait: float = 600.0):
        """The copy with the most free rows in its batch (else the fewest requests running), with
        its scheduler (None without batching): (copy, scheduler). Give it back with checkin()."""
        self.get(wait)
        with self._count:
            if self.schedulers:
                i = max(range(len(self.copies)), key=lambda j: self.schedulers[j].free_rows())
            else:
                i = min(range(len(self.copies)), key=lambda j: self.busy[j])
            self.busy[i] += 1
            return self.copies[i], self.schedulers[i] if self.schedulers else None

    def close(self) -> None:
        """A model let go of: its schedulers' threads end (a request still running holds its copy)."""
        for s in self.schedulers:
            s.close(timeout=0)

    def compose_stream(self, lm, request: ComposeRequest, cancel, scheduler, owner: str):
        """The request written by this copy (api.compose_stream): a model served elsewhere
        (engine.service.remote) streams the same events."""
        return api.compose_stream(lm, request, cancel, scheduler=scheduler, owner=owner, backend=self.backend)

    def audio_stream(self, am, request, folder, stem: str, cancel):
        """A MusicGen clip made by this copy (api.audio_stream); a model served elsewhere
        (engine.service.remote_audio) streams the same items."""
        return api.audio_stream(am, request, folder, stem, cancel)

    def batches(self) -> list[dict]:
        """Each copy's batch now (the System page)."""
        return [s.status() for s in self.schedulers]

    def checkin(self, lm) -> None:
        with self._count:
            for i, c in enumerate(self.copies):
                if c is lm:
                    self.busy[i] -= 1

    def status(self) -> str:
        name = Path(self.spec).name if self.spec else "bundled model"
        if not self._ready.is_set():
            return f"loading {name} ..."
        if self.lm is None:
            return f"{name} failed to load: {self.error}"
        where = ", ".join(", ".join(c.devices()) for c in self.copies)
        return f"{self.lm.name} ready on {where} (loaded in {self.loaded_in:.1f}s)"

    def plan(self) -> str | None:
        plan = getattr(self.lm, "plan", None)
        return plan.summary() if plan is not None else None


class ServedSlot(ModelSlot):
    """A model served by Ray Serve replicas of `deployment` (engine.service.remote and
    remote_audio), lent like a local one: loading deploys (or finds) its application."""
    deployment = ""

    def __init__(self, spec: str | None, device: str, cluster):
        super().__init__(spec, device, loader=self._deploy)
        self.cluster = cluster
        self.handle = self.app = None

    def _deploy(self, spec, device):
        raise NotImplementedError

    def close(self) -> None:
        if self.app is not None:
            self.cluster.delete(self.app)

    def replicas(self) -> str:
        """The replicas' health as Serve sees it: "2 running", "1 running, 1 starting"."""
        return self.cluster.replica_states(self.app, self.deployment)

    def status(self) -> str:
        text = super().status()
        return text if self.lm is None else text.replace(" ready on ", f" ready on Ray Serve ({self.replicas()}), ", 1)


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def oom_message(lm, r: ComposeRequest) -> str:
    """After a device ran out of memory: free what the failed request held (the model stays
    loaded, the next request works) and say what to change."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    where = ", ".join(lm.devices())
    return (f"{where} ran out of memory writing {r.variations} variation(s) of up to {r.max_patches} patches: "
            "the model stays loaded; ask for fewer variations or a shorter piece, or place the model on more GPUs")
