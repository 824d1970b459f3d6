"""The command line end to end, in a child process like a user runs it."""
import subprocess
import sys

import pytest
import torch

from conftest import NOTAGEN_SHARED, ROOT, tiny_model
from engine.errors import SettingsError

TINY_PTH = NOTAGEN_SHARED / "notagen_tiny_reference.pth"


def cli(*args, timeout=300, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": tiny_model(seed=1).state_dict()}, path)
    (path.parent / "prompts.txt").write_text("Baroque_Bach, Johann Sebastian_Choral\nBaroque_Bach, Johann Sebastian_Keyboard\n")
    return path


def test_compose_writes_abc_and_streams(checkpoint, tmp_path):
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--model", checkpoint, "--seed", 42, "--max-patches", 12, "-o", tmp_path, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    abc = tmp_path / "bach-choral-seed42.abc"
    assert abc.read_text().startswith("X:1\n")
    files = [abc]
    # a random model writes no bar in 12 patches: the ABC and manifest are kept, the rest explained
    assert (tmp_path / "bach-choral-seed42.manifest.json").is_file()
    assert "musicxml FAILED: the text is not ABC notation" in r.stderr or "no notes" in r.stderr
    assert "cut short: max_patches" in r.stderr and "12 patches" in r.stderr
    assert len(r.stdout) > 12  # the piece's text was streamed
    again = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
                "--model", checkpoint, "--seed", 42, "--max-patches", 12, "-o", tmp_path, "--quiet")
    assert again.returncode == 0 and again.stdout == ""
    assert (tmp_path / "bach-choral-seed42-2.abc").read_text() == files[0].read_text()  # same seed, same piece


def test_ctrl_c_stops_composing_and_keeps_the_piece(checkpoint, tmp_path):
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "engine", "compose", "--period", "Baroque", "--composer",
                             "Bach, Johann Sebastian", "--instrumentation", "Choral", "--model", str(checkpoint),
                             "--seed", "1", "--max-patches", "100000", "-o", str(tmp_path), "--formats", "abc"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    import select

    seen, deadline = "", time.monotonic() + 120
    while time.monotonic() < deadline and "patch/s" not in seen:  # the progress bar: generation is under way
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 0, err
    assert "cut short: cancelled" in err
    assert (tmp_path / "bach-choral-seed1.abc").is_file()


def test_compose_variations(checkpoint, tmp_path):
    r = cli("compose", "--period", "baroque", "--composer", "bach, johann sebastian", "--instrumentation", "keyboard",
            "--model", checkpoint, "--seed", 7, "--max-patches", 5, "--variations", 3, "-o", tmp_path, "--formats", "abc")
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in tmp_path.glob("*.abc")) == [f"bach-keyboard-seed{s}.abc" for s in (7, 8, 9)]


def test_prompts_lists_the_table(checkpoint):
    r = cli("prompts", "--model", checkpoint)
    assert r.returncode == 0 and "Bach, Johann Sebastian: Choral, Keyboard" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Art Song"],
     "Nearest valid combinations: Baroque / Bach, Johann Sebastian"),
    (["--period", "Baroque", "--composer", "B\u00e4ch", "--instrumentation", "Choral"], "7-bit ASCII"),
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral", "--top-p", "2"],
     "top_p must be a number more than 0 and at most 1, got 2"),
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral", "--max-patches", "0"],
     "maximum length (patches) must be a whole number from 1"),
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral", "--bars", "10000"],
     "length (bars) must be a whole number from 1 to 512"),
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral", "--meter", "7/0"],
     "metre must be beats/note value"),
    (["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral", "--rewrite-from", "3"],
     "--rewrite-from needs the score to rewrite"),
])
def test_bad_input_gets_a_clear_error_not_a_traceback(checkpoint, args, message):
    r = cli("compose", *args, "--model", checkpoint)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_model_paths(tmp_path):
    common = ["compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral"]
    r = cli(*common, env={"CADENZA_MODELS_DIR": str(tmp_path / "no-models")})
    assert r.returncode == 2 and "pass a NotaGen checkpoint" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.pth").write_bytes(b"junk")
    r = cli(*common, "--model", tmp_path / "junk.pth")
    assert r.returncode == 2 and "not a readable PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr
    r = cli(*common, "--model", tmp_path / "missing.pth")
    assert r.returncode == 2 and "no checkpoint at" in r.stderr


def test_render_command_writes_every_export(tmp_path):
    from music21 import corpus

    r = cli("render", corpus.getWork("bach/bwv66.6"), "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    for suffix in (".abc", ".musicxml", ".mid", ".wav", "-page1.svg", ".pdf", ".png", ".zip", ".manifest.json"):
        assert (tmp_path / f"bwv66-6{suffix}").is_file(), suffix
    bad = tmp_path / "bad.abc"
    bad.write_text("no music here")
    r = cli("render", bad, "-o", tmp_path)
    assert r.returncode == 2 and "not ABC notation" in r.stderr and "Traceback" not in r.stderr


def test_doctor():
    r = cli("doctor")
    assert r.returncode == 0
    assert f"torch {torch.__version__}" in r.stdout and "Python 3." in r.stdout
    assert "abctoolkit" in r.stdout and "verovio" in r.stdout and "TimGM6mb.sf2 (found" in r.stdout
    assert "placement of cadenza-small" in r.stdout and ("placement: single" in r.stdout or "placement: replicate" in r.stdout)


def test_doctor_shows_the_plan_on_simulated_gpus():
    """Budgets given with --max-memory need no GPU: the plan for two small GPUs is a split with
    the character decoder on the first; one too small for anything says so and the report goes on."""
    r = cli("doctor", "--devices", "0,1", "--max-memory", "0=12MiB,1=12MiB")
    assert r.returncode == 0, r.stderr
    assert "placement: split" in r.stdout and "cuda:1" in r.stdout
    first = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("cuda:0"))
    assert "char_level_decoder" in first
    r = cli("doctor", "--devices", "0", "--max-memory", "0=1MiB")
    assert r.returncode == 0 and "cannot be planned" in r.stdout and "packages:" in r.stdout


@pytest.mark.skipif(not TINY_PTH.is_file(), reason="../shared/notagen reference files not present")
def test_reference_checkpoint_without_table_composes_with_a_warning(tmp_path):
    r = cli("compose", "--period", "Folk", "--composer", "Traditional, Irish", "--instrumentation", "Melody",
            "--model", TINY_PTH, "--max-patches", 3, "-o", tmp_path, "--quiet")
    assert r.returncode == 0 and "any prompt is accepted" in r.stderr


def test_rewrite_from_a_bar_and_transpose_on_the_command_line(checkpoint, tmp_path):
    """--from-score FILE --rewrite-from N keeps bars 1..N-1 of a real chorale; render --transpose
    moves it to another key."""
    from music21 import corpus

    score = tmp_path / "bwv66.6.mxl"
    score.write_bytes(open(corpus.getWork("bach/bwv66.6"), "rb").read())
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--model", checkpoint, "--seed", 1, "--max-patches", 4, "--from-score", score, "--rewrite-from", 3,
            "--formats", "abc", "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    body = [ln for ln in (tmp_path / "out" / "bach-choral-seed1.abc").read_text().splitlines() if ln.startswith("[V:1]")]
    assert len(body) >= 2
    r = cli("render", score, "--transpose", "Gm", "--formats", "abc", "-o", tmp_path / "moved")
    assert r.returncode == 0 and "from F# minor to G minor: ascending minor second" in r.stderr, r.stderr
    assert "\nK:Gm" in (tmp_path / "moved" / "bwv66.6-in-Gm.abc").read_text()


def test_rewrite_a_passage_on_the_command_line_keeps_every_other_bar(tmp_path):
    """--rewrite 3-4 on a real chorale with the bundled model: one piece, bars 3-4 new, the rest Bach's."""
    from music21 import corpus

    from engine import api
    from engine.render.pipeline import interleaved

    score = tmp_path / "bwv66.6.mxl"
    score.write_bytes(open(corpus.getWork("bach/bwv66.6"), "rb").read())
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--seed", 3, "--from-score", score, "--rewrite", "3-4", "--candidates", 2, "--formats", "abc",
            "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "bars 3-4 rewritten: the best of 2 candidates" in r.stderr
    (written,) = (tmp_path / "out").glob("*.abc")
    bars = lambda text: [ln for ln in "".join(interleaved(abc_text=text)).splitlines() if ln.startswith("[V:")]  # noqa: E731
    before, after = bars(api.read_score(score)), bars(written.read_text())
    assert len(after) == len(before) and after[:3] == before[:3] and after[5:] == before[5:]
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--from-score", score, "--rewrite", "3-x")
    assert r.returncode == 2 and "--rewrite takes the first and last bar to write again, as N-M" in r.stderr


def test_bar_ranges_and_rewrite_flags_are_read_or_refused_in_words():
    from engine.cli import bar_range

    assert bar_range("5-8") == (5, 8) and bar_range(" 5 ") == (5, 5) and bar_range("0-2") == (0, 2)
    for bad in ("", "5-", "a-b", "-3", "5-8-9"):
        with pytest.raises(SettingsError, match="as N-M"):
            bar_range(bad)


def test_harmonise_a_melody_on_the_command_line(tmp_path):
    """--harmonise FILE with the bundled model: the tune is the first voice of a four-voice chorale."""
    tune = tmp_path / "tune.abc"
    tune.write_text("X:1\nT:Tune\nL:1/8\nM:3/4\nK:D\nV:1 treble\nD2 | F2 A2 d2 | c4 B2 | A6 |]\n")
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--seed", 2, "--harmonise", tune, "--formats", "abc", "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    (written,) = (tmp_path / "out").glob("*.abc")
    first = [ln.split("[V:2]")[0] for ln in written.read_text().splitlines() if ln.startswith("[V:1]")]
    assert first == ["[V:1]D2|", "[V:1]F2 A2 d2|", "[V:1]c4 B2|", "[V:1]A6|]"]
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--harmonise", tune, "--key", "G")
    assert r.returncode == 2 and "the melody sets the piece's key: leave it empty" in r.stderr


def test_a_search_by_other_than_voice_or_line_is_refused_before_the_model_loads():
    r = cli("compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--search-by", "bar")
    assert r.returncode == 2 and "--search-by: invalid choice: 'bar' (choose from" in r.stderr


def test_reference_mode_writes_what_the_fast_path_writes_under_greedy_decoding(checkpoint, tmp_path):
    """--mode reference (NotaGen's own algorithm, no scheduler) through the service's model slot."""
    args = ["compose", "--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation", "Choral",
            "--model", checkpoint, "--seed", 5, "--max-patches", 6, "--temperature", 0, "--formats", "abc",
            "--bar-retries", 0, "--header-retries", 0, "--critic", "off", "--search", 1, "--quiet", "--device", "cpu"]
    fast, ref = cli(*args, "-o", tmp_path / "fast"), cli(*args, "--mode", "reference", "-o", tmp_path / "ref")
    assert fast.returncode == 0 and ref.returncode == 0, (fast.stderr, ref.stderr)
    text = (tmp_path / "fast" / "bach-choral-seed5.abc").read_text()
    assert len(text) > 40 and text == (tmp_path / "ref" / "bach-choral-seed5.abc").read_text()
