"""Fast generation against NotaGen's reference algorithm, seeds, batches, bounds, streaming."""
import copy
import threading

import pytest
import torch

from conftest import BACH, TINY_SIZES, bach, tiny_model
from engine.errors import SettingsError
from engine.symbolic import generate as gen_mod
from engine.symbolic import piece as piece_mod
from engine.symbolic import retries as retry_rules
from engine.symbolic.generate import FastBackend, PatchEvent, Piece, PieceRequest, PieceState, generate, stream
from engine.symbolic.config import BOS_ID, EOS_ID, PAD_ID
from engine.symbolic.reference import ReferenceBackend
from engine.symbolic.labels import fits_label
from engine.symbolic.model import Conv1D, cpu_bf16_packing_available
from engine.symbolic.prompts import Prompt
from engine.symbolic.sampling import SamplingSettings

GREEDY = SamplingSettings(top_k=1, top_p=1.0, temperature=1.0)

# A real-looking two-voice piece in the model's format (a prefix to continue).
HEADER = "%%score { 1 | 2 }\nL:1/8\nM:4/4\nK:G\nV:1 treble nm=\"Piano\"\nV:2 bass\n"
BODY = "".join(f"[r:{i}/{19 - i}][V:1]GABc d2 B2|[V:2]G,,2 D,2 G,2 B,,2|\n" for i in range(20))


def run(model, reqs, mode="fast"):
    backend = ReferenceBackend if mode == "reference" else FastBackend
    events, pieces = [], {}
    for ev in stream(model, reqs, backend):
        if isinstance(ev, Piece):
            pieces[ev.index] = ev
        else:
            events.append(ev)
    return events, [pieces[i] for i in range(len(reqs))]


@pytest.mark.parametrize("size", TINY_SIZES)
def test_fast_equals_reference_greedy(size):
    model = tiny_model(*size, seed=sum(size))
    req = lambda: PieceRequest(BACH, sampling=GREEDY, max_patches=40)  # noqa: E731
    ev_fast, (fast,) = run(model, [req()], "fast")
    ev_ref, (ref,) = run(model, [req()], "reference")
    # 40 patches, or fewer when metadata alone fills a small context (nothing left to cut)
    assert fast.stop_reason == ("max_patches" if size[0] > 40 + 5 else "context") == ref.stop_reason
    assert fast.patches == ref.patches >= min(40, size[0] - 6)
    assert [e.ids for e in ev_fast] == [e.ids for e in ev_ref]
    assert fast.text == ref.text


@pytest.mark.parametrize("size", TINY_SIZES[:2])
def test_fast_equals_reference_across_context_overflow(size):
    """A tune body nearly filling the context: generation must re-encode (metadata + later half of
    the tune-body lines), more than once, and both modes must agree on every patch."""
    model = tiny_model(*size, seed=7)
    req = lambda: PieceRequest(BACH, sampling=GREEDY, max_patches=3 * size[0], prefix=HEADER + BODY)  # noqa: E731
    ev_fast, (fast,) = run(model, [req()], "fast")
    ev_ref, (ref,) = run(model, [req()], "reference")
    assert fast.context_resets >= 1
    assert fast.context_resets == ref.context_resets
    assert [e.ids for e in ev_fast] == [e.ids for e in ev_ref]
    assert fast.text == ref.text and fast.stop_reason == ref.stop_reason


def test_context_reencode_keeps_metadata_and_later_half():
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER + BODY), patch_length=40, patch_size=16, device="cpu")
    assert state.resets >= 1  # the prefix alone overflows 40 patches
    text = "".join(chr(c) for p in state.context for c in p if c > 2) + "".join(chr(c) for c in state.tail)
    assert text.startswith("%Baroque\n%Bach, Johann Sebastian\n%Choral\n%%score")
    assert "[r:19/0]" in text and "[r:0/19]" not in text
    assert len(state.context) < 40


def test_same_seed_same_piece_and_seeds_differ():
    model = tiny_model(seed=3)
    a = generate(model, [PieceRequest(BACH, seed=11, max_patches=30)])[0]
    b = generate(model, [PieceRequest(BACH, seed=11, max_patches=30)])[0]
    c = generate(model, [PieceRequest(BACH, seed=12, max_patches=30)])[0]
    assert a.text == b.text
    assert a.text != c.text


def test_sampling_matches_reference_for_the_same_seed():
    """Both modes draw the same uniforms per piece, so sampled pieces agree too."""
    model = tiny_model(seed=5)
    for seed in (1, 2):
        fast = generate(model, [PieceRequest(BACH, seed=seed, max_patches=25)], FastBackend)[0]
        ref = generate(model, [PieceRequest(BACH, seed=seed, max_patches=25)], ReferenceBackend)[0]
        assert fast.text == ref.text


def test_batch_equals_pieces_alone_and_pieces_end_independently():
    model = tiny_model(seed=9)
    other = Prompt("Romantic", "Chopin, Frederic", "Keyboard")
    reqs = lambda: [PieceRequest(BACH, seed=1, max_patches=8),  # noqa: E731
                    PieceRequest(other, seed=2, max_patches=20),
                    PieceRequest(BACH, seed=3, max_patches=14, sampling=GREEDY)]
    events, batch = run(model, reqs())
    alone = [generate(model, [r])[0] for r in reqs()]
    assert [p.text for p in batch] == [p.text for p in alone]
    assert [p.patches for p in batch] == [8, 20, 14]
    last_event = {i: max(n for n, e in enumerate(events) if e.index == i) for i in range(3)}
    assert last_event[0] < last_event[2] < last_event[1]  # the shorter ones stopped first


def test_finished_pieces_leave_the_batch(monkeypatch):
    """Rows of finished pieces are dropped from the caches: later steps run on fewer rows."""
    model = tiny_model(seed=9)
    rows_seen = []
    original = gen_mod.FastBackend.sample

    def spy(self, hidden, states, prefixes):
        rows_seen.append(hidden.shape[0])
        return original(self, hidden, states, prefixes)

    monkeypatch.setattr(gen_mod.FastBackend, "sample", spy)
    generate(model, [PieceRequest(BACH, seed=i, max_patches=n) for i, n in enumerate([2, 5, 9])])
    assert rows_seen == [3, 3, 2, 2, 2, 1, 1, 1, 1]


def test_stream_reports_counts():
    model = tiny_model(seed=2)
    events, (piece,) = run(model, [PieceRequest(BACH, seed=4, max_patches=12, prefix=HEADER + BODY[:200])])
    assert [e.patches for e in events] == list(range(1, 13))
    assert "".join(e.text for e in events) == piece.text[len("".join(BACH.lines())) + 200 + len(HEADER):]
    assert all(a.elapsed <= b.elapsed for a, b in zip(events, events[1:]))
    assert events[-1].chars == piece.chars


def test_cancel_from_another_thread_stops_within_one_patch():
    model = tiny_model(seed=1)
    cancel = threading.Event()
    seen_at_cancel = []

    def on_event(ev: PatchEvent):
        if ev.patches == 5 and not cancel.is_set():
            threading.Thread(target=cancel.set).start()
            seen_at_cancel.append(ev.patches)
            threading.Event().wait(0.05)  # let the other thread set it before the next patch

    piece = generate(model, [PieceRequest(BACH, max_patches=500, cancel=cancel)], on_event=on_event)[0]
    assert piece.stop_reason == "cancelled" and piece.cut_short
    assert piece.patches - seen_at_cancel[0] <= 1


def test_cancel_one_piece_of_a_batch_keeps_the_others():
    model = tiny_model(seed=1)
    cancel = threading.Event()
    reqs = [PieceRequest(BACH, seed=1, max_patches=30, cancel=cancel), PieceRequest(BACH, seed=2, max_patches=30)]
    pieces = generate(model, reqs, on_event=lambda ev: ev.patches == 3 and ev.index == 0 and cancel.set())
    assert pieces[0].stop_reason == "cancelled" and pieces[0].patches == 3
    assert pieces[1].stop_reason == "max_patches" and pieces[1].patches == 30


def test_max_seconds_stops_within_one_patch(monkeypatch):
    clock = iter(range(0, 10_000))  # every reading of the clock is one second later
    monkeypatch.setattr(piece_mod.time, "monotonic", lambda: float(next(clock)))
    piece = generate(tiny_model(), [PieceRequest(BACH, max_patches=500, max_seconds=10)])[0]
    assert piece.stop_reason == "max_seconds"
    assert 1 <= piece.patches <= 10


def test_max_chars_and_partial_piece_is_kept():
    piece = generate(tiny_model(), [PieceRequest(BACH, max_patches=500, max_chars=100)])[0]
    assert piece.stop_reason == "max_chars" and 100 <= piece.chars < 100 + 16
    assert piece.text.startswith("".join(BACH.lines()))


def test_eos_patch_ends_a_piece():
    state = PieceState(0, PieceRequest(BACH), patch_length=64, patch_size=16, device="cpu")
    assert state.accept([1] + [2] * 15) is None and state.stop_reason == "eos"
    bench = PieceState(0, PieceRequest(BACH, stop_at_eos=False), patch_length=64, patch_size=16, device="cpu")
    assert bench.accept([1] + [2] * 15) is not None and bench.stop_reason is None


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed="7"), dict(max_patches=0), dict(max_patches=10**9),
                                    dict(max_seconds=0), dict(max_seconds=float("nan")), dict(prefix="caf\u00e9")])
def test_bad_bounds_are_rejected_when_the_request_is_made(kwargs):
    with pytest.raises(SettingsError):
        bach(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(top_k=-1), dict(top_k=500), dict(top_p=0), dict(top_p=1.5),
                                    dict(temperature=-0.1), dict(temperature=float("inf"))])
def test_bad_sampling_settings_are_rejected(kwargs):
    with pytest.raises(SettingsError, match="must be"):
        SamplingSettings(**kwargs)


def test_a_backend_is_an_object_passed_in():
    """stream() takes the backend that makes stages 1-2 (no mode strings): one that writes eos at
    once ends every piece after its first step."""
    class Ending(ScriptedBackend):
        def __init__(self, model, rows):
            super().__init__()
            self.rows = rows

        def sample(self, hidden, states, prefixes):
            return [[BOS_ID, EOS_ID] + [PAD_ID] * 14 for _ in prefixes]  # the eos patch

    pieces = generate(tiny_model(), [PieceRequest(BACH), PieceRequest(BACH, seed=1)], Ending)
    assert [p.stop_reason for p in pieces] == ["eos", "eos"] and all(p.patches == 0 for p in pieces)


class ScriptedBackend:
    """Stands in for the model: writes a first tune-body line numbered 5, as an untrained model might."""

    def __init__(self):
        self.prefixes = []

    def encode(self, states):
        import torch
        return torch.zeros(len(states), 4)

    def sample(self, hidden, states, prefixes):
        self.prefixes.append(["".join(map(chr, p)) for p in prefixes])
        out = []
        for p in prefixes:
            text = "".join(map(chr, p))
            full = "[r:5/3][V:1]ab|" if text == "" else text + "3][V:1]ab|\n"
            out.append([ord(c) for c in full[:16]] + [2] * (16 - len(full[:16])))
        return out


def test_first_tune_body_line_is_rewritten_from_r0():
    """NotaGen's rule: when the tune body starts, the patch is written again with '[r:0/' forced."""
    state = PieceState(0, PieceRequest(BACH), patch_length=64, patch_size=16, device="cpu")
    backend = ScriptedBackend()
    events = [ev for _, ev in gen_mod.step(backend, [state])]
    assert backend.prefixes == [[""], ["[r:0/"]]
    assert events[0].text == "[r:0/3][V:1]ab|\n" and state.in_tunebody and state.bars == 1


# --- taking back misaligned bars and headers with the wrong number of voices ----------------------

def _feed(state, text):
    """Feeds `text` as the model would write it (16-character patches, eos after a short one)."""
    events = []
    for chunk in [text[i:i + 16] for i in range(0, len(text), 16)]:
        ids = [ord(c) for c in chunk] + ([2] if len(chunk) < 16 else [])
        events.append(state.accept(ids + [0] * (16 - len(ids))))
    return events


def _replay(prompt_text, events):
    text = prompt_text
    for ev in events:
        text = text[: len(text) - ev.retract] + ev.text
    return text


MISALIGNED = "[r:0/1][V:1]GABc d2 B2|[V:2]G,,2 D,2|\n"  # 8 eighths against 4
ALIGNED = "[r:0/1][V:1]GABc d2 B2|[V:2]G,,2 D,2 G,2 B,,2|\n"


def test_a_misaligned_bar_is_taken_back_and_written_again():
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=1), patch_length=128, patch_size=16, device="cpu")
    start, context = state.text, len(state.context)
    state.in_tunebody = True
    events = _feed(state, MISALIGNED)
    assert state.text == start and len(state.context) == context and state.bars == 0 and state.patches == 0
    assert events[-1].retract == len(MISALIGNED) - len(MISALIGNED[32:])  # what earlier events had added
    assert _replay(start, events) == start
    assert not state.in_tunebody  # so the "[r:0/" rule applies to the line written again
    state.in_tunebody = True
    events += _feed(state, MISALIGNED)  # the one retry is used up: this line stays
    assert state.text == start + MISALIGNED and state.bars == 1 and state.rewritten == 1
    assert _replay(start, events) == state.text
    assert state.retries == 0  # a new line starts with its own retries


def test_an_aligned_bar_is_kept_and_no_retries_is_notagens_algorithm():
    for retries, line in ((1, ALIGNED), (0, MISALIGNED)):
        state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=retries), 128, 16, "cpu")
        state.in_tunebody = True
        _feed(state, line)
        assert state.text.endswith(line) and state.rewritten == 0


def test_a_header_with_too_few_voices_is_written_again_when_the_tune_body_begins():
    state = PieceState(0, PieceRequest(BACH, voices=2, header_retries=1), 128, 16, "cpu")
    start, context = state.text, len(state.context)
    header = "L:1/8\nM:4/4\nK:G\nV:1 treble\n"
    events = _feed(state, header)
    state.in_tunebody = True  # as the "[r:0/" rule sets it when the tune body begins
    events += _feed(state, ALIGNED[:16])
    assert state.text == start and not state.in_tunebody and state.rewritten == 1
    assert events[-1].retract == len(header) and len(state.context) == context
    assert _replay(start, events) == start
    events += _feed(state, header)  # retries used up: this header stays
    state.in_tunebody = True
    events += _feed(state, ALIGNED)
    assert state.text == start + header + ALIGNED
    assert _replay(start, events) == state.text


def test_a_header_is_taken_back_as_soon_as_it_declares_too_many_voices():
    state = PieceState(0, PieceRequest(BACH, voices=1, header_retries=2), 128, 16, "cpu")
    start = state.text
    events = _feed(state, "L:1/8\nK:G\nV:1 treble\n")
    assert state.text.endswith("V:1 treble\n")  # one voice so far: fine
    events += _feed(state, "V:2 bass\n")
    assert state.text == start and state.rewritten == 1
    events += _feed(state, "L:1/8\n[V:1]abc|\n")  # a bar without its [r:] marker is no header line
    assert state.text == start and state.rewritten == 2
    assert _replay(start, events) == start


def test_a_header_may_declare_any_of_several_typical_voice_counts():
    # Palestrina's masses are in 4, 5 or 6 voices: each is fine, 3 and 7 are not
    for score, kept in (("%%score [ 1 | 2 | 3 | 4 | 5 ]\n", True), ("%%score [ 1 | 2 | 3 | 4 | 5 | 6 ]\n", True),
                        ("%%score [ 1 | 2 | 3 ]\n", False), ("%%score [ 1 | 2 | 3 | 4 | 5 | 6 | 7 ]\n", False)):
        state = PieceState(0, PieceRequest(BACH, voices=(4, 5, 6), header_retries=1), 128, 16, "cpu")
        start = state.text
        _feed(state, score)
        assert (state.text == start + score) is kept and state.rewritten == (0 if kept else 1)
    # without a %%score line the header is checked against the largest count while it is written
    state = PieceState(0, PieceRequest(BACH, voices=(2, 3), header_retries=2), 128, 16, "cpu")
    start = state.text
    header = "L:1/8\nK:G\nV:1 treble\nV:2 treble\n"
    _feed(state, header)
    assert state.text == start + header
    state.in_tunebody = True
    _feed(state, ALIGNED)  # two voices when the tune body begins: one of the typical counts
    assert state.text == start + header + ALIGNED and state.rewritten == 0
    # a %%score line and V: lines that disagree are written again, even if both counts are typical
    state = PieceState(0, PieceRequest(BACH, voices=(2, 3), header_retries=2), 128, 16, "cpu")
    start = state.text
    _feed(state, "%%score 1 2 3\nL:1/8\nK:G\nV:1 treble\nV:2 treble\nV:3 bass\nV:4 bass\n")
    assert state.text == start and state.rewritten == 1


def test_a_header_whose_parts_do_not_fit_the_instrumentation_is_written_again():
    cantata = Prompt("Baroque", "Bach, Johann Sebastian", "Vocal-Orchestral")
    def parts(*names):
        return "".join(f'V:{i} treble nm="{n}"\n' for i, n in enumerate(names, 1))

    choir = parts("Soprano", "Alto", "Tenor", "Bass")
    for second in (parts("Trumpet 1", "Soprano", "Alto", "Tenor", "Bass"), choir):
        state = PieceState(0, PieceRequest(cantata, voices=(4, 5), header_retries=2), 128, 16, "cpu")
        start = state.text
        _feed(state, "L:1/8\nK:G\n" + choir)
        state.in_tunebody = True
        _feed(state, ALIGNED[:16])
        assert state.text == start and state.rewritten == 1  # four singers: a chorale, not a cantata movement
        # a header with a trumpet fits; in the second half of the retries only the voice count is
        # checked, so that the header kept when they run out has at least the right count
        header = "L:1/8\nK:G\n" + second
        _feed(state, header)
        state.in_tunebody = True
        _feed(state, ALIGNED)
        assert state.text == start + header + ALIGNED and state.rewritten == 1
    # labels it does not know (NotaGen-X has none such) are never a reason to write a header again
    assert fits_label(["V:1", "V:2"], "Band") and fits_label(['V:1 nm="Violin"', "V:2"], "Orchestral")
    assert not fits_label(choir.splitlines(), "Vocal-Orchestral") and fits_label(choir.splitlines(), "Choral")


@pytest.mark.parametrize("field,value", [("voices", 0), ("voices", True), ("voices", ()), ("voices", (4, 65)),
                                         ("voices", (4, "5")), ("max_chars", 0), ("seed", -1)])
def test_what_only_a_piece_request_holds_is_checked(field, value):  # retries: see test_requests
    with pytest.raises(SettingsError, match=field):
        PieceRequest(BACH, **{field: value})


def test_the_stream_can_be_resumed_from_other_threads():
    """Gradio runs each step of a generator in whichever worker thread is free."""
    model = tiny_model(seed=3)
    reqs = lambda: [PieceRequest(BACH, seed=4 + i, max_patches=10 + 15 * i) for i in range(3)]  # noqa: E731
    it = stream(model, reqs())
    seen = [next(it) for _ in range(8)]  # here first, then each step on a fresh thread
    for _ in range(200):  # bounded: 75 patches and 3 pieces
        box = []
        t = threading.Thread(target=lambda: box.append(next(it, None)))
        t.start()
        t.join()
        assert box, "the step raised"
        if box[0] is None:
            break
        seen.append(box[0])
    pieces = sorted((e for e in seen if isinstance(e, Piece)), key=lambda p: p.index)
    assert [p.text for p in pieces] == [p.text for p in generate(model, reqs())]


def test_a_bar_that_leaves_an_annotation_or_chord_open_is_written_again():
    from engine.symbolic.postprocess import bar_well_formed

    assert bar_well_formed('{g}A2 "C"c2 [CEG]2 !p!d2|') and bar_well_formed("(A2 B2|")  # slurs may cross bars
    assert not bar_well_formed('"_e} d2 c2|') and not bar_well_formed("[CE G2|") and not bar_well_formed("A2] B|")
    assert bar_well_formed("[CEG]2 c6|]") and bar_well_formed("[|c8|]")  # barlines, not chords
    assert bar_well_formed("^^F2 __B2 =c4|") and not bar_well_formed("E,^^^F, G,2|") and not bar_well_formed("___B8|")
    assert bar_well_formed("\"_quei ___\"A8|")  # a lyric's underscores are no accidental
    broken = '[r:0/1][V:1]"_e} d2 c2 d2 B2|[V:2]G,,2 D,2 G,2 B,,2|\n'
    state = PieceState(0, PieceRequest(BACH, prefix=HEADER, bar_retries=1), 128, 16, "cpu")
    start = state.text
    state.in_tunebody = True
    _feed(state, broken)
    assert state.text == start and state.rewritten == 1


def test_header_lines_must_be_readable():
    from engine.symbolic.retries import header_line_ok

    assert header_line_ok('V:1 treble nm="Violin I" snm="Vl."') and header_line_ok("%%score [ ( 1 2 ) | 3 ]")
    assert not header_line_ok('V:2 treble nm="1nspose') and not header_line_ok("%%score [ ( 1 2 ) 3 | 4 ) ]")
    assert not header_line_ok("[V:1]abc|")


def test_a_piece_that_ends_in_its_header_writes_the_header_again():
    """The bundled model sometimes ends an orchestral piece inside a long %%score line: with
    retries left, the header is taken back instead of ending the piece with no music."""
    state = PieceState(0, PieceRequest(BACH, voices=4, header_retries=1), 128, 16, "cpu")
    start = state.text
    events = _feed(state, "%%score [ 1 | 2 ] [ 3 | 4 | 4 | ")  # 31 characters, then eos in the second patch
    eos = [1] + [2] * 15
    events.append(state.accept(eos))
    assert events[-1] is not None and state.stop_reason is None and state.text == start
    assert _replay(start, events) == start and state.rewritten == 1
    events += _feed(state, "%%score [ 1 | 2 ] [ 3 | 4 | 4 | ")
    assert state.accept(eos) is None and state.stop_reason == "eos"  # retries used up: it ends


@pytest.mark.skipif(not cpu_bf16_packing_available(), reason="this CPU has no native bf16: the packed path is not taken")
def test_packed_bf16_linears_match_the_plain_path_and_never_go_stale():
    """bf16 on a CPU with native bf16 packs the linear layers (oneDNN) for generation; the packed
    copy must compute what the plain layers compute, stay out of training (autograd), and never
    be used once the weight has changed."""
    model = tiny_model(64, 2, 2, 128, seed=3).to(torch.bfloat16)
    plain = tiny_model(64, 2, 2, 128, seed=3).to(torch.bfloat16)
    ids = torch.randint(3, 128, (1, 5, 16))

    def outputs(m):
        with torch.inference_mode():
            h = m.patch_level_decoder(ids)[0]
            return h.float(), m.char_level_decoder(h, ids[0]).float()

    def check_against_fp32():
        """Packed bf16 is as close to fp32 as plain bf16 is (bf16 rounding, ~3% of the logits'
        scale with these weights, is all that separates them)."""
        exact = outputs(copy.deepcopy(plain).float())
        for p, q, e in zip(outputs(model), outputs(plain), exact):
            assert (p - e).abs().max() <= max(1.5 * (q - e).abs().max(), 0.01 * e.abs().max())

    piece = generate(model, [PieceRequest(BACH, sampling=GREEDY, max_patches=8)])[0]  # generation packs
    assert piece.patches == 8
    linears = [m for m in model.modules() if isinstance(m, Conv1D)]
    assert linears and all(m.packed is not None for m in linears) and model.char_level_decoder.packed_head is not None
    check_against_fp32()
    # autograd takes the plain path (the packed op has no backward)
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    assert linears[0](x).requires_grad
    # a changed weight (a training step, a load) is never served from the stale packed copy
    with torch.no_grad():
        for m in (model, plain):
            m.patch_level_decoder.base.h[0].mlp.c_fc.weight.mul_(-1.5)
            m.char_level_decoder.base.lm_head.weight.add_(0.25)
    check_against_fp32()
    model.prepare_for_generation()  # packs the changed layers again
    assert linears[0].packed is not None and linears[0].packed.version == linears[0].weight._version
    # a packed model moved to another dtype takes the plain path
    model.float()
    with torch.inference_mode():
        assert model.patch_level_decoder(ids).dtype == torch.float32


def test_a_score_line_naming_the_wrong_number_of_voices_is_taken_back_at_once():
    state = PieceState(0, PieceRequest(BACH, voices=5, header_retries=2), 128, 16, "cpu")
    start = state.text
    events = _feed(state, "%%score [ 1 | 2 | 3 | 4 ]\n")  # four voices: known before any V: line
    assert state.text == start and state.rewritten == 1
    good = "%%score 1 [ 2 | 3 | 4 | 5 ]\nL:1/8\nK:G\n"
    events += _feed(state, good)
    assert state.text == start + good and state.rewritten == 1
    assert _replay(start, events) == state.text
    assert retry_rules.score_voices("%%score { ( 1 2 ) | 3 } Pno") == 4
    assert retry_rules.score_voices("%%score [ 1 2 2 | 3 | 4 ]") == 4  # a voice named twice is one voice


def test_a_header_missing_a_voice_its_score_line_names_goes_on_from_its_last_line():
    state = PieceState(0, PieceRequest(BACH, voices=2, header_retries=2), 128, 16, "cpu")
    start = state.text
    header = "%%score 1 2\nL:1/8\nK:G\nV:1 treble\n"  # names two voices, declares one
    events = _feed(state, header)
    assert state.text == start + header
    state.in_tunebody = True  # as the "[r:0/" rule sets it when the tune body begins
    events += _feed(state, ALIGNED[:16])
    # only the tune-body patch is dropped: the header is kept and goes on
    assert state.text == start + header and not state.in_tunebody and state.header_open and state.rewritten == 1
    events += _feed(state, "V:2 bass\n")
    state.in_tunebody = True
    events += _feed(state, ALIGNED)
    assert state.text == start + header + "V:2 bass\n" + ALIGNED and not state.header_open
    assert _replay(start, events) == state.text
