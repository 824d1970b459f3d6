"""Fast (KV-cached, batched) generation against NotaGen's original algorithm (`reference` mode).

Same random weights, prompt, seed and sampling settings for both; a fixed number of patches
(the end-of-piece patch does not stop a run). Each path is also set against the memory floor:
the bytes of weights a patch reads (the patch decoder once, the character decoder once per
character step) over the bandwidth measured in the same run for tensors of each decoder's size.
Each measurement runs in its own process so the peak memory is its own. Prints a table, then one JSON line.

    python -m bench.notagen_speed                      # CPU: NotaGen-small size, 256 patches, fp32
    python -m bench.notagen_speed --dtype bf16         # CPU: the same in bf16 (oneDNN-packed linears when the CPU has native bf16)
    python -m bench.notagen_speed --size notagen-x     # GPU default: NotaGen-X size, 1024 patches, bf16
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def run_case(size: str, mode: str, patches: int, batch: int, device: str, dtype: str, seed: int,
             decode: str = "eager") -> dict:
    """One path timed; decode "compiled": the character step compiled first (a few patches, its
    seconds reported apart), then timed like the eager one."""
    import functools

    import torch

    from engine.symbolic.config import PRESETS
    from engine.symbolic.generate import PieceRequest, generate
    from engine.symbolic.model import NotaGenModel
    from engine.symbolic.prompts import Prompt

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = NotaGenModel(PRESETS[size]).init_weights(seed=0).to(device=device, dtype=dt).eval()
    prompt = Prompt("Baroque", "Bach, Johann Sebastian", "Keyboard")
    reqs = [PieceRequest(prompt, seed=seed + i, max_patches=patches, stop_at_eos=False, max_seconds=86_400)
            for i in range(batch)]
    from engine.symbolic.generate import FastBackend
    from engine.symbolic.reference import ReferenceBackend

    backend = ReferenceBackend if mode == "reference" else functools.partial(FastBackend, decode=decode)
    compile_s = 0.0
    if mode != "reference" and decode == "compiled":  # compiled once per batch size, as a server does at load
        t0 = time.perf_counter()
        generate(model, [PieceRequest(prompt, seed=seed + i, max_patches=2, stop_at_eos=False) for i in range(batch)],
                 backend)
        compile_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pieces = generate(model, reqs, backend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    packed = any(getattr(m, "packed", None) is not None for m in model.modules())  # oneDNN bf16 on a CPU
    n_patches = sum(p.patches for p in pieces)
    n_chars = sum(p.chars for p in pieces)
    return {"mode": mode if mode == "reference" else f"{mode}-{decode}", "batch": batch, "compile_s": compile_s,
            "seconds": seconds, "patches": n_patches, "chars": n_chars,
            "patches_per_s": n_patches / seconds, "chars_per_s": n_chars / seconds,
            "ms_per_patch": 1000 * seconds / n_patches * batch, "peak_bytes": peak,
            "peak_kind": "cuda max allocated" if device.startswith("cuda") else "process max RSS", "packed": packed,
            "text": pieces[0].text}


def decoder_bytes(size: str, dtype: str) -> tuple[int, int]:
    """Bytes of weights one patch step reads from the patch decoder, and one character step from
    the character decoder: their blocks and final norms, the rows of the embeddings a step uses
    (16 columns of the patch embedding, one position) and the character head."""
    from engine.symbolic.config import PRESETS

    cfg, width = PRESETS[size], {"fp32": 4, "bf16": 2}[dtype]
    h, block = cfg.hidden_size, cfg.block_parameters()
    patch = cfg.patch_num_layers * block + 2 * h + (cfg.patch_size + 1) * h + h
    char = cfg.char_num_layers * block + 2 * h + cfg.vocab_size * h + 2 * h
    return patch * width, char * width


def bandwidth(nbytes: int, device: str, repeats: int = 10) -> float:
    """Bytes per second reading a tensor of `nbytes` (best of `repeats` sums, after one warm-up):
    what a decoder of that size can be read at, caches included."""
    import torch

    x = torch.ones(max(1, nbytes // 4), device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def floor_ms(size: str, dtype: str, device: str, steps_per_patch: float) -> dict:
    """The memory floor of one patch: the patch decoder read once, the character decoder once per
    character step, at the bandwidth measured for tensors of each decoder's size."""
    patch, char = decoder_bytes(size, dtype)
    bw_patch, bw_char = bandwidth(patch, device), bandwidth(char, device)
    ms = 1000 * (patch / bw_patch + steps_per_patch * char / bw_char)
    return {"floor_ms_per_patch": ms, "patch_decoder_bytes": patch, "char_decoder_bytes": char,
            "bandwidth_patch_gb_s": bw_patch / 1e9, "bandwidth_char_gb_s": bw_char / 1e9,
            "char_steps_per_patch": steps_per_patch}


def in_child(fn, *args) -> dict:
    """fn(*args) in a fresh process: its peak memory and its threads are its own."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    import torch

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="notagen-x" if gpu else "notagen-small")
    p.add_argument("--patches", type=int, default=1024 if gpu else 256)
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16" if gpu else "fp32")
    p.add_argument("--batch", type=int, default=8, help="batch size compared with batch 1 (fast mode)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--compiled", action="store_true",
                   help="also the character step compiled (torch.compile; inductor's C++ on a CPU), batch 1 and --batch")
    p.add_argument("--reference-patches", type=int, default=None,
                   help="patches for NotaGen's algorithm (default: --patches; fewer where it is too slow, compared per patch)")
    args = p.parse_args()

    fast = in_child(run_case, args.size, "fast", args.patches, 1, args.device, args.dtype, args.seed)
    ref_patches = args.reference_patches or args.patches
    ref = None if args.skip_reference else in_child(run_case, args.size, "reference", ref_patches, 1, args.device,
                                                    args.dtype, args.seed)
    batched = in_child(run_case, args.size, "fast", args.patches, args.batch, args.device, args.dtype, args.seed) if args.batch > 1 else None

    compiled = batched_compiled = None
    if args.compiled:
        compiled = in_child(run_case, args.size, "fast", args.patches, 1, args.device, args.dtype, args.seed, "compiled")
        if args.batch > 1:
            batched_compiled = in_child(run_case, args.size, "fast", args.patches, args.batch, args.device, args.dtype,
                                        args.seed, "compiled")
    rows = [r for r in (ref, fast, batched, compiled, batched_compiled) if r]
    # a character step per character written, and one for the eos that ends the patch (at most 16)
    steps = min(16.0, fast["chars"] / fast["patches"] + 1)
    floor = in_child(floor_ms, args.size, args.dtype, args.device, steps)
    print(f"NotaGen generation speed: {args.size}, {args.patches} patches, {args.dtype} on {args.device}")
    print(f"floor: {floor['floor_ms_per_patch']:.2f} ms per patch step ({floor['char_steps_per_patch']:.1f} character "
          f"steps; {floor['bandwidth_patch_gb_s']:.1f} and {floor['bandwidth_char_gb_s']:.1f} GB/s measured)")
    print(f"{'mode':14s} {'batch':>5s} {'patches/s':>10s} {'chars/s':>9s} {'ms/patch':>9s} {'x floor':>8s} "
          f"{'peak MiB':>9s} {'compile s':>9s}")
    for r in rows:
        r["x_floor"] = r["ms_per_patch"] / floor["floor_ms_per_patch"]
        print(f"{r['mode']:14s} {r['batch']:5d} {r['patches_per_s']:10.2f} {r['chars_per_s']:9.1f} "
              f"{r['ms_per_patch']:9.2f} {r['x_floor']:8.2f} {r['peak_bytes'] / 2**20:9.0f} {r['compile_s']:9.1f}")
    result = {"bench": "notagen_speed", "size": args.size, "patches": args.patches, "device": args.device,
              "device_name": torch.cuda.get_device_name(0) if gpu and args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "fast_patches_per_s": fast["patches_per_s"], "fast_ms_per_patch": fast["ms_per_patch"],
              "fast_chars_per_s": fast["chars_per_s"], "fast_peak_bytes": fast["peak_bytes"],
              "fast_packed_linears": fast["packed"], "fast_x_floor": fast["x_floor"]} | floor
    if ref:
        # per patch: the reference may have written fewer (--reference-patches); its text is then the
        # start of the fast path's (same weights, seed and uniforms)
        result |= {"reference_patches": ref_patches, "reference_patches_per_s": ref["patches_per_s"],
                   "reference_chars_per_s": ref["chars_per_s"], "reference_peak_bytes": ref["peak_bytes"],
                   "speedup_fast_over_reference": ref["ms_per_patch"] / fast["ms_per_patch"],
                   "same_text": fast["text"].startswith(ref["text"]) if ref_patches <= args.patches else ref["text"] == fast["text"],
                   "reference_ms_per_patch": ref["ms_per_patch"], "reference_x_floor": ref["x_floor"]}
        print(f"fast / reference: {result['speedup_fast_over_reference']:.2f}x per patch (reference over {ref_patches} "
              f"patches; same text: {result['same_text']})")
    if batched:
        result |= {"batch": args.batch, "batch_patches_per_s": batched["patches_per_s"],
                   "batch_throughput_ratio": batched["patches_per_s"] / fast["patches_per_s"],
                   "batch_ms_per_step": batched["ms_per_patch"], "batch_x_floor": batched["x_floor"]}
        print(f"batch {args.batch} / batch 1 throughput: {result['batch_throughput_ratio']:.2f}x")
    for key, r in (("compiled", compiled), ("batch_compiled", batched_compiled)):
        if r:  # the compiled character step writes the eager path's text (same uniforms)
            eager = fast if r["batch"] == 1 else batched
            result |= {f"{key}_ms_per_patch": r["ms_per_patch"], f"{key}_x_floor": r["x_floor"],
                       f"{key}_compile_s": round(r["compile_s"], 1), f"{key}_same_text": r["text"] == eager["text"],
                       f"{key}_speedup_over_eager": eager["ms_per_patch"] / r["ms_per_patch"]}
            if ref and r["batch"] == 1:
                result["compiled_speedup_over_reference"] = ref["ms_per_patch"] / r["ms_per_patch"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
