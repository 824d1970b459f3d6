"""The serving core: what the page, the HTTP API and scripts do, without any page: models loading
in the background, composing with progress, rendering, uploads and history, each call for one
session. webui/ only adapts these to components. Nothing lives in module globals: a Studio holds it all."""
from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

from engine import api
from engine.devices import inventory
from engine.errors import CadenzaError, SettingsError
from engine.files import hf_cache, slug, write_atomic
from engine.render.identity import heading, retitled
from engine.render.pipeline import stop_workers
from engine.requests import AudioRequest, ComposeRequest
from engine.store import OutputStore, PieceRecord, Session, read_journal
from engine.symbolic.postprocess import to_abc
from engine.symbolic.prompts import Prompt
from engine.settings import ServerSettings
from engine.service.policy import DiskFull, DiskPolicy, ModelPolicy, disk_error, public, weights_present
from engine.service.pieces import (LiveText, Named, Outcome, Progress, journal_about, known_prompt, now_iso, planned_bars,
                                   seconds_to_go, wrote_music)
from engine.service.models import (MAX_AUDIO_MODELS, MAX_FAILED, MAX_MODELS, RETRY_FAILED_S, ModelSlot, oom_message,
                                   out_of_memory)
from engine.service.jobs import LIVE_KEEP_S, Job, Live
from engine.service.remote import RayCluster, RemoteSlot
from engine.service.remote_audio import RemoteAudioSlot
from engine.service.rendering import LocalRenderer, RemoteRenderer
from engine.stops import StopReason

log = logging.getLogger("cadenza.studio")
TOTAL_EVERY_S = 10.0  # the outputs folder's total size is walked again after this long (the server-wide cap)
# Variations rendered side by side (each render is worker processes): on this 2-core CPU two at a
# time were no faster than one after another (8 variations: 7.3 s against 6.7 s, bench.studio_journey);
# a quarter of the cores, unmeasured on a bigger machine.
RENDER_AT_ONCE = max(1, (os.cpu_count() or 1) // 4)


class Studio:
    def __init__(self, config: ServerSettings):
        self.config = config
        self.store = OutputStore(config.outputs)
        self.policy = ModelPolicy(config.model_roots(), tuple(config.allow_downloads),
                                  trusted=(config.model,) if config.model else (),
                                  trusted_audio=tuple(m for m in (config.audio_model, config.melody_model) if m))
        cap = int(config.max_outputs_gb * 2**30) if config.max_outputs_gb else None
        self.disk = DiskPolicy(config.session_quota_mb * 2**20, config.session_max_pieces, config.min_free_mb * 2**20,
                               cap, config.evict_idle_hours * 3600)
        self._total: tuple[float, int] | None = None  # (when, bytes) of every session's pieces, walked seldom
        self.models: OrderedDict[str, ModelSlot] = OrderedDict()  # least recently used first
        self.audio_models: OrderedDict[str, ModelSlot] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # job id -> the piece being made
        self._live: dict[str, Live] = {}  # session id -> the piece its page is writing (see write)
        self.closing = threading.Event()  # set on shutdown: no new work, running work stops and is kept
        # --ray: the models run as Ray Serve replicas. Connected here, on the thread that made the
        # studio: a local Ray's processes die with the thread that started them (PR_SET_PDEATHSIG),
        # and a model loader's thread ends once the model is up.
        for what, n in (("render replicas", config.render_replicas), ("audio replicas", config.audio_replicas)):
            if n and not config.ray:
                raise SettingsError(f"{what} run on Ray Serve: add --ray (a local Ray) or --ray ADDRESS (a cluster)")
        self.cluster = (RayCluster(config.ray, config.replicas, config.replica_gpus, config.replica_cpus,
                                   config.replicas_max, config.audio_replicas) if config.ray else None)
        if self.cluster is not None:
            self.cluster.connect()
        # the exports: here, or on RenderEngine replicas (--render-replicas), files sent back
        self.renderer = (RemoteRenderer(self.cluster, config.render_replicas, config.render_cpus)
                         if self.cluster is not None and config.render_replicas else LocalRenderer())
        recovered = self._recover()
        if recovered:
            log.warning("kept %d piece(s) that an earlier run was writing when it stopped", recovered)
        swept = self.store.sweep()
        if swept:
            log.warning("removed %d unfinished piece folder(s) left by an earlier run", swept)

    # --- models ------------------------------------------------------------------------------------
    def model(self, spec: str | None = None) -> ModelSlot:
        """The model `spec` names (a model in the server's models folders, see guard.ModelPolicy),
        or the server's own when spec is empty."""
        path = self.policy.notagen(spec or None) or self.config.model
        key = str(Path(path).resolve()) if path else ""  # one slot per model, however it is spelt
        c = self.config
        if self.cluster is not None:  # replicas on Ray Serve, each a copy of the model and its batch
            return self._slot(self.models, key, MAX_MODELS,
                              lambda: RemoteSlot(path, c.device, self.cluster, c.placement_options(), c.batching()))
        return self._slot(self.models, key, MAX_MODELS,
                          lambda: ModelSlot(path, c.device, self._load_placed, c.batching()))

    def _slot(self, slots: OrderedDict, key: str, limit: int, make) -> ModelSlot:
        """The slot for `key`, made (and loading) if new. Failed loads never hold a place and are
        retried after RETRY_FAILED_S; a new model lets go of the least recently used other than
        the server's own (a request still running holds its own reference and finishes normally)."""
        pinned = {str(Path(self.config.model).resolve()) if self.config.model else "", self.config.audio_model,
                  self.config.melody_model}
        now = time.monotonic()
        with self._lock:
            slot = slots.get(key)
            if slot is not None and slot.failed and now - slot.started > RETRY_FAILED_S:
                del slots[key]
                slot = None
            if slot is None:
                failed = [k for k, v in slots.items() if v.failed]
                for k in failed[: max(0, len(failed) - MAX_FAILED + 1)]:
                    del slots[k]
                held = [k for k, v in slots.items() if not v.failed]
                while len(held) >= limit:  # let go of the least recently used that is loaded and idle
                    victim = next((k for k in held if k not in pinned and slots[k].idle), None)
                    if victim is None:
                        raise CadenzaError(f"this server holds {limit} models and all are loading or in use: use "
                                           "one of them, or try again in a moment")
                    slots.pop(victim).close()
                    held.remove(victim)
                    log.info("let go of model %s to make room", Path(victim).name or "bundled")
                slot = slots[key] = make().start()
            slots.move_to_end(key)
            slot.used = now
            return slot

    def fetch(self, repo_id: str, filename: str) -> str:
        """A checkpoint from the Hugging Face Hub, when the person running the server allowed it;
        -> its name for the Model box (inside the cache: no server path)."""
        repo = repo_id.strip() if isinstance(repo_id, str) else repo_id
        self.policy.check_download(repo)
        path = api.fetch_checkpoint(repo, filename)
        try:
            return str(path.relative_to(hf_cache()))
        except ValueError:
            return path.name

    def _load_placed(self, spec: str | None, device: str):
        return api.load_placed(spec, self.config.placement_options())

    def _load_audio_placed(self, spec: str | None, device: str, local_only: bool = True):
        return api.load_audio_model(spec, options=self.config.placement_options(1), local_only=local_only)

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

    # --- jobs, disk and shutdown -------------------------------------------------------------------
    @contextmanager
    def job(self, session: Session, kind: str):
        """A piece being made, registered while the block runs (see start_job)."""
        j = self.start_job(session, kind)
        try:
            yield j
        finally:
            self.end_job(j)

    def start_job(self, session: Session, kind: str) -> Job:
        """Registers a piece being made so Stop and shutdown reach it; refused while the server shuts
        down, or when the session or the disk is full. end_job() when its record is written."""
        if self.closing.is_set():
            raise CadenzaError("the server is shutting down: try again when it is back")
        self.check_room(session)
        j = Job(secrets.token_hex(8), session.id, kind)
        with self._lock:
            self._jobs[j.id] = j
        return j

    def end_job(self, j: Job) -> None:
        with self._lock:
            self._jobs.pop(j.id, None)

    def render_options(self) -> api.RenderOptions:
        """The server's bounds on a render: the WAV only for a piece up to --max-wav-minutes long."""
        return api.RenderOptions(max_audio_seconds=self.config.max_wav_minutes * 60)

    def check_room(self, session: Session) -> None:
        self.disk.check(self.store.root, *session.usage())
        self._check_total()

    def _check_total(self) -> None:
        """The server-wide cap (--max-outputs-gb): over it, pieces of idle sessions go, least recently
        opened first (History lists what is left); if that frees too little, new work is refused."""
        cap = self.disk.max_total_bytes
        if cap is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._total is None or now - self._total[0] > TOTAL_EVERY_S:
                self._total = (now, self.store.total_bytes())
            total = self._total[1]
            busy = {j.session for j in self._jobs.values()}
        if total <= cap:
            return
        removed, freed = self.store.evict(total - int(0.9 * cap), busy, self.disk.evict_idle_s)
        if removed:
            log.warning("outputs over %.1f GB: removed %d piece(s) of idle sessions, %.1f MB", cap / 2**30, removed,
                        freed / 2**20)
        with self._lock:
            self._total = (time.monotonic(), total - freed)
        if total - freed > cap:
            raise self.disk.total_full(total - freed, cap)

    @staticmethod
    def new_piece(session: Session, name: str) -> tuple[str, Path]:
        try:
            return session.new_piece(name)
        except OSError as e:
            raise disk_error(e) from e

    @staticmethod
    @contextmanager
    def saving(folder: Path):
        """Writing a piece's files and record: a failed write removes the half-made folder and says
        why in words without server paths."""
        try:
            yield
        except OSError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise disk_error(e) from e
        except BaseException:
            if not (folder / "record.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def stop(self, key: str, kind: str | None = None) -> bool:
        """Asks this session's running pieces (of `kind`: compose, audio, render; default all) to
        stop, a score after its current patch. The page's two Stop buttons each stop their own kind."""
        sid = self.store.session(key).id
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.session == sid and kind in (None, j.kind)]
        for j in jobs:
            j.cancel.set()
        return bool(jobs)

    def running(self) -> int:
        with self._lock:
            return len(self._jobs)

    def shutdown(self, grace_s: float | None = None) -> dict:
        """Stop taking work, stop what runs (each piece keeps what was written), wait for the
        records at most `grace_s`, then end any conversion still running."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self.closing.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel.set()
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:  # bounded by the grace period
            time.sleep(0.1)
        left = self.running()
        if self.cluster is not None:
            self.cluster.close()
        return {"stopped": len(jobs), "unfinished": left, "workers_killed": stop_workers()}

    def rename(self, key: str, piece_id: str, title: str) -> PieceRecord:
        return self.store.session(key).rename(piece_id, title)

    def delete(self, key: str, piece_ids: list[str]) -> tuple[int, int]:
        """Removes pieces from the session (History's Delete): (pieces removed, bytes freed). The
        last Delete can be undone (undelete) until the next one or a restart."""
        session = self.store.session(key)
        if not isinstance(piece_ids, (list, tuple)) or not piece_ids or len(piece_ids) > 1000:
            raise SettingsError("choose the pieces to delete in History first")
        try:
            return len(piece_ids), session.delete(list(dict.fromkeys(piece_ids)))
        except OSError as e:
            raise disk_error(e) from e

    def undelete(self, key: str) -> int:
        """The pieces of this session's last Delete back in History; how many came back (none past
        the session's limits: they were freed room)."""
        session = self.store.session(key)
        (used, pieces), (held, count) = session.usage(), session.held()
        if count and (used + held > self.disk.session_bytes or pieces + count > self.disk.session_pieces):
            raise DiskFull(f"bringing back {count} deleted piece(s) would take this session past its limit of "
                           f"{self.disk.session_pieces} pieces and {self.disk.session_bytes / 2**20:.0f} MB: "
                           "delete pieces you no longer need first")
        try:
            return len(session.undelete())
        except OSError as e:
            raise disk_error(e) from e

    def usage(self, key: str) -> str:
        used, pieces = self.store.session(key).usage()
        return (f"this session holds {pieces} of at most {self.config.session_max_pieces} pieces, "
                f"{used / 2**20:.1f} of {self.config.session_quota_mb} MB")

    def _recover(self) -> int:
        """Pieces an earlier run was writing when it died (SIGKILL, a crash): each journal's texts
        become pieces of their session, as written, marked interrupted and not rendered."""
        kept = 0
        for session in self.store.sessions():
            for path in session.journals():
                about = read_journal(path)
                try:
                    kept += len(self._keep_journal(session, about)) if about else 0
                except (OSError, CadenzaError, KeyError, TypeError, ValueError) as e:
                    log.warning("a piece interrupted by an earlier run could not be kept: %s", e)
                path.unlink(missing_ok=True)
        return kept

    def _keep_journal(self, session: Session, about: dict) -> list[Outcome]:
        prompt = Prompt(**about["prompt"])
        kept = []
        for i, text in sorted(about["texts"].items(), key=lambda x: int(x[0])):
            if not text:
                continue
            seed = about["seed"] + int(i)
            result = to_abc("".join(prompt.lines()) + about["prefix"] + text)
            stem = f"{slug(about['title'])}-seed{seed}"
            piece_id, folder = self.new_piece(session, stem)
            record = PieceRecord(
                id=piece_id, created=about["created"], kind=about["kind"], title=about["title"],
                prompt=about["prompt"], seed=seed, model=about["model"], bars=result.alignment.total,
                stop_reason=StopReason.INTERRUPTED, alignment=str(result.alignment), files={"abc": [f"{stem}.abc"]},
                settings=about["settings"], analysis=api.analyse(result.abc),
                warnings=["the server stopped while this piece was being written (a crash or a kill): it was kept "
                          "as written a few seconds before, not rendered (open it and press Render)"])
            with self.saving(folder):
                abc = api.with_titles(result.abc, about["titles"]) if about["titles"] else result.abc
                abc = retitled(abc, about["title"])
                write_atomic(folder / f"{stem}.abc", abc)
                session.save(record)
            kept.append(Outcome(record, folder, abc))
        return kept

    # --- composing ---------------------------------------------------------------------------------
    def compose(self, key: str, request: ComposeRequest, model: str | None = None,
                continue_abc: str | None = None, rewrite_from: int | None = None,
                title: str | None = None, rewrite_to: int | None = None,
                harmonise_abc: str | None = None,
                harmonise_voice: int | None = None) -> Iterator[Progress | list[Outcome]]:
        """Yields Progress while writing, then the list of kept pieces (one per variation).
        Stop (or closing the iterator: a closed tab) ends it within a patch; what was written is
        kept, and so it is when the server shuts down. The request is held to this server's limits;
        its seed (drawn now when it has none) is the one every Progress and record shows. A
        continued or rewritten score keeps its T:/C: lines and its title (`title`, the open
        piece's), with "continued"/"rewritten" added. With `rewrite_to` too, only bars
        rewrite_from..rewrite_to are written again and the bars after them are kept (api.passage_request:
        candidates written at once, rows of the batch, and the best joined): one piece comes back.
        `harmonise_abc`, a melody (one voice, or `harmonise_voice` of a score), is harmonised in the
        request's style instead: its bars are the first voice of every line and the model writes the
        others (api.harmonise_request)."""
        c = self.config
        session = self.store.session(key)
        request = request.within(c.max_patches, c.max_variations, c.max_seconds, min(c.max_batch, c.max_search)).seeded()
        slot = self.model(model)
        slot.get()
        if harmonise_abc is not None and (continue_abc or rewrite_from is not None):
            raise SettingsError("harmonise a melody, or continue or rewrite a score: not both at once")
        for text, what in ((harmonise_abc, "the melody"), (continue_abc, "the score to continue")):
            if text and len(text) > c.max_score_chars:
                raise SettingsError(f"{what} is {len(text):,} characters: at most {c.max_score_chars:,}")
        if harmonise_abc is not None:
            if not harmonise_abc.strip():
                raise SettingsError("there is no melody to harmonise: write, open or upload one voice first")
            request = api.harmonise_request(request, harmonise_abc, harmonise_voice)
        elif continue_abc:
            if rewrite_to is not None and rewrite_from is not None:
                candidates = min(api.passage.CANDIDATES, c.max_variations)  # a server's own bound on rows per request
                request = api.passage_request(request, continue_abc, rewrite_from, rewrite_to, candidates)
            else:
                request = request.update(prefix=api.continuation_prefix(continue_abc, rewrite_from=rewrite_from))
        elif rewrite_from is not None:
            raise SettingsError("there is no score to rewrite: open, write or upload one first")
        with self.job(session, "compose") as job:
            lm, scheduler = slot.checkout()
            kind = ("harmonised" if request.melody else "rewritten" if rewrite_from is not None
                    else "continued" if request.prefix else "composed")
            named = Named(title, continue_abc or harmonise_abc or "", kind)
            journal = session.journal(job.id, journal_about(lm, request, named))
            try:
                yield from self._compose(session, slot, lm, request, job.cancel, named, scheduler, journal)
            except Exception as e:
                if out_of_memory(e):
                    raise CadenzaError(oom_message(lm, request)) from e
                raise
            finally:
                journal.remove()  # the pieces are kept by now (or failed with a message)
                slot.checkin(lm)

    def write(self, key: str, request: ComposeRequest, model: str | None = None, continue_abc: str | None = None,
              rewrite_from: int | None = None, title: str | None = None, rewrite_to: int | None = None,
              harmonise_abc: str | None = None, harmonise_voice: int | None = None) -> Live:
        """compose() for the page: it runs on a thread of its own, so the piece belongs to the
        session, not to the tab (a reload reattaches with live(); a closed tab leaves it to finish).
        A refused request (bad input, a full session) raises here, before anything runs."""
        items = self.compose(key, request, model, continue_abc=continue_abc, rewrite_from=rewrite_from, title=title,
                             rewrite_to=rewrite_to, harmonise_abc=harmonise_abc, harmonise_voice=harmonise_voice)
        first = next(items)  # the checks and the "started" update: refusals reach the caller
        r = request
        about = {"prompt": {"period": r.period, "composer": r.composer, "instrumentation": r.instrumentation},
                 "settings": r.settings()}
        live = Live(items, first, about)
        with self._lock:
            self._live[self.store.session(key).id] = live
        return live

    def live(self, key: str) -> Live | None:
        """The session's piece being written for its page, or one that ended with no page to take
        it (for LIVE_KEEP_S): what a reloaded page follows."""
        sid = self.store.session(key).id
        now = time.monotonic()
        with self._lock:
            for k in [k for k, v in self._live.items() if v.done and (v.taken or now - v.done_at > LIVE_KEEP_S)]:
                del self._live[k]
            return self._live.get(sid)

    def _compose(self, session: Session, slot: ModelSlot, lm, request: ComposeRequest, cancel: threading.Event,
                 named: "Named", scheduler=None, journal=None) -> Iterator[Progress | list[Outcome]]:
        texts: dict[int, str] = {}
        done: list[api.Composition] = []
        r = request
        live = LiveText("".join(Prompt(r.period, r.composer, r.instrumentation).lines()) + r.prefix)
        steps, retries, asked = 0, 0, r.controls.bars
        before = r.prefix.count("[r:")  # a continued score's own bars: the progress counts from them
        bars: dict[int, int] = {i: before for i in range(r.variations)}  # every variation's bars so far
        stream = slot.compose_stream(lm, request, cancel, scheduler, session.id)
        closed = False
        # started: from now on the page shows the new piece (a continued score as it stands; a new
        # piece's header), not the one open before, whose first patch may be seconds away
        last = Progress(live.abc("", 0), 0, before, 0.0, request.seed, target_bars=asked)
        yield last
        try:
            for ev in stream:
                if isinstance(ev, api.Composition):
                    done.append(ev)
                    continue
                if isinstance(ev, api.Waiting):  # every row of the batch is in use: its place in line
                    yield Progress("", steps, 0, 0.0, request.seed, waiting=ev.position, waiting_reason=ev.reason)
                    continue
                t = texts.get(ev.index, "")
                texts[ev.index] = t[: len(t) - ev.retract] + ev.text
                bars[ev.index] = before + ev.bars
                if journal is not None:
                    journal.write(texts)  # every couple of seconds: what a killed server would lose
                if ev.index != 0:
                    continue
                steps, retries = max(steps, ev.patches), retries + (ev.retract > 0)
                plan = None if asked else planned_bars(texts[0])
                target = asked or plan
                last = Progress(live.abc(texts[0], ev.bars), steps, bars[0], ev.elapsed, request.seed, retries,
                                target, seconds_to_go(target, list(bars.values()), ev.bars, ev.elapsed),
                                planned=plan is not None, variations=tuple(bars.values()) if len(bars) > 1 else (),
                                stopping=cancel.is_set())
                yield last
        except GeneratorExit:
            closed = True
            raise
        finally:
            cancel.set()  # a closed iterator (tab closed, request cancelled) stops the batch
            stream.close()
            if closed:  # nobody is listening any more: keep the text written so far, quickly
                self._keep_unfinished(session, lm, named, request, texts, done, StopReason.CLOSED)
        if self.closing.is_set():  # shutting down: keep the text now, no time to render
            yield self._keep_unfinished(session, lm, named, request, texts, done, StopReason.SHUTDOWN)
            return
        stopped = any(c.piece.stop_reason == StopReason.CANCELLED for c in done)  # Stop was pressed
        # a variation stopped before its first bar was begun has no music: a header in History is clutter
        done = [c for c in done if c.piece.stop_reason != StopReason.CANCELLED or wrote_music(c.piece, live.head)]
        yield from self._keep_all(session, lm, done, named, request, replace(last, abc="", eta=None, stopping=stopped))

    def _keep_all(self, session: Session, lm, done: list, named: "Named", request: ComposeRequest,
                  last: Progress) -> Iterator[Progress | list[Outcome]]:
        """Every variation rendered and kept, RENDER_AT_ONCE at a time, saying how far it got
        (`last`: the writing's last update, which these go on from)."""
        ordered = sorted(done, key=lambda c: c.piece.index)
        if not ordered:  # stopped before a bar was written
            yield []
            return
        kept: dict[int, Outcome] = {}
        with ThreadPoolExecutor(max_workers=RENDER_AT_ONCE, thread_name_prefix="cadenza-keep") as pool:
            futures = {pool.submit(self._keep, session, lm, c, named, request): c.piece.index for c in ordered}
            yield replace(last, keeping=(0, len(ordered)))
            for n, f in enumerate(as_completed(futures), start=1):  # bounded: one per variation
                kept[futures[f]] = f.result()
                if n < len(ordered):
                    yield replace(last, keeping=(n, len(ordered)))
        yield [kept[c.piece.index] for c in ordered]

    def _keep_unfinished(self, session: Session, lm, named: "Named", request: ComposeRequest, texts: dict[int, str],
                         done: list, reason: StopReason) -> list[Outcome]:
        """Each variation's text as written so far, as ABC with a record saying why it stopped, not
        rendered (quick: the page is gone, or the server is going down)."""
        r, seed = request, request.seed
        period, composer, instrumentation = r.period, r.composer, r.instrumentation
        prompt = Prompt(period, composer, instrumentation)
        finished = {c.piece.index: c for c in done}
        why = {StopReason.CLOSED: "the page was closed or the request cancelled",
               StopReason.SHUTDOWN: "the server was shut down"}[reason]
        kept = []
        for i in sorted(set(texts) | set(finished)):  # variations that ended are kept too, as ABC
            c = finished.get(i)
            if c is None and not texts.get(i):
                continue
            result = c.abc if c is not None else to_abc("".join(prompt.lines()) + r.prefix + texts[i])
            stop = reason if c is None or c.piece.stop_reason == StopReason.CANCELLED else c.piece.stop_reason
            stem = named.stem(prompt, seed + i)
            piece_id, folder = self.new_piece(session, stem)
            record = PieceRecord(
                id=piece_id, created=now_iso(), kind=named.kind, title=named.title_for(prompt),
                prompt={"period": period, "composer": composer, "instrumentation": instrumentation},
                seed=seed + i, model=lm.name, bars=result.alignment.total, stop_reason=stop,
                alignment=str(result.alignment), files={"abc": [f"{stem}.abc"]}, settings=r.settings(),
                analysis=api.analyse(result.abc),
                warnings=[f"{why}: the piece was kept as written so far, not rendered (open it and press Render)"])
            with self.saving(folder):
                abc = named.head(result.abc, prompt)
                write_atomic(folder / f"{stem}.abc", abc)
                session.save(record)
            kept.append(Outcome(record, folder, abc))
        return kept

    def _keep(self, session: Session, lm, comp: api.Composition, named: "Named", request: ComposeRequest) -> Outcome:
        p = comp.piece
        comp = named.headed(comp)
        stem = named.stem(p.prompt, p.seed)
        piece_id, folder = self.new_piece(session, stem)
        with self.saving(folder):
            result = self.renderer.score(folder, comp.abc.abc, self.config.formats, stem, self.render_options(),
                                         meta=comp.manifest(lm), strict=False).result
            comp.rendered = result
            record = PieceRecord(
                id=piece_id, created=now_iso(), kind=named.kind,
                title=named.title_for(p.prompt),
                prompt={"period": p.prompt.period, "composer": p.prompt.composer,
                        "instrumentation": p.prompt.instrumentation},
                seed=p.seed, model=lm.name, bars=comp.abc.alignment.total, seconds=round(p.elapsed, 2),
                stop_reason=p.stop_reason, alignment=str(comp.abc.alignment),
                files={f: st.files for f, st in result.status.items() if st.ok},
                errors=result.failed, warnings=comp.warnings + result.warnings, settings=request.settings(),
                analysis=result.manifest.get("analysis", {}))
            session.save(record)
        saved = [folder / f for f in record.files.get("abc", [])]
        return Outcome(record, folder, saved[0].read_text() if saved else comp.abc.abc)

    # --- rendering and uploads ---------------------------------------------------------------------
    def render(self, key: str, abc_text: str, title: str | None = None, prompt: dict | None = None,
               kind: str = "rendered") -> Outcome:
        """The user's ABC (edited or written by hand) -> every export, kept in the session. An
        edit of an open piece passes that piece's title and prompt (identity.of_edit tells), so the
        edit keeps them (and Continue on it writes in the same style); else the score is called
        by its own T: line. The title is printed as History lists it."""
        own = heading(abc_text)[0] if isinstance(abc_text, str) else None
        return self._render(key, abc_text, title or own, "my score", kind, prompt=prompt)

    def transpose(self, key: str, abc_text: str, to_key: str, title: str | None = None,
                  prompt: dict | None = None) -> Outcome:
        """The score moved to another key (music21), kept as a new piece; the original stays."""
        title = title or (heading(abc_text)[0] if isinstance(abc_text, str) else None)
        return self._render(key, abc_text, f"{title} (in {to_key})" if title else None, f"transposed to {to_key}",
                            "transposed", to_key=to_key, prompt=prompt)

    def _render(self, key: str, abc_text: str, title: str | None, untitled: str, kind: str,
                to_key: str | None = None, prompt: dict | None = None) -> Outcome:
        """`title`: the piece's, printed as its T: line; None: the score has none, History calls it
        `untitled` and nothing is printed."""
        session = self.store.session(key)
        if isinstance(abc_text, str) and len(abc_text) > self.config.max_score_chars:
            raise SettingsError(f"the score is {len(abc_text):,} characters: this server renders at most "
                                f"{self.config.max_score_chars:,}")
        title = title.strip()[:120] if isinstance(title, str) and title.strip() else None
        with self.job(session, "render"):
            notes = []
            if to_key is not None:
                abc_text, note = self.renderer.transpose(abc_text, to_key, self.render_options())
                notes.append(note)
            if title and not api.not_abc(abc_text):
                abc_text = retitled(abc_text, title)
            piece_id, folder = self.new_piece(session, title or untitled)
            with self.saving(folder):
                # the bars against the metre as well as between voices, and the musical check
                rendered = self.renderer.score(folder, abc_text, self.config.formats, slug(title or untitled),
                                               self.render_options(), check=True)
                result, bars, found = rendered.result, rendered.bars, rendered.analysis
                record = PieceRecord(id=piece_id, created=now_iso(), kind=kind,
                                     title=title or untitled, bars=bars.total if bars else 0, prompt=known_prompt(prompt),
                                     alignment=str(bars) if bars else "",
                                     files={f: st.files for f, st in result.status.items() if st.ok},
                                     errors=result.failed, warnings=notes + result.warnings, analysis=found)
                session.save(record)
        return Outcome(record, folder, abc_text)

    def upload(self, key: str, path: str | Path) -> Outcome:
        """A score file from the user (.abc, .musicxml, .xml, .mxl, .mid, .midi) -> rendered and kept; its ABC
        can then be edited or continued. It is called by its own title, else by its file's name."""
        path = api.check_score_file(path, self.config.max_upload_mb)  # as every door reads a score
        if path.suffix.lower() == ".abc":
            text = path.read_text(encoding="utf-8")
            return self.render(key, text, heading(text)[0] or path.stem, kind="uploaded")
        session = self.store.session(key)
        with self.job(session, "render"):
            piece_id, folder = self.new_piece(session, path.stem)
            with self.saving(folder):
                rendered = self.renderer.upload(folder, path, self.config.formats, slug(path.stem),
                                                self.render_options())
                result, bars, found = rendered.result, rendered.bars, rendered.analysis
                if not result.status.get("abc") or not result.status["abc"].ok:
                    raise CadenzaError(result.failed.get("abc") or f"{path.name} could not be read as a score")
                abc_text = (folder / result.status["abc"].files[0]).read_text()
                record = PieceRecord(id=piece_id, created=now_iso(), kind="uploaded",
                                     title=(heading(abc_text)[0] or path.stem)[:120],
                                     bars=bars.total if bars else 0, alignment=str(bars) if bars else "",
                                     files={f: st.files for f, st in result.status.items() if st.ok},
                                     errors=result.failed, warnings=result.warnings, analysis=found)
                session.save(record)
        return Outcome(record, folder, abc_text)

    # --- audio (MusicGen) -------------------------------------------------------------------------
    def audio_model(self, spec: str | None = None, melody: bool = False) -> ModelSlot:
        """The MusicGen model `spec` names (a hub id in the cache, a folder in the models folders,
        or any hub id when downloads are allowed), else the server's default; loaded on first use
        (it may need weights the user has yet to put in place)."""
        default = self.config.melody_model if melody else self.config.audio_model
        name, download = self.policy.musicgen(spec or default)
        if self.cluster is not None and self.config.audio_replicas:  # AudioEngine replicas on Ray Serve
            return self._slot(self.audio_models, name, MAX_AUDIO_MODELS, lambda: RemoteAudioSlot(
                name, self.config.device, self.cluster, self.config.placement_options(1), local_only=not download))
        return self._slot(self.audio_models, name, MAX_AUDIO_MODELS, lambda: ModelSlot(
            name, self.config.device, lambda s, device: self._load_audio_placed(s, device, local_only=not download)))

    def audio_weights_missing(self, spec: str | None = None, melody: bool = False) -> str | None:
        """None when the MusicGen model can be loaded (its weights are here, or may be downloaded);
        else what to do, in steps, for the page to say before anyone presses a button."""
        default = self.config.melody_model if melody else self.config.audio_model
        try:
            name, download = self.policy.musicgen(spec or default)
        except CadenzaError as e:
            return public(str(e))
        if download or weights_present(name):
            return None
        return (f"Its weights ({name}) are not here and this server does not download. The person running it "
                f"can: 1. on a machine with internet, run `hf download {name}`; 2. copy that machine's "
                f"Hugging Face cache folder (models--{name.replace('/', '--')}) into this server's; 3. reload "
                "this page. Meanwhile every score plays with the SoundFont: its player and WAV are on the "
                "Score page.")

    def audio(self, key: str, request: AudioRequest,
              model: str | None = None) -> Iterator[api.AudioProgress | list[Outcome]]:
        """Yields AudioProgress while MusicGen works, then the kept piece (one Outcome holding every
        variation). Stop, or closing the iterator (a closed tab), ends it within a step; what was
        made is kept. The request is held to this server's limits; its seed (drawn now when it has
        none) is the one the progress and the record show."""
        c = self.config
        session = self.store.session(key)
        request = request.within(c.max_audio_seconds, c.max_upload_mb).seeded()
        missing = self.audio_weights_missing(model, melody=request.follows_melody)
        if missing is not None:  # said in steps, as on arrival, not as the loader's error
            raise CadenzaError(f"MusicGen is not set up on this server. {missing}")
        slot = self.audio_model(model, melody=request.follows_melody)
        am = slot.get()
        stem = "performance" if request.score is not None else "audio"
        with self.job(session, "audio") as job:
            piece_id, folder = self.new_piece(session, f"{request.kind}-{request.prompt[:40]}-seed{request.settings.seed}")
            with self.saving(folder):
                stream = slot.audio_stream(am, request, folder, stem, job.cancel)
                out, closed = None, False
                try:
                    for ev in stream:
                        if isinstance(ev, api.AudioOutput):
                            out = ev
                        else:
                            yield ev
                except GeneratorExit:  # a closed tab: stop MusicGen, wait for what it made, keep it
                    closed = True
                    job.cancel.set()
                    out = next((ev for ev in stream if isinstance(ev, api.AudioOutput)), None)
                if out is None:
                    raise CadenzaError("MusicGen stopped without a result")
                record = self._audio_record(piece_id, request, out)
                session.save(record)
        if not closed:
            yield [Outcome(record, folder, request.score or "")]

    @staticmethod
    def _audio_record(piece_id: str, request: AudioRequest, out: api.AudioOutput) -> PieceRecord:
        r, performed = out.result, request.score is not None
        files = {"wav": [p.name for p in out.wavs], "png": [p.name for p in out.pictures],
                 "manifest": [out.manifest.name]}
        if performed:
            files["abc"] = [p.name for p in out.manifest.parent.glob("performance-soundfont.abc")]
            files["soundfont"] = [p.name for p in out.manifest.parent.glob("performance-soundfont.wav")]
        warnings = ["stopped: kept the audio made so far"] if r.stop_reason == StopReason.CANCELLED else []
        return PieceRecord(
            id=piece_id, created=now_iso(), kind=request.kind,
            title=("Performance: " if performed else "") + request.prompt[:80],
            prompt={"text": request.prompt, **({"melody": r.melody} if r.melody else {})}, seed=r.settings.seed,
            model=r.model, seconds=round(r.seconds, 2), stop_reason=r.stop_reason, files=files, warnings=warnings,
            settings={**asdict(r.settings), "audio_seconds": round(r.audio_seconds, 2), "windows": r.windows})

    # --- history ---------------------------------------------------------------------------------
    def history(self, key: str) -> list[PieceRecord]:
        return self.store.session(key).history()

    def outcome(self, key: str, piece_id: str) -> Outcome:
        session = self.store.session(key)
        record = session.record(piece_id)
        session.touch(piece_id)  # opened: the last of a session's pieces a full server lets go
        folder = session.piece_folder(piece_id)
        abc_files = record.files.get("abc", [])
        abc = (folder / abc_files[0]).read_text() if abc_files else ""
        return Outcome(record, folder, abc)

    # --- system ----------------------------------------------------------------------------------
    def system(self) -> dict:
        devices = [d.row() for d in inventory()]
        models = [{"model": Path(spec).name if spec else "bundled", "status": slot.status(), "placement": slot.plan(),
                   "batching": slot.batches()}
                  for spec, slot in list(self.models.items())]
        models += [{"model": Path(spec).name, "kind": "MusicGen", "status": slot.status()}
                   for spec, slot in list(self.audio_models.items())]
        return {"devices": devices, "models": models, "rendering": self.renderer.status(), "running": self.running(),
                "concurrency": self.config.concurrency, "queue_size": self.config.queue_size}
