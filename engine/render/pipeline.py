"""render(): a score -> every export, each independent, each in a bounded child process.

Stages: ABC -> MusicXML, then two chains side by side: MusicXML -> MIDI -> WAV, and
MusicXML -> SVG pages -> PDF + PNG. Then manifest.json and a ZIP of everything. A failed stage
fails only the exports that need it; the reason is kept in plain words."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine import __version__
from engine.errors import CadenzaError
from engine.files import slug, unique_stem, write_atomic
from engine.render.convert import MIDI_SUFFIXES, default_soundfont
from engine.render.identity import with_identity
from engine.symbolic.controls import check_key
from engine.symbolic.postprocess import close_brackets

FORMATS = ("abc", "musicxml", "midi", "wav", "svg", "pdf", "png", "zip")
ROOT = Path(__file__).resolve().parents[2]
MAX_ABC_CHARS = 2_000_000  # a score's text; NotaGen's own pieces stay under 102,400


@dataclass
class RenderOptions:
    formats: tuple[str, ...] = FORMATS
    soundfont: str | None = None  # None: $CADENZA_SOUNDFONT, else pretty_midi's TimGM6mb.sf2
    timeout_s: float = 60.0  # per conversion stage
    memory_mb: int = 3072  # per conversion stage (address space of the child)
    max_audio_seconds: float = 1200.0  # longer scores get no WAV
    parallel: bool = True  # audio and sheet-music chains side by side (False: one after the other)
    # Files larger than this stay out of the ZIP (each is its own download beside it): a long piece's
    # WAV would otherwise be on disk twice (a 1,194-character score wrote 313 MB that way).
    zip_member_max_mb: float = 16.0

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise CadenzaError(f"unknown format(s) {', '.join(unknown)}: expected some of {', '.join(FORMATS)}")

    def soundfont_path(self) -> Path:
        if self.soundfont or os.environ.get("CADENZA_SOUNDFONT"):
            return Path(self.soundfont or os.environ["CADENZA_SOUNDFONT"]).expanduser()
        return default_soundfont()


@dataclass
class ExportStatus:
    ok: bool
    files: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class RenderResult:
    out_dir: Path
    stem: str
    status: dict[str, ExportStatus]
    warnings: list[str]
    manifest: dict

    def paths(self, fmt: str) -> list[Path]:
        return [self.out_dir / f for f in self.status[fmt].files] if fmt in self.status else []

    @property
    def failed(self) -> dict[str, str]:
        return {f: s.error for f, s in self.status.items() if not s.ok}


class StageError(Exception):
    pass


_WORKERS: set[subprocess.Popen] = set()  # running conversion processes (stop_workers ends them)
_WORKERS_LOCK = threading.Lock()
_CLOSED = threading.Event()  # set by stop_workers: no new conversion starts (the server is going down)


def run_stage(stage: str, args: dict, opts: RenderOptions) -> dict:
    """One worker process; its time and memory are bounded whatever the score does. It runs in a
    process group of its own (so it and anything it starts can be stopped together) and dies with
    this process (a parent-death signal set by the worker itself)."""
    if _CLOSED.is_set():
        raise StageError("was not started: the server is shutting down")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               CADENZA_PARENT_PID=str(os.getpid()))
    payload = json.dumps({**args, "memory_mb": opts.memory_mb, "timeout": opts.timeout_s})
    proc = subprocess.Popen([sys.executable, "-m", "engine.render.worker", stage, payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    with _WORKERS_LOCK:
        _WORKERS.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=opts.timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise StageError(f"took longer than its {opts.timeout_s:.0f} s limit and was stopped") from None
    finally:
        with _WORKERS_LOCK:
            _WORKERS.discard(proc)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines and _CLOSED.is_set():
        raise StageError("was stopped: the server is shutting down")
    if not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode < 0 or "MemoryError" in stderr or "std::bad_alloc" in stderr:
            raise StageError(f"stopped: it needed more than its {opts.memory_mb} MB memory limit ({tail[:200]})")
        raise StageError(f"failed ({tail[:300]})")
    result = json.loads(lines[-1])
    if "error" in result:
        raise StageError(result["error"])
    return result


def _kill(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group: it and anything it started
    except (ProcessLookupError, PermissionError):
        pass


def stop_workers() -> int:
    """Ends every running conversion and refuses new ones (a server shutting down). Returns how
    many were running."""
    _CLOSED.set()
    with _WORKERS_LOCK:
        running = list(_WORKERS)
    for proc in running:
        _kill(proc)
    return len(running)


def render(abc_text: str, out_dir: str | Path, formats=FORMATS, stem: str = "score", meta: dict | None = None,
           options: RenderOptions | None = None, strict: bool = True) -> RenderResult:
    """ABC text (generated or the user's own) -> the chosen exports in out_dir. Text that is not ABC
    raises CadenzaError (strict) or, for a generated piece (strict=False), keeps the ABC and marks
    every conversion failed. A score that is ABC never raises: each export's status says what went
    wrong, and the ABC is always written. With meta["prompt"] (a generated piece's manifest), the
    ABC gets the title, composer line and part names it lacks (engine.render.identity)."""
    opts = replace(options or RenderOptions(), formats=tuple(formats))  # the caller's options stay as they were
    opts.check()
    problem = not_abc(abc_text)
    if problem and (strict or not isinstance(abc_text, str)):
        raise CadenzaError(problem)
    if not problem:  # a piece with a prompt (a generated one) gets its title and part names
        abc_text = with_identity(abc_text, (meta or {}).get("prompt"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = unique_stem(out, stem)
    abc_path = out / f"{stem}.abc"
    write_atomic(abc_path, abc_text)
    run = _Run(out, stem, opts)
    run.done("abc", ExportStatus(True, [abc_path.name]))
    if problem:
        run.fail([f for f in opts.formats if f not in ("abc", "zip")], problem)
    else:
        run.warnings += _abc_warnings(abc_text)
        run.stage_musicxml(abc_path)
    return run.finish(meta or {}, {"kind": "abc"})


def not_abc(abc_text) -> str | None:
    if not isinstance(abc_text, str) or not abc_text.strip():
        return "the score is empty: expected ABC text with at least a K: line and some notes"
    if len(abc_text) > MAX_ABC_CHARS:
        return f"the score is {len(abc_text):,} characters: at most {MAX_ABC_CHARS:,} are accepted"
    if not re.search(r"^\s*K:", abc_text, flags=re.M):
        return ("the text is not ABC notation: expected header lines such as X:1, M:4/4, L:1/8 and "
                "a K: line (the key) before the notes")
    if not re.search(r"^\s*K:.*\n(?s:.*)[A-Ga-gzx]", abc_text, flags=re.M):
        return "the score has no notes after its header: nothing to engrave or play"
    return None


# what every door (page, CLI, API) reads as a score (MIDI is notated by music21 first)
SCORE_SUFFIXES = (".abc", ".musicxml", ".xml", ".mxl", *MIDI_SUFFIXES)
SCORE_KINDS = "an .abc, .musicxml, .xml or .mxl score or a .mid/.midi file"


def render_file(path: str | Path, out_dir: str | Path, formats=FORMATS, stem: str | None = None,
                meta: dict | None = None, options: RenderOptions | None = None) -> RenderResult:
    """A file the user has: .abc, MusicXML (.musicxml, .xml, .mxl) or MIDI (.mid, .midi: notated by
    music21 in the worker first)."""
    path = Path(path)
    if not path.is_file():
        raise CadenzaError(f"no file at {path}")
    suffix = path.suffix.lower()
    stem = stem or slug(path.stem)
    if suffix == ".abc":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CadenzaError(f"{path.name} is not UTF-8 text ({e})") from e
        return render(text, out_dir, formats, stem, meta, options)
    if suffix not in SCORE_SUFFIXES:
        raise CadenzaError(f"{path.name}: expected {SCORE_KINDS}")
    opts = replace(options or RenderOptions(), formats=tuple(formats))  # the caller's options stay as they were
    opts.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = unique_stem(out, stem)
    run = _Run(out, stem, opts)
    t = time.monotonic()
    try:
        imported = run_stage("import", {"src": str(path), "xml": str(out / f"{stem}.musicxml"),
                                        "abc": str(out / f"{stem}.abc")}, opts)
    except StageError as e:
        for fmt in opts.formats:
            if fmt != "zip":
                run.done(fmt, ExportStatus(False, error=f"reading {path.name}: {e}"))
        return run.finish(meta or {}, {"kind": suffix.lstrip("."), "name": path.name})
    run.warnings += imported.get("warnings", [])  # what was mended for the engraving
    run.done("abc", ExportStatus(True, [f"{stem}.abc"], seconds=time.monotonic() - t))
    run.done("musicxml", ExportStatus(True, [f"{stem}.musicxml"]))
    run.after_musicxml()
    return run.finish(meta or {}, {"kind": suffix.lstrip("."), "name": path.name})


def transpose(abc_text: str, to_key: str, options: RenderOptions | None = None) -> tuple[str, str]:
    """An ABC score moved to another key (music21, in a worker like every conversion) -> (its ABC,
    what was done). The key is checked first (engine.symbolic.controls.check_key)."""
    check_key(to_key)
    problem = not_abc(abc_text)
    if problem:
        raise CadenzaError(problem)
    opts = options or RenderOptions()
    with tempfile.TemporaryDirectory() as tmp:
        src, xml, out = (Path(tmp) / n for n in ("in.abc", "moved.musicxml", "moved.abc"))
        src.write_text(abc_text, encoding="utf-8")
        try:
            result = run_stage("transpose", {"abc": str(src), "to_key": to_key, "xml": str(xml), "out": str(out)}, opts)
        except StageError as e:
            raise CadenzaError(f"the score could not be transposed: {e}") from e
        return with_titles(out.read_text(encoding="utf-8"), abc_text), result["note"]


def interleaved(abc_text: str | None = None, musicxml: Path | None = None,
                options: RenderOptions | None = None) -> list[str]:
    """A user's score (ABC text, or a MusicXML file) -> its header lines and one line per bar of
    every voice (engine.symbolic.abcformat.interleave), converted in a worker like every other
    conversion: abctoolkit's converters keep their state in module globals and write to a swapped
    sys.stdout, so two users converting in a server's threads got each other's notes (issue 31),
    and a worker's time and memory are bounded. Raises StageError saying why it could not."""
    opts = options or RenderOptions()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lines.abc"
        if abc_text is not None:
            src = Path(tmp) / "score.abc"
            src.write_text(abc_text, encoding="utf-8")
            args = {"abc": str(src), "out": str(out)}
        else:
            args = {"xml": str(musicxml), "out": str(out)}
        run_stage("interleave", args, opts)
        return out.read_text(encoding="utf-8").splitlines(keepends=True)


def with_titles(abc: str, original: str) -> str:
    """The original's T: and C: lines (after X:) in place of music21's, which repeat the title or
    make one up ("Music21 Fragment")."""
    lines = [ln for ln in abc.splitlines(keepends=True) if not re.match(r"[TC]:", ln)]
    titles = re.findall(r"^[TC]:.*\n", original, flags=re.M)
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("X:")), 0)
    return "".join(lines[:at] + titles + lines[at:])


def _abc_warnings(abc_text: str) -> list[str]:
    warnings = []
    for line in abc_text.splitlines():
        if line.startswith("%%score") and close_brackets(line + "\n").rstrip("\n") != line.rstrip():
            warnings.append(f"'{line.strip()}' leaves a bracket open; it was closed for the conversion")
    return warnings


class _Run:
    """The exports of one render, filled in stage by stage (two chains run side by side)."""

    def __init__(self, out: Path, stem: str, opts: RenderOptions):
        self.out, self.stem, self.opts = out, stem, opts
        self.status: dict[str, ExportStatus] = {}
        self.warnings: list[str] = []
        self.info: dict = {}
        self.lock = threading.Lock()

    def want(self, *fmts: str) -> bool:
        return any(f in self.opts.formats for f in fmts)

    def done(self, fmt: str, status: ExportStatus) -> None:
        if fmt in self.opts.formats:
            with self.lock:
                self.status[fmt] = status

    def fail(self, fmts, message: str) -> None:
        for f in fmts:
            self.done(f, ExportStatus(False, error=message))

    def stage_musicxml(self, abc_path: Path) -> None:
        if not self.want("musicxml", "midi", "wav", "svg", "pdf", "png"):
            return
        abc = abc_path.read_text()
        fixed = _close_score_brackets(abc)
        src = abc_path
        if fixed != abc:
            src = self.out / f".{self.stem}.closed.abc"
            src.write_text(fixed)
        t = time.monotonic()
        try:
            res = run_stage("musicxml", {"abc": str(src), "out": str(self.out / f"{self.stem}.musicxml")}, self.opts)
        except StageError as e:
            self.fail(("musicxml", "midi", "wav", "svg", "pdf", "png"), f"ABC -> MusicXML: {e}")
            return
        finally:
            if src != abc_path:
                src.unlink(missing_ok=True)
        self.warnings += [f"ABC -> MusicXML: {w}" for w in res.get("warnings", [])]
        self.done("musicxml", ExportStatus(True, [f"{self.stem}.musicxml"], seconds=time.monotonic() - t))
        self.after_musicxml()

    def after_musicxml(self) -> None:
        with ThreadPoolExecutor(2 if self.opts.parallel else 1) as pool:
            jobs = []
            if self.want("midi", "wav"):
                jobs.append(pool.submit(self.chain_audio))
            if self.want("svg", "pdf", "png"):
                jobs.append(pool.submit(self.chain_sheet))
            for j in jobs:
                j.result()

    def chain_audio(self) -> None:
        xml, midi = self.out / f"{self.stem}.musicxml", self.out / f"{self.stem}.mid"
        t = time.monotonic()
        try:
            midi_res = run_stage("midi", {"xml": str(xml), "out": str(midi)}, self.opts)
        except StageError as e:
            self.fail(("midi", "wav"), f"MusicXML -> MIDI: {e}")
            return
        self.info["parts"], self.info["score_seconds"] = midi_res["parts"], midi_res["seconds"]
        self.warnings += [f"MusicXML -> MIDI: {w}" for w in midi_res.get("warnings", [])]
        self.done("midi", ExportStatus(True, [midi.name], seconds=time.monotonic() - t))
        if not self.want("wav"):
            return
        t = time.monotonic()
        wav = self.out / f"{self.stem}.wav"
        try:
            res = run_stage("wav", {"midi": str(midi), "out": str(wav), "soundfont": str(self.opts.soundfont_path()),
                                    "max_seconds": self.opts.max_audio_seconds}, self.opts)
        except StageError as e:
            where = ""
            longest = midi_res.get("longest_note")
            if "minutes" in str(e) and longest and longest["quarters"] > 64:
                where = (f"; the longest note is in bar {longest['bar']} of {longest['part']}, "
                         f"{longest['quarters']:,.0f} quarter notes long")
            self.fail(("wav",), f"MIDI -> WAV: {e}{where}")
            return
        self.info["audio"] = {k: res[k] for k in ("seconds", "gain_db", "peak_dbfs")}
        self.done("wav", ExportStatus(True, [wav.name], seconds=time.monotonic() - t))
        if "midi" not in self.opts.formats:
            midi.unlink(missing_ok=True)

    def chain_sheet(self) -> None:
        t = time.monotonic()
        formats = [f for f in ("svg", "pdf", "png") if f in self.opts.formats]
        try:
            res = run_stage("sheet", {"xml": str(self.out / f"{self.stem}.musicxml"), "stem": str(self.out / self.stem),
                                      "formats": formats}, self.opts)
        except StageError as e:
            self.fail(formats, f"sheet music: {e}")
            return
        seconds = time.monotonic() - t
        self.info["pages"], self.info["notes_drawn"] = res["pages"], res["notes_drawn"]
        for f in formats:
            self.done(f, ExportStatus(True, [Path(p).name for p in res["files"][f]], seconds=seconds))
        if "svg" not in self.opts.formats:
            for p in res["files"]["svg"]:
                Path(p).unlink(missing_ok=True)

    def finish(self, meta: dict, source: dict) -> RenderResult:
        manifest = {
            "engine_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stem": self.stem,
            "source": source,
            **meta,
            "score": self.info,
            "exports": {f: {"ok": s.ok, "files": s.files, "error": s.error, "seconds": round(s.seconds, 3)}
                        for f, s in self.status.items()},
            "warnings": self.warnings,
        }
        if "zip" in self.opts.formats:
            manifest["exports"]["zip"] = {"ok": True, "files": [f"{self.stem}.zip"], "error": None, "seconds": 0.0,
                                          "left_out": self._too_big_to_zip()}
        write_atomic(self.out / f"{self.stem}.manifest.json", json.dumps(manifest, indent=2) + "\n")
        if "zip" in self.opts.formats:
            self._zip(manifest)
            self.status["zip"] = ExportStatus(True, [f"{self.stem}.zip"])
        return RenderResult(self.out, self.stem, self.status, self.warnings, manifest)

    def _too_big_to_zip(self) -> list[str]:
        """Files over zip_member_max_mb: downloads of their own, not copied into the ZIP."""
        limit = self.opts.zip_member_max_mb * 2**20
        return [name for s in self.status.values() for name in s.files if (self.out / name).stat().st_size > limit]

    def _zip(self, manifest: dict) -> None:
        tmp = self.out / f".{self.stem}.zip.tmp"
        left_out = set(manifest["exports"]["zip"]["left_out"])
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f, s in self.status.items():
                for name in s.files:
                    if name not in left_out:
                        z.write(self.out / name, name)
            z.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.out / f"{self.stem}.zip")


def _close_score_brackets(abc: str) -> str:
    lines = abc.splitlines(keepends=True)
    return "".join(close_brackets(ln) if ln.startswith("%%score") else ln for ln in lines)
