"""The engine's Python API: load a model, compose pieces, list prompts. The CLI and (later) the
web app call these functions and nothing deeper."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import soundfile as sf
import torch
from unidecode import unidecode

from engine import placement

log = logging.getLogger("cadenza.api")
from engine.audio import musicgen
from engine.checks import said, whole
from engine.stops import StopReason
from engine.errors import CadenzaError, CheckpointError, SettingsError
from engine.files import slug, write_atomic
from engine.placement import PlacementOptions, default_dtype, pick_device  # noqa: F401 - part of the API
from engine.render.pipeline import SCORE_KINDS, SCORE_SUFFIXES  # noqa: F401 - what every door reads as a score
from engine.render.pipeline import (FORMATS, RenderOptions, RenderResult, StageError, interleaved,  # noqa: F401
                                    not_abc, render, render_file, transpose, with_titles)
from engine.requests import AudioRequest, ComposeRequest  # noqa: F401 - part of the API
from engine.symbolic.abcformat import musicxml_to_abc, reduce_rests
from engine.symbolic import analysis, passage
from engine.symbolic.checkpoint import LoadedModel, load_model
from engine.symbolic.compiled import DECODE_MODES, resolve_decode  # noqa: F401 - part of the API
from engine.symbolic.controls import MAX_BARS, Controls
from engine.symbolic.generate import FastBackend, PatchEvent, Piece, PieceRequest, stream
from engine.symbolic.scheduler import Scheduler, Sharing, Waiting  # noqa: F401 - part of the API
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import (R_MARKER, AbcResult, Alignment, check_alignment, header_field, header_unit,
                                         line_segments, metre_bar, starts_with_pickup, to_abc)
from engine.symbolic.prompts import known_prompt
from engine.symbolic.reference import ReferenceBackend  # noqa: F401 - part of the API

MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"
PROGRESS_EVERY_S = 0.5  # audio progress is reported at most this often


def bundled_model() -> Path | None:
    """The model shipped in assets/models (or $CADENZA_MODELS_DIR): the first folder with a config.json."""
    folder = Path(os.environ.get("CADENZA_MODELS_DIR", MODELS_DIR))
    if not folder.is_dir():
        return None
    found = sorted(p.parent for p in folder.glob("*/config.json"))
    return found[0] if found else None


def load(path: str | Path | None = None, device=None, dtype: torch.dtype | None = None) -> LoadedModel:
    """A model ready to compose: `path` (NotaGen .pth or Cadenza folder), else the bundled model."""
    if path is None:
        path = bundled_model()
        if path is None:
            raise CheckpointError(
                "no model given and no bundled model in assets/models: pass a NotaGen checkpoint "
                "(.pth, e.g. NotaGen-X from huggingface.co/ElectricAlexis/NotaGen) or a Cadenza model folder")
    dev = pick_device(device)
    return load_model(path, device=dev, dtype=dtype or default_dtype(dev))


def load_placed(path: str | Path | None = None, options: PlacementOptions | None = None) -> list[LoadedModel]:
    """A model placed by engine.placement: one LoadedModel (single device, or split across
    several), or one copy per device (replicate). The plan (placement.plan_for) is made before
    anything is loaded; each copy carries it (`.plan`)."""
    path = path or bundled_model()
    if path is None:
        return [load(None)]  # raises the clear "no model" error
    plan = placement.plan_for(path, options).check_devices()
    if plan.kind == "split":
        lm = load(path, device="cpu", dtype=plan.dtype)  # memory-mapped; each stage then moves to its device
        placement.place_notagen(lm.model, plan)
        return [dataclasses.replace(lm, plan=plan)]
    return [dataclasses.replace(load(path, device=stage.device, dtype=plan.dtype), plan=plan) for stage in plan.stages]


@dataclass
class Composition:
    piece: Piece
    abc: AbcResult
    warnings: list[str] = field(default_factory=list)
    rendered: RenderResult | None = None  # set by export()
    controls: Controls = field(default_factory=Controls)  # what the composer fixed (bars, key, metre, tempo)

    def stem(self) -> str:
        """A file name that says what the piece is: bach-choral-seed1234."""
        p = self.piece.prompt
        return f"{slug(p.composer.split(',')[0])}-{slug(p.instrumentation)}-seed{self.piece.seed}"

    def manifest(self, lm: LoadedModel) -> dict:
        p = self.piece
        return {
            "prompt": {"period": p.prompt.period, "composer": p.prompt.composer, "instrumentation": p.prompt.instrumentation},
            "seed": p.seed,
            "sampling": {"top_k": p.sampling.top_k, "top_p": p.sampling.top_p, "temperature": p.sampling.temperature},
            "controls": self.controls.to_dict(),
            "model": lm.about(),
            "generation": {"stop_reason": p.stop_reason, "complete": p.complete, "patches": p.patches, "chars": p.chars,
                           "bars": p.bars, "seconds": round(p.elapsed, 3), "context_resets": p.context_resets},
            "bar_alignment": {"aligned": self.abc.alignment.aligned, "total": self.abc.alignment.total,
                              "misaligned_bars": self.abc.alignment.misaligned_lines},
            "analysis": analyse(self.abc.abc),
            "generation_warnings": self.warnings,
        }


def export(lm: LoadedModel, composition: Composition, out_dir, formats=FORMATS,
           options: RenderOptions | None = None, stem: str | None = None) -> RenderResult:
    """Writes every export of a composed piece (files named `stem`, by default what the piece is:
    bach-choral-seed1234), with a manifest of how it was made."""
    result = render(composition.abc.abc, out_dir, formats, stem or composition.stem(), composition.manifest(lm),
                    options, strict=False)
    composition.rendered = result
    return result


def compose_stream(lm: LoadedModel, request: ComposeRequest, cancel: threading.Event | None = None,
                   backend: Callable = FastBackend,
                   scheduler: Scheduler | None = None, owner: str = "") -> Iterator[PatchEvent | Composition | Waiting]:
    """Writes the request's variations in one batch, yielding a PatchEvent per patch and a
    Composition as each piece ends. The seed used is in every result (request.seeded() draws one
    when none was given: call it first to know it before the pieces end). Setting `cancel`, or
    closing the iterator, stops the batch within a patch. backend: FastBackend, or
    ReferenceBackend for NotaGen's own algorithm (tests and benchmarks). With a `scheduler` (a
    server's, see engine.symbolic.scheduler) the pieces join its running batch with everyone
    else's, and Waiting(position, reason) comes while they wait for a row; `owner` names the
    session, whose rows are shared fairly with other sessions'."""
    request = request.seeded()
    prompt, warnings = known_prompt(request.prompt, lm.prompts)
    if request.melody and set(lm.voices.get(prompt.key(), ())) == {1}:
        raise SettingsError(f"{prompt.instrumentation} ({prompt.composer}) is written for one voice: choose a style "
                            f"with several voices to harmonise a melody in (a choral or chamber one)")
    pieces = [PieceRequest(prompt, seed=request.seed + i, sampling=request.sampling, max_patches=request.max_patches,
                           max_seconds=request.max_seconds, cancel=cancel, prefix=request.prefix,
                           bar_retries=request.bar_retries, voices=lm.voices.get(prompt.key()),
                           header_retries=request.header_retries,
                           bar_rules=_bar_rules(lm, prompt, request), controls=request.controls,
                           search=request.search, search_by=request.search_by,
                           end_lines=request.passage.before + request.passage.lines if request.passage else None,
                           melody=request.melody)
              for i in range(request.variations)]
    job = scheduler.submit(pieces, owner=owner) if scheduler is not None else None
    events = iter(job) if job is not None else stream(lm.model, pieces, backend)
    try:
        if request.passage is None:
            yield from _compositions(lm, request, events, warnings)
        else:
            yield from _passage(lm, request, events, warnings)
    finally:  # a closed iterator (a closed tab) stops this request's rows, not the others'
        if job is not None:
            job.cancel()


def _compositions(lm: LoadedModel, request: ComposeRequest, events, warnings: list[str]):
    for ev in events:
        if isinstance(ev, Piece):
            notes = list(lm.warnings) + warnings
            if ev.cut_short:
                notes.append(f"cut short ({ev.stop_reason}) after {ev.patches} patches")
            result = to_abc(ev.text)
            yield Composition(ev, result, notes + result.warnings, controls=request.controls)
        else:
            yield ev


def _passage(lm: LoadedModel, request: ComposeRequest, events, warnings: list[str]):
    """A passage's candidates as they are written, then one Composition: the candidate after which
    the model finds the kept bars most likely, joined to them (engine.symbolic.passage). Stopped
    before any candidate was finished: the longest one as it is, saying the kept bars are not joined."""
    pieces: list[Piece] = []
    for ev in events:
        if isinstance(ev, Piece):
            pieces.append(ev)
        else:
            yield ev
    if not pieces:
        return
    p = request.passage
    done = [c for c in pieces if c.stop_reason == StopReason.PASSAGE]
    notes = list(lm.warnings) + warnings
    if not done:
        longest = max(pieces, key=lambda c: (c.bars, -c.index))
        notes.append(f"cut short ({longest.stop_reason}) before {p.describe()} were written: the bars after them "
                     f"are not joined (the score it came from is unchanged)")
        result = to_abc(longest.text)
        yield Composition(longest, result, notes + result.warnings, controls=request.controls)
        return
    done.sort(key=lambda c: c.index)
    best, faults, scores = passage.best(lm.model, [c.text for c in done], p)
    chosen = done[best]
    joined = dataclasses.replace(chosen, text=chosen.text + "".join(p.kept), bars=chosen.bars + len(p.kept))
    if p.kept and len(done) > 1:
        others = ", ".join(f"{x:.1f}" + (f" ({faults[i]} bars not fitting)" if faults[i] else "")
                           for i, x in enumerate(scores) if i != best)
        notes.append(f"{p.describe()} rewritten: the best of {len(done)} candidates by how well the kept bars follow "
                     f"(seed {chosen.seed}; log-likelihood of the next {min(len(p.kept), passage.SEAM_BARS)} bars "
                     f"{scores[best]:.1f} nats" + (f", {faults[best]} bars not fitting" if faults[best] else "") +
                     f"; the others {others})")
    result = to_abc(joined.text)
    yield Composition(joined, result, notes + result.warnings, controls=request.controls)


def _bar_rules(lm: LoadedModel, prompt, request: ComposeRequest) -> frozenset[str]:
    """The bar rules the prompt's training pieces keep (the model's config); "harmony" only with
    the critic on; "metre" whenever the composer chose the metre or rewrites a passage (the bars must
    fit what was asked, or the bars around them, even for a style whose training bars do not always
    fit theirs)."""
    rules = lm.bar_rules.get(prompt.key(), frozenset())
    # the bars must fit what was asked (a chosen metre), or the bars kept around a rewritten passage
    rules = rules | {"metre"} if request.controls.meter or request.passage else rules
    return rules if request.critic else rules - {"harmony"}


def compose(lm: LoadedModel, request: ComposeRequest, on_event: Callable[[PatchEvent], None] | None = None,
            **kwargs) -> list[Composition]:
    """compose_stream run to the end: the pieces in variation order (cancel and backend as there)."""
    done = []
    for ev in compose_stream(lm, request, **kwargs):
        if isinstance(ev, Composition):
            done.append(ev)
        elif on_event is not None and isinstance(ev, PatchEvent):
            on_event(ev)
    return sorted(done, key=lambda c: c.piece.index)


def analyse(abc_text: str) -> dict:
    """The musical check of a score (engine.symbolic.analysis) as a dict; {} for text it cannot
    read that way (a user's score in a layout the check does not follow): never an error."""
    try:
        return analysis.analyse(abc_text).to_dict()
    except Exception as e:  # noqa: BLE001 - the check reads any ABC; a piece is kept without it
        log.warning("no musical check for this score (%s: %s)", type(e).__name__, str(e)[:200])
        return {}


def analysis_lines(found: dict) -> list[str]:
    """analyse()'s dict in words (what the page shows)."""
    known = {k: v for k, v in (found or {}).items() if k in analysis.Analysis.__dataclass_fields__}
    try:
        return analysis.Analysis(**known).lines() if known else []
    except TypeError:  # a record written by another version, missing a field
        return []


def continuation_prefix(abc_text: str, more_bars: int = 32, rewrite_from: int | None = None) -> str:
    """A score in ABC (the user's, or a piece cut short) -> the model's format, ready to continue.
    The bar markers count `more_bars` bars still to come, so the model does not read the score
    as finished. Goes through MusicXML, so any voice layout ABC allows comes out interleaved.
    rewrite_from=N keeps the bars before bar N only, numbered for the score's own length, so that the
    rest is written again. Bars are numbered as printed: a pickup is bar 0, the first full bar is 1
    (N=1 keeps only the pickup; N=0, or 1 without a pickup, keeps only the header)."""
    more_bars = whole(more_bars, "more bars", 1, 10_000)
    meta, body, first = _score_lines(abc_text, "continue")
    n = len(body) + more_bars
    if rewrite_from is not None:
        what = "the bar to rewrite from" + (" (bar 0 is this score's pickup)" if first == 0 else "")
        rewrite_from = whole(rewrite_from, what, first, first + len(body) - 1)
        n, body = len(body), body[:rewrite_from - first]
    if rewrite_from is None:
        body = body[:-1] + [open_ending(body[-1])]
    return _model_text(meta, body, n)


def passage_request(request: ComposeRequest, abc_text: str, first: int, last: int | None = None,
                    candidates: int = passage.CANDIDATES) -> ComposeRequest:
    """`request` set to rewrite bars first..last of a score and keep the others (engine.symbolic.passage):
    the bars before `first` are its prefix and the bars after `last` are kept verbatim; its
    variations are the candidates (the best one is joined). Numbered as printed (a pickup is bar 0).
    Without `last`, or with the score's last bar, everything from `first` on is written again with the
    score's length. Bars out of range, or a passage crossing a change of metre, are refused."""
    candidates = whole(candidates, "candidates for the passage", 1, passage.MAX_PASSAGE_CANDIDATES)
    meta, body, start = _score_lines(abc_text, "rewrite")
    end = start + len(body) - 1
    what = "the first bar to rewrite" + (" (bar 0 is this score's pickup)" if start == 0 else "")
    first = whole(first, what, start, end)
    last = end if last is None or (isinstance(last, str) and not last.strip()) else last
    last = whole(last, f"the last bar to rewrite (bar {first}, the first, or a later bar of the score)", first, end)
    before, after = first - start, last - start + 1  # lines before the passage, and to its end
    for i in range(before + 1, after):  # a new metre inside the passage
        if re.search(r"\[M:", body[i]):
            raise SettingsError(f"bars {first}-{last} cross a change of metre at bar {start + i}: choose bars in one "
                                f"metre (up to bar {start + i - 1}, or from bar {start + i})")
    lines = [_model_text([], [ln], len(body), i) for i, ln in enumerate(body)]
    controls = Controls(bars=len(body), tempo=request.controls.tempo)  # the score's key and metre stay
    chosen = passage.Passage(first, last, before, tuple(lines[after:]), tuple(lines[before:after]))
    return request.update(prefix=_model_text(meta, [], 0) + "".join(lines[:before]), controls=controls,
                          passage=chosen, variations=candidates)


def harmonise_request(request: ComposeRequest, abc_text: str, voice: int | None = None) -> ComposeRequest:
    """`request` set to harmonise a melody (one voice, in ABC: the user's, or read from MusicXML or
    MIDI by read_score): every tune-body line is forced to begin with the melody's bar as the first
    voice, and the model writes the other voices of the request's style after it. The header is the
    model's, with the melody's key, metre and note unit forced (and the request's tempo); the piece has
    the melody's length. A score of several voices is refused in words unless `voice` (1, 2, ... in
    the order of its V: lines) names the one to harmonise; so is one too long."""
    asked = [name for name, v in (("length", request.controls.bars), ("key", request.controls.key),
                                   ("metre", request.controls.meter)) if v is not None]
    if asked:
        raise SettingsError(f"the melody sets the piece's {' and '.join(asked)}: leave {'them' if len(asked) > 1 else 'it'} "
                            f"empty to harmonise it (transpose the melody first for another key)")
    if voice is not None:
        abc_text = voice_of(abc_text, voice)
    meta, body, _ = _score_lines(abc_text, "harmonise")
    voices = [ln for ln in meta if ln.startswith("V:")]
    if len(voices) > 1:
        raise SettingsError(f"the score has {len(voices)} voices: harmonise takes a melody, one voice (open or "
                            f"upload that voice alone, delete the others' V: lines and bars, or name the voice: "
                            f"1 to {len(voices)})")
    if len(body) > MAX_BARS:
        raise SettingsError(f"the melody has {len(body)} bars: at most {MAX_BARS} can be harmonised at once")
    field = lambda f, default: ((header_field(meta, f) or "").split() or [default])[0]  # noqa: E731 - its first word
    key = field("K", "C")
    try:
        controls = Controls(bars=len(body), key="C" if key.lower() == "none" else key,  # K:none: no signature, as C's
                            meter=field("M", "4/4"), tempo=request.controls.tempo, unit=field("L", "1/8"))
    except SettingsError as e:
        raise SettingsError(f"the melody's header cannot be kept: {e}") from e
    melody = tuple(unidecode(reduce_rests(ln)).rstrip("\n") for ln in body)
    return request.update(prefix="", controls=controls, melody=melody)


def voice_of(abc_text: str, voice: int = 1) -> str:
    """One voice of a score (1, 2, ... in the order of its V: lines) as a score of its own in ABC: the
    header's fields, that voice declared as V:1, and its bars (rests included)."""
    meta, body, _ = _score_lines(abc_text, "take a voice from")
    declared = [ln for ln in meta if ln.startswith("V:")] or ["V:1\n"]
    voice = whole(voice, f"the voice (1 to {len(declared)}, in the order of the score's V: lines)", 1, len(declared))
    name = declared[voice - 1][2:].split()[0]
    head = [ln for ln in meta if not ln.startswith(("V:", "%%score", "%%staves"))]
    bars = []
    for n, line in enumerate(body, 1):
        segment = line_segments(line).get(name) if len(declared) > 1 or "[V:" in line else R_MARKER.sub("", line).strip()
        if segment is None:
            raise SettingsError(f"voice {voice} has no bar {n} in this score: expected every voice in every bar")
        bars.append(f"[V:1]{segment}\n")
    rest = declared[voice - 1][2:].split(None, 1)
    return "".join(["X:1\n"] + head + [f"V:1 {rest[1]}" if len(rest) > 1 else "V:1\n"] + bars)


def _score_lines(abc_text: str, doing: str) -> tuple[list[str], list[str], int]:
    """A user's score as the model's lines: (metadata, tune-body lines, the printed number of the
    first: 0 with a pickup, else 1). Refused in words when it is not a score with bars."""
    problem = not_abc(abc_text)  # as Render says it: plain text is refused, not continued as a new piece
    if problem:
        raise SettingsError(problem)
    try:
        meta, body = split_tunebody("".join(interleaved(abc_text=abc_text)))
    except StageError as e:
        raise SettingsError(f"the score to {doing} cannot be read: {e}") from e
    if not body:
        raise SettingsError(f"the score has no bars to {doing}: expected ABC with a header and some notes")
    if sum(ln.startswith("V:") for ln in meta) == 1:  # a melody: its training tunes name no part
        meta = [re.sub(r'\s+s?nm="[^"]*"', "", ln) if ln.startswith("V:") else ln for ln in meta]
    first = 0 if starts_with_pickup(body, metre_bar(meta), header_unit(meta)) else 1  # as the page numbers bars
    return meta, body, first


def _model_text(meta: list[str], body: list[str], n: int, start: int = 0) -> str:
    """Metadata and tune-body lines in the model's format: each line's [r:i/j] counts a piece of `n`
    lines (the first being line `start`), rests reduced, ASCII only."""
    text = "".join(meta) + "".join(f"[r:{i}/{n - i - 1}]" + reduce_rests(ln) for i, ln in enumerate(body, start))
    return unidecode(text)  # the model reads ASCII only (lyrics and titles are gone already)


def check_score(musicxml: Path) -> tuple[Alignment | None, dict]:
    """A score's bars checked as a generated piece's are (postprocess.check_alignment: every voice
    as long as the others and as the metre), and its musical check (analyse). Any ABC layout is
    read through its MusicXML, one line per bar of every voice. (None, {}) when the score cannot
    be read that way."""
    try:
        lines = interleaved(musicxml=Path(musicxml))
    except StageError:  # xml2abc and abctoolkit fail on some odd scores: no check then
        return None, {}
    meta, body = split_tunebody("".join(lines))
    if not body:
        return None, {}
    return check_alignment(body, metre_bar(meta), header_unit(meta)), analyse("".join(lines))


def check_bars(musicxml: Path) -> Alignment | None:
    return check_score(musicxml)[0]


def open_ending(line: str) -> str:
    """The score's last bar without its final barline (|] or ||, in every voice): the music goes
    on after it, so the final barline must not stay mid-piece."""
    return re.sub(r"(\|\]|\|\|)(?=\s*(\[V:|$))", "|", line)


def check_score_file(path: str | Path, max_mb: float = 20.0) -> Path:
    """A score file as every door takes it: a file, of a score's suffix, at most `max_mb`, and ABC
    in UTF-8; a clear SettingsError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path.name or path} is not a file: expected {SCORE_KINDS}")
    if path.suffix.lower() not in SCORE_SUFFIXES:
        raise SettingsError(f"{path.name} is not a score: expected {SCORE_KINDS}")
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise SettingsError(f"{path.name} is {size / 2**20:.1f} MB: scores are limited to {max_mb:g} MB")
    if path.suffix.lower() == ".abc":
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise SettingsError(f"{path.name} is not UTF-8 text: expected ABC notation") from e
    return path


def read_score(path: str | Path, max_mb: float = 20.0) -> str:
    """A score file as ABC (for Continue, Rewrite, Transpose, Perform): .abc as it is; MusicXML
    (.musicxml, .xml, .mxl) and MIDI (.mid, .midi, notated first) read as an upload is, in a bounded
    worker (entities refused, a missing clef mended, converters' placeholder titles dropped)."""
    path = check_score_file(path, max_mb)
    if path.suffix.lower() == ".abc":
        return path.read_text(encoding="utf-8")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = render_file(path, tmp, ("abc",), "score")
        if not result.paths("abc"):
            raise SettingsError(result.failed.get("abc") or f"{path.name} could not be read as a score")
        return result.paths("abc")[0].read_text(encoding="utf-8")


def fetch_checkpoint(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """A checkpoint from the Hugging Face Hub into the standard cache (huggingface_hub; progress
    bars through tqdm). Offline or unreachable: a CadenzaError saying what to do instead."""
    from huggingface_hub import hf_hub_download  # slow to import; only this call needs it
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id.strip()):
        raise SettingsError(f"expected a Hugging Face repo id like 'ElectricAlexis/NotaGen', got {said(repo_id)}")
    if not isinstance(filename, str) or not filename.strip() or ".." in filename:
        raise SettingsError("expected the checkpoint's file name in that repo, e.g. a .pth file")
    try:
        return Path(hf_hub_download(repo_id.strip(), filename.strip(), revision=revision))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"could not download {filename} from {repo_id}: no network and not in the cache. Download it on a "
            f"machine with network (huggingface-cli download {repo_id} {filename}) and copy the file here, then "
            "give its path as the model") from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise CheckpointError(f"{repo_id} has no file {filename}") from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"downloading {filename} from {repo_id} failed: {e}") from e


# --- audio (MusicGen) ----------------------------------------------------------------------------------
@dataclass
class AudioOutput:
    """What an audio request left on disk: a WAV and a picture per variation, and a manifest."""
    result: musicgen.AudioResult
    wavs: list[Path]
    pictures: list[Path]
    manifest: Path


def load_audio_model(spec: str | Path | None = None, device=None, options: PlacementOptions | None = None,
                     local_only: bool = False):
    """A MusicGen model (default facebook/musicgen-small) from a folder or the Hugging Face cache.
    With placement options: planned first (placement.plan_for); a split runs through accelerate's
    device map (decoder layers kept whole). A replicate plan loads one copy (one audio request
    runs at a time, so more copies would sit idle). local_only: the Hugging Face cache and local
    folders only, never the network (a server whose admin has not allowed downloads)."""
    if options is None:
        dev = pick_device(device)
        return musicgen.load(spec, device=dev, dtype=default_dtype(dev, torch.float16), local_only=local_only)
    spec = str(spec or musicgen.DEFAULT_MODEL)
    try:
        plan = placement.plan_for(spec, options, musicgen=True, local_only=local_only).check_devices()
    except OSError as e:
        raise musicgen._offline_error(spec, e) from e
    if plan.kind == "split":
        device_map = {name: stage.device for stage in plan.stages for name in stage.units}
        am = musicgen.load(spec, dtype=plan.dtype, device_map=device_map, local_only=local_only)
    else:
        am = musicgen.load(spec, device=plan.stages[0].device, dtype=plan.dtype, local_only=local_only)
    am.plan = plan
    return am


@dataclass
class AudioProgress:
    """MusicGen's steps so far (every codebook step of every window counts one)."""
    steps: int
    total: int
    elapsed: float
    seed: int


def make_audio(am, request: AudioRequest, out_dir, stem: str = "audio",
               on_progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
               options: RenderOptions | None = None) -> AudioOutput:
    """An audio request -> WAVs, pictures and a manifest in out_dir (a score to perform is first
    played with the SoundFont, see _perform). Input was checked when the request was made; a model
    that cannot follow a melody is refused before any work; a cancelled run writes what was made."""
    request = request.seeded()
    if request.score is not None:
        return _perform(am, request, Path(out_dir), stem, on_progress, cancel, options)
    return _write_audio(am, request.prompt, request.settings, Path(out_dir), stem, request.melody, on_progress, cancel)


def audio_stream(am, request: AudioRequest, out_dir, stem: str = "audio", cancel: threading.Event | None = None,
                 options: RenderOptions | None = None) -> Iterator[AudioProgress | AudioOutput]:
    """make_audio as a stream: AudioProgress at most every `PROGRESS_EVERY_S`, then the
    AudioOutput. MusicGen runs in a thread (transformers reports progress through a callback);
    closing the iterator stops it within a step and waits for what it made to be written."""
    request = request.seeded()
    cancel = cancel or threading.Event()
    events: queue.Queue = queue.Queue()
    t0, last = time.monotonic(), [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = now
            events.put(AudioProgress(done, total, now - t0, request.settings.seed))

    def work() -> None:
        try:
            events.put(make_audio(am, request, out_dir, stem, progress, cancel, options))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            events.put(e)

    worker = threading.Thread(target=work, name="musicgen", daemon=True)
    worker.start()
    try:
        while True:  # bounded by MusicGen's fixed number of steps (cancel ends it within one)
            item = events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, AudioOutput):
                return
    finally:
        cancel.set()  # a no-op once finished; a closed iterator stops MusicGen
        worker.join()


def _write_audio(am, prompt: str, settings, out_dir: Path, stem: str, melody: Path | None,
                 on_progress, cancel, extra: dict | None = None) -> AudioOutput:
    wave = None
    if melody is not None:
        musicgen.check_follows_melody(am)  # before decoding the file
        wave = musicgen.load_melody(melody, am.sampling_rate, max_seconds=max(musicgen.WINDOW_SECONDS, settings.duration))
    result = musicgen.generate(am, prompt, settings, on_progress=on_progress, cancel=cancel, melody=wave,
                               melody_name=melody.name if melody is not None else None)
    stem = slug(stem)
    wavs, pictures = [], []
    for i, clip in enumerate(result.audio):
        name = stem if len(result.audio) == 1 else f"{stem}-{i + 1}"
        wavs.append(musicgen.write_wav(out_dir / f"{name}.wav", clip, result.sampling_rate))
        if clip.shape[-1] > 0:
            pictures.append(musicgen.write_picture(out_dir / f"{name}.png", clip, result.sampling_rate, prompt))
    manifest = out_dir / f"{stem}.manifest.json"
    write_atomic(manifest, json.dumps({**result.manifest(), **(extra or {})}, indent=1) + "\n")
    return AudioOutput(result, wavs, pictures, manifest)


def _perform(am, request: AudioRequest, out_dir: Path, stem: str, on_progress, cancel,
             options: RenderOptions | None) -> AudioOutput:
    """A score played by MusicGen: the ABC is rendered to audio with the SoundFont, and a melody
    model plays it again in the request's style ("string quartet, warm hall"), following that
    melody. The piece lasts as long as the score, up to the duration asked. The SoundFont WAV is
    kept beside it."""
    if not am.melody:
        raise SettingsError(f"performing a score needs a melody model ({musicgen.DEFAULT_MELODY_MODEL} or "
                            f"-melody-large); {am.name} follows text only")
    rendered = render(request.score, out_dir, ("wav",), f"{stem}-soundfont", options=options, strict=True)
    if not rendered.paths("wav"):
        raise CadenzaError(f"the score could not be played to give the melody: {rendered.failed.get('wav', 'no audio')}")
    sf_wav = rendered.paths("wav")[0]
    seconds = sf.info(str(sf_wav)).duration
    settings = dataclasses.replace(request.settings, duration=round(max(0.5, min(request.settings.duration, seconds)), 2))
    return _write_audio(am, request.prompt, settings, out_dir, stem, sf_wav, on_progress, cancel,
                        extra={"score_seconds": round(seconds, 2), "soundfont_wav": sf_wav.name})
