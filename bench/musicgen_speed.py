"""MusicGen: the project's path against plain transformers `generate` in fp32, side by side.

Random weights at musicgen-small's real configuration (decoder 24 layers, hidden 1024, 16 heads,
ffn 4096, 4 codebooks of 2048; a T5-base text encoder; 32 kHz EnCodec), saved once as a folder.
Both runs: same prompt, seed and settings (guidance 3, top-k 250), the same number of decoder
steps. Each runs in its own process so peak memory is its own. Reported: real-time factor (compute
seconds / audio seconds), peak memory, and how many generated codes agree between the two.
Prints a table, then one JSON line.

    python -m bench.musicgen_speed                 # CPU: 5 s of audio
    python -m bench.musicgen_speed --seconds 30    # GPU default: 30 s (target RTF <= 0.15, >= 4x plain)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

PROMPT = "warm string quartet slow"


def build(folder: Path, tiny: bool = False) -> Path:
    """musicgen-small's shapes with random weights, and a word-level tokenizer (the hub's T5
    tokenizer is not reachable here; the ids only feed random weights). tiny: every part a few
    layers of a few units (plumbing: bench.gpu_suite --dry-run)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenProcessor, PreTrainedTokenizerFast, T5Config)

    words = ["<pad>", "</s>", "<unk>", *PROMPT.split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)  # t5-base
    if tiny:
        t5 = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, codebook_size=2048, codebook_dim=128,
                        hidden_size=128, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], num_lstm_layers=2,
                        normalize=False, use_causal_conv=False)  # facebook/encodec_32khz's shapes
    dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                ffn_dim=4096, num_codebooks=4, max_position_embeddings=2048, pad_token_id=2048,
                                bos_token_id=2048)
    if tiny:
        dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    ffn_dim=128, num_codebooks=4, max_position_embeddings=2048, pad_token_id=2048,
                                    bos_token_id=2048)
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                                                            decoder=dec.to_dict()))
    model.generation_config.decoder_start_token_id = model.generation_config.pad_token_id = 2048
    model.save_pretrained(folder)
    MusicgenProcessor(EncodecFeatureExtractor(sampling_rate=32000), tokenizer).save_pretrained(folder)
    return folder


class _Capture:
    """A stopping criterion that never stops and keeps the last ids (the plain run's codes)."""

    def __init__(self):
        self.ids = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.ids = input_ids
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def run_case(kind: str, folder: str, seconds: float, device: str, seed: int, out: str) -> None:
    import torch
    from transformers import StoppingCriteriaList

    from engine.audio import musicgen

    cuda = device.startswith("cuda")
    if kind == "plain":
        am = musicgen.load(folder, device=device, dtype=torch.float32, static_cache=False)
    elif kind == "ours+static":
        am = musicgen.load(folder, device=device, static_cache=True)
    else:
        am = musicgen.load(folder, device=device)  # the project's defaults for this device
    s = musicgen.AudioSettings(duration=seconds, seed=seed)
    steps = int(round(seconds * am.frame_rate)) + am.num_codebooks - 1

    def once():
        if kind == "plain":
            inputs = am.processor(text=[PROMPT], padding=True, return_tensors="pt").to(am.device)
            capture = _Capture()
            torch.manual_seed(seed)
            with torch.inference_mode():
                am.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=steps,
                                  stopping_criteria=StoppingCriteriaList([capture]))
            return musicgen._codes(am, capture.ids, None)
        codes, _, _ = musicgen.generate_codes(am, PROMPT, s)
        musicgen.decode(am, codes)
        return codes

    if cuda:  # the first call compiles (static cache) and warms kernels: not what a user waits for each time
        t = time.perf_counter()
        once()
        warmup = time.perf_counter() - t
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        warmup = 0.0
    t0 = time.perf_counter()
    codes = once()
    if cuda:
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(codes.cpu(), out)
    Path(out + ".json").write_text(json.dumps({
        "kind": kind, "dtype": str(am.model.dtype).replace("torch.", ""), "static_cache": am.static_cache,
        "seconds": took, "warmup_s": warmup, "rtf": took / seconds, "steps": steps, "ms_per_step": 1000 * took / steps,
        "peak_bytes": peak, "peak_kind": "cuda max allocated" if cuda else "process max RSS"}))


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=None, help="audio to make (default: 30 on a GPU, 5 on the CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (plumbing only: bench.gpu_suite --dry-run)")
    a = ap.parse_args(argv)
    seconds = a.seconds or (30.0 if a.device.startswith("cuda") else 5.0)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build(Path(tmp) / "musicgen-small-random", tiny=a.tiny))
        rows, codes = {}, {}
        kinds = ("plain", "ours", "ours+static") if a.device.startswith("cuda") else ("plain", "ours")
        for kind in kinds:
            out = str(Path(tmp) / f"{kind}.pt")
            p = ctx.Process(target=run_case, args=(kind, folder, seconds, a.device, a.seed, out))
            p.start()
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"{kind} run failed (exit {p.exitcode})")
            rows[kind] = json.loads(Path(out + ".json").read_text())
            codes[kind] = torch.load(out)
    for kind in rows:
        same = codes["plain"].shape == codes[kind].shape
        rows[kind]["codes_agree"] = round(float((codes["plain"] == codes[kind]).float().mean()), 4) if same else 0.0
        rows[kind]["speedup"] = round(rows["plain"]["seconds"] / rows[kind]["seconds"], 3)
    print(f"{'path':12} {'dtype':8} {'static':6} {'seconds':>8} {'RTF':>6} {'ms/step':>8} {'peak MiB':>9} {'speedup':>8} {'agree':>6}")
    for kind, r in rows.items():
        print(f"{kind:12} {r['dtype']:8} {str(r['static_cache']):6} {r['seconds']:8.2f} {r['rtf']:6.3f} "
              f"{r['ms_per_step']:8.1f} {r['peak_bytes'] / 2**20:9.0f} {r['speedup']:8.2f} {r['codes_agree']:6.3f}")
    best = min((k for k in rows if k != "plain"), key=lambda k: rows[k]["seconds"])
    speedup = rows[best]["speedup"]
    on_gpu = a.device.startswith("cuda")
    result = {"bench": "musicgen_speed", "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
              "audio_seconds": seconds,
              "config": "tiny shapes (plumbing)" if a.tiny else "musicgen-small shapes, random weights",
              "runs": rows, "best": best, "speedup": speedup, "codes_agree": rows["ours"]["codes_agree"],
              "target": {"rtf_max": 0.15, "speedup_min": 4.0, "applies": "GPU, 30 s"},
              "target_met": (rows[best]["rtf"] <= 0.15 and speedup >= 4.0) if on_gpu and seconds >= 30 and not a.tiny
              else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
