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


def _searching(k=2, retries=1):
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=retries, search=k), 128, 16, "cpu")
    state.in_tunebody = True
    _feed(state, FIRST)  # the first line sets the metre; the search begins with the second
    search.begin(state)
    return state


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
