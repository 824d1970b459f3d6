"""What the studio shows of a piece and keeps of its identity, without a browser (issue 18): the
converters' notes in plain words, the live text and progress, titles through Continue, Render
and Rename, the seed box, bars checked against the metre, and whether MusicGen's weights are here.
A tiny random model: plumbing only (the browser tests play the journey with the bundled model)."""
import pytest

from conftest import bach
from engine.checks import page_number, page_seed
from engine.errors import CadenzaError, SettingsError
from engine.requests import AudioRequest, ComposeRequest
from engine.store import PieceRecord
from engine.symbolic.controls import Controls
from test_webui import tiny_folder
from webui import views
from engine.settings import ServerSettings
from engine.service.pieces import Named, Progress
from engine.service.studio import Studio

KEY = "v" * 20 + "-views"
TUNE_2_4_IN_3_4 = "X:1\nT:Wrong bars\nL:1/8\nM:3/4\nK:D\nV:1\nV:1\nDFAd|fedc|B2A2|d4|]\n"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    return Studio(ServerSettings(outputs=str(tmp / "out"), model=str(tiny_folder(tmp))))


def test_converter_messages_are_in_plain_words_without_carets_or_paths():
    raw = "ABC -> MusicXML: **misplaced symbol: )\n    CDEF) GABc\n        ^\n/home/me/secret/x.abc"
    said = views.plain(raw)
    assert "stray ')'" in said and "^" not in said and "**" not in said and "ABC -> MusicXML" not in said
    assert "/home/me" not in said
    assert "voice 3" in views.plain("score partname 3 does not exist")


def test_notes_fold_under_details_and_failed_exports_stay_in_view():
    r = PieceRecord(id="p", created="2026-12-02T10:00:00", kind="rendered", title="t",
                    errors={"pdf": "verovio laid out no page"}, warnings=["misplaced symbol: )"] * 20)
    html = views.notes(r)
    assert html.index("could not be made") < html.index("<details>")  # the failure is not folded away
    assert "20 notes on the score" in html and "and 8 more" in html
    assert views.notes(PieceRecord(id="p", created="", kind="rendered", title="t")) == ""


def test_an_incipit_is_the_header_and_the_first_bars():
    abc = "X:1\nT:Reel\nC:after O'Neill\nL:1/8\nM:4/4\nK:C\nV:1\n" + "".join(f"[V:1]C{i}|\n" for i in range(1, 9))
    cut = views.incipit(abc, bars=3)
    assert cut.endswith("[V:1]C3|\n") and "K:C" in cut and "C4" not in cut
    assert "T:" not in cut and "C:" not in cut  # the same on every card: the card's head names it


def test_the_seed_box_empty_is_random_and_a_negative_seed_is_refused():
    assert page_seed(page_number("")) is None and page_seed(page_number("  ")) is None
    assert page_seed(-1) is None  # the HTTP API's spelling of random
    assert page_seed(page_number(" 42 ")) == 42
    with pytest.raises(SettingsError, match="seed must be a whole number from 0"):
        ComposeRequest("Baroque", "Bach, Johann Sebastian", "Choral", seed=page_seed(page_number("-5")))
    with pytest.raises(SettingsError, match="seed must be a whole number"):
        ComposeRequest("Baroque", "Bach, Johann Sebastian", "Choral", seed=page_seed(page_number("twelve")))
    assert page_number("1.5") == 1.5 and page_number(None) is None


def test_progress_never_goes_back_counts_retries_and_estimates_the_time_left(tmp_path):
    from engine import api

    if api.bundled_model() is None:
        pytest.skip("no bundled model")
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out")))  # the bundled model: it writes bars
    request = bach(max_patches=400, seed=3, bar_retries=4, controls=Controls(bars=4))
    items = list(studio.compose(KEY, request))
    progress = [i for i in items if isinstance(i, Progress)]
    assert progress and all(a.patches <= b.patches for a, b in zip(progress, progress[1:]))
    assert all(p.target_bars == 4 for p in progress)
    assert any(p.eta is not None for p in progress if p.bars)
    writing = [p for p in progress if p.keeping is None]  # (then the piece is rendered: no text)
    assert all(p.abc.startswith("X:1\n") and "[r:" not in p.abc for p in writing)  # ABC, no markers
    line = writing[-1].line()
    assert "of 4" in line and "[r:" not in line
    assert progress[-1].line() == "engraving and rendering the piece: 0 of 1 done"
    if any(p.retries for p in progress):
        assert "written again" in next(p.line() for p in progress if p.retries)


def test_titles_carry_through_continue_and_do_not_pile_up():
    from engine.symbolic.prompts import Prompt

    p = Prompt("Baroque", "Bach, Johann Sebastian", "Choral")
    assert Named(None, "", "composed").title_for(p) == "Chorale in the style of Bach"
    assert Named("Evening (continued)", "", "continued").title_for(p) == "Evening (continued)"
    assert Named("Evening (continued) (rewritten)", "", "rewritten").title_for(p) == "Evening (rewritten)"
    kept = Named("x", "X:1\nT:Mine\nC:Me\nK:C\nCDEF|\n", "continued").head("X:1\nT:Other\nK:C\nCDEF|GABc|\n", p)
    # the source's composer line stays; the title printed is the one History lists
    assert kept.startswith("X:1\nT:x (continued)\nC:Me\n") and "T:Other" not in kept and "T:Mine" not in kept


def test_an_edit_keeps_the_pieces_title_and_prompt_and_its_bars_are_checked_against_the_metre(studio):
    prompt = {"period": "Folk", "composer": "Traditional, Irish", "instrumentation": "Melody"}
    o = studio.render(KEY, TUNE_2_4_IN_3_4, "My reel", prompt)
    assert o.record.title == "My reel" and o.record.prompt == prompt
    fit, total = map(int, o.record.alignment.split()[0].split("/"))
    assert total == 4 and fit < total  # 2/4 bars in a 3/4 tune do not fit (a first short bar is a pickup)
    hostile = studio.render(KEY, TUNE_2_4_IN_3_4, "x" * 5000, {"period": ["no"], "composer": 1})
    assert len(hostile.record.title) <= 120 and hostile.record.prompt == {}


def test_rename_changes_the_record_and_refuses_bad_titles(studio):
    o = studio.render(KEY, TUNE_2_4_IN_3_4, "First title")
    assert studio.rename(KEY, o.record.id, "  Second title ").title == "Second title"
    assert studio.outcome(KEY, o.record.id).record.title == "Second title"
    for bad in ("", "a\nb", "x" * 500, None):
        with pytest.raises(CadenzaError, match="a title is 1 to 120 characters"):
            studio.rename(KEY, o.record.id, bad)
    with pytest.raises(CadenzaError, match="no piece"):
        studio.rename(KEY, "../other", "mine")


def test_the_audio_page_says_before_any_click_when_musicgen_weights_are_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from test_audio import tiny_musicgen

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    missing = Studio(ServerSettings(outputs=str(tmp_path / "a"), audio_model="facebook/musicgen-small"))
    said = missing.audio_weights_missing()
    assert said is not None and "hf download facebook/musicgen-small" in said and "SoundFont" in said
    with pytest.raises(CadenzaError) as pressed:  # Generate audio anyway: the same steps, not the loader's error
        next(missing.audio(KEY, AudioRequest("a calm string quartet")))
    assert str(pressed.value) == f"MusicGen is not set up on this server. {said}"
    here = Studio(ServerSettings(outputs=str(tmp_path / "b"), audio_model=str(tiny_musicgen(tmp_path / "mg"))))
    assert here.audio_weights_missing() is None
    allowed = Studio(ServerSettings(outputs=str(tmp_path / "c"), allow_downloads=("*",)))
    assert allowed.audio_weights_missing() is None  # it will be downloaded on first use


def test_the_system_tables_say_each_copys_batch():
    info = {"devices": [{"device": "cpu", "free_gib": 20.0, "total_gib": 24.0}],
            "models": [{"model": "bundled", "status": "ready", "placement": None,
                        "batching": [{"rows_in_use": 3, "max_batch": 8, "waiting_requests": 2, "patches_per_s": 41.5}]}],
            "running": 5, "concurrency": 40, "queue_size": 32, "waiting_in_queue": 0}
    devices, models, line = views.system_tables(info)
    assert devices == [["cpu", "", 20.0, 24.0]]
    assert models[0][-1] == "3/8 rows, 2 waiting, 41.5 patches/s"
    info["models"][0]["batching"][0].update(sessions_writing=2, paused_pieces=1)
    assert views.system_tables(info)[1][0][-1] == "3/8 rows for 2 sessions, 2 waiting, 1 paused to share rows, 41.5 patches/s"
    assert "5 piece(s) being made now" in line


GENERATED = ("X:1\nT:Irish melody\nC:Traditional, Irish (Folk)\nL:1/8\nM:6/8\nK:D\nV:1 treble nm=\"Fiddle\"\n"
             "V:1\nDFA dAF|GBd gdB|]\n")
IRISH = {"period": "Folk", "composer": "Traditional, Irish", "instrumentation": "Melody"}


def test_the_editor_holds_the_open_piece_until_another_score_is_pasted_over_it():
    from engine.render.identity import heading, of_edit

    opened = heading(GENERATED)
    assert opened == ("Irish melody", "Traditional, Irish (Folk)")
    edited = GENERATED.replace("DFA dAF", "FAd fdA")
    assert of_edit(edited, opened, "Irish melody (continued)", IRISH) == ("Irish melody (continued)", IRISH)
    renamed = GENERATED.replace("T:Irish melody", "T:The Lark")  # its title line changed, same composer line
    assert of_edit(renamed, opened, "Irish melody", IRISH) == ("The Lark", IRISH)
    own = "X:1\nT:My Jig\nM:6/8\nL:1/8\nK:G\nGAB c2d|e2f g3|]\n"  # another tune pasted over it
    assert of_edit(own, opened, "Irish melody", IRISH) == ("My Jig", None)
    untitled = "X:1\nM:6/8\nL:1/8\nK:G\nGAB c2d|e2f g3|]\n"
    assert of_edit(untitled, opened, "Irish melody", IRISH) == (None, None)
    assert of_edit(untitled, (None, None), "my score", None) == ("my score", None)  # an untitled score, edited


def test_titles_printed_once_part_names_carried_over_and_converter_placeholders_dropped():
    from engine.render.identity import retitled, tidy_titles, with_part_names

    assert retitled(GENERATED, "The Lark").startswith("X:1\nT:The Lark\nC:Traditional")
    assert retitled("X:1\nK:C\nCDEF|\n", "New").startswith("X:1\nT:New\nK:C")
    twice = "X:1\nT:Song\nT:Song\nT:Second verse\nC:Music21\nK:C\nCDEF|\n"
    assert tidy_titles(twice) == "X:1\nT:Song\nT:Second verse\nK:C\nCDEF|\n"
    source = 'X:1\nK:C\nV:1 treble nm="Flute" snm="Fl."\nV:1\nCDEF|\n'
    written = 'X:1\nK:C\nV:1 treble\nV:1\nCDEF|GABc|\n'
    named = with_part_names(written, source)
    assert 'V:1 treble nm="Flute" snm="Fl."\n' in named and named.endswith("V:1\nCDEF|GABc|\n")
    assert with_part_names('V:1 nm="Oboe"\n', source) == 'V:1 nm="Oboe"\n'  # a name of its own stays


def test_a_pasted_tune_transposed_and_uploaded_scores_keep_their_own_names_and_bars(studio, tmp_path):
    from engine.render.identity import heading

    own = "X:1\nT:My Jig\nM:6/8\nL:1/8\nK:G\nGAB c2d|e2f g3|]\n"
    o = studio.render(KEY, own)
    assert o.record.title == "My Jig" and o.record.prompt == {}
    assert [p.name for p in o.paths("abc")] == ["my-jig.abc"]  # downloads say what the piece is
    t = studio.transpose(KEY, GENERATED, "E", "Irish melody", IRISH)
    assert t.record.title == "Irish melody (in E)" and heading(t.abc)[0] == "Irish melody (in E)"  # printed so
    assert t.record.prompt == IRISH and t.paths("abc")[0].name == "irish-melody-in-e.abc"

    xml = tmp_path / "morning.musicxml"  # a MusicXML whose work and movement titles are the same
    xml.write_text(MORNING_XML)
    u = studio.upload(KEY, xml)
    assert u.record.title == "Morning Song" and u.record.kind == "uploaded"
    assert u.abc.count("T:Morning Song") == 1 and "Music21" not in u.abc
    assert u.record.bars == 3  # History counts its bars
    written = list(studio.compose(KEY, bach(max_patches=8, seed=1), continue_abc=u.abc, title=u.record.title))[-1][0]
    assert written.record.title == "Morning Song (continued)"
    assert 'nm="Flute"' in written.abc and "Soprano" not in written.abc  # the flute stays a flute


MORNING_XML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="4.0">
  <work><work-title>Morning Song</work-title></work>
  <movement-title>Morning Song</movement-title>
  <identification><creator type="composer">Music21</creator></identification>
  <part-list><score-part id="P1"><part-name>Flute</part-name></score-part></part-list>
  <part id="P1">
    <measure number="1"><attributes><divisions>1</divisions><key><fifths>-1</fifths></key>
      <time><beats>3</beats><beat-type>4</beat-type></time><clef><sign>G</sign><line>2</line></clef></attributes>
      <note><pitch><step>F</step><octave>4</octave></pitch><duration>1</duration><type>quarter</type></note>
      <note><pitch><step>A</step><octave>4</octave></pitch><duration>1</duration><type>quarter</type></note>
      <note><pitch><step>C</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note></measure>
    <measure number="2">
      <note><pitch><step>B</step><alter>-1</alter><octave>4</octave></pitch><duration>2</duration><type>half</type></note>
      <note><pitch><step>G</step><octave>4</octave></pitch><duration>1</duration><type>quarter</type></note></measure>
    <measure number="3">
      <note><pitch><step>F</step><octave>4</octave></pitch><duration>3</duration><type>half</type><dot/></note>
      <barline location="right"><bar-style>light-heavy</bar-style></barline></measure>
  </part>
</score-partwise>
"""


def test_a_length_or_tempo_of_0_typed_in_the_page_is_refused_not_silently_the_models():
    from webui.forms import compose_request

    args = ("Baroque", "Bach, Johann Sebastian", "Choral", 1.2, 9, 0.9, "", 24, 1)
    with pytest.raises(SettingsError, match="a length of 0 bars: leave Length empty"):
        compose_request(*args, bars="0")
    with pytest.raises(SettingsError, match="a tempo of 0: leave Tempo empty"):
        compose_request(*args, bars="8", tempo=" 0 ")
    assert compose_request(*args, bars="", tempo="").controls.bars is None  # empty: the model's
    assert compose_request(*args, bars=0, tempo=0).controls.bars is None  # the API's default


def test_the_last_delete_can_be_undone_and_held_pieces_are_outside_the_quota(studio):
    key = "u" * 20 + "-undelete"
    a, b = (studio.render(key, TUNE_2_4_IN_3_4, t) for t in ("First", "Second"))
    assert studio.delete(key, [a.record.id])[0] == 1
    session = studio.store.session(key)
    assert [r.title for r in studio.history(key)] == ["Second"] and session.usage()[1] == 1  # room freed
    assert studio.undelete(key) == 1 and {r.title for r in studio.history(key)} == {"First", "Second"}
    assert studio.undelete(key) == 0  # once
    studio.delete(key, [a.record.id])
    studio.delete(key, [b.record.id])  # a new Delete lets the earlier one go for good
    assert studio.undelete(key) == 1 and [r.title for r in studio.history(key)] == ["Second"]
    with pytest.raises(CadenzaError, match="no piece"):
        studio.delete(key, [b.record.id, "../elsewhere"])  # every id checked before anything moves
    assert [r.title for r in studio.history(key)] == ["Second"]


def test_progress_says_bars_toward_the_models_plan_every_variation_stopping_and_rendering():
    from engine.service.pieces import planned_bars as _planned
    from engine.service.pieces import seconds_to_go as _eta

    assert _planned("[r:0/15]abc|\n[r:1/14]def|\n[r:2/") == 16  # the latest whole marker: 1 + 14 + 1
    assert _planned("no markers") is None
    assert _eta(16, [4, 6], 4, 8.0) == 24.0 and _eta(16, [1], 1, 2.0) is None  # 2 bars at least
    p = Progress("", 10, 5, 12.0, 7, target_bars=16, planned=True)
    assert p.line().startswith("writing (seed 7): bar 5 of about 16")
    many = Progress("", 10, 5, 12.0, 7, target_bars=8, variations=(5, 4, 6))
    assert "3 variations at bars 5, 4, 6 of 8" in many.line() and "seeds 7-9" in many.line()
    assert Progress("", 10, 5, 12.0, 7, stopping=True).line().startswith("stopping: keeping what was written (5 bars)")
    assert Progress("", 0, 5, 0.0, 7, stopping=True, keeping=(1, 3)).line() == (
        "stopped: engraving and rendering 3 pieces: 1 of 3 done")


def test_a_continued_score_counts_its_own_bars_and_variations_are_rendered_with_progress(studio):
    from music21 import corpus

    from engine import api
    from engine.symbolic.abcformat import musicxml_to_abc

    abc = musicxml_to_abc(corpus.getWork("bach/bwv66.6"))
    own = api.continuation_prefix(abc).count("[r:")
    items = list(studio.compose(KEY, bach(max_patches=6, seed=2, variations=3, controls=Controls(bars=own + 4)),
                                continue_abc=abc))
    progress = [i for i in items if isinstance(i, Progress)]
    assert progress[0].bars == own and f"bar {own} of {own + 4}" in progress[0].line()  # not "bar 0 of ..."
    writing = [p for p in progress if p.patches]
    assert writing and all(len(p.variations) == 3 for p in writing)
    assert [p.keeping for p in progress if p.keeping] == [(0, 3), (1, 3), (2, 3)]  # then the 3 pieces
    assert len(items[-1]) == 3 and [o.record.seed for o in items[-1]] == [2, 3, 4]


def test_a_page_follows_a_piece_at_most_every_gap_with_the_latest_update_and_then_the_pieces():
    import time

    from engine.service.jobs import Live

    def writing():
        for i in range(1, 21):  # 20 updates in 0.4 s
            time.sleep(0.02)
            yield i
        yield ["the pieces"]

    live = Live(writing(), 0, {})
    got = list(live.follow(30, gap_s=0.15))
    assert got[0] == 0 and got[-2:] == [20, ["the pieces"]] and len(got) < 8  # never behind, never every update
    assert live.taken and live.done

    def failing():
        yield 1
        raise CadenzaError("out of memory: a shorter piece")

    with pytest.raises(CadenzaError, match="out of memory"):
        list(Live(failing(), 0, {}).follow(30))  # the writing's error reaches the page
