"""MIDI files wherever scores are read (issue 35, "bring my MIDI"): notated by music21 in the render
worker, then read as any MusicXML upload; drums left out; bad files refused in words."""
import pytest

from engine import api
from engine.errors import CadenzaError
from engine.render.convert import MAX_MIDI_BYTES
from engine.symbolic.patches import split_tunebody


def _track(notes, channel=0, length=480):
    import mido

    track = mido.MidiTrack()
    for pitch in notes:
        track.append(mido.Message("note_on", channel=channel, note=pitch, velocity=80, time=0))
        track.append(mido.Message("note_off", channel=channel, note=pitch, velocity=0, time=length))
    return track


def _midi(path, *tracks):
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    mid.tracks.extend(tracks)
    mid.save(path)
    return path


@pytest.fixture(scope="module")
def chorale_midi(tmp_path_factory):
    """Bach's BWV 66.6 from music21's corpus, as a MIDI file (four tracks, F# minor declared)."""
    from music21 import corpus

    path = tmp_path_factory.mktemp("midi") / "bwv66_6.mid"
    corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    return path


def test_a_chorale_from_midi_comes_back_as_four_voices_in_its_key_with_every_bar(chorale_midi):
    abc = api.read_score(chorale_midi)
    meta, _ = split_tunebody(abc)
    assert "K:F#min" in abc and "T:bwv66 6" in abc
    assert sum(ln.startswith("V:") and "nm=" in ln for ln in meta) == 4
    soprano = abc.split("\nV:1\n")[1].split("\nV:2\n")[0]
    assert soprano.split("|")[0].split() == ["cB", "A2", "B2", "c2"]  # C# from the key, not marked on each note
    # MIDI keeps no anacrusis: the chorale's one-beat pickup begins a full first bar, as a sequencer
    # counts bars from the file's first tick (9 bars of 4/4, the last one short)
    assert soprano.count("|") == 9


def test_drums_are_left_out_and_a_file_without_a_key_gets_one_from_its_notes(tmp_path):
    path = _midi(tmp_path / "song.mid", _track([60, 62, 64, 65, 67, 65, 64, 62]), _track([38] * 8, channel=9))
    result = api.render_file(path, tmp_path / "out", ("abc",))
    abc = result.paths("abc")[0].read_text()
    assert "K:C" in abc and "map=perc" not in abc and abc.count("\nV:1") == 2 and "V:2" not in abc
    assert any("1 drum track left out" in w for w in result.warnings)
    assert any("declares no key: written in C major" in w for w in result.warnings)


@pytest.mark.parametrize("make,said", [
    (lambda p: _midi(p, _track([36, 38, 42] * 4, channel=9)), "nothing to notate: it holds drums only"),
    (lambda p: _midi(p, __import__("mido").MidiTrack()), "nothing to notate: it holds no notes"),
    (lambda p: p.write_text("X:1\nK:C\nCDEF|\n"), "the file is not MIDI: a MIDI file begins with 'MThd'"),
    (lambda p: p.write_bytes(b"MThd" + b"\0" * (MAX_MIDI_BYTES + 1)), "at most 2 MB of MIDI is accepted"),
    (lambda p: p.write_bytes(b"MThd\0\0\0\6\0\1\0\2\1\xe0MTrk\xff\xff\xff\xff garbage"), "could not be read"),
])
def test_files_that_are_not_music_to_notate_are_refused_in_words(tmp_path, make, said):
    path = tmp_path / "bad.mid"
    make(path)
    with pytest.raises(CadenzaError, match=said.replace("(", r"\(")):
        api.read_score(path)


def test_a_midi_upload_is_kept_with_its_bars_its_check_and_its_drums_note(tmp_path, chorale_midi):
    from engine.service.studio import Studio
    from engine.settings import ServerSettings
    from test_webui import tiny_folder

    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path))))
    o = studio.upload("k" * 32, chorale_midi)
    assert o.record.kind == "uploaded" and o.record.title == "bwv66 6"
    assert o.record.bars == 9
    assert o.record.analysis["voices"] == 4 and o.paths("musicxml") and o.paths("wav")
    with pytest.raises(CadenzaError, match="nothing to notate: it holds drums only"):
        studio.upload("k" * 32, _midi(tmp_path / "drums.mid", _track([36] * 4, channel=9)))
    assert [r.id for r in studio.history("k" * 32)] == [o.record.id]  # the refused file left nothing behind


def test_a_midi_melody_is_read_for_harmonising_bar_by_bar(tmp_path):
    """One track of quarter notes (C major scale up and down, 16 beats): four bars of 4/4 forced as the
    first voice, the key and metre music21 gives it."""
    path = _midi(tmp_path / "tune.mid", _track([60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 60]))
    request = api.harmonise_request(api.ComposeRequest("Baroque", "Bach, Johann Sebastian", "Choral"),
                                    api.read_score(path))
    assert request.controls.bars == 4 and request.controls.meter == "4/4" and request.controls.key == "C"
    assert all(bar.startswith("[V:1]") for bar in request.melody)
