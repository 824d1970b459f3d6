"""`python -m engine dataset ...`: scores -> the model's text format, labelled, deduplicated, split.

Each source piece is converted on its own (in parallel worker processes, each piece under a time
limit) and its result cached under OUT/cache/, so an interrupted build resumes where it stopped.
Then the cached pieces are deduplicated (same tune body), split train/validation by a hash of
the body (deterministic), and written as OUT/train.jsonl.gz, OUT/val.jsonl.gz with a report of
pieces per label and of everything skipped and why.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing as mp
import re
import signal
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from engine import quiet
from engine.errors import CadenzaError
from engine.symbolic.labels import infer_instrumentation
from engine.symbolic.abcformat import clean_part_names, interleave, musicxml_to_abc, to_model_text, xml_to_abc
from engine.symbolic.harmony import key_alterations, read_bar
from engine.symbolic.patches import split_tunebody
from engine.symbolic.postprocess import metre_bar
from engine.symbolic.prompts import Prompt

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".abc", ".krn")
KEYS = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
PIECE_SECONDS = 60  # time limit for converting one piece


@dataclass
class Source:
    id: str  # stable name: folder/file[#tune]
    path: str
    tune: int | None  # index of the tune in an ABC collection
    period: str
    composer: str
    instrumentation: str | None  # None: decided from the parts
    unnamed: str | None = None  # the instrumentation when the parts have no names


def corpus_sources(labels_path: Path | None = None, cap_scale: float = 1.0) -> tuple[list[Source], list[dict]]:
    """music21's bundled corpus, labelled from assets/corpus_labels.json (folders without a label
    are reported as skipped)."""
    from music21 import corpus

    labels = json.loads((labels_path or ASSETS / "corpus_labels.json").read_text())
    root = Path(corpus.__file__).parent
    sources, skipped, per_folder = [], [], Counter()
    for path in sorted(corpus.getPaths()):
        rel = Path(path).relative_to(root).as_posix()
        folder = rel.split("/")[0]
        label = labels.get(folder)
        if label is None:
            skipped.append({"id": rel, "reason": f"no label for the folder '{folder}'"})
            continue
        if Path(path).suffix.lower() not in SCORE_SUFFIXES:
            skipped.append({"id": rel, "reason": f"{Path(path).suffix} files are not scores we convert"})
            continue
        cap = int(label.get("cap", 10_000) * cap_scale)
        for tune in _tunes(Path(path)):
            if per_folder[folder] >= cap:
                break
            per_folder[folder] += 1
            sources.append(Source(rel + (f"#{tune}" if tune is not None else ""), str(path), tune, label["period"],
                                  label["composer"], label.get("instrumentation"), label.get("unnamed")))
    return sources, skipped


def folder_sources(folder: str | Path, period: str, composer: str, instrumentation: str | None) -> list[Source]:
    """A user's folder of MusicXML / MXL / ABC files, all under one label (fine-tuning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CadenzaError(f"{folder} is not a folder: expected a folder of .musicxml, .mxl, .xml or .abc files")
    sources = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SCORE_SUFFIXES):
        for tune in _tunes(path):
            rel = path.relative_to(folder).as_posix()
            sources.append(Source(rel + (f"#{tune}" if tune is not None else ""), str(path), tune, period, composer,
                                  instrumentation))
    if not sources:
        raise CadenzaError(f"{folder} holds no scores: expected .musicxml, .mxl, .xml or .abc files")
    return sources


def _tunes(path: Path) -> list[int | None]:
    """An ABC file may hold many tunes (each X: starts one); other files hold one piece."""
    if path.suffix.lower() != ".abc":
        return [None]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [None]
    n = len(re.findall(r"^X:", text, flags=re.M))
    return list(range(n)) if n > 1 else [None]


# ---- one piece ---------------------------------------------------------------------------------

def convert_source(src: Source, transpose: tuple[int, ...] = ()) -> dict:
    """-> {"id", "labels", "text", "augmented": [texts], "bars", "voices"} or {"id", "skipped": reason}."""
    def too_slow(*_):
        raise CadenzaError(f"took longer than {PIECE_SECONDS}s")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(PIECE_SECONDS)
    try:
        return _convert(src, transpose)
    except CadenzaError as e:
        return {"id": src.id, "skipped": str(e)}
    except Exception as e:  # the converters raise anything on odd scores; one piece never stops a build
        return {"id": src.id, "skipped": f"{type(e).__name__}: {str(e)[:200]}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _convert(src: Source, transpose: tuple[int, ...]) -> dict:
    abc = ascii_only(_source_abc(src))
    lines = interleave(abc)
    meta, body = split_tunebody("".join(lines))
    if not body or not any(re.search(r"[A-Ga-g]", ln) for ln in body):
        raise CadenzaError("the score has no notes")
    instrumentation = src.instrumentation or infer_instrumentation([clean_part_names(ln) for ln in meta],
                                                                   src.unnamed)
    prompt = Prompt(src.period, src.composer, instrumentation)
    text = to_model_text(lines, prompt.lines())
    augmented = []
    for shift in transpose:
        moved = _transposed(abc, shift)
        if moved:
            augmented.append(to_model_text(interleave(moved), prompt.lines()))
    voices = len([ln for ln in meta if ln.startswith("V:")]) or 1
    return {"id": src.id, "labels": [src.period, src.composer, instrumentation], "text": text,
            "augmented": augmented, "bars": len(body), "voices": voices}


def ascii_only(text: str) -> str:
    """The model reads 7-bit ASCII: accents transliterated (as NotaGen's data is), the rest dropped."""
    from unidecode import unidecode

    return "".join(c for c in unidecode(text) if ord(c) < 128)


def _source_abc(src: Source) -> str:
    path = Path(src.path)
    suffix = path.suffix.lower()
    if suffix in (".mxl", ".xml", ".musicxml"):
        return musicxml_to_abc(path, timeout=0)
    if suffix == ".abc":
        text = path.read_text(encoding="utf-8", errors="replace")
        if src.tune is not None:
            text = re.split(r"^(?=X:)", text, flags=re.M)[1:][src.tune]
        text = close_phrase_bars(text)
        return xml_to_abc(rebar_melody(text) or _abc_to_xml(text), timeout=0)
    if suffix == ".krn":
        from music21 import converter
        from music21.musicxml.m21ToXml import GeneralObjectExporter

        return xml_to_abc(GeneralObjectExporter(converter.parse(str(path))).parse(), timeout=0)
    raise CadenzaError(f"{path.suffix} is not a score format we convert")


LINE_END_BAR = re.compile(r"(\||:|\]|::)\s*$")


def close_phrase_bars(abc: str) -> str:
    """Folk collections in ABC (the Essen songs above all) write one phrase a line and leave out
    the barline where a phrase ends on a bar's end: `| d4d4` then `z2d4d2 |` is two bars of 4/2,
    but read as written it is one bar of double length (24.7% of the German tunes' bars were
    wrong). A line that ends without a barline gets one when the bar it ends is full; a phrase
    that ends mid-bar (its next line starts with the rest of the bar) is left as it is."""
    head, _, body = abc.partition("\nK:")
    if not body:
        return abc
    key_line, _, tune = body.partition("\n")
    metre = re.search(r"^M:\s*(\S+)", head, re.M)
    unit = re.search(r"^L:\s*(\d+/\d+)", head, re.M)
    bar = metre_bar([f"M:{metre.group(1)}\n" if metre else "", f"L:{unit.group(1) if unit else '1/8'}\n"])
    if bar is None:
        return abc
    key = key_alterations(key_line)
    out, open_bar = [], Fraction(0)
    for line in tune.split("\n"):
        if not line.strip() or re.match(r"^[A-Za-z]:|^%", line):
            out.append(line)
            continue
        last = re.split(r"\|+|:\||\|:|::", line)[-1]  # what follows the line's last barline
        length = sum((e.length for e in read_bar(last, key)), Fraction(0))
        open_bar = length + (open_bar if len(re.split(r"\|", line)) == 1 else 0)
        if not LINE_END_BAR.search(line) and open_bar == bar:
            line, open_bar = line.rstrip() + " |", Fraction(0)
        out.append(line)
    return head + "\nK:" + key_line + "\n" + "\n".join(out)


REPEATS = re.compile(r"\|:|:\||::|\|\s*\[?[1-9]|\[[1-9]")  # repeats and endings: their order is not the notes'


def rebar_melody(abc: str) -> bytes | None:
    """A one-voice tune whose barlines do not keep its metre (the Essen songs bar their phrases
    irregularly: music21 reads altdeu10 #11 in 4/2 as bars of 2, 8, 8, 4, 8, 4, 8, 12 ... quarters)
    barred again by the metre from its pickup, notes tied over the new barlines, as MusicXML;
    None when it keeps its metre already, or cannot be barred so: several voices, repeats or
    endings, a metre change, or notes that do not add up to whole bars after the pickup."""
    import copy

    from music21 import converter, meter, note, stream
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    head, _, body = abc.partition("\nK:")
    metre = re.search(r"^M:\s*(\d+/\d+|C\|?)\s*$", head, re.M)
    if not metre or REPEATS.search(body) or re.search(r"^[VM]:|\[[VM]:", body, re.M) or "V:" in head:
        return None
    signature = meter.TimeSignature({"C": "4/4", "C|": "2/2"}.get(metre.group(1), metre.group(1)))
    with quiet.captured():
        score = converter.parse(abc, format="abc")
    parts = list(score.parts) if score.parts else [score]
    if len(parts) != 1:
        return None
    # (music21 gives an irregular bar a time signature of its own: the header's is the metre)
    part, full = parts[0], signature.barDuration.quarterLength
    lengths = [m.highestTime for m in part.getElementsByClass("Measure")]
    if len(lengths) < 3 or all(q == full for q in lengths[1:-1]):
        return None
    pickup = lengths[0] if lengths[0] < full else 0
    flat = stream.Part()
    flat.insert(0, signature)
    key = part.recurse().getElementsByClass("KeySignature").first()
    if key is not None:
        flat.insert(0, copy.deepcopy(key))
    shift = full - pickup if pickup else 0
    if shift:
        flat.insert(0, note.Rest(quarterLength=shift))  # so that the pickup ends where a bar does
    for n in part.flatten().notesAndRests:
        flat.insert(shift + n.getOffsetInHierarchy(part), copy.deepcopy(n))
    barred = flat.makeMeasures()
    barred.makeTies(inPlace=True)
    measures = list(barred.getElementsByClass("Measure"))
    if shift:  # the rest goes again: the first bar is the pickup it was
        first = measures[0]
        first.remove(first.notesAndRests.first())
        for el in first.notesAndRests:
            el.offset -= shift
        first.paddingLeft = shift
    last = measures[-1]
    for rest in [r for r in last.getElementsByClass(note.Rest) if r.style.hideObjectOnPrint]:
        last.remove(rest)  # makeMeasures fills the last bar up: the tune ends where it ends
    last.paddingRight = full - last.highestTime  # (and the exporter would fill it with a hidden rest)
    if any(m.highestTime != full for m in measures[1:-1]):
        return None
    with quiet.captured():
        return GeneralObjectExporter(barred).parse()


def _abc_to_xml(abc: str) -> bytes:
    import xml.etree.ElementTree as ET

    from abctoolkit import abc2xml

    with quiet.captured():
        docs = abc2xml.getXmlDocs(quiet.drop_includes(abc)[0])
    if not docs:
        raise CadenzaError("the ABC tune could not be read")
    return ET.tostring(docs[0], encoding="utf-8")


def _transposed(abc: str, shift: int) -> str | None:
    """The per-voice ABC moved by `shift` semitones (abctoolkit), or None where it cannot be."""
    from abctoolkit.transpose import Key2index, transpose_an_abc_text

    m = re.search(r"^K:\s*([A-G][b#]?)", abc, flags=re.M)
    if not m or m.group(1) not in Key2index:
        return None
    des = KEYS[(Key2index[m.group(1)] + shift) % 12]
    lines = [ln + "\n" for ln in abc.splitlines() if ln.strip()]
    try:
        return transpose_an_abc_text(lines, des)
    except Exception:  # abctoolkit's transposer rejects some notations; the piece keeps its key
        return None


# ---- the whole build ---------------------------------------------------------------------------

def _cache_path(out: Path, source_id: str) -> Path:
    return out / "cache" / (hashlib.sha1(source_id.encode()).hexdigest() + ".json")


def _convert_job(args) -> dict:
    src, transpose = args
    return convert_source(Source(**src), tuple(transpose))


def build(sources: list[Source], out: str | Path, workers: int = 2, transpose: tuple[int, ...] = (),
          val_fraction: float = 0.05, skipped: list[dict] | None = None, progress=None) -> dict:
    """Converts what is not cached yet, then assembles train/val files and the report."""
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    todo = [s for s in sources if not _cache_path(out, s.id).is_file()]
    jobs = [(asdict(s), list(transpose)) for s in todo]
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, workers)) as pool:
        for i, result in enumerate(pool.imap_unordered(_convert_job, jobs, chunksize=4), 1):
            path = _cache_path(out, result["id"])
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)  # a cache entry is whole or absent: safe to resume after a kill
            if progress:
                progress(i, len(jobs))
    return assemble(sources, out, val_fraction, skipped or [])


def body_key(text: str) -> str:
    _, body = split_tunebody(text)
    return hashlib.sha1("".join(re.sub(r"^\[r:[^\]]*\]", "", ln) for ln in body).encode()).hexdigest()


def assemble(sources: list[Source], out: Path, val_fraction: float, skipped: list[dict]) -> dict:
    seen: dict[str, str] = {}
    train, val, skipped = [], [], list(skipped)
    for s in sources:
        entry = json.loads(_cache_path(out, s.id).read_text())
        if "skipped" in entry:
            skipped.append({"id": s.id, "reason": entry["skipped"]})
            continue
        key = body_key(entry["text"])
        if key in seen:
            skipped.append({"id": s.id, "reason": f"duplicate of {seen[key]}"})
            continue
        seen[key] = s.id
        held_out = int(key[:8], 16) / 16**8 < val_fraction
        piece = {"id": s.id, "labels": entry["labels"], "text": ascii_only(entry["text"]), "bars": entry["bars"]}
        if held_out:
            val.append(piece)
        else:
            train.append(piece)
            train += [{**piece, "id": f"{s.id}@t{i + 1}", "text": ascii_only(t)} for i, t in enumerate(entry["augmented"])]
    for name, rows in (("train", train), ("val", val)):
        with gzip.open(out / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    per_label = Counter(" / ".join(p["labels"]) for p in train if "@t" not in p["id"])
    per_label_val = Counter(" / ".join(p["labels"]) for p in val)
    report = {"train_pieces": len(train), "train_originals": sum(per_label.values()), "val_pieces": len(val),
              "per_label": {k: {"train": per_label[k], "val": per_label_val[k]}
                            for k in sorted(set(per_label) | set(per_label_val))},
              "skipped": skipped, "skipped_reasons": Counter(_reason_kind(s["reason"]) for s in skipped)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _reason_kind(reason: str) -> str:
    return "duplicate" if reason.startswith("duplicate of") else reason.split("(")[0].split(":")[0][:60]


def read_split(folder: str | Path, split: str) -> list[dict]:
    path = Path(folder) / f"{split}.jsonl.gz"
    if not path.is_file():
        raise CadenzaError(f"{path} not found: build the dataset first (python -m engine dataset build)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def print_report(report: dict, file=None) -> None:
    import sys

    file = file or sys.stdout
    print(f"{'period / composer / instrumentation':62s} {'train':>6s} {'val':>5s}", file=file)
    for label, n in report["per_label"].items():
        print(f"{label[:62]:62s} {n['train']:6d} {n['val']:5d}", file=file)
    print(f"pieces: {report['train_originals']} train (+{report['train_pieces'] - report['train_originals']} "
          f"transposed), {report['val_pieces']} validation; skipped {len(report['skipped'])}:", file=file)
    for reason, n in sorted(report["skipped_reasons"].items(), key=lambda x: -x[1]):
        print(f"  {n:5d}  {reason}", file=file)
