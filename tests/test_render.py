"""Every export from real scores of music21's corpus, and bad input that must fail cleanly."""
import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from engine.errors import CadenzaError
from engine.render.convert import SAMPLE_RATE
from engine.symbolic.instruments import gm_program
from engine.render.pipeline import FORMATS, RenderOptions, render, render_file
from engine.symbolic.abcformat import interleave, musicxml_to_abc, to_model_text
from engine.symbolic.postprocess import to_abc

SCHEMA = SHARED / "musicxml" / "musicxml.xsd"
TAIL_SECONDS = 1.5  # the WAV lets the last notes ring this long
WORKS = {  # name: (corpus path, tune number in a collection)
    "chorale": ("bach/bwv66.6", None),
    "quartet": ("mozart/k80/movement1", None),
    "keyboard": ("schoenberg/opus19/movement2", None),
    "folk": ("oneills1850/0001-0050.abc", 3),
}


def corpus_musicxml(name: str, tmp: Path) -> Path:
    from music21 import corpus

    work, number = WORKS[name]
    if number is None and not work.endswith(".abc"):
        return Path(corpus.getWork(work))
    score = corpus.parse(work, number=number)
    return Path(score.write("musicxml", fp=str(tmp / f"{name}.musicxml")))


def training_style_abc(xml: Path) -> str:
    """As the training data is made: xml2abc -d 8 -x, bar comments out, voices interleaved, then
    the model's format, then back to ABC as generated pieces are."""
    return to_abc(to_model_text(interleave(musicxml_to_abc(xml)))).abc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = {}
    for name in WORKS:
        tmp = tmp_path_factory.mktemp(name)
        xml = corpus_musicxml(name, tmp)
        abc = training_style_abc(xml)
        t = time.monotonic()
        result = render(abc, tmp / "out", stem=f"{name}-seed1", meta={"prompt": {"test": name}})
        out[name] = (xml, result, time.monotonic() - t)
    return out


def notes_per_part(score):
    return [sum(len(n.pitches) for n in p.recurse().notes) for p in score.parts]


@pytest.mark.parametrize("name", list(WORKS))
def test_every_export_succeeds(rendered, name):
    _, result, _ = rendered[name]
    assert result.failed == {}
    assert set(result.status) == set(FORMATS)
    for fmt in FORMATS:
        for p in result.paths(fmt):
            assert p.is_file() and p.stat().st_size > 0 and p.name.startswith(f"{name}-seed1")


@pytest.mark.parametrize("name", list(WORKS))
def test_musicxml_is_valid_and_keeps_parts_and_notes(rendered, name):
    from lxml import etree
    from music21 import converter

    xml, result, _ = rendered[name]
    (path,) = result.paths("musicxml")
    if SCHEMA.is_file():
        schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
        doc = etree.parse(str(path))
        assert schema.validate(doc), schema.error_log.last_error
        assert doc.getroot().get("version") == "4.0"
    original, ours = converter.parse(str(xml)), converter.parse(str(path))
    assert len(ours.parts) == len(original.parts)
    assert notes_per_part(ours) == notes_per_part(original)
    assert [p.partName for p in ours.parts] == [p.partName for p in original.parts] or name == "folk"


@pytest.mark.parametrize("name", list(WORKS))
def test_midi_has_a_track_and_program_per_part(rendered, name):
    import mido

    _, result, _ = rendered[name]
    (path,) = result.paths("midi")
    parts = result.manifest["score"]["parts"]
    tracks = [t for t in mido.MidiFile(str(path)).tracks if any(m.type == "note_on" for m in t)]
    assert len(tracks) == len(parts)
    for track, part in zip(tracks, parts):
        programs = {m.program for m in track if m.type == "program_change"}
        channels = {m.channel for m in track if m.type == "note_on"}
        assert programs == {gm_program(part["name"])} == {part["program"]}
        assert channels == {part["channel"]}
    assert len({p["channel"] for p in parts}) == len(parts)


def test_programs_fit_the_parts(rendered):
    programs = {n: [p["program"] for p in rendered[n][1].manifest["score"]["parts"]] for n in WORKS}
    assert programs["chorale"] == [52] * 4  # choir
    assert programs["quartet"] == [40, 40, 41, 42]  # violins, viola, cello
    assert set(programs["keyboard"]) == {0}  # piano


@pytest.mark.parametrize("name", list(WORKS))
def test_wav_is_audible_and_as_long_as_the_score(rendered, name):
    from music21 import converter

    xml, result, _ = rendered[name]
    (path,) = result.paths("wav")
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (SAMPLE_RATE, 2, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        seconds = w.getnframes() / SAMPLE_RATE
    assert np.sqrt(np.mean(audio ** 2)) > 0.01  # not silent
    assert np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-3  # peaks limited at -1 dBFS: no clipping
    expected = performed_seconds(converter.parse(str(xml)))
    assert abs((seconds - TAIL_SECONDS) - expected) <= 0.05 * expected


def performed_seconds(score) -> float:
    """The score's length with its repeats played, at its (constant) tempo; 120 when it has none."""
    from music21 import repeat, tempo

    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    bpm = marks[0].getQuarterBPM() if marks else 120.0
    try:
        score = score.expandRepeats()
    except repeat.ExpanderException:
        pass
    return score.highestTime * 60 / bpm


@pytest.mark.parametrize("name", list(WORKS))
def test_sheet_music_pages(rendered, name):
    from pypdf import PdfReader

    _, result, _ = rendered[name]
    svgs = result.paths("svg")
    assert svgs and all('class="note"' in p.read_text() for p in svgs[:1])
    assert all(f">{i} / {len(svgs)}<" in p.read_text() for i, p in enumerate(svgs, 1))  # page numbers
    assert len(PdfReader(str(result.paths("pdf")[0])).pages) == len(svgs)
    assert result.paths("png")[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(WORKS))
def test_manifest_and_bundle_are_complete(rendered, name):
    import zipfile

    _, result, _ = rendered[name]
    manifest = json.loads((result.out_dir / f"{result.stem}.manifest.json").read_text())
    for key in ("engine_version", "created", "source", "prompt", "score", "exports", "warnings"):
        assert key in manifest
    assert all(manifest["exports"][f]["ok"] for f in FORMATS)
    assert all("seconds" in manifest["exports"][f] for f in FORMATS)
    with zipfile.ZipFile(result.paths("zip")[0]) as z:
        names = set(z.namelist())
    # every file but those over 16 MB (the quartet's 285 s WAV), which the manifest names
    big = {p.name for f in FORMATS if f != "zip" for p in result.paths(f) if p.stat().st_size > 16 * 2**20}
    expected = {p.name for f in FORMATS if f != "zip" for p in result.paths(f)} | {"manifest.json"}
    assert names == expected - big and set(manifest["exports"]["zip"]["left_out"]) == big
    assert bool(big) == (name == "quartet")


def test_file_names_are_unique(tmp_path):
    abc = "X:1\nL:1/8\nM:2/4\nK:C\nCDEF|G4|]\n"
    a = render(abc, tmp_path, formats=("abc", "musicxml"), stem="tune")
    b = render(abc, tmp_path, formats=("abc", "musicxml"), stem="tune")
    assert (a.stem, b.stem) == ("tune", "tune-2")


# ---- bad input ---------------------------------------------------------------------------------

FAST_LIMITS = RenderOptions(timeout_s=30, memory_mb=2048, max_audio_seconds=600)
GOOD = "X:1\nL:1/8\nM:4/4\nK:G\nGABc d2 B2|c2 A2 G4|]\n"


def _opts():
    return RenderOptions(timeout_s=FAST_LIMITS.timeout_s, memory_mb=FAST_LIMITS.memory_mb,
                         max_audio_seconds=FAST_LIMITS.max_audio_seconds)


def _next_render_works(tmp_path):
    result = render(GOOD, tmp_path / "next", options=_opts())
    assert result.failed == {}


def test_empty_text(tmp_path):
    with pytest.raises(CadenzaError, match="empty"):
        render("  \n", tmp_path)
    with pytest.raises(CadenzaError, match="unknown format"):
        render(GOOD, tmp_path, formats=("abc", "mp3"))


def test_text_that_is_not_abc(tmp_path):
    with pytest.raises(CadenzaError, match="not ABC notation"):
        render("Dear composer, this is a letter, not a score.", tmp_path)
    _next_render_works(tmp_path)


BAD_SCORES = {
    "absurd duration": "X:1\nL:1/8\nM:4/4\nK:C\nC99999999|]\n",
    "L:1/1 huge notes": "X:1\nL:1/1\nM:4/4\nK:C\nC9999 D9999|E9999|]\n",
    "nested tuplets": "X:1\nL:1/8\nM:4/4\nK:C\n" + "(3" * 60 + "ABC|]\n",
}


@pytest.mark.parametrize("case", list(BAD_SCORES))
def test_bad_scores_fail_cleanly(tmp_path, case):
    t = time.monotonic()
    result = render(BAD_SCORES[case], tmp_path, stem="bad", options=_opts())
    assert time.monotonic() - t < 4 * FAST_LIMITS.timeout_s  # each stage is bounded
    assert (tmp_path / "bad.abc").read_text() == BAD_SCORES[case]  # the ABC survives
    assert result.status["abc"].ok and result.status["zip"].ok
    manifest = json.loads((tmp_path / "bad.manifest.json").read_text())
    for fmt, err in result.failed.items():
        assert err and "Traceback" not in err and manifest["exports"][fmt]["error"] == err
    if case != "nested tuplets":  # abc2xml flattens these; absurd lengths cannot all succeed
        assert result.failed, f"{case}: expected at least one export to fail"
        assert any("minutes" in e or "limit" in e for e in result.failed.values()), result.failed
        assert "longest note is in bar 1" in result.failed.get("wav", ""), result.failed
    _next_render_works(tmp_path)


def test_unclosed_score_bracket_is_closed_with_a_warning(tmp_path):
    abc = "X:1\n%%score { ( 1 2 ) | 3\nL:1/8\nM:2/4\nK:C\nV:1\nV:2\nV:3 bass\n[V:1]CDEF|[V:2]C4|[V:3]C,4|]\n"
    result = render(abc, tmp_path, formats=("abc", "musicxml", "midi"), options=_opts())
    assert result.failed == {}
    assert any("bracket open" in w for w in result.warnings)


def test_billion_laughs_musicxml_is_refused(tmp_path):
    lol = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
           + ']>\n<score-partwise version="4.0"><work><work-title>&lol9;</work-title></work></score-partwise>\n')
    path = tmp_path / "lol.musicxml"
    path.write_text(lol)
    t = time.monotonic()
    result = render_file(path, tmp_path / "out", options=_opts())
    assert time.monotonic() - t < FAST_LIMITS.timeout_s
    assert "declares entities" in result.failed["musicxml"]
    assert set(result.failed) == set(FORMATS) - {"zip"}
    _next_render_works(tmp_path)


def test_user_musicxml_and_mxl_render(tmp_path):
    from music21 import corpus

    result = render_file(corpus.getWork("bach/bwv66.6"), tmp_path, formats=("abc", "musicxml", "midi", "pdf"),
                         options=_opts())
    assert result.failed == {}
    assert "K:" in result.paths("abc")[0].read_text()
    with pytest.raises(CadenzaError, match="expected an .abc"):
        (tmp_path / "x.doc").write_text("hi")
        render_file(tmp_path / "x.doc", tmp_path)


def test_a_missing_soundfont_fails_only_the_wav(tmp_path):
    opts = _opts()
    opts.soundfont = str(tmp_path / "none.sf2")
    result = render(GOOD, tmp_path, options=opts)
    assert set(result.failed) == {"wav"} and "SoundFont not found" in result.failed["wav"]


FEATURES = """X:1
T:Features
%%score 1 2
L:1/8
Q:1/4=88
M:3/4
K:Bb
V:1 treble nm="Soprano"
V:2 bass nm="Cello"
[V:1]!p! .B c (3def g2-|[V:2]B,,6|
[V:1]g2 !f! !accent!f2 Hd2|][V:2]B,,2 F,2 B,,2|]
w: Glo-ri-a in ex-cel-sis
"""


def test_notation_survives_into_musicxml(tmp_path):
    """Part names, clefs, keys, metres, tempo, ties, tuplets, dynamics, articulations, lyrics."""
    from lxml import etree

    result = render(FEATURES, tmp_path, formats=("abc", "musicxml"), options=_opts())
    doc = etree.parse(str(result.paths("musicxml")[0]))
    if SCHEMA.is_file():
        assert etree.XMLSchema(etree.parse(str(SCHEMA))).validate(doc)
    count = lambda xpath: len(doc.xpath(xpath))  # noqa: E731
    assert [e.text for e in doc.xpath("//part-name")] == ["Soprano", "Cello"]
    assert sorted(e.text for e in doc.xpath("//clef/sign")) == ["F", "G"]
    assert {e.text for e in doc.xpath("//key/fifths")} == {"-2"}
    assert {(t.findtext("beats"), t.findtext("beat-type")) for t in doc.xpath("//time")} == {("3", "4")}
    assert [float(t) for t in doc.xpath("//sound/@tempo")] == [88.0]
    assert count("//tie[@type='start']") == 1 and count("//time-modification") == 3
    assert count("//dynamics/p") == 1 and count("//dynamics/f") == 1
    assert count("//articulations/staccato") == 1 and count("//articulations/accent") == 1
    assert count("//fermata") == 1 and count("//lyric") >= 4


def test_a_stage_over_its_memory_limit_fails_cleanly(tmp_path):
    opts = _opts()
    opts.memory_mb = 64  # far too little for music21
    result = render(GOOD, tmp_path, formats=("abc", "musicxml", "midi"), options=opts)
    assert result.status["abc"].ok and result.status["musicxml"].ok  # abc2xml fits in 64 MB
    assert "more than its 64 MB memory limit" in result.failed["midi"]
    _next_render_works(tmp_path)


def test_compose_manifest_says_how_the_piece_was_made(tmp_path):
    """export() of a composed piece: prompt, seed, sampling, model and checksum, timings, alignment."""
    import torch
    from music21 import corpus

    from conftest import BACH, tiny_model
    from engine import api
    from engine.symbolic.checkpoint import load_model
    from engine.symbolic.generate import Piece
    from engine.symbolic.sampling import SamplingSettings

    torch.save({"model": tiny_model().state_dict()}, tmp_path / "m.pth")
    lm = load_model(tmp_path / "m.pth")
    text = to_model_text(interleave(musicxml_to_abc(corpus.getWork("bach/bwv66.6"))), BACH.lines())
    piece = Piece(0, BACH, 1234, SamplingSettings(), text, "eos", 90, len(text), 10, 3.2, 0)
    comp = api.Composition(piece, to_abc(text))
    result = api.export(lm, comp, tmp_path / "out", options=_opts())
    assert result.stem == "bach-choral-seed1234" and result.failed == {}
    m = json.loads((tmp_path / "out" / "bach-choral-seed1234.manifest.json").read_text())
    assert m["prompt"] == {"period": "Baroque", "composer": "Bach, Johann Sebastian", "instrumentation": "Choral"}
    assert m["seed"] == 1234 and m["sampling"] == {"top_k": 9, "top_p": 0.9, "temperature": 1.2}
    assert m["model"]["name"] == "m.pth" and m["model"]["checksum"].startswith("sha256:")
    assert m["bar_alignment"] == {"aligned": 10, "total": 10, "misaligned_bars": []}
    assert m["generation"]["seconds"] == 3.2 and m["engine_version"]
    assert all(e["ok"] for e in m["exports"].values())
    abc = (tmp_path / "out" / "bach-choral-seed1234.abc").read_text()  # the prompt gave it a title
    assert abc.startswith("X:1\nT:Chorale in the style of Bach\nC:after Johann Sebastian Bach (Baroque)\n")


@pytest.mark.parametrize("body", ["|: CDEF GABc |: cdef gabc :| CDEF GABc |]", "CDEF GABc |: cdef gabc |]",
                                  "|: CDEF GABc |1 cdef gabc :|2 |: CDEF GABc |]"])
def test_repeats_that_do_not_pair_up_are_played_as_written(tmp_path, body):
    """Generated pieces often open a repeat they never close: the audio must still come out."""
    r = render("X:1\nL:1/8\nM:4/4\nK:C\n" + body + "\n", tmp_path, ("abc", "musicxml", "midi", "wav"), "t")
    assert not r.failed, r.failed
    assert any("repeats could not be followed" in w for w in r.warnings)
    with wave.open(str(r.paths("wav")[0])) as w:
        assert w.getnframes() > SAMPLE_RATE  # three bars of music, not silence or nothing


# ---- the piece's identity on the page and in the sound ---------------------------------------------

IRISH = {"period": "Folk", "composer": "Traditional, Irish", "instrumentation": "Melody"}
BACH_CHORAL = {"period": "Baroque", "composer": "Bach, Johann Sebastian", "instrumentation": "Choral"}
UNTITLED_TUNE = "X:1\nL:1/8\nQ:1/4=104\nM:2/4\nK:G\nV:1 treble \n[V:1]GABc|\n[V:1]d2B2|\n[V:1]G4|]\n"
UNNAMED_CHORALE = ("X:1\n%%score [ 1 | 2 | 3 | 4 ]\nL:1/8\nM:4/4\nK:C\nV:1 treble\nV:2 treble\nV:3 bass\nV:4 bass\n"
                   "[V:1]e2 d2 c4|[V:2]c2 B2 G4|[V:3]G2 G2 E4|[V:4]C2 G,2 C4|]\n")


def _programs(midi_path) -> list[int]:
    import mido

    tracks = [t for t in mido.MidiFile(str(midi_path)).tracks if any(m.type == "note_on" for m in t)]
    return [next(m.program for m in t if m.type == "program_change") for t in tracks]


def test_a_generated_melody_gets_a_title_composer_line_and_a_fiddle(tmp_path):
    from music21 import converter

    result = render(UNTITLED_TUNE, tmp_path, ("abc", "musicxml", "midi", "svg"), "tune", meta={"prompt": IRISH},
                    options=_opts())
    assert result.failed == {}
    abc = result.paths("abc")[0].read_text()
    assert "T:Irish melody\n" in abc and "C:Traditional, Irish (Folk)\n" in abc
    assert 'V:1 treble nm="Fiddle" snm="Fdl."' in abc
    score = converter.parse(str(result.paths("musicxml")[0]))
    assert score.metadata.title == "Irish melody" and score.metadata.composer == "Traditional, Irish (Folk)"
    assert [p.partName for p in score.parts] == ["Fiddle"]
    svg = result.paths("svg")[0].read_text()
    for text in ("Irish melody", "Traditional, Irish (Folk)", "Fiddle"):  # drawn on the page, not only stored
        assert f">{text}</tspan>" in svg, text
    assert _programs(result.paths("midi")[0]) == [40]  # GM 41, violin: a fiddle tune is not played on piano


def test_other_folk_melodies_play_on_a_flute_and_early_ones_on_a_recorder(tmp_path):
    english = dict(IRISH, composer="Traditional, English")
    result = render(UNTITLED_TUNE, tmp_path, ("abc", "musicxml", "midi"), "tune", meta={"prompt": english},
                    options=_opts())
    assert _programs(result.paths("midi")[0]) == [73]  # GM 74, flute
    assert "T:English melody\n" in result.paths("abc")[0].read_text()
    from engine.render.identity import part_names

    assert part_names({"period": "Medieval", "composer": "Ciconia, Johannes", "instrumentation": "Melody"}, 1) == [
        "Recorder"]
    assert gm_program("Recorder") == 74


def test_a_generated_chorale_gets_satb_names_and_choir_voices(tmp_path):
    from lxml import etree

    result = render(UNNAMED_CHORALE, tmp_path, ("abc", "musicxml", "midi", "svg"), "chorale",
                    meta={"prompt": BACH_CHORAL}, options=_opts())
    assert result.failed == {}
    doc = etree.parse(str(result.paths("musicxml")[0]))
    assert doc.findtext("work/work-title") == "Chorale in the style of Bach"
    assert doc.findtext("identification/creator[@type='composer']") == "after Johann Sebastian Bach (Baroque)"
    assert [e.text for e in doc.xpath("//part-name")] == ["Soprano", "Alto", "Tenor", "Bass"]
    assert ">Chorale in the style of Bach</tspan>" in result.paths("svg")[0].read_text()
    assert _programs(result.paths("midi")[0]) == [52] * 4  # GM 53, choir aahs


def test_the_users_own_title_composer_and_part_names_are_kept(tmp_path):
    from music21 import converter

    own = UNTITLED_TUNE.replace("X:1\n", "X:1\nT:My Reel\nC:Mary Smith\n").replace("V:1 treble ", 'V:1 treble nm="Oboe"')
    result = render(own, tmp_path, ("abc", "musicxml", "midi"), "own", meta={"prompt": IRISH}, options=_opts())
    abc = result.paths("abc")[0].read_text()
    assert abc == own  # nothing added: it has a title, a composer and its part's name
    score = converter.parse(str(result.paths("musicxml")[0]))
    assert (score.metadata.title, score.metadata.composer) == ("My Reel", "Mary Smith")
    assert _programs(result.paths("midi")[0]) == [68]  # the oboe it says
    plain = render(UNTITLED_TUNE, tmp_path, ("abc",), "plain", options=_opts())  # no prompt: the ABC as given
    assert plain.paths("abc")[0].read_text() == UNTITLED_TUNE


def test_titles_and_composer_lines_say_what_the_piece_is():
    from engine.render.identity import composer_line, title

    assert title(BACH_CHORAL) == "Chorale in the style of Bach"
    assert composer_line(BACH_CHORAL) == "after Johann Sebastian Bach (Baroque)"
    assert title({"composer": "Traditional, Various", "instrumentation": "Melody"}) == "Traditional melody"


def _pdf_fonts(pdf_path) -> list[tuple[str, str, bytes]]:
    """(name, ToUnicode CMap text, embedded font program) of every font the PDF's pages use."""
    from pypdf import PdfReader

    fonts = []
    for page in PdfReader(str(pdf_path)).pages:
        for ref in page["/Resources"]["/Font"].values():
            font = ref.get_object()
            desc = (font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font)
            fd = desc["/FontDescriptor"].get_object() if "/FontDescriptor" in desc else {}
            program = next((fd[k].get_object().get_data() for k in ("/FontFile3", "/FontFile2", "/FontFile") if k in fd), b"")
            cmap = font["/ToUnicode"].get_object().get_data().decode("latin-1") if "/ToUnicode" in font else ""
            fonts.append((str(font["/BaseFont"]), cmap, program))
    return fonts


def test_the_tempo_mark_note_is_drawn_from_the_music_font(rendered):
    """The tempo mark's note (SMuFL U+ECA5) must come out as the music font's glyph, embedded in the
    PDF, not as a system font's empty 'missing glyph' box."""
    import io

    from fontTools.cffLib import CFFFontSet
    from fontTools.pens.boundsPen import BoundsPen

    _, result, _ = rendered["chorale"]  # bwv66.6 has Q:1/4=96
    svg = result.paths("svg")[0].read_text()
    assert "\ueca5" in svg or "\ue1d5" in svg  # verovio writes the note as a SMuFL text glyph
    with_note = [f for f in _pdf_fonts(result.paths("pdf")[0]) if re.search(r"<(ECA5|E1D5)>", f[1], re.I)]
    assert with_note, "no PDF font draws the tempo note"
    name, _, program = with_note[0]
    assert "DejaVu" not in name and "Liberation" not in name  # the system fonts have no such glyph
    cff = CFFFontSet()
    cff.decompile(io.BytesIO(program), None)
    glyphs = cff[cff.fontNames[0]].CharStrings
    drawn = []
    for g in glyphs.keys():
        if g != ".notdef":
            pen = BoundsPen(glyphs)
            glyphs[g].draw(pen)
            drawn.append(pen.bounds)
    assert drawn and all(b is not None for b in drawn)  # a real outline, not an empty glyph


def test_printable_keeps_the_music_font_when_it_can_be_loaded(rendered):
    from engine.render.convert import WEB_FONT, load_web_fonts, printable

    _, result, _ = rendered["chorale"]
    svg = result.paths("svg")[0].read_text()
    fonts = dict(WEB_FONT.findall(svg))
    assert set(fonts) == {"Leipzig"} and load_web_fonts(fonts) == {"Leipzig"}
    out = printable(svg).decode()
    assert 'font-family="Leipzig"' in out and "\ueca5" in out  # drawn with the font, no look-alike swapped in


def test_two_users_converting_at_once_each_get_their_own_notes(tmp_path):
    """Continue and Render's bar check convert a user's score with abctoolkit, whose converters keep
    their state in module globals: in a server's threads, two users' conversions mixed (issue 31).
    They run in workers now; each thread must get exactly what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from engine import api

    scores = {name: training_style_abc(corpus_musicxml(name, tmp_path)) for name in ("chorale", "quartet", "folk")}
    alone = {name: api.continuation_prefix(abc) for name, abc in scores.items()}
    xml = {name: corpus_musicxml(name, tmp_path) for name in ("chorale", "folk")}
    bars_alone = {name: api.check_bars(path) for name, path in xml.items()}
    assert len(set(alone.values())) == 3 and all(b is not None and b.total > 0 for b in bars_alone.values())
    jobs = [("continue", name) for name in scores] * 2 + [("bars", name) for name in xml] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: api.continuation_prefix(scores[j[1]]) if j[0] == "continue"
                            else api.check_bars(xml[j[1]]), jobs))
    for (kind, name), result in zip(jobs, got):
        assert result == (alone[name] if kind == "continue" else bars_alone[name]), (kind, name)


def test_an_uploaded_score_without_a_clef_gets_one_for_its_range_and_loses_music21s_placeholders():
    """Issue 34 item 6: verovio drew a part without a clef with no clef and the key's flat below the staff."""
    import re

    from engine.render.convert import mended_musicxml
    from test_studio_views import MORNING_XML

    fine = MORNING_XML.replace("<identification><creator type=\"composer\">Music21</creator></identification>", "")
    assert mended_musicxml(fine.encode()) == (fine.encode(), [])  # nothing to mend: the same bytes
    bare = re.sub(r"<clef>.*?</clef>", "", MORNING_XML, flags=re.S)
    data, notes = mended_musicxml(bare.encode())
    text = data.decode()
    assert "<clef><sign>G</sign><line>2</line></clef>" in text and notes == [
        "part P1 had no clef: a treble clef was put in for the engraving"]
    assert text.index("<time>") < text.index("<clef>") and "Music21" not in text  # MusicXML's order kept
    low = bare.replace("<octave>4</octave>", "<octave>2</octave>").replace("<octave>5</octave>", "<octave>3</octave>")
    assert "<clef><sign>F</sign><line>4</line></clef>" in mended_musicxml(low.encode())[0].decode()


def test_one_score_reader_for_every_door_refuses_what_is_no_score(tmp_path):
    """api.read_score (the CLI's --from-score, Perform) checks a file as an upload is checked, and reads
    MusicXML in the bounded worker: entities refused, a missing clef mended, placeholders dropped."""
    import re

    from engine import api
    from engine.errors import SettingsError
    from test_studio_views import MORNING_XML

    xml = tmp_path / "morning.musicxml"
    xml.write_text(re.sub(r"<clef>.*?</clef>", "", MORNING_XML, flags=re.S))
    abc = api.read_score(xml)
    assert abc.count("T:Morning Song") == 1 and "M:3/4" in abc and "Music21" not in abc
    laughs = tmp_path / "laughs.xml"
    laughs.write_text('<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
                      "<score-partwise>&b;</score-partwise>")
    bad = {"song.txt": (b"X:1\nK:C\nC|\n", "not a score: expected an .abc"),
           "latin.abc": ("X:1\nT:Caf\xe9\nK:C\nC|\n".encode("latin-1"), "not UTF-8 text"),
           "big.abc": (b"X:1\nK:C\n" + b"C" * (2**20 + 10), "scores are limited to 1 MB")}
    for name, (data, said) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SettingsError, match=said):
            api.read_score(tmp_path / name, max_mb=1)
    with pytest.raises(SettingsError, match="declares entities"):
        api.read_score(laughs)
    with pytest.raises(SettingsError, match="is not a file"):
        api.read_score(tmp_path / "nowhere.abc")
