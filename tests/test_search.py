"""Search over candidates of a bar (engine.symbolic.search): the best of K lines written at once is
kept; the candidates' caches are forked rows; a piece writes the same text alone, in a batch and with
NotaGen's reference algorithm."""
import pytest

from conftest import BACH
from engine import api
from engine.errors import SettingsError
from engine.symbolic import search
from engine.symbolic.controls import Controls
from engine.symbolic.generate import FastBackend, Piece, PieceRequest, PieceState, stream
from engine.symbolic.prompts import Prompt
from engine.symbolic.reference import ReferenceBackend
from engine.symbolic.scheduler import Scheduler
from test_generation import HEADER, _feed, _replay

FIRST = "[r:0/2][V:1]GABc d2 B2|[V:2]G,,2 D,2 G,2 B,,2|\n"
SHORT = "[r:1/1][V:1]GABc d2 B2|[V:2]G,,2 D,2|\n"  # the voices disagree: 8 eighths against 4
GOOD = "[r:1/1][V:1]d2 c2 B2 A2|[V:2]G,,2 D,2 G,2 D,2|\n"


def _searching(k=2, retries=1, by="line"):
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=retries, search=k, search_by=by), 128, 16, "cpu")
    state.in_tunebody = True
    _feed(state, FIRST)  # the first line sets the metre; the search begins with the second
    search.begin(state)
    return state


@pytest.fixture
def every_voice_k(monkeypatch):
    """Every voice's round writes K candidates (by default the voices above the lowest write half):
    the rounds' mechanics with two members each."""
    monkeypatch.setattr(search, "UPPER", 1)


def test_the_voices_above_the_lowest_write_half_the_candidates():
    """search.round_size: a line's lowest voice (and a whole line, or a one-voice piece's) K, the
    voices above it K / UPPER; begin forks as many."""
    state = _searching(k=8, by="voice")  # two voices declared: the first is above the lowest
    assert len(state.search.members) == 8 // search.UPPER
    piece = state.search.members[0]
    _feed(piece, "[r:1/1][V:1]d2 c2 B2 A2")
    for m in piece.search.members[1:]:
        _feed(m, "[r:1/1][V:1]d2 c2 B2 A2")
    search.settle(piece)
    search.begin(piece)  # the second voice, the lowest
    assert len(piece.search.members) == 8
    assert len(_searching(k=8, by="line").search.members) == 8  # a line's round


def test_the_line_that_keeps_the_rules_wins_and_its_cache_row_is_taken():
    state = _searching()
    assert state.search is not None and len(search.rows([state])) == 2
    piece, candidate = state.search.members
    assert candidate.candidate_of is piece and candidate.cache_from == piece.uid
    start = state.text
    events = _feed(piece, SHORT)
    assert search.settle(piece) is None  # the candidate has not finished its line
    _feed(candidate, GOOD)
    events.append(search.settle(piece))
    assert piece.text == start + GOOD and piece.bars == 2 and piece.search is None
    assert piece.rewritten == 0 and piece.retries == 0  # no retry was needed: a candidate kept the rules
    assert piece.cache_from == candidate.uid  # the piece's row becomes the winner's
    assert _replay(start, events) == piece.text  # what listeners saw is replaced by the winner
    assert piece.at_line_start()  # the next line can be searched


def test_the_piece_keeps_its_own_line_when_it_is_as_good_and_nothing_is_reported_again():
    state = _searching()
    piece, candidate = state.search.members
    _feed(piece, GOOD)
    _feed(candidate, SHORT)
    assert search.settle(piece) is None and piece.text.endswith(GOOD) and piece.cache_from is None


def test_a_last_line_that_closes_every_voice_wins_over_one_that_does_not():
    state = _searching()
    piece, candidate = state.search.members
    piece.rewriting_end = True  # the ending rule took the last line back (retries.take_back_ending)
    closing = GOOD.replace("|[V:2]", "|][V:2]").replace("|\n", "|]\n")
    _feed(piece, GOOD)
    _feed(candidate, closing)
    search.settle(piece)
    assert piece.text.endswith(closing)


def test_a_last_line_whose_voices_end_together_wins_over_a_closed_one_that_does_not():
    """The ending rule asks every voice to end together, each written once (a final bar of 8 eighths
    over 4, or with a voice twice, is the ragged ending the musical check counts)."""
    from engine.symbolic import retries

    state = _searching()
    piece, candidate = state.search.members
    piece.rewriting_end = True
    ragged = SHORT.replace("|[V:2]", "|][V:2]").replace("|\n", "|]\n")
    together = GOOD.replace("|[V:2]", "|][V:2]").replace("|\n", "|]\n")
    assert retries.ending_faults(piece, ragged, piece.line_start) > retries.ending_faults(piece, together, piece.line_start)
    twice = together.replace("|]\n", "|][V:2]G,,8|]\n")
    assert retries.ending_faults(piece, twice, piece.line_start) > retries.ending_faults(piece, together, piece.line_start)
    _feed(piece, ragged)
    _feed(candidate, together)
    search.settle(piece)
    assert piece.text.endswith(together)


def test_when_every_candidate_breaks_a_rule_the_round_is_written_again():
    state = _searching(k=2, retries=1)
    piece, candidate = state.search.members
    start = state.text
    events = _feed(piece, SHORT)
    _feed(candidate, SHORT)  # a candidate's events are never reported
    events.append(search.settle(piece))
    assert piece.text == start and piece.retries == 1 and piece.rewritten == 1  # taken back: a new round
    assert _replay(start, events) == start


def test_a_candidate_that_ends_the_piece_or_runs_on_is_dropped():
    state = _searching(k=3)
    piece, ending, long = state.search.members
    assert ending.accept([1, 2] + [0] * 14) is None  # an eos patch: a candidate cannot end the piece
    _feed(piece, GOOD)
    for _ in range(12):  # bounded: the limit is twice the first finished line plus SLACK
        search.enforce_limit(long)
        if search.waiting(long):
            break
        long.accept([ord("a")] * 16)
    assert state.search.done == {piece.uid: "line", ending.uid: "dropped", long.uid: "dropped"}
    assert search.settle(piece) is None and piece.text.endswith(GOOD)


@pytest.mark.parametrize("value", [0, 17, "4", 2.5, True])
def test_a_search_out_of_range_is_refused_before_any_work(value):
    with pytest.raises(SettingsError, match="search"):
        PieceRequest(BACH, search=value)
    with pytest.raises(SettingsError, match="search"):
        api.ComposeRequest(BACH.period, BACH.composer, BACH.instrumentation, search=value)


def test_searching_by_voice_keeps_the_best_bar_of_each_voice_in_turn(every_voice_k):
    """Each voice's bar is a round of its own: the better first voice is kept, the second voice's
    candidates are written over it, and the whole line is judged at its end."""
    state = _searching(by="voice")
    start = state.text
    piece, candidate = state.search.members
    events = _feed(piece, "[r:1/1][V:1]d2 [cB2 A2")  # a chord left open: a form fault
    assert search.settle(piece) is None and not search.waiting(candidate)
    _feed(candidate, "[r:1/1][V:1]d2 c2 B2 A2")
    assert search.waiting(piece) and search.waiting(candidate)  # both ended the voice's bar, not the line
    events.append(search.settle(piece))
    assert piece.text == start + "[r:1/1][V:1]d2 c2 B2 A2" and piece.cache_from == candidate.uid
    assert piece.bars == 1 and not piece.at_line_start() and search.at_voice_start(piece)
    search.begin(piece)  # the second voice's round, forked from the kept first voice
    piece2, candidate2 = piece.search.members
    assert candidate2.text == piece.text and candidate2.cache_from == candidate.uid
    assert piece2 is piece
    events += _feed(piece, "|[V:2]G,,2 D,2 G,2 D,2|\n")
    _feed(candidate2, "|[V:2]G,,2 D,2|\n")  # 4 eighths against 8: misaligned
    assert search.settle(piece) is None  # the piece's own bar won and the line kept the rules: as shown
    assert piece.text == start + GOOD and piece.bars == 2 and piece.at_line_start() and piece.voice_at is None
    assert _replay(start, events) == piece.text  # listeners saw the first voice replaced, then the second


def test_a_voice_whose_every_candidate_breaks_a_rule_is_written_again_not_the_line(every_voice_k):
    state = _searching(retries=4, by="voice")
    start = state.text
    piece, candidate = state.search.members
    events = _feed(piece, "[r:1/1][V:1]d2 c2 B2 A2")
    events.append(search.settle(piece))  # the piece's first voice is kept (the candidate has not finished)
    _feed(candidate, "[r:1/1][V:1]d2 B2 A2 G2")
    events.append(search.settle(piece))
    kept = piece.text
    for tries in range(1, search.VOICE_RETRIES + 1):  # bounded: each round of the second voice fails
        search.begin(piece)
        members = piece.search.members
        for m in members:
            events += [e for e in _feed(m, "|[V:2]G,,2 D,2|\n") if m is piece]  # 4 eighths against 8
        events.append(search.settle(piece))
        # only the voice went, and it spent one of the line's retries
        assert piece.text == kept and piece.voice_tries == tries and piece.retries == tries
        assert search.at_voice_start(piece)
    search.begin(piece)
    for m in piece.search.members:
        events += [e for e in _feed(m, "|[V:2]G,,2 D,2|\n") if m is piece]
    events.append(search.settle(piece))  # out of voice retries: the line rule takes the whole line back
    assert piece.text == start and piece.retries == 4 and piece.voice_tries == 0 and piece.at_line_start()
    assert _replay(start, [e for e in events if e is not None]) == piece.text


def _fail_second_voice(piece, first="[r:1/1][V:1]d2 c2 B2 A2"):
    """The piece's first voice is kept, then every candidate of its second voice is 4 eighths short."""
    _feed(piece, first)
    search.settle(piece)
    _feed(piece.search.members[1], first.replace("c2", "B2"))
    search.settle(piece)
    search.begin(piece)
    for m in piece.search.members:
        _feed(m, "|[V:2]G,,2 D,2|\n")
    search.settle(piece)


def test_a_voice_written_again_spends_the_line_retries_except_in_the_last_line(every_voice_k):
    """One budget for a bar: with one retry, a voice is written again once, then the line rule keeps
    the best attempt; a last line's voices are written again without spending it (the ending rule
    bounds that line)."""
    piece = _searching(retries=1, by="voice").search.members[0]
    _fail_second_voice(piece)
    assert piece.voice_tries == 1 and piece.retries == 1 and search.at_voice_start(piece)
    search.begin(piece)
    for m in piece.search.members:
        _feed(m, "|[V:2]G,,2 D,2|\n")
    search.settle(piece)  # no retry left: no voice retry, and the line rule keeps the line it has
    assert piece.voice_tries == 0 and piece.retries == 0 and piece.at_line_start()  # the next line's budget
    assert piece.text.endswith("|[V:2]G,,2 D,2|\n")
    last = _searching(retries=1, by="voice").search.members[0]
    _fail_second_voice(last, "[r:1/0][V:1]d2 c2 B2 A2")
    assert last.voice_tries == 1 and last.retries == 0


def test_a_voice_skipped_in_a_line_so_far_is_missing_before_the_line_ends():
    """Searching by voice, a candidate that skips a voice (writes V:2 where V:1 comes first) misses a
    voice at once: the line's end is too late to find it (the best attempt kept when the retries run
    out had a whole-bar rest)."""
    from engine.symbolic import retries
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=1, search=2, search_by="voice",
                                       bar_rules=frozenset({"full", "metre"})), 128, 16, "cpu")
    state.in_tunebody = True
    _feed(state, FIRST)
    assert state.voices == ("1", "2")
    full = retries.FAULT_WEIGHTS["full"]
    fits = state.metre  # the bar fills the metre: only the voices are judged
    assert retries.line_faults(state, "[r:1/1][V:1]d2 c2 B2 A2", fits, True, partial=True) == 0
    assert retries.line_faults(state, "[r:1/1][V:2]G,,2 D,2 G,2 D,2", fits, True, partial=True) == full
    assert retries.line_faults(state, GOOD.replace("[V:1]d2 c2 B2 A2|", ""), fits, True) == full


def test_the_bar_before_the_last_prefers_a_bass_ending_on_v_or_iv():
    """The model mostly ends on one tonic chord, so its cadence's V or IV is the bar before's last
    bass note: among that bar's candidates, one whose bass ends there ranks better (a grade, not a
    fault: nothing is written again for it)."""
    from engine.symbolic.harmony import bass_prepares
    assert bass_prepares(["B2 A2|", "G,2 D,2|"], {"F": 1}, 7) and bass_prepares(["C,4|"], {}, 7)  # V, IV of G
    assert not bass_prepares(["B2 A2|", "D,2 G,2|"], {"F": 1}, 7) and not bass_prepares(["z4|"], {}, 7)
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=1, search=2, search_by="voice",
                                       bar_rules=frozenset({"harmony", "metre"})), 128, 16, "cpu")
    state.in_tunebody = True
    _feed(state, FIRST)
    for bass, lost in (("G,,2 D,2 G,2 D,2", 0.0), ("G,,2 D,2 G,2 C,2", 0.0), ("G,,2 D,2 B,,2 G,,2", search.PREPARE)):
        line = f"[r:1/1][V:1]d2 c2 B2 A2|[V:2]{bass}|\n"  # the bass ends on D (V), C (IV), G (I)
        later = line.replace("[r:1/1]", "[r:1/2]")  # the same bar with two after it
        assert search.next_to_last(state, line) and not search.next_to_last(state, later)
        ranked, plain = search.rank(state, line, 0), search.rank(state, later, 0)
        assert ranked[0] == plain[0] and ranked[1] - plain[1] == pytest.approx(lost)


def test_a_last_line_by_its_marker_is_ranked_as_an_ending_without_a_length_asked():
    state = _searching()
    piece = state.search.members[0]
    closed = GOOD.replace("[r:1/1]", "[r:1/0]").replace("|[V:2]", "|][V:2]").replace("|\n", "|]\n")
    assert search.last_line(piece, closed) and not search.last_line(piece, GOOD)
    assert search.rank(piece, closed, 1) < search.rank(piece, closed.replace("|]", "|"), 0)
    # a line so far: its last voice's closing barline begins the next patch, so it is not missing yet
    from engine.symbolic import retries
    so_far = "[r:1/0][V:1]d2 c2 B2 A2"
    assert retries.ending_faults(piece, so_far, piece.line_start, partial=True) == 0
    assert retries.ending_faults(piece, so_far + "|[V:2]G,,2 D,2 G,2 D,2", piece.line_start, partial=True) == 1


def test_a_search_by_anything_but_line_or_voice_is_refused_before_any_work():
    with pytest.raises(SettingsError, match="search_by must be one of line, voice"):
        PieceRequest(BACH, search_by="bar")
    with pytest.raises(SettingsError, match="search by must be one of line, voice"):
        api.ComposeRequest(BACH.period, BACH.composer, BACH.instrumentation, search_by=None)


BUNDLED = api.bundled_model()
needs_model = pytest.mark.skipif(BUNDLED is None, reason="no bundled model in assets/models")
GERMAN = Prompt("Folk", "Traditional, German", "Melody")


@pytest.fixture(scope="module")
def lm():
    return api.load(BUNDLED)


def _requests(lm, seeds, k=3):
    return [PieceRequest(GERMAN, seed=seed, max_patches=160, bar_retries=4, search=k, bar_rules=frozenset({"metre"}),
                         controls=Controls(bars=6, meter="3/4")) for seed in seeds]


def _run(model, requests, backend=FastBackend):
    events, pieces = {}, {}
    for ev in stream(model, requests, backend):
        if isinstance(ev, Piece):
            pieces[ev.index] = ev
        else:
            events.setdefault(ev.index, []).append(ev)
    return events, [pieces[i] for i in range(len(requests))]


@needs_model
def test_forked_caches_write_what_the_reference_algorithm_writes(lm):
    """The reference algorithm reads the whole context anew every patch: equal text means the forked
    and adopted cache rows held exactly the candidates' contexts."""
    fast_events, fast = _run(lm.model, _requests(lm, [3]))
    ref_events, ref = _run(lm.model, _requests(lm, [3]), ReferenceBackend)
    assert fast[0].text == ref[0].text and fast[0].stop_reason == "eos"
    assert [(e.text, e.retract) for e in fast_events[0]] == [(e.text, e.retract) for e in ref_events[0]]
    swaps = [e for e in fast_events[0] if e.retract and e.text]  # a candidate's line replaced the piece's
    assert swaps, "no round chose a candidate over the piece's own line: the test exercises nothing"
    assert _replay("".join(GERMAN.lines()), fast_events[0]) == fast[0].text


@needs_model
def test_a_search_by_voice_writes_what_the_reference_algorithm_writes(lm):
    """Rounds that begin inside a line fork and adopt cache rows there: the reference algorithm,
    reading the whole context anew, must write the same chorale."""
    requests = lambda: [PieceRequest(BACH, seed=2, max_patches=120, bar_retries=2, search=6, search_by="voice",
                                     bar_rules=frozenset({"full", "metre"}), controls=Controls(bars=3, meter="4/4"))]
    fast_events, fast = _run(lm.model, requests())
    ref_events, ref = _run(lm.model, requests(), ReferenceBackend)
    assert fast[0].text == ref[0].text
    assert [(e.text, e.retract) for e in fast_events[0]] == [(e.text, e.retract) for e in ref_events[0]]
    inside = [e for e in fast_events[0] if e.retract and e.text.startswith("|[V:")]  # a later voice's bar
    assert inside, "no round inside a line chose a candidate's voice: the test exercises nothing"
    assert _replay("".join(BACH.lines()), fast_events[0]) == fast[0].text


@needs_model
def test_a_piece_writes_the_same_alone_and_in_a_batch_and_the_candidates_take_rows(lm):
    (alone,) = _run(lm.model, _requests(lm, [5]))[1]
    together = _run(lm.model, _requests(lm, [4, 5]))[1]
    assert together[1].text == alone.text
    scheduler = Scheduler(lm.model, max_batch=4)
    try:
        with pytest.raises(SettingsError, match="5 rows"):
            scheduler.submit(_requests(lm, [1], k=5))
        job = scheduler.submit(_requests(lm, [4, 5], k=3))  # 3 rows each: the second waits for the first
        assert [p.text for p in job.result()] == [p.text for p in together]
    finally:
        scheduler.close()
