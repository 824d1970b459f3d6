"""Placement plans on simulated machines: models built on the meta device at NotaGen-small,
-large and -X and musicgen-small/-medium/-large sizes (no memory used), device budgets for 1, 2,
3 and 8 GPUs of equal and unequal sizes."""
import pytest
import torch

from engine import placement as P
from engine.errors import SettingsError

G = 2**30
M = 2**20


def notagen(size):
    from accelerate import init_empty_weights

    from engine.symbolic.config import PRESETS
    from engine.symbolic.model import NotaGenModel

    with init_empty_weights():
        return NotaGenModel(PRESETS[size]).to(torch.bfloat16)


def musicgen(size):
    from accelerate import init_empty_weights
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    hidden, layers, heads = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}[size]
    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    enc = EncodecConfig(sampling_rate=32000, num_filters=64, codebook_size=2048, codebook_dim=128, hidden_size=128,
                        upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], num_lstm_layers=2)
    dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                ffn_dim=4 * hidden, num_codebooks=4)
    with init_empty_weights():
        return MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                                                               decoder=dec.to_dict())).to(torch.float16)


def gpus(*sizes_gib):
    return {f"cuda:{i}": int(s * G) for i, s in enumerate(sizes_gib)}


def usable(b):
    return {d: int(v * (1 - P.HEADROOM)) for d, v in b.items()}


def check_split(plan, units, budget):
    """No device over its budget; the stages, in order, are the model's units in order; the
    pinned units (the character decoder among them) sit in the first stage."""
    room = usable(budget)
    assert all(s.bytes <= room[s.device] for s in plan.stages)
    if plan.kind == "replicate":
        assert all(s.units == [u.name for u in units] for s in plan.stages)
        return
    assert [n for s in plan.stages for n in s.units] == [u.name for u in units]
    first = set(plan.stages[0].units)
    assert all(u.name in first for u in units if u.pinned) and "char_level_decoder" in first


@pytest.mark.parametrize("size", ["notagen-small", "notagen-large", "notagen-x"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("budget", [gpus(80), gpus(24, 24), gpus(40, 12, 12), gpus(*[16] * 8),
                                    gpus(3, 3), gpus(1.2, 0.8, 0.8), gpus(2, 1), gpus(*[0.6] * 8)])
def test_notagen_plans_fit_and_keep_the_character_decoder_first(size, batch, budget):
    model = notagen(size)
    units = P.notagen_units(model, batch=batch)
    try:
        plan = P.plan_units(units, budget)
    except P.PlacementError as e:
        assert sum(u.bytes for u in units) > max(usable(budget).values())  # only when no one device holds it
        assert "needs" in str(e)
        return
    check_split(plan, units, budget)
    total = sum(u.bytes for u in units)
    room = usable(budget)
    if all(total <= room[d] for d in budget):
        assert plan.kind == ("replicate" if len(budget) > 1 else "single")  # fits everywhere: a copy per GPU
    elif not any(total <= room[d] for d in budget):
        assert plan.kind == "split"  # fits nowhere whole: split


def test_split_stages_are_balanced_within_ten_percent_of_the_ideal():
    model = notagen("notagen-x")
    for batch, budget in ((1, gpus(0.6, 0.6)), (8, gpus(1.2, 1.2, 1.2)), (8, gpus(2.0, 1.0)), (4, gpus(0.9, 0.9))):
        units = P.notagen_units(model, batch=batch)
        plan = P.plan_units(units, budget, "split")
        used = {s.device: budget[s.device] for s in plan.stages}
        total = sum(u.bytes for u in units)
        assert plan.kind == "split" and len(plan.stages) >= 2
        for s in plan.stages:
            ideal = total * used[s.device] / sum(used.values())
            assert abs(s.bytes - ideal) <= 0.10 * ideal, (batch, budget, s.device, s.bytes / M, ideal / M)


def test_auto_replicates_where_it_fits_splits_where_it_does_not_and_offloads_last():
    units = P.notagen_units(notagen("notagen-x"), batch=8)
    total = sum(u.bytes for u in units)
    assert P.plan_units(units, gpus(40, 40, 40)).kind == "replicate"
    small = total / G / 2  # two of these hold it, one does not
    plan = P.plan_units(units, gpus(small * 1.3, small * 1.3))
    assert plan.kind == "split" and not plan.warnings
    plan = P.plan_units(units, {**gpus(small * 0.8, small * 0.8), "cpu": 64 * G})
    assert plan.kind == "split" and plan.stages[-1].device == "cpu" and "CPU" in plan.warnings[0]
    assert plan.stages[0].device == "cuda:0"  # the GPU keeps the first stage; the CPU takes only what is left


def test_clear_errors_when_nothing_can_hold_the_model():
    units = P.notagen_units(notagen("notagen-x"), batch=8)
    with pytest.raises(P.PlacementError, match="needs .* GiB.*add devices"):
        P.plan_units(units, gpus(0.2, 0.2))
    with pytest.raises(P.PlacementError, match="use --placement split"):
        P.plan_units(units, gpus(0.5), "single")
    with pytest.raises(P.PlacementError, match="replicate needs a full copy"):
        P.plan_units(units, gpus(40, 0.5), "replicate")
    with pytest.raises(SettingsError, match="placement must be one of"):
        P.plan_units(units, gpus(40), "sideways")


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_musicgen_plans_keep_decoder_layers_whole_and_fit(size):
    model = musicgen(size)
    from accelerate.utils import compute_module_sizes

    weights = compute_module_sizes(model)[""]
    plan = P.plan_musicgen(model, gpus(80), batch=1)
    assert plan.kind == "single"
    budget = gpus(*[weights / G * 0.7] * 3)  # too small alone; three hold it
    plan = P.plan_musicgen(model, budget, batch=1, frames=500)
    assert plan.kind == "split" and len(plan.stages) >= 2
    room = usable(budget)
    assert all(s.weight_bytes <= room[s.device] for s in plan.stages)
    names = [n for s in plan.stages for n in s.units]
    layer_parts = [n for n in names if ".layers." in n]
    assert all(n.split(".layers.")[1].isdigit() for n in layer_parts)  # whole layers, never parts of one
    with pytest.raises(P.PlacementError):
        P.plan_musicgen(model, gpus(weights / G * 0.1), "single")


def test_device_and_memory_options_are_parsed_and_checked():
    assert P.parse_devices("0, 2,cpu") == ["cuda:0", "cuda:2", "cpu"] and P.parse_devices("") is None
    assert P.parse_max_memory("0=20GiB,cpu=512MB") == {"cuda:0": 20 * G, "cpu": 512 * 10**6}
    for bad, message in (("0,0", "twice"), ("gpu1", "unknown device")):
        with pytest.raises(SettingsError, match=message):
            P.parse_devices(bad)
    for bad, message in (("0:20GiB", "DEVICE=SIZE"), ("0=lots", "not a size"), ("0=0GiB", "more than zero")):
        with pytest.raises(SettingsError, match=message):
            P.parse_max_memory(bad)
    assert P.budgets(["cuda:0"], {"cuda:0": 5 * G}) == {"cuda:0": 5 * G}
    with pytest.raises(SettingsError, match="visible GPU"):
        P.budgets(["cuda:7"])


def test_a_plan_describes_itself_for_doctor_and_the_system_page():
    units = P.notagen_units(notagen("notagen-x"), batch=1)
    plan = P.plan_units(units, gpus(0.6, 0.6))
    text = plan.describe()
    assert "placement: split" in text and "cuda:1" in text and "h.0-" in text
    d = plan.to_dict()
    assert d["kind"] == "split" and d["stages"][0]["units"][-1].startswith("patch_level_decoder.base.h.0-")
    said = plan.summary()  # the System page's words: devices and sizes, no module names
    assert said.startswith("split over 2 devices in running order (cuda:0 ") and "decoder" not in said
    single = P.plan_units(units, gpus(40.0)).summary()
    assert single.startswith("on cuda:0: ") and "of weights and" in single and "decoder" not in single


# --- running a split model ---------------------------------------------------------------------------
def _on(plan, device):
    from dataclasses import replace

    plan.stages = [replace(s, device=device) for s in plan.stages]
    return plan


@pytest.mark.parametrize("stages", [2, 3])
def test_a_split_model_writes_exactly_what_the_whole_model_writes(stages):
    """Two or three stages (on the CPU the stages are separate modules with their own caches, the
    hops are no-ops) give the single-device pieces exactly: a batch of three with different
    lengths, past a context overflow (64 patches) and back."""
    import copy

    from conftest import BACH, tiny_model
    from engine.symbolic.generate import PieceRequest, generate
    from test_generation import BODY, HEADER

    whole = tiny_model(seed=3)
    split = copy.deepcopy(whole)
    units = P.notagen_units(split)
    room = 2 * sum(u.bytes for u in units) / G  # asked to split, it uses every device given
    plan = _on(P.plan_units(units, gpus(*[room] * stages), "split"), "cpu")
    assert plan.kind == "split" and len(plan.stages) == stages
    P.place_notagen(split, plan)
    reqs = lambda: [PieceRequest(BACH, seed=s, max_patches=n, stop_at_eos=False, max_seconds=600,  # noqa: E731
                                 prefix=HEADER + BODY) for s, n in ((1, 130), (2, 70), (3, 30))]
    a = generate(whole, reqs())
    b = generate(split, reqs())
    assert [p.text for p in a] == [p.text for p in b]
    assert max(p.context_resets for p in a) >= 1  # the context overflowed and was rebuilt
    assert split.patch_level_decoder.base.split


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the transfer path between devices")
def test_a_split_between_the_gpu_and_the_cpu_writes_what_the_gpu_alone_writes():
    import copy

    from conftest import BACH, tiny_model
    from engine.symbolic.generate import PieceRequest, generate

    whole = tiny_model(seed=3).to("cuda")
    split = copy.deepcopy(whole)
    units = P.notagen_units(split)
    plan = P.plan_units(units, {"cuda:0": 10 * G, "cpu": 10 * G}, "split")
    P.place_notagen(split, plan)
    assert {p.device.type for p in split.parameters()} == {"cuda", "cpu"}
    reqs = lambda: [PieceRequest(BACH, seed=s, max_patches=80, stop_at_eos=False) for s in (1, 2)]  # noqa: E731
    assert [p.text for p in generate(whole, reqs())] == [p.text for p in generate(split, reqs())]


# --- the studio: copies, and a device that runs out of memory ----------------------------------------
def test_requests_go_to_the_least_loaded_copy():
    from engine.service.models import ModelSlot

    a, b = object(), object()
    slot = ModelSlot("m", "auto", loader=lambda spec, device: [a, b]).start()
    slot.get()
    (first, s1), (second, s2) = slot.checkout(), slot.checkout()  # (copy, its scheduler: none without batching)
    assert {first, second} == {a, b} and s1 is s2 is None
    slot.checkin(a)
    assert slot.checkout()[0] is a and slot.busy == [1, 1]


def test_out_of_memory_fails_that_request_clearly_and_the_next_one_works(tmp_path, monkeypatch):
    from engine import api
    from test_webui import BACH, tiny_folder
    from engine.settings import ServerSettings
    from engine.service.studio import Studio

    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path))))
    real = api.compose_stream
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "compose_stream", flaky)
    key = "m" * 20 + "-oom"
    request = api.ComposeRequest(BACH.period, BACH.composer, BACH.instrumentation, seed=1, max_patches=8, variations=2)
    with pytest.raises(Exception, match="ran out of memory writing 2 variation.*model stays loaded"):
        list(studio.compose(key, request))
    slot = studio.model(None)
    assert slot.lm is not None and slot.busy == [0]  # still loaded, the copy given back
    *_, outcomes = studio.compose(key, request)
    assert len(outcomes) == 2 and outcomes[0].record.seed == 1


def test_a_split_musicgen_makes_the_same_audio_as_a_whole_one(tmp_path):
    """The plan's device map (accelerate's hooks between the parts; every stage on the CPU here)
    gives exactly the audio of the model in one piece."""
    import numpy as np
    from accelerate import init_empty_weights
    from transformers import AutoConfig, MusicgenForConditionalGeneration

    from engine import api
    from engine.audio import musicgen as mg
    from test_audio import tiny_musicgen

    folder = tiny_musicgen(tmp_path / "m")
    with init_empty_weights():
        meta = MusicgenForConditionalGeneration(AutoConfig.from_pretrained(folder))
    from accelerate.utils import compute_module_sizes

    weights = compute_module_sizes(meta)[""]
    plan = P.plan_musicgen(meta, gpus(*[weights * 0.6 / G] * 3), "split", frames=10)
    assert plan.kind == "split" and len(plan.stages) >= 2
    device_map = {name: "cpu" for s in plan.stages for name in s.units}
    split = mg.load(folder, device_map=device_map)
    whole = api.load_audio_model(folder, options=api.PlacementOptions(devices="cpu"))
    assert whole.plan.kind == "single"
    s = mg.AudioSettings(duration=0.6, seed=1)
    assert np.array_equal(mg.generate(whole, "jazz", s).audio, mg.generate(split, "jazz", s).audio)


def test_a_split_model_streams_and_stops_like_the_whole_model():
    """The same patch events, and a cancel from another thread honoured within a patch."""
    import copy
    import threading

    from conftest import BACH, tiny_model
    from engine.symbolic.generate import Piece, PieceRequest, stream

    whole = tiny_model(seed=4)
    split = copy.deepcopy(whole)
    units = P.notagen_units(split)
    room = 2 * sum(u.bytes for u in units) / G
    P.place_notagen(split, _on(P.plan_units(units, gpus(room, room), "split"), "cpu"))

    def run(model, stop_after=None):
        cancel = threading.Event()
        events, pieces = [], []
        for ev in stream(model, [PieceRequest(BACH, seed=9, max_patches=60, stop_at_eos=False, cancel=cancel)]):
            if isinstance(ev, Piece):
                pieces.append(ev)
                continue
            events.append((ev.text, ev.patches))
            if stop_after is not None and len(events) == stop_after:
                cancel.set()
        return events, pieces[0]

    (ev_whole, p_whole), (ev_split, p_split) = run(whole), run(split)
    assert ev_whole == ev_split and len(ev_whole) > 30 and p_whole.text == p_split.text
    events, piece = run(split, stop_after=10)
    assert piece.stop_reason == "cancelled" and len(events) == 10 and piece.cut_short


def test_replicas_get_whole_gpus_shared_gpus_or_the_gpus_of_their_split_from_the_plan():
    """--replica-gpus auto (engine.service.remote.share_gpus), on plans for simulated GPUs."""
    from engine.placement import Unit, plan_units
    from engine.service.remote import share_gpus

    gib = 2**30
    small = [Unit(f"h.{i}", gib) for i in range(4)]  # 4 GiB
    big = [Unit(f"h.{i}", 30 * gib) for i in range(4)]  # 120 GiB: no one 80 GiB GPU holds it
    two = {"cuda:0": 80 * gib, "cuda:1": 80 * gib}
    copies = plan_units(small, two)
    assert copies.kind == "replicate"
    assert share_gpus(copies, replicas=2, cluster_gpus=2, gpu_bytes=80 * gib) == 1.0  # a GPU each
    assert share_gpus(copies, replicas=1, cluster_gpus=8, gpu_bytes=80 * gib) == 1.0
    assert share_gpus(copies, replicas=8, cluster_gpus=2, gpu_bytes=80 * gib) == 0.25  # four share each GPU
    assert share_gpus(copies, replicas=3, cluster_gpus=1, gpu_bytes=80 * gib) == 0.3333
    assert share_gpus(copies, replicas=8, cluster_gpus=2) == 0.25  # a GPU's memory unknown: even shares
    assert share_gpus(copies, replicas=8, cluster_gpus=0, gpu_bytes=80 * gib) == 0.0  # no GPUs: CPU replicas
    fat = plan_units([Unit(f"h.{i}", 15 * gib) for i in range(4)], two)  # 60 GiB: one copy per GPU at most
    assert share_gpus(fat, replicas=8, cluster_gpus=2, gpu_bytes=80 * gib) == 1.0
    split = plan_units(big, two)
    assert split.kind == "split" and share_gpus(split, replicas=2, cluster_gpus=4, gpu_bytes=80 * gib) == 2.0


def test_replica_gpus_as_asked_or_auto_without_gpus_is_zero():
    from engine.api import PlacementOptions
    from engine.service.remote import replica_gpus

    assert replica_gpus(0.5, None, PlacementOptions(), 4, cluster_gpus=8) == 0.5
    assert replica_gpus("auto", None, PlacementOptions(), 4, cluster_gpus=0) == 0.0
