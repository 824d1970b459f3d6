"""What the page does, without the page: models loading in the background, composing with
progress, rendering, uploads and history, each call for one session. The Gradio layer
(webui/app.py) only adapts these to components; tests and the HTTP API use the same calls.
Nothing here lives in module globals: a Studio holds it all."""
from __future__ import annotations

import queue
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine import api
from engine.errors import CadenzaError, SettingsError
from engine.store import OutputStore, PieceRecord, Session
from webui.config import StudioConfig

UPLOAD_SUFFIXES = (".abc", ".musicxml", ".xml", ".mxl")
PROGRESS_EVERY_S = 0.5  # audio progress reaches the page at most this often
MAX_MODELS = 3  # models held at once (each costs memory); the bundled one counts
MAX_AUDIO_MODELS = 2  # MusicGen models held at once (asking for a third lets go of the least recently used)


@dataclass
class Progress:
    """One update while a piece is written (the first variation's text is the one shown)."""
    abc: str  # the model's text so far, prompt lines left out
    patches: int
    bars: int
    elapsed: float
    seed: int
    preview_svg: str | None = None  # the sheet music so far, redrawn every few bars


@dataclass
class Outcome:
    """A piece kept in the session: its record and where its files are."""
    record: PieceRecord
    folder: Path
    abc: str

    def paths(self, fmt: str) -> list[Path]:
        return [self.folder / f for f in self.record.files.get(fmt, [])]

    def downloads(self) -> list[Path]:
        order = ("abc", "musicxml", "midi", "pdf", "wav", "soundfont", "png", "manifest", "zip")
        return [p for fmt in order for p in self.paths(fmt)]


class ModelSlot:
    """One model, loaded in a background thread so the page is usable at once (`loader`:
    api.load_placed for NotaGen-family models, which may give a copy per GPU;
    api.load_audio_model for MusicGen). Requests check out the least-loaded copy."""

    def __init__(self, spec: str | None, device: str, loader=None):
        self.spec, self.device = spec, device
        self.loader = loader or (lambda spec, device: api.load(spec, device=device))
        self.lm = None  # the first copy: prompts, name, plan
        self.copies: list = []
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

    def get(self, wait: float = 600.0):
        if not self._ready.wait(wait):
            raise CadenzaError("the model is still loading: try again in a moment")
        if self.lm is None:
            raise CadenzaError(f"the model could not be loaded: {self.error}")
        return self.lm

    def checkout(self, wait: float = 600.0):
        """The copy with the fewest requests running (replicated models); give it back with
        checkin()."""
        self.get(wait)
        with self._count:
            i = min(range(len(self.copies)), key=lambda j: self.busy[j])
            self.busy[i] += 1
            return self.copies[i]

    def checkin(self, lm) -> None:
        with self._count:
            for i, c in enumerate(self.copies):
                if c is lm:
                    self.busy[i] -= 1

    def status(self) -> str:
        name = self.spec or "bundled model"
        if not self._ready.is_set():
            return f"loading {name} ..."
        if self.lm is None:
            return f"{name} failed to load: {self.error}"
        where = ", ".join(str(c.model.device) for c in self.copies)
        return f"{self.lm.name} ready on {where} (loaded in {self.loaded_in:.1f}s)"

    def plan(self) -> str | None:
        plan = getattr(self.lm, "plan", None)
        return plan.describe() if plan is not None else None


@dataclass
class AudioProgress:
    steps: int
    total: int
    elapsed: float
    seed: int


@dataclass
class ComposeSettings:
    temperature: float = 1.2
    top_k: int = 9
    top_p: float = 0.9
    seed: int | None = None  # None or negative: a random one (always reported)
    max_patches: int = 1024
    variations: int = 1
    bar_retries: int = 16
    extra: dict = field(default_factory=dict)


class Studio:
    def __init__(self, config: StudioConfig):
        self.config = config
        self.store = OutputStore(config.outputs)
        self.models: dict[str, ModelSlot] = {}
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}  # session id -> stop of its running piece
        self.audio_models: dict[str, ModelSlot] = {}
        # MusicGen samples with torch's global generator (seeds would collide) and a static cache
        # belongs to one call: one audio request runs at a time, the rest wait in the queue.
        self._audio_lock = threading.Lock()

    # --- models ------------------------------------------------------------------------------------
    def model(self, spec: str | None = None) -> ModelSlot:
        """The model `spec` names (a path), or the server's default when spec is empty."""
        spec = spec or self.config.model
        key = spec or ""
        with self._lock:
            if key not in self.models and len(self.models) >= MAX_MODELS:
                raise CadenzaError(f"{MAX_MODELS} models are loaded already: use one of them or restart the server")
            if key not in self.models:
                self.models[key] = ModelSlot(spec, self.config.device, self._load_placed).start()
            return self.models[key]

    def _placement(self, batch: int) -> api.PlacementOptions:
        """The server's placement settings; --device (cpu, cuda:N) stands in for --devices."""
        c = self.config
        devices = c.devices or (c.device if c.device not in (None, "auto") else None)
        return api.PlacementOptions(devices, c.placement, c.max_memory, batch)

    def _load_placed(self, spec: str | None, device: str):
        return api.load_placed(spec, self._placement(self.config.max_variations))

    def _load_audio_placed(self, spec: str | None, device: str):
        return api.load_audio_model(spec, options=self._placement(1))

    def prompts(self, spec: str | None = None):
        lm = self.model(spec).get()
        if lm.prompts is None:
            raise CadenzaError(f"{lm.name} has no prompt table: type a period, composer and instrumentation")
        return lm.prompts

    def surprise(self, spec: str | None = None, rng: random.Random | None = None):
        return (rng or random).choice(self.prompts(spec).prompts)

    def choices(self, spec: str | None, period: str | None, composer: str | None = None):
        """The cascade: composers valid for `period`, instrumentations valid for both; a value not
        in the table falls back to the first valid one. Returns (period, composers, composer,
        instrumentations)."""
        table = self.prompts(spec)
        periods = table.periods()
        period = period if period in periods else periods[0]
        composers = table.composers(period)
        composer = composer if composer in composers else composers[0]
        return period, composers, composer, table.instrumentations(period, composer)

    # --- composing ---------------------------------------------------------------------------------
    def check_settings(self, s: ComposeSettings) -> ComposeSettings:
        c = self.config
        if not 1 <= int(s.max_patches) <= c.max_patches:
            raise SettingsError(f"maximum length must be from 1 to {c.max_patches} patches, got {s.max_patches}")
        if not 1 <= int(s.variations) <= c.max_variations:
            raise SettingsError(f"variations must be from 1 to {c.max_variations}, got {s.variations}")
        if s.seed is not None and s.seed < 0:
            s.seed = None
        return s

    def stop(self, key: str) -> bool:
        """Asks this session's running piece to stop after its current patch."""
        ev = self._cancels.get(self.store.session(key).id)
        if ev is None:
            return False
        ev.set()
        return True

    def compose(self, key: str, period: str, composer: str, instrumentation: str, settings: ComposeSettings,
                model: str | None = None, continue_abc: str | None = None) -> Iterator[Progress | list[Outcome]]:
        """Yields Progress while writing, then the list of kept pieces (one per variation).
        Stop (or closing the iterator: a closed tab) ends it within a patch; what was written is kept."""
        session = self.store.session(key)
        s = self.check_settings(settings)
        slot = self.model(model)
        slot.get()
        prefix = api.continuation_prefix(continue_abc) if continue_abc else ""
        lm = slot.checkout()
        try:
            yield from self._compose(session, lm, period, composer, instrumentation, s, prefix)
        except Exception as e:
            if _out_of_memory(e):
                raise CadenzaError(_oom_message(lm, s)) from e
            raise
        finally:
            slot.checkin(lm)

    def _compose(self, session: Session, lm, period, composer, instrumentation, s: ComposeSettings,
                 prefix: str) -> Iterator[Progress | list[Outcome]]:
        seed = s.seed if s.seed is not None else random.randrange(2**31)
        cancel = threading.Event()
        self._cancels[session.id] = cancel
        texts: dict[int, str] = {}
        done: list[api.Composition] = []
        last_preview = 0
        stream = api.compose_stream(lm, period, composer, instrumentation, seed=seed, top_k=int(s.top_k),
                                    top_p=float(s.top_p), temperature=float(s.temperature),
                                    max_patches=int(s.max_patches), max_seconds=self.config.max_seconds,
                                    variations=int(s.variations), cancel=cancel, bar_retries=int(s.bar_retries),
                                    prefix=prefix)
        closed = False
        try:
            for ev in stream:
                if isinstance(ev, api.Composition):
                    done.append(ev)
                    continue
                t = texts.get(ev.index, "")
                texts[ev.index] = t[: len(t) - ev.retract] + ev.text
                if ev.index != 0:
                    continue
                preview = None
                if ev.bars - last_preview >= self.config.preview_every_bars:
                    last_preview = ev.bars
                    preview = self.preview(prefix + texts[0])
                yield Progress(prefix + texts[0], ev.patches, ev.bars, ev.elapsed, seed, preview)
        except GeneratorExit:
            closed = True
            raise
        finally:
            cancel.set()  # a closed iterator (tab closed, request cancelled) stops the batch
            stream.close()
            self._cancels.pop(session.id, None)
            if closed:  # nobody is listening any more: keep the text written so far, quickly
                self._keep_unfinished(session, lm, period, composer, instrumentation, seed, prefix, texts, done)
        kind = "continued" if prefix else "composed"
        yield [self._keep(session, lm, c, kind, s) for c in sorted(done, key=lambda c: c.piece.index)]

    def _keep_unfinished(self, session: Session, lm, period, composer, instrumentation, seed, prefix, texts,
                         done) -> None:
        from engine.files import write_atomic
        from engine.symbolic.prompts import Prompt
        from engine.symbolic.postprocess import to_abc

        finished = {c.piece.index for c in done}
        for i, text in sorted(texts.items()):
            if i in finished or not text:
                continue
            prompt = Prompt(period, composer, instrumentation)
            result = to_abc("".join(prompt.lines()) + prefix + text)
            name = f"{composer.split(',')[0]}-{instrumentation}-seed{seed + i}"
            piece_id, folder = session.new_piece(name)
            write_atomic(folder / "score.abc", result.abc)
            session.save(PieceRecord(
                id=piece_id, created=_now(), kind="continued" if prefix else "composed",
                title=f"{composer} / {instrumentation}", prompt={"period": period, "composer": composer,
                                                                 "instrumentation": instrumentation},
                seed=seed + i, model=lm.name, bars=result.alignment.total, stop_reason="closed",
                alignment=str(result.alignment), files={"abc": ["score.abc"]},
                warnings=["the page was closed or the request cancelled: the piece was kept as written so far, "
                          "not rendered (open it and press Render)"]))

    def preview(self, model_text: str) -> str | None:
        """The first page of the sheet music so far (None when it cannot be drawn yet)."""
        from engine.symbolic.postprocess import to_abc

        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = api.render(to_abc(model_text).abc, tmp, ("svg",), "preview", strict=False,
                               options=api.RenderOptions(timeout_s=20))
            except CadenzaError:
                return None
            pages = r.paths("svg")
            return pages[0].read_text() if pages else None

    def _keep(self, session: Session, lm, comp: api.Composition, kind: str, s: ComposeSettings) -> Outcome:
        p = comp.piece
        piece_id, folder = session.new_piece(comp.stem())
        result = api.export(lm, comp, folder, self.config.formats, api.RenderOptions())
        record = PieceRecord(
            id=piece_id, created=_now(), kind=kind,
            title=f"{p.prompt.composer} / {p.prompt.instrumentation}",
            prompt={"period": p.prompt.period, "composer": p.prompt.composer,
                    "instrumentation": p.prompt.instrumentation},
            seed=p.seed, model=lm.name, bars=comp.abc.alignment.total, seconds=round(p.elapsed, 2),
            stop_reason=p.stop_reason, alignment=str(comp.abc.alignment),
            files={f: st.files for f, st in result.status.items() if st.ok},
            errors=result.failed, warnings=comp.warnings + result.warnings,
            settings={"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                      "max_patches": s.max_patches, "bar_retries": s.bar_retries})
        session.save(record)
        saved = [folder / f for f in record.files.get("abc", [])]
        return Outcome(record, folder, saved[0].read_text() if saved else comp.abc.abc)

    # --- rendering and uploads ---------------------------------------------------------------------
    def render(self, key: str, abc_text: str, title: str = "my score") -> Outcome:
        """The user's ABC (edited or written by hand) -> every export, kept in the session."""
        from engine.symbolic.postprocess import check_alignment
        from engine.symbolic.patches import split_tunebody

        session = self.store.session(key)
        piece_id, folder = session.new_piece(title)
        try:
            result = api.render(abc_text, folder, self.config.formats, "score")
        except CadenzaError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        body = split_tunebody(abc_text)[1]
        record = PieceRecord(id=piece_id, created=_now(), kind="rendered", title=title,
                             bars=len(body), alignment=str(check_alignment(body)) if "[V:" in abc_text else "",
                             files={f: st.files for f, st in result.status.items() if st.ok},
                             errors=result.failed, warnings=result.warnings)
        session.save(record)
        return Outcome(record, folder, abc_text)

    def upload(self, key: str, path: str | Path) -> Outcome:
        """A score file from the user (.abc, .musicxml, .xml, .mxl) -> rendered and kept; its ABC
        can then be edited or continued."""
        path = Path(path)
        limit = self.config.max_upload_mb * 2**20
        if path.suffix.lower() not in UPLOAD_SUFFIXES:
            raise CadenzaError(f"{path.name} is not a score: expected an .abc, .musicxml, .xml or .mxl file")
        size = path.stat().st_size
        if size > limit:
            raise CadenzaError(f"{path.name} is {size / 2**20:.1f} MB: uploads are limited to {self.config.max_upload_mb} MB")
        if path.suffix.lower() == ".abc":
            try:
                return self.render(key, path.read_text(encoding="utf-8"), path.stem)
            except UnicodeDecodeError as e:
                raise CadenzaError(f"{path.name} is not UTF-8 text: expected ABC notation") from e
        session = self.store.session(key)
        piece_id, folder = session.new_piece(path.stem)
        result = api.render_file(path, folder, self.config.formats, "score")
        if not result.status.get("abc") or not result.status["abc"].ok:
            shutil.rmtree(folder, ignore_errors=True)
            raise CadenzaError(result.failed.get("abc") or f"{path.name} could not be read as MusicXML")
        abc_text = (folder / result.status["abc"].files[0]).read_text()
        record = PieceRecord(id=piece_id, created=_now(), kind="uploaded", title=path.name,
                             files={f: st.files for f, st in result.status.items() if st.ok},
                             errors=result.failed, warnings=result.warnings)
        session.save(record)
        return Outcome(record, folder, abc_text)

    # --- audio (MusicGen) -------------------------------------------------------------------------
    def audio_model(self, spec: str | None = None, melody: bool = False) -> ModelSlot:
        """The MusicGen model `spec` names (hub id or folder), else the server's default; loaded on
        first use (it may need weights the user has yet to put in place)."""
        spec = spec or (self.config.melody_model if melody else self.config.audio_model)
        with self._lock:
            if spec not in self.audio_models and len(self.audio_models) >= MAX_AUDIO_MODELS:
                # Make room by letting go of the model used longest ago (one that failed to load goes
                # first). A request still running holds its own reference and finishes normally.
                oldest = min(self.audio_models, key=lambda k: (self.audio_models[k].lm is not None,
                                                                self.audio_models[k].used))
                del self.audio_models[oldest]
            if spec not in self.audio_models:
                self.audio_models[spec] = ModelSlot(spec, self.config.device, self._load_audio_placed).start()
            slot = self.audio_models[spec]
            slot.used = time.monotonic()
            return slot

    def check_audio(self, s, melody: str | Path | None = None):
        """The server's bounds on an audio request (the engine checks the rest)."""
        if not isinstance(s.duration, (int, float)) or not 0.5 <= s.duration <= self.config.max_audio_seconds:
            raise SettingsError(f"duration must be from 0.5 to {self.config.max_audio_seconds:g} seconds on this server, "
                                f"got {s.duration}")
        if s.seed is None or s.seed < 0:
            s.seed = random.randrange(2**31)
        s.check()
        if melody is not None:
            from engine.audio.musicgen import MELODY_SUFFIXES

            path = Path(melody)
            if path.suffix.lower() not in MELODY_SUFFIXES:
                raise SettingsError(f"{path.name} is not an audio file: expected {', '.join(MELODY_SUFFIXES)}")
            if path.is_file() and path.stat().st_size > self.config.max_upload_mb * 2**20:
                raise SettingsError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB: uploads are limited to "
                                    f"{self.config.max_upload_mb} MB")
        return s

    def audio(self, key: str, prompt: str, settings, model: str | None = None, melody: str | Path | None = None,
              score_abc: str | None = None) -> Iterator[AudioProgress | list[Outcome]]:
        """Yields AudioProgress while MusicGen works, then the kept piece (one Outcome holding every
        variation). score_abc: that score performed by a melody model, `prompt` being the style.
        Stop, or closing the iterator (a closed tab), ends it within a step; what was made is kept."""
        from engine.audio import musicgen

        session = self.store.session(key)
        s = self.check_audio(settings, melody)
        prompt = musicgen.check_prompt(prompt)
        if score_abc is not None and not score_abc.strip():
            raise SettingsError("there is no score to perform: compose, write or upload one first")
        am = self.audio_model(model, melody=melody is not None or score_abc is not None).get()
        kind = "performed" if score_abc is not None else "audio"
        cancel = threading.Event()
        self._cancels[session.id] = cancel
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._audio_work, name="musicgen", daemon=True,
                                  args=(session, am, kind, prompt, s, melody, score_abc, cancel, events))
        worker.start()
        finished = False
        try:
            while True:  # bounded by the engine (a fixed number of steps; Stop ends it) and by the worker
                try:
                    kind_, value = events.get(timeout=1.0)
                except queue.Empty:
                    if not worker.is_alive() and events.empty():
                        finished = True
                        raise CadenzaError("MusicGen stopped without a result") from None
                    continue
                if kind_ == "progress":
                    yield value
                elif kind_ == "done":
                    finished = True
                    yield [value]
                    return
                else:
                    finished = True
                    raise value
        finally:
            if not finished:
                cancel.set()  # a closed tab: stop now; the worker still keeps what was made
            self._cancels.pop(session.id, None)

    def _audio_work(self, session: Session, am, kind, prompt, s, melody, score_abc, cancel, events) -> None:
        """Runs in a thread: MusicGen, then the record. Reports progress, the outcome or the error."""
        t0, last = time.monotonic(), [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done == total:
                last[0] = now
                events.put(("progress", AudioProgress(done, total, now - t0, s.seed)))

        name = f"{kind}-{prompt[:40]}-seed{s.seed}"
        piece_id, folder = session.new_piece(name)
        try:
            with self._audio_lock:
                if score_abc is not None:
                    out = api.perform(am, score_abc, prompt, s, folder, "performance", progress, cancel)
                else:
                    out = api.make_audio(am, prompt, s, folder, "audio", melody, progress, cancel)
            record = self._audio_record(piece_id, kind, prompt, s, out, score_abc is not None)
            session.save(record)
            events.put(("done", Outcome(record, folder, score_abc or "")))
        except Exception as e:  # noqa: BLE001 - reported to the page; the server stays up
            shutil.rmtree(folder, ignore_errors=True)
            events.put(("error", e if isinstance(e, CadenzaError) else CadenzaError(f"MusicGen failed: {e}")))

    @staticmethod
    def _audio_record(piece_id: str, kind: str, prompt: str, s, out: api.AudioOutput, performed: bool) -> PieceRecord:
        from dataclasses import asdict

        r = out.result
        files = {"wav": [p.name for p in out.wavs], "png": [p.name for p in out.pictures],
                 "manifest": [out.manifest.name]}
        if performed:
            files["abc"] = [p.name for p in out.manifest.parent.glob("performance-soundfont.abc")]
            files["soundfont"] = [p.name for p in out.manifest.parent.glob("performance-soundfont.wav")]
        warnings = ["stopped: kept the audio made so far"] if r.stop_reason == "cancelled" else []
        return PieceRecord(
            id=piece_id, created=_now(), kind=kind, title=("Performance: " if performed else "") + prompt[:80],
            prompt={"text": prompt, **({"melody": r.melody} if r.melody else {})}, seed=s.seed, model=r.model,
            seconds=round(r.seconds, 2), stop_reason=r.stop_reason, files=files, warnings=warnings,
            settings={**asdict(s), "audio_seconds": round(r.audio_seconds, 2), "windows": r.windows})

    # --- history ---------------------------------------------------------------------------------
    def history(self, key: str) -> list[PieceRecord]:
        return self.store.session(key).history()

    def outcome(self, key: str, piece_id: str) -> Outcome:
        session = self.store.session(key)
        record = session.record(piece_id)
        folder = session.piece_folder(piece_id)
        abc_files = record.files.get("abc", [])
        abc = (folder / abc_files[0]).read_text() if abc_files else ""
        return Outcome(record, folder, abc)

    # --- system ----------------------------------------------------------------------------------
    def system(self) -> dict:
        import torch

        devices = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                devices.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
                                "free_gib": round(free / 2**30, 2), "total_gib": round(total / 2**30, 2)})
        devices.append({"device": "cpu", **_host_memory()})
        models = [{"model": spec or "bundled", "status": slot.status(), "placement": slot.plan()}
                  for spec, slot in self.models.items()]
        models += [{"model": spec, "kind": "MusicGen", "status": slot.status()} for spec, slot in self.audio_models.items()]
        return {"devices": devices, "models": models, "running": len(self._cancels),
                "concurrency": self.config.concurrency, "queue_size": self.config.queue_size}


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _oom_message(lm, s: ComposeSettings) -> str:
    """After a device ran out of memory: free what the failed request held (the model stays
    loaded, the next request works) and say what to change."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    where = ", ".join(sorted({str(p.device) for p in lm.model.parameters()}))
    return (f"{where} ran out of memory writing {s.variations} variation(s) of up to {s.max_patches} patches: "
            "the model stays loaded; ask for fewer variations or a shorter piece, or place the model on more GPUs")


def _host_memory() -> dict:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = lambda k: int(info[k].split()[0])  # noqa: E731
        return {"free_gib": round(kib("MemAvailable") / 2**20, 2), "total_gib": round(kib("MemTotal") / 2**20, 2)}
    except (OSError, KeyError, ValueError):
        return {}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")

