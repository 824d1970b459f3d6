"""MusicGen through transformers, with a tiny random-weight model built from configs (T5 text
encoder, 32 kHz EnCodec, decoder) and saved as a local folder: no downloads."""
import threading
import wave

import numpy as np
import pytest
import torch

from engine.audio import musicgen
from engine.audio.musicgen import AudioSettings
from engine.errors import CheckpointError, SettingsError


def tiny_musicgen(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenProcessor, PreTrainedTokenizerFast, T5Config)

    words = ["<pad>", "</s>", "<unk>", "warm", "string", "quartet", "slow", "fast", "piano", "jazz"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    t5 = T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, codebook_size=16, codebook_dim=8,
                        hidden_size=8, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], num_lstm_layers=1)
    dec = MusicgenDecoderConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64,
                                num_codebooks=4, max_position_embeddings=2048, pad_token_id=16, bos_token_id=16)
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                                                            decoder=dec.to_dict()))
    model.generation_config.decoder_start_token_id = model.generation_config.pad_token_id = 16
    # EnCodec's codebooks start at zero and its biases swamp the rest: with random weights every
    # code would sound alike. Spread the codebooks and drop the biases so the codes are heard.
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_(std=5.0)
    for name, p in model.audio_encoder.decoder.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    model.save_pretrained(folder)
    MusicgenProcessor(EncodecFeatureExtractor(sampling_rate=32000), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def am(tmp_path_factory):
    return musicgen.load(tiny_musicgen(tmp_path_factory.mktemp("tiny-musicgen")), device="cpu")


def test_length_equals_the_duration_asked(am):
    for duration in (0.5, 1.3):
        r = musicgen.generate(am, "warm string quartet", AudioSettings(duration=duration, variations=2))
        assert r.audio.shape == (2, 1, int(round(duration * 32000)))
        assert r.stop_reason == "done"


def test_same_seed_same_audio_other_seed_other_audio(am):
    a = musicgen.generate(am, "slow piano", AudioSettings(duration=0.6, seed=3)).audio
    b = musicgen.generate(am, "slow piano", AudioSettings(duration=0.6, seed=3)).audio
    c = musicgen.generate(am, "slow piano", AudioSettings(duration=0.6, seed=4)).audio
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_one_window_equals_transformers_own_generate(am):
    """Ours: transformers' generate with our settings, trimming and loudness; the codes and the
    waveform before normalisation must be exactly what a plain call gives."""
    s = AudioSettings(duration=0.8, seed=9)
    ours = musicgen.generate(am, "fast jazz", s)
    inputs = am.processor(text=["fast jazz"], padding=True, return_tensors="pt")
    torch.manual_seed(9)
    plain = am.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, top_p=1.0, temperature=1.0,
                              max_new_tokens=40 + 3)[..., :25600].numpy()
    again, _ = musicgen.normalise(plain.astype(np.float32), 32000)
    np.testing.assert_allclose(ours.audio, again, atol=1e-6)


def test_loudness_is_normalised_within_one_lu(am):
    import torchaudio.functional as AF

    r = musicgen.generate(am, "warm string quartet", AudioSettings(duration=2.0, seed=1))
    lufs = float(AF.loudness(torch.from_numpy(r.audio[0]), 32000))
    assert abs(lufs - musicgen.TARGET_LUFS) <= 1.0 or np.abs(r.audio[0]).max() >= 10 ** (musicgen.PEAK_DBFS / 20) - 1e-3
    assert np.abs(r.audio).max() <= 10 ** (musicgen.PEAK_DBFS / 20) + 1e-6


def test_progress_and_cancellation_keep_what_was_made(am):
    seen, cancel = [], threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done == 10:
            cancel.set()

    r = musicgen.generate(am, "slow piano", AudioSettings(duration=2.0), on_progress=progress, cancel=cancel)
    assert r.stop_reason == "cancelled" and seen[0] == (1, 103) and len(seen) <= 12
    assert r.audio.shape[-1] == (len(seen) + 1 - 4) * 640  # the frames every codebook had reached


def test_wav_is_16_bit_at_the_models_rate(am, tmp_path):
    r = musicgen.generate(am, "jazz", AudioSettings(duration=0.5))
    path = musicgen.write_wav(tmp_path / "out.wav", r.audio[0], r.sampling_rate)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()) == (32000, 2, 1, 16000)


@pytest.mark.parametrize("prompt,settings,message", [
    ("", AudioSettings(), "prompt is empty"),
    ("jazz", AudioSettings(duration=10_000), "duration"),
    ("jazz", AudioSettings(variations=100), "variations"),
    ("jazz", AudioSettings(temperature=0), "temperature"),
])
def test_bad_input_is_refused_clearly(am, prompt, settings, message):
    with pytest.raises(SettingsError, match=message):
        musicgen.generate(am, prompt, settings)


def test_offline_without_weights_says_how_to_put_them_in_place(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="hf download facebook/musicgen-small"):
        musicgen.load("facebook/musicgen-small", device="cpu")


def test_the_command_line_writes_a_wav_and_a_manifest(tmp_path, am):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    folder = tiny_musicgen(tmp_path / "m")
    out = tmp_path / "song.wav"
    r = subprocess.run([sys.executable, "-m", "engine", "audio", "slow piano", "--model", str(folder), "--duration", "0.5",
                        "--seed", "2", "-o", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with wave.open(str(out)) as w:
        assert w.getnframes() == 16000
    assert json.loads(out.with_suffix(".manifest.json").read_text())["settings"]["seed"] == 2
    bad = subprocess.run([sys.executable, "-m", "engine", "audio", "x", "--duration", "999", "-o", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "duration" in bad.stderr
