"""Placement: single device against split stages (NotaGen: patches/s; MusicGen: real-time
factor), and replicated copies serving concurrent requests against one copy serving them in turn.
Same random weights, prompt and seeds everywhere; split output is checked against single.

Devices: with two or more GPUs the split is cuda:0 | cuda:1; with one GPU it is cuda:0 | cpu (the
transfer path on real hardware); without a GPU both stages are on the CPU (the staging code runs,
no transfer happens). Prints a table, then one JSON line.

    python -m bench.placement                    # NotaGen-small size, 48 patches
    python -m bench.placement --musicgen 5       # also MusicGen (musicgen-small shapes), 5 s of audio
"""
from __future__ import annotations

import argparse
import copy
import json
import threading
import time

import torch

from engine import placement as P


def _devices() -> tuple[str, str, list[str]]:
    n = torch.cuda.device_count()
    if n >= 2:
        return "cuda:0", "cuda:1", [f"cuda:{i}" for i in range(n)]
    if n == 1:
        return "cuda:0", "cpu", ["cuda:0"]
    return "cpu", "cpu", ["cpu", "cpu"]


def _sync():
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def _peaks() -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**20, 1) for i in range(torch.cuda.device_count())}


def _reset_peaks():
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


def _run(model, patches: int, seeds) -> tuple[float, list[str]]:
    from engine.symbolic.generate import PieceRequest, generate
    from engine.symbolic.prompts import Prompt

    prompt = Prompt("Baroque", "Bach, Johann Sebastian", "Keyboard")
    reqs = [PieceRequest(prompt, seed=s, max_patches=patches, stop_at_eos=False, max_seconds=86_400) for s in seeds]
    _sync()
    t = time.perf_counter()
    pieces = generate(model, reqs)
    _sync()
    return time.perf_counter() - t, [p.text for p in pieces]


def notagen(size: str, patches: int, requests: int) -> dict:
    from engine.symbolic.config import PRESETS
    from engine.symbolic.model import NotaGenModel

    first, second, all_devices = _devices()
    dtype = torch.bfloat16 if first.startswith("cuda") else torch.float32
    base = NotaGenModel(PRESETS[size]).init_weights(seed=0).to(dtype).eval()
    out = {}

    single = copy.deepcopy(base).to(first)
    _run(single, 4, [0])  # warm-up
    _reset_peaks()
    seconds, texts = _run(single, patches, [0])
    out["single"] = {"devices": [first], "seconds": seconds, "patches_per_s": patches / seconds, "peak_mib": _peaks()}

    split = copy.deepcopy(base)
    units = P.notagen_units(split)
    room = 2 * sum(u.bytes for u in units)
    plan = P.plan_units(units, {"cuda:0": room, "cuda:1": room}, "split")
    plan.stages[0].device, plan.stages[1].device = first, second
    P.place_notagen(split, plan)
    del single
    _run(split, 4, [0])
    _reset_peaks()
    seconds, split_texts = _run(split, patches, [0])
    out["split"] = {"devices": [first, second], "seconds": seconds, "patches_per_s": patches / seconds,
                    "peak_mib": _peaks(), "same_as_single": split_texts == texts,
                    "stages": [{"device": s.device, "weight_mib": round(s.weight_bytes / 2**20, 1),
                                "cache_mib": round(s.cache_bytes / 2**20, 1)} for s in plan.stages]}
    del split

    # replicate: `requests` concurrent requests over a copy per device, against one copy in turn
    copies = [copy.deepcopy(base).to(d) for d in all_devices]
    seeds = list(range(requests))
    t = time.perf_counter()
    for s in seeds:
        _run(copies[0], patches, [s])
    serial = time.perf_counter() - t
    busy = [0] * len(copies)
    lock = threading.Lock()

    def serve(s):
        with lock:
            i = min(range(len(copies)), key=lambda j: busy[j])
            busy[i] += 1
        try:
            _run(copies[i], patches, [s])
        finally:
            with lock:
                busy[i] -= 1

    threads = [threading.Thread(target=serve, args=(s,)) for s in seeds]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    concurrent = time.perf_counter() - t
    out["replicate"] = {"copies": all_devices, "requests": requests, "one_copy_in_turn_s": serial,
                        "copies_at_once_s": concurrent, "speedup": serial / concurrent,
                        "patches_per_s": requests * patches / concurrent}
    return out


def musicgen(seconds: float) -> dict:
    import tempfile
    from pathlib import Path

    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoConfig, MusicgenForConditionalGeneration

    from bench.musicgen_speed import PROMPT, build
    from engine.audio import musicgen as mg

    first, second, _ = _devices()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(Path(tmp) / "m")
        am = mg.load(folder, device=first)
        s = mg.AudioSettings(duration=seconds, seed=0)
        _sync()
        t = time.perf_counter()
        whole = mg.generate(am, PROMPT, s).audio
        _sync()
        out["single"] = {"devices": [first], "rtf": (time.perf_counter() - t) / seconds}
        del am
        with init_empty_weights():
            meta = MusicgenForConditionalGeneration(AutoConfig.from_pretrained(folder))
        weights = compute_module_sizes(meta)[""]
        plan = P.plan_musicgen(meta, {"cuda:0": int(weights * 0.7), "cuda:1": int(weights * 0.7)}, "split", frames=10)
        names = {"cuda:0": first, "cuda:1": second}
        device_map = {n: names[st.device] for st in plan.stages for n in st.units}
        am = mg.load(folder, device_map=device_map, dtype=torch.float16 if first.startswith("cuda") else torch.float32)
        _sync()
        t = time.perf_counter()
        split = mg.generate(am, PROMPT, s).audio
        _sync()
        out["split"] = {"devices": sorted(set(device_map.values())), "rtf": (time.perf_counter() - t) / seconds,
                        "same_as_single": bool((split == whole).all())}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="notagen-small")
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--requests", type=int, default=4, help="concurrent requests for the replicate case")
    ap.add_argument("--musicgen", type=float, default=0.0, help="seconds of MusicGen audio to time (0: skip)")
    a = ap.parse_args(argv)
    result = {"bench": "placement", "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "gpus": torch.cuda.device_count(), "notagen": notagen(a.size, a.patches, a.requests)}
    if a.musicgen:
        result["musicgen"] = musicgen(a.musicgen)
    n = result["notagen"]
    print(f"NotaGen {a.size}, {a.patches} patches")
    for kind in ("single", "split"):
        r = n[kind]
        print(f"  {kind:9s} {'|'.join(r['devices']):22s} {r['patches_per_s']:8.1f} patches/s  peak MiB {r['peak_mib']}")
    r = n["replicate"]
    print(f"  replicate {len(r['copies'])} copies, {r['requests']} requests: {r['copies_at_once_s']:.1f} s at once vs "
          f"{r['one_copy_in_turn_s']:.1f} s on one copy in turn ({r['speedup']:.2f}x)")
    print(f"  split writes the same as single: {n['split']['same_as_single']}")
    if "musicgen" in result:
        m = result["musicgen"]
        print(f"MusicGen: single RTF {m['single']['rtf']:.2f}, split RTF {m['split']['rtf']:.2f}, "
              f"same audio: {m['split']['same_as_single']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
