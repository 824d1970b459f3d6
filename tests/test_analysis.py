"""The musical check a composer reads (engine.symbolic.analysis, issue 32 step 5): on real scores
from music21's corpus, on hand-made faults at known bars, and carried in records, manifests and
the page."""
from pathlib import Path

from test_render import corpus_musicxml, training_style_abc

from engine import api
from engine.symbolic.analysis import analyse
from webui import views

IRISH = ("X:1\nL:1/8\nM:3/4\nK:D\nV:1 treble\n[V:1]A2|\n[V:1]A>B c2 (c/d/)|\n[V:1]A2 A>A AB/c/|\n[V:1]B>c d>c (e>d)|\n"
         "[V:1](ED) F>F|\n[V:1]E z (G2 G)|\n[V:1]F>A G2 (E>G)|\n[V:1]F2 E2 (FE)||\n")


def test_a_real_chorale_and_a_real_tune_pass_the_check(tmp_path):
    chorale = analyse(training_style_abc(corpus_musicxml("chorale", tmp_path)))  # bwv66.6
    assert chorale.voices == 4 and chorale.bars == 10 and not chorale.unfit_bars
    assert chorale.full_chord_beats > 0.9 and not chorale.parallel_bars and chorale.final_cadence
    assert chorale.voices_end_together
    tune = analyse(training_style_abc(corpus_musicxml("folk", tmp_path)))
    assert tune.voices == 1 and tune.ends_on_tonic and not tune.unfit_bars and tune.full_chord_beats is None
    quartet = analyse(training_style_abc(corpus_musicxml("quartet", tmp_path)))
    assert quartet.parallel_bars and quartet.crossing_bars  # Mozart's quartet writing has both


def test_faults_are_found_at_their_bars():
    tune = analyse(IRISH)
    # 5, 4 and 5 eighths in 3/4, numbered as printed: the pickup A2 is bar 0
    assert tune.unfit_bars == [1, 4, 5] and not tune.ends_on_tonic
    assert tune.lines()[0] == "5 of 8 bars fill the metre (not: bars 1, 4, 5)"
    fifths = ("X:1\nL:1/4\nM:2/4\nK:C\nV:1\nV:2\n[V:1]e f|[V:2]c d|\n[V:1]g a|[V:2]c d|\n"
              "[V:1]c2|[V:2]C2|\n")
    found = analyse(fifths)
    assert found.parallel_bars == [2] and found.crossing_bars == [] and found.voices_end_together
    crossed = analyse("X:1\nL:1/4\nM:2/4\nK:C\nV:1\nV:2\n[V:1]c d|[V:2]e f|\n[V:1]c2|[V:2]C2|\n")
    assert crossed.crossing_bars == [1]
    assert "voices crossing in 1 bar (bar 1)" in crossed.lines()


def test_the_check_is_in_the_record_the_manifest_and_the_page(tmp_path):
    from engine.settings import ServerSettings
    from engine.service.studio import Studio

    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), min_free_mb=0, formats=("abc", "musicxml")))
    out = studio.render("a" * 20 + "-analysis", IRISH)
    assert out.record.analysis["unfit_bars"] == [1, 4, 5] and out.record.analysis["ends_on_tonic"] is False
    page = views.notes(out.record)
    assert "Musical check" in page and "5 of 8 bars fill the metre (not: bars 1, 4, 5)" in page
    assert api.analysis_lines({}) == [] and api.analysis_lines({"bars": 3, "voices": 1, "new_field": 1})
    assert api.analyse("not a score at all") == {} or api.analyse("not a score at all")["bars"] == 0


def test_a_composed_piece_carries_the_check_in_its_manifest(tmp_path):
    import json

    from conftest import bach, tiny_model
    from engine.symbolic.checkpoint import save_model
    from engine.symbolic.prompts import Prompt, PromptTable

    folder = save_model(tiny_model(seed=2), tmp_path / "m", prompts=PromptTable([Prompt("Baroque", "Bach, Johann Sebastian",
                                                                                         "Choral")]))
    lm = api.load(folder, device="cpu")
    (comp,) = api.compose(lm, bach(seed=3, max_patches=40))
    result = api.export(lm, comp, tmp_path / "x", formats=("abc", "musicxml"))
    manifest = json.loads(Path(result.out_dir / f"{result.stem}.manifest.json").read_text())
    assert manifest["analysis"]["bars"] == comp.abc.alignment.total
