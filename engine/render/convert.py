"""The conversions themselves. They run inside a worker process (engine.render.worker), never in
the server, because user-supplied scores can be arbitrarily slow or large to convert."""
from __future__ import annotations

import io
import re
import wave
import zipfile
from pathlib import Path

from engine import quiet
from engine.symbolic.instruments import gm_program

SAMPLE_RATE = 44_100
TARGET_DBFS = -16.0  # gated RMS loudness the WAV is normalised to
PEAK_DBFS = -1.0  # no sample above this: no clipping
MAX_XML_BYTES = 50 * 2**20  # a MusicXML file (or an .mxl's score) larger than this is refused
MAX_UNZIPPED_BYTES = 100 * 2**20
# A MIDI file is notes, not notation: these bound what music21 is asked to quantise and notate
# (a 2 MB file of notes is hours of music; a page of 20,000 notes is past any composer's score).
MAX_MIDI_BYTES = 2 * 2**20
MAX_MIDI_NOTES = 20_000
MAX_MIDI_PARTS = 16
MIDI_SUFFIXES = (".mid", ".midi")
MIDI_DIVISORS = (4, 3)  # onsets and lengths quantised to sixteenths and eighth-note triplets
PAGE_OPTIONS = {"pageWidth": 2100, "pageHeight": 2970, "pageMarginLeft": 100, "pageMarginRight": 100,
                "pageMarginTop": 80, "pageMarginBottom": 120, "scale": 45, "footer": "none", "header": "auto",
                "breaks": "auto", "adjustPageHeight": False}  # A4 in tenths of a millimetre
# The web font verovio embeds in each SVG for its SMuFL text glyphs (tempo marks, dynamics).
WEB_FONT = re.compile(r"font-family:\s*'([^']+)';\s*src:\s*url\(data:application/font-woff2;charset=utf-8;"
                      r"base64,([A-Za-z0-9+/=]+)\)")
# Only where that font cannot be loaded: the glyphs -> look-alike Unicode a system font has. Verovio
# 6 writes tempo notes as metNote* (U+ECA0..), older versions as note* (U+E1D0..).
SMUFL_TEXT = {"\ueca3": "\U0001D15E", "\ueca5": "\u2669", "\ueca7": "\u266A", "\uecb7": ".",
              "\ue1d2": "\U0001D15D", "\ue1d3": "\U0001D15E", "\ue1d5": "\u2669", "\ue1d7": "\u266A",
              "\ue1e7": ".", "\ue520": "p", "\ue521": "m", "\ue522": "f", "\ue523": "r", "\ue524": "s",
              "\ue525": "z", "\ue526": "n"}
_LOADED_FONTS: set[str] = set()  # web fonts this (worker) process has handed to fontconfig


class ConversionError(Exception):
    """A score that cannot be converted; the message says where and why."""


# ---- ABC -> MusicXML ---------------------------------------------------------------------------

def abc_to_musicxml(abc_text: str) -> tuple[str, list[str]]:
    """abctoolkit's abc2xml (NotaGen's converter; handles interleaved voices) -> MusicXML 4.0 text."""
    from abctoolkit import abc2xml

    abc_text, dropped = quiet.drop_includes(abc_text)
    with quiet.captured() as log:
        docs = abc2xml.getXmlDocs(abc_text)
    messages = [m.strip() for m in log if m.strip() and not m.startswith("-- skipped header")]
    if not docs:
        raise ConversionError("the ABC could not be read" + (f": {locate(abc_text, messages)}" if messages else ""))
    root = docs[0]
    root.set("version", "4.0")
    xml = abc2xml.fixDoctype(root).replace("MusicXML 3.0 Partwise", "MusicXML 4.0 Partwise")
    return xml, dropped + [locate(abc_text, [m]) for m in messages][:20]


def locate(abc_text: str, messages: list[str]) -> str:
    """abc2xml reports 'line N'; say which bar of the tune body that is."""
    text = "; ".join(messages)[-500:]
    m = re.search(r"line (\d+)", text)
    if m:
        lines = abc_text.splitlines()
        n = int(m.group(1))
        body_start = next((i for i, ln in enumerate(lines) if ln.startswith("[V:") or ln.startswith("V:") and "]" in ln), None)
        if body_start is not None and n - 1 >= body_start:
            text += f" (bar {n - body_start} of the tune body)"
    return text


# ---- MusicXML input ----------------------------------------------------------------------------

def read_musicxml(path: Path) -> bytes:
    """A .musicxml/.xml file or the score inside an .mxl, size-limited and refused if it declares
    entities (a 'billion laughs' file expands without bound)."""
    from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
    from defusedxml.ElementTree import ParseError, fromstring

    data = _read_mxl(path) if zipfile.is_zipfile(path) else path.read_bytes()
    if len(data) > MAX_XML_BYTES:
        raise ConversionError(f"the MusicXML is {len(data) / 2**20:.0f} MB: at most {MAX_XML_BYTES // 2**20} MB is accepted")
    try:
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (EntitiesForbidden, ExternalReferenceForbidden, DTDForbidden) as e:
        raise ConversionError(f"the MusicXML declares entities ({type(e).__name__}): refused, such files can "
                              "expand without bound; export it again from your notation program") from e
    except ParseError as e:
        raise ConversionError(f"the file is not well-formed XML ({e})") from e
    tag = root.tag.split("}")[-1]
    if tag not in ("score-partwise", "score-timewise"):
        raise ConversionError(f"the XML is not a MusicXML score: its root is <{tag}>, expected <score-partwise>")
    return data


def midi_to_musicxml(path: Path) -> tuple[bytes, list[str]]:
    """A MIDI file -> MusicXML (music21: quantised to sixteenths and triplets, a part per track, the
    metre and key as the file declares them, a key from music21's analysis where it declares none)
    and what was done to it: drum tracks are dropped (unpitched: nothing to write in notes). MIDI
    keeps no anacrusis: bars are counted from the file's first tick, as a sequencer counts them. A
    ConversionError says what was expected of a file that is not MIDI, too large, or has nothing
    to notate."""
    data = path.read_bytes()
    if not data.startswith(b"MThd"):
        raise ConversionError("the file is not MIDI: a MIDI file begins with 'MThd' (expected a .mid or .midi "
                              "file saved by a sequencer or notation program)")
    if len(data) > MAX_MIDI_BYTES:
        raise ConversionError(f"the MIDI file is {len(data) / 2**20:.1f} MB: at most {MAX_MIDI_BYTES // 2**20} MB "
                              "of MIDI is accepted")
    from music21 import converter, key, metadata
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    try:
        score = converter.parse(path, format="midi", quantizePost=True, quarterLengthDivisors=MIDI_DIVISORS)
    except Exception as e:  # noqa: BLE001 - music21's MIDI reader raises many kinds on a broken file
        raise ConversionError(f"the MIDI file could not be read ({type(e).__name__}: {str(e)[:200]})") from e
    notes = []
    drums = [p for p in score.parts if _only_drums(p)]
    for part in drums:
        score.remove(part)
    if drums:
        notes.append(f"{len(drums)} drum track{'s' if len(drums) > 1 else ''} left out: unpitched percussion "
                     "has no notes to write")
    count = sum(len(p.recurse().notes) for p in score.parts)
    if not count:
        raise ConversionError("the MIDI file has nothing to notate: " + (
            "it holds drums only (unpitched percussion)" if drums else "it holds no notes"))
    if count > MAX_MIDI_NOTES or len(score.parts) > MAX_MIDI_PARTS:
        raise ConversionError(f"the MIDI file has {count:,} notes in {len(score.parts)} tracks: at most "
                              f"{MAX_MIDI_NOTES:,} notes in {MAX_MIDI_PARTS} tracks are notated")
    if not score.recurse().getElementsByClass(key.KeySignature):  # many sequencers write none
        found = score.analyze("key")
        for part in score.parts:
            (part.getElementsByClass("Measure").first() or part).insert(0, key.KeySignature(found.sharps))
        notes.append(f"the MIDI file declares no key: written in {found.tonic.name} {found.mode} "
                     "(music21's analysis of its notes)")
    for part in score.parts:  # accidentals as the key signature implies (MIDI import marks every one)
        part.makeAccidentals(inPlace=True, overrideStatus=True)
    score.metadata = metadata.Metadata(title=path.stem.replace("_", " "))  # MIDI has no title of its own
    return GeneralObjectExporter(score).parse(), notes


def _only_drums(part) -> bool:
    kinds = {type(n).__name__ for n in part.recurse().notes}
    return bool(kinds) and kinds <= {"Unpitched", "PercussionChord"}


MUSIC21_PLACEHOLDERS = {"Music21", "Music21 Fragment"}  # what music21 writes where a score has no composer or title
ATTRIBUTES_BEFORE_CLEF = ("divisions", "key", "time", "staves", "part-symbol", "instruments")  # MusicXML's order


def mended_musicxml(data: bytes) -> tuple[bytes, list[str]]:
    """The uploaded MusicXML with what engraving needs and nothing invented: a part with no clef
    gets one for its range (verovio drew no clef and put the key's flats below the staff), and
    music21's placeholder title and composer go. Unchanged bytes when there is nothing to mend."""
    from xml.etree import ElementTree as ET

    from defusedxml.ElementTree import fromstring

    root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    notes = []
    if root.tag != "score-partwise":  # (namespaced or timewise scores are left as they are)
        return data, notes
    changed = False
    for el in list(root.iter()):
        for child in list(el):
            if child.tag in ("creator", "movement-title", "work-title") and (child.text or "").strip() in MUSIC21_PLACEHOLDERS:
                el.remove(child)
                changed = True
    for part in root.findall("part"):
        measure = part.find("measure")
        if measure is None or part.find(".//clef") is not None:
            continue
        attributes = measure.find("attributes")
        if attributes is None:
            attributes = ET.Element("attributes")
            measure.insert(0, attributes)
        staves = int((attributes.findtext("staves") or "1").strip() or 1)
        at = max((i + 1 for i, c in enumerate(attributes) if c.tag in ATTRIBUTES_BEFORE_CLEF), default=0)
        for n, (sign, line) in enumerate(_clefs_for(part, staves), start=1):
            clef = ET.Element("clef", {"number": str(n)} if staves > 1 else {})
            ET.SubElement(clef, "sign").text, ET.SubElement(clef, "line").text = sign, line
            attributes.insert(at + n - 1, clef)
        notes.append(f"part {part.get('id')} had no clef: " + ("a treble clef was put in" if staves == 1 and
                     _clefs_for(part, 1)[0][0] == "G" else "clefs for its range were put in") + " for the engraving")
        changed = True
    return (ET.tostring(root, encoding="utf-8", xml_declaration=True) if changed else data), notes


def _clefs_for(part, staves: int) -> list[tuple[str, str]]:
    """Treble and bass for a two-staff part; one staff: treble unless most notes lie below middle C."""
    if staves > 1:
        return [("G", "2"), ("F", "4")] + [("G", "2")] * (staves - 2)
    octaves = [int(o.text) for o in part.iter("octave") if (o.text or "").strip().lstrip("-").isdigit()]
    low = sum(o < 4 for o in octaves)
    return [("F", "4")] if octaves and low > len(octaves) / 2 else [("G", "2")]


def _read_mxl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if not i.filename.startswith("META-INF/")]
        if sum(i.file_size for i in z.infolist()) > MAX_UNZIPPED_BYTES:
            raise ConversionError(f"the .mxl unpacks to more than {MAX_UNZIPPED_BYTES // 2**20} MB")
        root = None
        if "META-INF/container.xml" in z.namelist():
            m = re.search(rb'full-path="([^"]+)"', z.read("META-INF/container.xml"))
            root = m.group(1).decode() if m else None
        if root is None:
            root = next((i.filename for i in infos if i.filename.endswith((".xml", ".musicxml"))), None)
        if root is None or root not in z.namelist():
            raise ConversionError("the .mxl holds no MusicXML score")
        return z.read(root)


# ---- MusicXML -> MIDI --------------------------------------------------------------------------

def musicxml_to_midi(xml_path: Path, midi_path: Path) -> dict:
    """music21: a track and channel per part, a GM program that fits the part's name, the score's tempo."""
    import mido
    from music21 import converter, instrument, midi, repeat


    score = converter.parse(str(xml_path), format="musicxml")
    parts = []
    for i, part in enumerate(score.parts):
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        name = part.partName or f"Part {i + 1}"
        inst = instrument.Instrument()
        inst.partName, inst.instrumentName = name, name
        inst.midiProgram = gm_program(name)
        part.insert(0, inst)
        parts.append({"name": name, "program": inst.midiProgram,
                      "notes": sum(len(n.pitches) for n in part.recurse().notes)})
    warnings = []
    try:
        mf = midi.translate.streamToMidiFile(score)
    except repeat.ExpanderException as e:
        # Repeats that do not pair up (common in generated pieces): play the music as written.
        _drop_repeats(score)
        mf = midi.translate.streamToMidiFile(score)
        warnings.append(f"the repeats could not be followed ({e}); the audio plays the score as written")
    mf.open(str(midi_path), "wb")
    try:
        mf.write()
    finally:
        mf.close()
    _one_channel_per_part(midi_path, parts, mido)
    return {"parts": parts, "seconds": mido.MidiFile(str(midi_path)).length, "longest_note": _longest_note(score),
            "warnings": warnings}


def _drop_repeats(score) -> None:
    """Repeat barlines become plain ones; repeat expressions (D.C., segno, coda) are removed."""
    from music21 import bar, repeat

    for b in list(score.recurse().getElementsByClass(bar.Repeat)):
        site = b.activeSite
        plain = bar.Barline("regular")
        if site is not None and getattr(site, "rightBarline", None) is b:
            site.rightBarline = plain
        elif site is not None and getattr(site, "leftBarline", None) is b:
            site.leftBarline = None
    for r in list(score.recurse().getElementsByClass(repeat.RepeatExpression)):
        if r.activeSite is not None:
            r.activeSite.remove(r)


def _longest_note(score) -> dict | None:
    """Where the longest note is: the first suspect when a score lasts absurdly long."""
    best = None
    for part in score.parts:
        for n in part.recurse().notesAndRests:
            q = float(n.quarterLength)
            if best is None or q > best["quarters"]:
                best = {"quarters": q, "bar": n.measureNumber, "part": part.partName or "?"}
    return best


def _one_channel_per_part(midi_path: Path, parts: list[dict], mido) -> None:
    """music21 shares a channel between parts with the same instrument; give each part its own
    (skipping channel 10, drums) with its program at the start, so players can mix them."""
    mf = mido.MidiFile(str(midi_path))
    channels = [c for c in range(16) if c != 9]
    note_tracks = [t for t in mf.tracks if any(m.type == "note_on" for m in t)]
    for i, (track, part) in enumerate(zip(note_tracks, parts)):
        ch = channels[i % len(channels)]
        part["channel"] = ch
        for j, msg in enumerate(track):
            if hasattr(msg, "channel"):
                track[j] = msg.copy(channel=ch)
            if msg.type == "program_change":
                track[j] = track[j].copy(program=part["program"])
        if not any(m.type == "program_change" for m in track):
            track.insert(0, mido.Message("program_change", channel=ch, program=part["program"], time=0))
    mf.save(str(midi_path))


# ---- MIDI -> WAV -------------------------------------------------------------------------------

def default_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def midi_to_wav(midi_path: Path, wav_path: Path, soundfont: Path, max_seconds: float) -> dict:
    """tinysoundfont renders the MIDI offline; loudness normalised, peaks limited; 44.1 kHz 16-bit stereo."""
    import mido
    import numpy as np
    import tinysoundfont

    length = mido.MidiFile(str(midi_path)).length
    if length > max_seconds:
        raise ConversionError(f"the score lasts {length / 60:.0f} minutes: the WAV is limited to "
                              f"{max_seconds / 60:.0f} minutes (a note of absurd length?)")
    if not soundfont.is_file():
        raise ConversionError(f"SoundFont not found: {soundfont}")
    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
    try:
        synth.sfload(str(soundfont))
    except tinysoundfont.SoundFontException as e:
        raise ConversionError(f"{soundfont} is not a usable SoundFont ({e})") from e
    seq = tinysoundfont.Sequencer(synth)
    seq.midi_load(str(midi_path))
    total = int((length + 1.5) * SAMPLE_RATE)  # 1.5 s for the last notes to ring out
    block = 8192
    out = np.empty((total + block) * 2, dtype=np.float32)
    for done in range(0, total, block):  # bounded: total samples were fixed above
        out[2 * done: 2 * (done + block)] = np.frombuffer(synth.generate(block), dtype=np.float32)
    audio = out[: 2 * total].reshape(-1, 2)
    audio, gain_db = normalise(audio)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return {"seconds": total / SAMPLE_RATE, "score_seconds": length, "gain_db": gain_db,
            "peak_dbfs": float(20 * np.log10(max(np.abs(audio).max(), 1e-9)))}


def normalise(audio):
    """Gated RMS loudness (400 ms blocks, silence and quiet blocks gated out, as in BS.1770 but
    without K-weighting) brought to TARGET_DBFS, then the gain lowered if a peak would pass PEAK_DBFS."""
    import numpy as np

    mono = audio.mean(axis=1)
    n = len(mono) // (SAMPLE_RATE * 4 // 10)
    if n == 0 or not np.any(mono):
        return audio, 0.0
    blocks = mono[: n * (SAMPLE_RATE * 4 // 10)].reshape(n, -1)
    power = (blocks ** 2).mean(axis=1)
    loud = power[power > 10 ** (-70 / 10)]
    if loud.size == 0:
        return audio, 0.0
    loud = loud[loud > loud.mean() * 10 ** (-10 / 10)]
    level = 10 * np.log10(loud.mean())
    gain_db = TARGET_DBFS - level
    peak = np.abs(audio).max()
    gain_db = min(gain_db, PEAK_DBFS - 20 * np.log10(peak))
    return audio * 10 ** (gain_db / 20), float(gain_db)


# ---- MusicXML -> SVG pages, PDF, PNG -----------------------------------------------------------

def musicxml_to_svg(xml_text: str) -> list[str]:
    """verovio: A4 pages with part names; page numbers added at the foot of every page."""
    import verovio

    tk = verovio.toolkit()
    tk.setOptions(PAGE_OPTIONS)
    if not tk.loadData(xml_text):
        raise ConversionError("verovio could not read the MusicXML")
    _print_composer(tk)
    count = tk.getPageCount()
    if count == 0:
        raise ConversionError("verovio laid out no page: the score has no music")
    return [add_page_number(tk.renderToSVG(i), i, count) for i in range(1, count + 1)]


def _print_composer(tk) -> None:
    """verovio keeps a MusicXML score's composer (<creator type="composer">) in its MEI header as
    respStmt/persName, but draws the page head from titleStmt/composer only: without this the
    page has the title and no composer. Scores with their own page head (MusicXML credits) keep it."""
    mei = tk.getMEI()
    stmt = re.search(r"<titleStmt[^>]*>.*?</titleStmt>", mei, flags=re.S)
    if stmt is None or "<pgHead" in mei or "<composer" in stmt.group(0):
        return
    names = re.findall(r'<persName role="composer">(.*?)</persName>', stmt.group(0), flags=re.S)
    if names:
        at = stmt.end() - len("</titleStmt>")
        if not tk.loadData(mei[:at] + "".join(f"<composer>{n}</composer>" for n in names) + mei[at:]):
            tk.loadData(mei)  # the score as read, without the composer line


def add_page_number(svg: str, page: int, pages: int) -> str:
    m = re.search(r'<svg[^>]*width="(\d+(?:\.\d+)?)px"[^>]*height="(\d+(?:\.\d+)?)px"', svg)
    if not m:
        return svg
    w, h = float(m.group(1)), float(m.group(2))
    label = (f'<text x="{w / 2:.0f}" y="{h - h * 0.02:.0f}" font-family="Times, serif" font-size="{h * 0.012:.0f}" '
             f'text-anchor="middle" class="page-number">{page} / {pages}</text>')
    return svg[: svg.rfind("</svg>")] + label + "</svg>"


def printable(svg: str) -> bytes:
    """The SVG as cairo draws it right: with the music font it embeds loaded (load_web_fonts), or,
    where that cannot be done, its SMuFL text glyphs swapped for Unicode look-alikes."""
    fonts = dict(WEB_FONT.findall(svg))  # family -> its WOFF2 data
    for family in set(fonts) - load_web_fonts(fonts):
        for smufl, uni in SMUFL_TEXT.items():
            svg = svg.replace(smufl, uni)
        svg = svg.replace(f'font-family="{family}"', 'font-family="DejaVu Sans"')
    return svg.encode()


def load_web_fonts(fonts: dict[str, str]) -> set[str]:
    """Cairo cannot read the web fonts an SVG embeds (@font-face data), and no system font has
    SMuFL's code points, so the tempo mark's note came out as an empty box. Each embedded font,
    decoded to OpenType (a file in the temp folder) and added to fontconfig for this process, is
    what cairo then draws with and embeds in the PDF. fonts: family -> WOFF2 data, base64.
    -> the families cairo can use."""
    loaded = set()
    for family, data in fonts.items():
        if family not in _LOADED_FONTS and _fontconfig_add(_font_file(family, data)):
            _LOADED_FONTS.add(family)
        if family in _LOADED_FONTS:
            loaded.add(family)
    return loaded


def _font_file(family: str, woff2_base64: str) -> Path:
    import base64
    import hashlib
    import os
    import tempfile

    from fontTools.ttLib import TTFont

    digest = hashlib.sha256(woff2_base64.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"cadenza-fonts-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():  # someone else's: a font could be planted there
        folder = Path(tempfile.mkdtemp(prefix="cadenza-fonts-"))
    path = folder / f"{re.sub(r'[^A-Za-z0-9]', '', family)}-{digest}.otf"
    if not path.is_file():  # decoded once (half a second): later workers reuse the file
        font = TTFont(io.BytesIO(base64.b64decode(woff2_base64)))
        font.flavor = None  # WOFF2 -> plain OpenType, which FreeType reads
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        font.save(str(tmp))
        os.replace(tmp, path)  # atomic: another worker never reads half a font
    return path


def _fontconfig_add(path: Path) -> bool:
    """Adds a font file to fontconfig's current configuration, the one cairo's text uses."""
    import ctypes
    import ctypes.util
    import sys

    # Linux: the library cairo itself links to (find_library would start a subprocess to look)
    name = "libfontconfig.so.1" if sys.platform.startswith("linux") else ctypes.util.find_library("fontconfig")
    if name is None:  # no fontconfig: printable() falls back to Unicode look-alikes
        return False
    try:
        fc = ctypes.CDLL(name)
    except OSError:
        return False
    fc.FcConfigAppFontAddFile.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return bool(fc.FcConfigAppFontAddFile(None, str(path).encode()))


def svg_to_pdf(svgs: list[str], pdf_path: Path) -> int:
    import cairosvg
    from pypdf import PdfWriter

    writer = PdfWriter()
    for svg in svgs:
        writer.append(io.BytesIO(cairosvg.svg2pdf(bytestring=printable(svg))))
    with open(pdf_path, "wb") as f:
        writer.write(f)
    return len(writer.pages)


def svg_to_png(svg: str, png_path: Path, width: int = 800) -> None:
    import cairosvg

    cairosvg.svg2png(bytestring=printable(svg), write_to=str(png_path), output_width=width, background_color="white")


# ---- transposition -------------------------------------------------------------------------------

ABC_KEY = re.compile(r"^K:[ \t]*([A-Ga-g][#b]?)[ \t]*([A-Za-z]*)", re.M)


def transpose_musicxml(abc_text: str, to_key: str) -> tuple[str, str]:
    """An ABC score moved to another tonic (music21 spells the notes and the key signature) ->
    (MusicXML, what was done). The mode stays the score's: G major to D is D major. The shorter
    way round is taken (at most a tritone up or a fourth down)."""
    from music21 import converter, interval, pitch

    from engine.symbolic.controls import check_key

    m = ABC_KEY.search(abc_text)
    if m is None:
        raise ConversionError("the score has no key (K: line) to transpose from")
    source, target = m.group(1)[0].upper() + m.group(1)[1:], check_key(to_key)
    tonic = re.match(r"[A-G][#b]?", target).group(0)
    start, end = (pitch.Pitch(n.replace("b", "-") + "4") for n in (source, tonic))
    if end.midi - start.midi > 6:
        end.octave -= 1
    elif end.midi - start.midi < -5:
        end.octave += 1
    xml, _ = abc_to_musicxml(abc_text)
    with quiet.captured():
        score = converter.parseData(xml, format="musicxml")
        step = interval.Interval(noteStart=start, noteEnd=end)
        score.transpose(step, inPlace=True)
        from music21.musicxml.m21ToXml import GeneralObjectExporter

        out = GeneralObjectExporter(score).parse().decode("utf-8")
    mode = {"": "major", "m": "minor", "min": "minor"}.get(m.group(2).lower(), m.group(2))
    moved = f"{step.directedNiceName.lower()}" if step.semitones else "not moved (it is in that key already)"
    return out, f"transposed from {source} {mode} to {tonic} {mode}: {moved}"
