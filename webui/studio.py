"""What the page does, without the page: models loading in the background, composing with
progress, rendering, uploads and history, each call for one session. The Gradio layer
(webui/app.py) only adapts these to components; tests and the HTTP API use the same calls.
Nothing here lives in module globals: a Studio holds it all."""
from __future__ import annotations

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
MAX_MODELS = 3  # models held at once (each costs memory); the bundled one counts


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
        order = ("abc", "musicxml", "midi", "pdf", "wav", "zip")
        return [p for fmt in order for p in self.paths(fmt)]


class ModelSlot:
    """One model, loaded in a background thread so the page is usable at once."""

    def __init__(self, spec: str | None, device: str):
        self.spec, self.device = spec, device
        self.lm = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.loaded_in: float | None = None
        self._ready = threading.Event()

    def start(self) -> "ModelSlot":
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            self.lm = api.load(self.spec, device=self.device)
            self.loaded_in = time.monotonic() - self.started
        except Exception as e:  # noqa: BLE001 - the message is shown on the page, the server stays up
            self.error = str(e)
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        """Loading has finished (well or not)."""
        return self._ready.is_set()

    def get(self, wait: float = 120.0):
        if not self._ready.wait(wait):
            raise CadenzaError("the model is still loading: try again in a moment")
        if self.lm is None:
            raise CadenzaError(f"the model could not be loaded: {self.error}")
        return self.lm

    def status(self) -> str:
        name = self.spec or "bundled model"
        if not self._ready.is_set():
            return f"loading {name} ..."
        if self.lm is None:
            return f"{name} failed to load: {self.error}"
        return f"{self.lm.name} ready on {self.lm.model.device} (loaded in {self.loaded_in:.1f}s)"


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

    # --- models ------------------------------------------------------------------------------------
    def model(self, spec: str | None = None) -> ModelSlot:
        """The model `spec` names (a path), or the server's default when spec is empty."""
        spec = spec or self.config.model
        key = spec or ""
        with self._lock:
            if key not in self.models and len(self.models) >= MAX_MODELS:
                raise CadenzaError(f"{MAX_MODELS} models are loaded already: use one of them or restart the server")
            if key not in self.models:
                self.models[key] = ModelSlot(spec, self.config.device).start()
            return self.models[key]

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
        lm = self.model(model).get()
        prefix = api.continuation_prefix(continue_abc) if continue_abc else ""
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
        models = [{"model": spec or "bundled", "status": slot.status()} for spec, slot in self.models.items()]
        return {"devices": devices, "models": models, "running": len(self._cancels),
                "concurrency": self.config.concurrency, "queue_size": self.config.queue_size}


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

