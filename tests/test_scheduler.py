"""Continuous batching (engine.symbolic.scheduler) with tiny random models: pieces admitted into a
running batch, in order, each writing exactly what it writes alone under greedy decoding (also
across a context reset and with bar retries), cancel of one row, bounds per row, a step fault,
the max_wait refusal."""
import threading
import time

import pytest

from conftest import BACH, tiny_model
from engine.errors import CadenzaError
from engine.symbolic.backend import FastBackend
from engine.symbolic.generate import PatchEvent, Piece, PieceRequest, generate
from engine.symbolic.prompts import Prompt
from engine.symbolic.sampling import SamplingSettings
from engine.symbolic.scheduler import Scheduler, Waiting

GREEDY = SamplingSettings(top_k=1, top_p=1.0, temperature=1.0)
OTHER = Prompt("Classical", "Mozart, Wolfgang Amadeus", "Keyboard")
HEADER = "%%score { 1 | 2 }\nL:1/8\nM:4/4\nK:G\nV:1 treble\nV:2 bass\n"
BODY = "".join(f"[r:{i}/{19 - i}][V:1]GABc d2 B2|[V:2]G,,2 D,2 G,2 B,,2|\n" for i in range(20))


@pytest.fixture
def model():
    return tiny_model(patch_length=48, patch_layers=1, char_layers=1, hidden=64, seed=7)


@pytest.fixture
def scheduler(model):
    s = Scheduler(model, max_batch=4, max_wait_s=30)
    yield s
    s.close()


def alone(model, req: PieceRequest) -> Piece:
    return generate(model, [req])[0]


def events_until(job, n: int):
    """Reads a job's first n patch events -> its iterator, still open (closing it would cancel
    the job, as a closed tab does)."""
    it = iter(job)
    got = 0
    while got < n:  # bounded: the job yields n patch events or ends (StopIteration)
        got += isinstance(next(it), PatchEvent)
    return it


def test_a_piece_joins_a_running_batch_and_writes_what_it_writes_alone(model, scheduler):
    first = PieceRequest(OTHER, seed=1, sampling=GREEDY, max_patches=30, stop_at_eos=False)
    late = PieceRequest(BACH, seed=2, sampling=GREEDY, max_patches=30, prefix=HEADER + BODY[:300], bar_retries=2)
    a = scheduler.submit([first])
    it = iter(a)
    seen = [next(e for e in it if isinstance(e, PatchEvent)) for _ in range(5)]  # the batch is running
    b = scheduler.submit([late])
    (b_piece,) = b.result()
    a_rest = list(it)
    assert isinstance(a_rest[-1], Piece) and a_rest[-1].patches == 30  # a went on while b ran beside it
    assert sum(isinstance(e, PatchEvent) for e in a_rest) > 0 and seen
    assert b_piece.text == alone(model, late).text  # admitted mid-batch, the same text
    assert a.pieces[0].text == alone(model, first).text


def test_across_a_context_reset_a_batched_piece_equals_the_piece_alone(model, scheduler):
    reset = PieceRequest(BACH, seed=3, sampling=GREEDY, max_patches=100, prefix=HEADER + BODY)
    other = PieceRequest(OTHER, seed=4, sampling=GREEDY, max_patches=30, stop_at_eos=False)
    jobs = [scheduler.submit([other]), scheduler.submit([reset])]
    (_,), (piece,) = (j.result() for j in jobs)
    assert piece.context_resets >= 1
    assert piece.text == alone(model, reset).text


def test_variations_are_rows_and_the_line_is_first_come_first_served(model):
    s = Scheduler(model, max_batch=2, max_wait_s=60)
    try:
        reqs = [PieceRequest(BACH, seed=i, max_patches=20, stop_at_eos=False) for i in range(3)]
        first = s.submit(reqs)  # three variations, two rows: the third waits for a row
        second = s.submit([PieceRequest(OTHER, seed=9, max_patches=5, stop_at_eos=False)])
        assert second.position() in (1, 2)
        pieces = first.result()
        assert [p.index for p in pieces] == [0, 1, 2] and all(p.patches == 20 for p in pieces)
        assert [p.seed for p in pieces] == [0, 1, 2]
        assert second.result()[0].patches == 5
        for p, r in zip(pieces, reqs):  # sampled, not greedy: the seed still decides alone
            assert p.text == alone(model, r).text
    finally:
        s.close()


def test_cancelling_one_job_stops_its_rows_within_a_patch_and_leaves_the_others(model, scheduler):
    keep = PieceRequest(BACH, seed=5, sampling=GREEDY, max_patches=30, stop_at_eos=False)
    stop = PieceRequest(OTHER, seed=6, max_patches=40, stop_at_eos=False)
    kept, stopped = scheduler.submit([keep]), scheduler.submit([stop])
    reading = events_until(stopped, 3)
    stopped.cancel()
    (piece,) = [e for e in reading if isinstance(e, Piece)]
    assert piece.stop_reason == "cancelled" and piece.patches < 30
    n = piece.patches
    time.sleep(0.3)
    assert stopped.pieces[0].patches == n  # its compute stopped
    assert kept.result()[0].text == alone(model, keep).text


def test_each_row_keeps_its_own_bounds(model, scheduler):
    jobs = [scheduler.submit([PieceRequest(BACH, seed=i, max_patches=n, stop_at_eos=False)])
            for i, n in enumerate([3, 11, 7])]
    assert [j.result()[0].patches for j in jobs] == [3, 11, 7]


class FailOnce(FastBackend):
    fail = True

    def sample(self, *args, **kwargs):
        if FailOnce.fail:
            FailOnce.fail = False
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().sample(*args, **kwargs)


def test_a_fault_in_a_step_fails_that_steps_requests_clearly_and_the_scheduler_goes_on(model):
    FailOnce.fail = True
    s = Scheduler(model, max_batch=4, backend=FailOnce)
    try:
        job = s.submit([PieceRequest(BACH, seed=1, max_patches=10)])
        with pytest.raises(CadenzaError, match="ran out of memory.*the model stays loaded"):
            job.result()
        again = s.submit([PieceRequest(BACH, seed=1, max_patches=10, stop_at_eos=False)])
        assert again.result()[0].patches == 10
        assert s.status()["rows_in_use"] == 0
    finally:
        s.close()


def test_a_request_that_finds_no_row_within_max_wait_is_told_the_server_is_busy(model):
    s = Scheduler(model, max_batch=1, max_wait_s=0.5)
    try:
        long = s.submit([PieceRequest(BACH, seed=1, max_patches=4000, max_seconds=30, prefix=HEADER + BODY,
                                      stop_at_eos=False)])  # long: it goes on past context resets
        reading = events_until(long, 2)
        late = s.submit([PieceRequest(BACH, seed=2, max_patches=5)])
        waiting = []
        with pytest.raises(CadenzaError, match="server is busy"):
            for ev in late:
                if isinstance(ev, Waiting):
                    waiting.append(ev.position)
        long.cancel()
        assert any(isinstance(e, Piece) and e.stop_reason == "cancelled" for e in reading)
    finally:
        s.close()


def test_many_threads_submit_at_once_and_every_piece_is_its_own(model, scheduler):
    reqs = [PieceRequest(BACH if i % 2 else OTHER, seed=i, sampling=GREEDY, max_patches=12 + i) for i in range(8)]
    out: dict[int, str] = {}

    def one(i):
        out[i] = scheduler.submit([reqs[i]]).result()[0].text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == list(range(8))
    for i, r in enumerate(reqs):
        assert out[i] == alone(model, r).text


def test_an_idle_worker_ends_and_the_next_request_starts_one(model, monkeypatch):
    """An idle worker thread ends (its OpenMP team with it: idle teams slowed the busy one 3x on
    2 cores); the next request starts a new one and is written as before."""
    from engine.symbolic import scheduler as sched_mod

    monkeypatch.setattr(sched_mod, "IDLE_EXIT_S", 0.2)
    s = Scheduler(model, max_batch=2, name="idle-test")
    try:
        req = PieceRequest(BACH, seed=3, sampling=GREEDY, max_patches=8, stop_at_eos=False)
        first = s.submit([req]).result()[0].text
        deadline = time.monotonic() + 5
        while s._worker and time.monotonic() < deadline:  # bounded
            time.sleep(0.05)
        assert not s._worker and not any(t.name == "scheduler-idle-test" for t in threading.enumerate())
        assert s.submit([req]).result()[0].text == first
    finally:
        s.close()


# --- every way a piece can end ends its job (issue 31, part 1) ---------------------------------------------
WIDE = "L:1/8\nM:4/4\nK:C\n" + "".join(f"V:{i} treble\n" for i in range(1, 61))  # 61 patches of header


def bounded_result(job, seconds: float = 60.0):
    """job.result() in a thread: a job that never ends fails the test instead of hanging it."""
    out: dict = {}

    def run():
        try:
            out["pieces"] = job.result()
        except CadenzaError as e:
            out["error"] = str(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the job never ended"
    return out


def test_a_header_longer_than_the_context_is_refused_before_any_work(model, scheduler):
    req = PieceRequest(BACH, seed=1, prefix=WIDE + "[r:0/3][V:1]C8|\n")
    with pytest.raises(CadenzaError, match=r"too long for the model.*reads at most 48 at once.*use fewer voices"):
        scheduler.submit([req])
    with pytest.raises(CadenzaError, match="too long for the model"):
        generate(model, [req])  # the direct path too
    ok = PieceRequest(BACH, seed=1, sampling=GREEDY, max_patches=4)
    assert bounded_result(scheduler.submit([ok]))["pieces"][0].patches == 4  # the scheduler serves on


def test_a_piece_whose_context_is_full_at_admission_ends_its_job(model, scheduler, monkeypatch):
    """The hang the attack run found: admitted with stop_reason "context", dropped untold."""
    import engine.symbolic.scheduler as sched
    monkeypatch.setattr(sched, "context_problem", lambda *a: None)  # as before the check at submit
    full = PieceRequest(BACH, seed=1, prefix=WIDE + "[r:0/3][V:1]C8|\n")
    ok = PieceRequest(BACH, seed=2, sampling=GREEDY, max_patches=3)
    out = bounded_result(scheduler.submit([full, ok]))
    assert [p.stop_reason for p in out["pieces"]] == ["context", "max_patches"]


def test_a_piece_that_cannot_start_fails_its_job_and_the_worker_goes_on(model, scheduler, monkeypatch):
    import engine.symbolic.scheduler as sched
    real = sched.PieceState

    def broken(i, req, *a):
        if req.seed == 13:
            raise ValueError("unreadable text")
        return real(i, req, *a)
    monkeypatch.setattr(sched, "PieceState", broken)
    out = bounded_result(scheduler.submit([PieceRequest(BACH, seed=13)]))
    assert "could not start (ValueError: unreadable text)" in out["error"]
    assert bounded_result(scheduler.submit([PieceRequest(BACH, seed=1, max_patches=2)]))["pieces"][0].patches == 2


def test_a_worker_bug_ends_its_jobs_with_a_message_and_the_next_request_gets_a_new_worker(model, scheduler,
                                                                                           monkeypatch):
    calls = {"n": 0}
    real = Scheduler._end_finished

    def once_broken(self, active, owner):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in the worker")
        return real(self, active, owner)
    monkeypatch.setattr(Scheduler, "_end_finished", once_broken)
    out = bounded_result(scheduler.submit([PieceRequest(BACH, seed=1, max_patches=5)]))
    assert "worker failed (RuntimeError: a bug in the worker)" in out["error"]
    assert bounded_result(scheduler.submit([PieceRequest(BACH, seed=1, max_patches=2)]))["pieces"][0].patches == 2


def test_a_job_the_worker_lost_ends_at_its_deadline(model, monkeypatch):
    import engine.symbolic.scheduler as sched
    monkeypatch.setattr(sched, "DEADLINE_GRACE_S", 0.5)
    monkeypatch.setattr(Scheduler, "_loop", lambda self, owner: None)  # a worker that drops everything
    s = Scheduler(model, max_batch=2, max_wait_s=1)
    job = s.submit([PieceRequest(BACH, seed=1, max_seconds=1)])
    out = bounded_result(job, 30)
    assert "did not end within 2 s" in out["error"] and job.cancelled


# --- rows shared fairly between sessions (issue 31, part 3) ---------------------------------------------------
def long_piece(seed: int, patches: int = 40) -> PieceRequest:
    return PieceRequest(BACH, seed=seed, sampling=SamplingSettings(), max_patches=patches, stop_at_eos=False)


def test_a_session_holding_every_row_gives_one_back_to_a_second_session_and_writes_the_same(model):
    s = Scheduler(model, max_batch=4, max_wait_s=30)
    try:
        hog = s.submit([long_piece(i) for i in range(1, 5)], owner="hog")
        it = events_until(hog, 8)
        assert s.status()["rows_in_use"] == 4  # alone, a session uses the whole batch
        other = s.submit([long_piece(9, patches=6)], owner="other")
        (mine,) = bounded_result(other)["pieces"]  # admitted while the hog's pieces still run
        rest = list(it)
    finally:
        s.close()
    hogs = [e for e in rest if isinstance(e, Piece)]
    assert mine.patches == 6 and len(hogs) == 4 and all(p.patches == 40 for p in hogs)
    paused = [e for e in rest if isinstance(e, Waiting)]
    assert paused and "paused" in paused[0].reason and "shared evenly" in paused[0].reason
    # a paused piece resumes where it stopped: each writes exactly what it writes alone
    assert [p.text for p in sorted(hogs, key=lambda p: p.index)] == [alone(model, long_piece(i)).text
                                                                      for i in range(1, 5)]
    assert mine.text == alone(model, long_piece(9, patches=6)).text


def test_a_sessions_waiting_pieces_and_rows_are_capped(model):
    from engine.symbolic.scheduler import Sharing
    s = Scheduler(model, max_batch=4, max_wait_s=30, sharing=Sharing(rows=2, waiting=3))
    try:
        job = s.submit([long_piece(i, patches=20) for i in range(1, 4)], owner="a")
        it = events_until(job, 4)
        assert s.status()["rows_in_use"] == 2  # at its row cap, with two rows free
        with pytest.raises(CadenzaError, match=r"1 of your pieces are already waiting.*at most 3 may wait"):
            s.submit([long_piece(7), long_piece(8), long_piece(9)], owner="a")
        assert "the most one session may" in s.why_waiting(job)
        other = s.submit([long_piece(5, patches=3)], owner="b")  # another session is not held back
        assert bounded_result(other)["pieces"][0].patches == 3
        assert [p.patches for p in it if isinstance(p, Piece)] == [20, 20, 20]
    finally:
        s.close()
    with pytest.raises(CadenzaError, match="rows cap must be from 1 to 4096"):
        Scheduler(model, sharing=Sharing(rows=0))


def test_stop_ends_a_paused_piece_at_once_with_its_text(model):
    s = Scheduler(model, max_batch=2, max_wait_s=30)
    try:
        hog = s.submit([long_piece(1, 400), long_piece(2, 400)], owner="hog")
        it = events_until(hog, 4)
        other = s.submit([long_piece(3, 400)], owner="other")
        next(e for e in iter(other) if isinstance(e, PatchEvent))  # it has a row: one of the hog's is paused
        assert s.status()["paused_pieces"] == 1
        hog.cancel()
        ended = [e for e in it if isinstance(e, Piece)]
        other.cancel()
    finally:
        s.close()
    assert [p.stop_reason for p in ended] == ["cancelled", "cancelled"] and all(p.patches > 0 for p in ended)
