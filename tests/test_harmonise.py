"""Harmonising a melody (issue 35): its bars forced as the first voice of every line, the model writes
the other voices; the melody comes back note for note."""
import re

import pytest

from conftest import BACH, ROOT, bach
from engine import api
from engine.data.build import read_split
from engine.errors import SettingsError
from engine.symbolic.patches import split_bars, split_patches, split_tunebody, to_ids
from engine.symbolic import retries
from engine.symbolic.config import EOS_ID
from engine.symbolic.piece import PieceRequest, PieceState
from engine.symbolic.postprocess import to_abc

MELODY = """X:1
T:Tune
L:1/8
M:3/4
K:D
V:1 treble
D2 | F2 A2 d2 | c4 B2 | A6 |]
"""
TWO_VOICES = "X:1\nL:1/8\nM:4/4\nK:C\nV:1\nC8|]\nV:2\nC,8|]\n"


def soprano_of(abc: str) -> str:
    """A chorale's first voice as a melody of its own (header kept, one voice)."""
    lines = abc.splitlines()
    head = [ln for ln in lines if re.match(r"[LMKQ]:", ln)]
    bars = [re.match(r"(\[V:1\][^\[]*)", ln).group(1) for ln in lines if ln.startswith("[V:1]")]
    return "X:1\nT:Soprano\n" + "\n".join(head) + "\nV:1 treble\n" + "\n".join(bars) + "\n"


def first_voice(abc: str) -> list[str]:
    return [re.match(r"(\[V:1\][^\[]*)", ln).group(1) for ln in abc.splitlines() if ln.startswith("[V:1]")]


@pytest.fixture(scope="module")
def lm():
    return api.load(api.bundled_model())


def test_a_harmonise_request_takes_the_melodys_key_metre_unit_and_length():
    r = api.harmonise_request(bach(seed=1), MELODY)
    assert (r.controls.bars, r.controls.key, r.controls.meter, r.controls.unit) == (4, "D", "3/4", "1/8")
    assert r.melody == ("[V:1]D2|", "[V:1]F2 A2 d2|", "[V:1]c4 B2|", "[V:1]A6|]") and r.prefix == ""
    assert r.settings()["harmonised_bars"] == 4


@pytest.mark.parametrize("abc, fields, said", [
    (TWO_VOICES, {}, "the score has 2 voices: harmonise takes a melody, one voice"),
    (MELODY, {"key": "G"}, "the melody sets the piece's key: leave it empty"),
    (MELODY, {"bars": 8, "meter": "4/4"}, "the melody sets the piece's length and metre: leave them empty"),
    ("just words", {}, "ABC"),
    ("X:1\nL:1/8\nM:4/4\nK:C\n", {}, "the score has no notes after its header"),
])
def test_what_cannot_be_harmonised_is_refused_in_words_before_any_work(abc, fields, said):
    with pytest.raises(SettingsError, match=said):
        api.harmonise_request(bach().update(**fields), abc)


def test_the_melody_is_forced_patch_by_patch_as_training_cuts_a_line():
    """The forced patches of a line are the training encoding's patches of '[r:i/j][V:1]bar', then
    the barline and '[V:2]' begin the next voice's patch (the model completes it)."""
    r = api.harmonise_request(bach(), MELODY)
    req = PieceRequest(BACH, melody=r.melody, controls=r.controls)
    state = PieceState(0, req, 64, 16, "cpu")
    state.text += "[r:0/3]"  # as if the header had ended; the first line: what the redo forces
    state.in_tunebody, state.text = True, state.text[: -len("[r:0/3]")]
    forced = state.next_prefix()
    line = "[r:0/3][V:1]D2|[V:2]"
    segments = split_bars([line])
    assert forced == to_ids(split_patches(segments[0])[0], pad=False)  # '[r:0/3][V:1]D2' + EOS
    state.accept(forced + [0] * (16 - len(forced)))
    assert state.next_prefix() == [ord(c) for c in "|[V:2]"]  # the model's turn after it


def test_a_one_voice_style_is_refused_for_harmonising(lm):
    with pytest.raises(SettingsError, match="is written for one voice: choose a style with several voices"):
        api.compose(lm, api.harmonise_request(api.ComposeRequest("Folk", "Traditional, German", "Melody"), MELODY))


def test_a_held_out_bach_soprano_comes_back_note_for_note_under_new_voices(lm):
    chorale = next(p for p in read_split(ROOT / "assets" / "data" / "corpus", "val") if tuple(p["labels"]) == tuple(BACH.__dict__.values()))
    melody = soprano_of(to_abc(chorale["text"]).abc)
    out = api.compose(lm, api.harmonise_request(bach(seed=3), melody))
    assert len(out) == 1
    for c in out:
        assert c.piece.complete
        assert first_voice(c.abc.abc) == first_voice(melody)  # note for note
        _, body = split_tunebody(c.piece.text)
        assert all(ln.count("[V:") >= 2 for ln in body)  # the other voices are the model's
        assert all(retries.one_bar(ln) for ln in body)


def test_a_line_running_on_into_the_next_or_with_a_voice_twice_is_not_one_bar():
    assert retries.one_bar("[r:1/3][V:1]c2 d2|[V:2]E4|[V:3]C4|\n")
    assert not retries.one_bar("[r:1/3][V:1]c2 d2|[V:2]E4|[V:2]C4|\n")
    assert not retries.one_bar("[r:1/3][V:1]c2 d2|[V:2]E4|][r:2/2][V:1]G4|\n")


def test_one_voice_of_a_score_is_taken_as_a_melody_by_number():
    two = "X:1\nT:Two\nL:1/8\nM:4/4\nK:G\nV:1 treble\nV:2 bass\n[V:1]B4 d4|[V:2]G,8|\n[V:1]c8|][V:2]A,8|]\n"
    low = api.voice_of(two, 2)
    assert "V:1 bass" in low and first_voice(low) == ["[V:1]G,8|", "[V:1]A,8|]"] and "V:2" not in low
    assert api.harmonise_request(bach(), two, voice=1).melody == ("[V:1]B4 d4|", "[V:1]c8|]")
    with pytest.raises(SettingsError, match=r"the voice \(1 to 2, in the order of the score's V: lines\) must be"):
        api.voice_of(two, 3)
    with pytest.raises(SettingsError, match="name the voice: 1 to 2"):
        api.harmonise_request(bach(), two)


def test_a_context_re_encoded_mid_bar_goes_on_with_the_melody_from_the_patch_begun():
    """After a re-encode (a melody longer than the context) the text may end inside a forced patch:
    the partial patch (the tail) is completed with the melody, not by the model."""
    r = api.harmonise_request(bach(), MELODY)
    header = "L:1/8\nM:3/4\nK:D\nV:1 treble\nV:2 bass\n"
    begun = header + "[r:0/3][V:1]D2|[V:2]A,2|\n[r:1/2][V:1]F2 A2 d"  # '[r:1/2][V:1]F2 A' + '2 d' (the tail)
    state = PieceState(0, PieceRequest(BACH, melody=r.melody, controls=r.controls, prefix=begun), 64, 16, "cpu")
    assert state.tail == [ord(c) for c in "2 d"]
    assert state.next_prefix() == [ord(c) for c in "2 d2"] + [EOS_ID]  # the melody's bar closed, as training cuts it
