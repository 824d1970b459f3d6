"""MusicGen through transformers, with a tiny random-weight model built from configs (T5 text
encoder, 32 kHz EnCodec, decoder) and saved as a local folder: no downloads."""
import threading
import wave

import numpy as np
import pytest
import torch

from engine.audio import musicgen
from engine.audio.musicgen import AudioSettings
from engine.requests import AudioRequest
from engine.errors import CadenzaError, CheckpointError, SettingsError


def tiny_musicgen(folder, melody: bool = False, stereo: bool = False):
    """A MusicGen (or MusicGen-Melody) model small enough to run in milliseconds, saved with its
    processor as a local folder, exactly as save_pretrained would leave a downloaded one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyFeatureExtractor, MusicgenMelodyForConditionalGeneration,
                              MusicgenMelodyProcessor, MusicgenProcessor, PreTrainedTokenizerFast, T5Config)

    words = ["<pad>", "</s>", "<unk>", "warm", "string", "quartet", "slow", "fast", "piano", "jazz"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    t5 = T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, codebook_size=16, codebook_dim=8,
                        hidden_size=8, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], num_lstm_layers=1)
    dec_cls = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    dec = dec_cls(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64,
                  num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
                  max_position_embeddings=2048, pad_token_id=16, bos_token_id=16)
    torch.manual_seed(0)
    parts = dict(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())
    if melody:
        model = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(**parts, num_chroma=12, chroma_length=235))
    else:
        model = MusicgenForConditionalGeneration(MusicgenConfig(**parts))
    model.generation_config.decoder_start_token_id = model.generation_config.pad_token_id = 16
    # EnCodec's codebooks start at zero and its biases swamp the rest: with random weights every
    # code would sound alike. Spread the codebooks and drop the biases so the codes are heard.
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_(std=5.0)
    for name, p in model.audio_encoder.decoder.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    if melody:  # make the chroma matter enough to change what is sampled
        model.audio_enc_to_dec_proj.weight.data.normal_(std=3.0)
    model.save_pretrained(folder)
    if melody:
        MusicgenMelodyProcessor(MusicgenMelodyFeatureExtractor(), tokenizer).save_pretrained(folder)
    else:
        MusicgenProcessor(EncodecFeatureExtractor(sampling_rate=32000, feature_size=2 if stereo else 1),
                          tokenizer).save_pretrained(folder)
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
    ("", {}, "prompt is empty"),
    ("jazz", {"duration": 10_000}, "duration"),
    ("jazz", {"variations": 100}, "variations"),
    ("jazz", {"temperature": 0}, "temperature"),
    ("jazz", {"seed": -3}, "seed"),
    ("jazz", {"top_k": 2.5}, "top-k"),
])
def test_bad_input_is_refused_clearly_when_the_request_is_made(prompt, settings, message):
    with pytest.raises(SettingsError, match=message):
        AudioRequest(prompt, AudioSettings(**settings))


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


# --- windows past 30 s -------------------------------------------------------------------------------
def test_windows_plan_covers_the_duration_with_context():
    plan = musicgen._windows(3500, 1500, 500)
    assert plan[0] == (0, 1500) and all(p == 500 for p, _ in plan[1:])
    assert sum(new for _, new in plan) == 3500 and len(plan) == 3
    assert musicgen._windows(100, 1500, 500) == [(0, 100)]


@pytest.fixture
def short_windows(monkeypatch):
    """Windows of 1 s continuing from the last 0.4 s: the same code path as 30 s / 10 s, fast."""
    monkeypatch.setattr(musicgen, "WINDOW_SECONDS", 1.0)
    monkeypatch.setattr(musicgen, "CONTEXT_SECONDS", 0.4)


def test_several_windows_give_the_duration_asked_and_reuse_the_first_window(am, short_windows):
    s = AudioSettings(duration=2.5, seed=5, variations=2)
    steps = []
    codes, reason, windows = musicgen.generate_codes(am, "warm string quartet", s, on_progress=lambda d, t: steps.append((d, t)))
    assert (reason, windows, tuple(codes.shape)) == ("done", 4, (2, 4, 125))
    assert steps[-1] == (125 + 4 * 3, 125 + 4 * 3)  # each new frame once, plus 3 delay steps per window
    first, _, _ = musicgen.generate_codes(am, "warm string quartet", AudioSettings(duration=1.0, seed=5, variations=2))
    assert torch.equal(codes[..., :50], first)  # the first window is a plain one-window run
    r = musicgen.generate(am, "warm string quartet", s)
    assert r.audio.shape == (2, 1, 80000) and r.windows == 4 and r.stop_reason == "done"


def test_a_later_window_continues_from_the_codes_before_it(am, short_windows):
    """Window 2 is transformers' generate prompted with the last 0.4 s of window 1's codes: the
    same codes come out when we call generate ourselves with that prompt and the same RNG state."""
    from transformers import StoppingCriteriaList

    s = AudioSettings(duration=1.6, seed=8)
    codes, _, windows = musicgen.generate_codes(am, "slow piano", s)
    assert windows == 2 and codes.shape[-1] == 80
    torch.manual_seed(8)
    first, _, _ = musicgen.generate_codes(am, "slow piano", AudioSettings(duration=1.0, seed=8))
    # generate_codes re-seeds; replay window 1's sampling to reach the RNG state window 2 started from
    torch.manual_seed(8)
    inputs = am.processor(text=["slow piano"], padding=True, return_tensors="pt")
    stepper = musicgen._Steps(1 + 50 + 3, 0, 10**6, None, None)
    with pytest.raises(musicgen._Stop):
        am.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, top_p=1.0, max_new_tokens=53,
                          stopping_criteria=StoppingCriteriaList([stepper]))
    prompt = first[..., -20:]
    stepper = musicgen._Steps(1 + 20 + 33, 0, 10**6, None, None)
    try:
        am.model.generate(**inputs, decoder_input_ids=prompt.reshape(-1, 20), do_sample=True, guidance_scale=3.0,
                          top_k=250, top_p=1.0, max_new_tokens=33, stopping_criteria=StoppingCriteriaList([stepper]))
    except musicgen._Stop as stop:
        second = musicgen._codes(am, stop.ids, prompt)
    assert torch.equal(second[..., :20], codes[..., 30:50]) and torch.equal(second[..., 20:], codes[..., 50:])


def test_cancel_in_a_later_window_keeps_the_earlier_windows(am, short_windows):
    cancel = threading.Event()

    def progress(done, total):
        if done == 60:  # inside window 2 (window 1 takes 53 steps)
            cancel.set()

    r = musicgen.generate(am, "jazz", AudioSettings(duration=2.5), on_progress=progress, cancel=cancel)
    assert r.stop_reason == "cancelled" and r.windows == 2
    assert r.audio.shape[-1] == (50 + 7 - 3) * 640  # window 1's 50 frames and the 4 more every codebook reached


# --- stereo and melody models ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stereo(tmp_path_factory):
    return musicgen.load(tiny_musicgen(tmp_path_factory.mktemp("tiny-stereo"), stereo=True), device="cpu")


@pytest.fixture(scope="module")
def melody_am(tmp_path_factory):
    return musicgen.load(tiny_musicgen(tmp_path_factory.mktemp("tiny-melody"), melody=True), device="cpu")


def test_stereo_model_matches_transformers_and_writes_two_channels(stereo, tmp_path):
    assert stereo.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    ours = musicgen.generate(stereo, "warm piano", AudioSettings(duration=0.7, seed=4))
    inputs = stereo.processor(text=["warm piano"], padding=True, return_tensors="pt")
    torch.manual_seed(4)
    plain = stereo.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, top_p=1.0,
                                  max_new_tokens=35 + 3)[..., :22400].numpy()
    np.testing.assert_allclose(ours.audio, musicgen.normalise(plain.astype(np.float32), 32000)[0], atol=1e-6)
    path = musicgen.write_wav(tmp_path / "s.wav", ours.audio[0], 32000)
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getnframes() == 22400


def write_tone(path, seconds, sr=44100, channels=2, freq=440.0, subtype="PCM_16"):
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([x] * channels, axis=1), sr, subtype=subtype)
    return path


def test_melody_is_probed_decoded_mixed_resampled_and_trimmed(tmp_path):
    x = musicgen.load_melody(write_tone(tmp_path / "a.wav", 40.0), 32000)
    assert x.ndim == 1 and x.dtype == np.float32 and x.shape[0] == 30 * 32000  # trimmed to one window
    y = musicgen.load_melody(write_tone(tmp_path / "b.flac", 2.0, sr=22050, channels=1), 32000)
    assert abs(y.shape[0] - 64000) <= 2
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 32000 / len(y) - 440) < 2  # still the same note after resampling


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("not audio at all") and p, "not an audio file"),
    (lambda p: write_tone(p, 601, sr=4000, channels=1), "at most 600"),
    (lambda p: write_tone(p, 0.1), "at least half a second"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3) and p, "not an audio file"),
])
def test_bad_melody_files_are_refused_clearly(tmp_path, make, message):
    path = make(tmp_path / "m.wav")
    with pytest.raises(SettingsError, match=message):
        musicgen.load_melody(path, 32000)


def test_an_enormous_melody_file_is_refused_before_decoding(tmp_path):
    path = write_tone(tmp_path / "big.wav", 12.0)  # about 2 MB
    with pytest.raises(SettingsError, match="at most 1 MB"):
        musicgen.load_melody(path, 32000, max_mb=1)


def test_melody_model_follows_the_melody_and_matches_transformers(melody_am, tmp_path):
    a = musicgen.load_melody(write_tone(tmp_path / "a.wav", 3.0, freq=220.0), 32000)
    b = musicgen.load_melody(write_tone(tmp_path / "b.wav", 3.0, freq=330.0), 32000)
    s = AudioSettings(duration=0.8, seed=2)
    ra = musicgen.generate(melody_am, "string quartet", s, melody=a, melody_name="a.wav")
    rb = musicgen.generate(melody_am, "string quartet", s, melody=b)
    assert ra.audio.shape == (1, 1, 25600) and not np.array_equal(ra.audio, rb.audio)
    assert ra.manifest()["melody"] == "a.wav"
    # equals transformers' own generate given the same melody (its window, as we cut it)
    inputs = melody_am.processor(text=["string quartet"], audio=[a[: 30 * 32000]], sampling_rate=32000,
                                 padding=True, return_tensors="pt")
    torch.manual_seed(2)
    plain = melody_am.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, top_p=1.0,
                                     max_new_tokens=40 + 3)[..., :25600].numpy()
    np.testing.assert_allclose(ra.audio, musicgen.normalise(plain.astype(np.float32), 32000)[0], atol=1e-6)


def test_a_text_model_refuses_a_melody_clearly(am):
    with pytest.raises(SettingsError, match="melody model"):
        musicgen.generate(am, "jazz", AudioSettings(duration=0.5), melody=np.zeros(32000, np.float32))


def test_the_picture_shows_waveform_and_spectrogram(am, tmp_path):
    from PIL import Image

    r = musicgen.generate(am, "jazz", AudioSettings(duration=1.0))
    path = musicgen.write_picture(tmp_path / "p.png", r.audio[0], r.sampling_rate, "jazz")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape == (420, 1000)
    assert img.std() > 20  # not a blank canvas


# --- the engine's API: files on disk, scores performed -------------------------------------------------
TUNE = "X:1\nT:t\nM:4/4\nL:1/8\nQ:1/4=120\nK:G\nGABc d2 B2|c2 A2 G4|]\n"  # 2 bars at 120 bpm: 4 s


def test_make_audio_writes_wavs_pictures_and_a_manifest(am, tmp_path):
    import json

    from engine import api

    out = api.make_audio(am, AudioRequest("warm piano", AudioSettings(duration=0.6, variations=2, seed=3)), tmp_path,
                         "Warm piano!")
    assert [p.name for p in out.wavs] == ["warm-piano-1.wav", "warm-piano-2.wav"] and len(out.pictures) == 2
    m = json.loads(out.manifest.read_text())
    assert m["settings"]["seed"] == 3 and m["audio_seconds"] == 0.6 and m["windows"] == 1


def test_a_score_is_performed_by_a_melody_model(melody_am, am, tmp_path):
    import json
    import soundfile as sf

    from engine import api

    out = api.make_audio(melody_am, AudioRequest("string quartet", AudioSettings(duration=30.0, seed=1), score=TUNE),
                         tmp_path, "tune")
    played = tmp_path / "tune-soundfont.wav"
    assert played.is_file() and out.wavs == [tmp_path / "tune.wav"]
    seconds = sf.info(str(played)).duration
    assert abs(sf.info(str(out.wavs[0])).duration - round(seconds, 2)) < 0.01  # as long as the score
    m = json.loads(out.manifest.read_text())
    assert m["melody"] == "tune-soundfont.wav" and m["prompt"] == "string quartet"
    with pytest.raises(SettingsError, match="needs a melody model"):
        api.make_audio(am, AudioRequest("string quartet", score=TUNE), tmp_path)
    with pytest.raises(CadenzaError):
        api.make_audio(melody_am, AudioRequest("string quartet", score="this is not a score"), tmp_path)


def test_the_command_line_performs_a_score(tmp_path, melody_am):
    import subprocess
    import sys

    from conftest import ROOT

    folder = tiny_musicgen(tmp_path / "m", melody=True)
    (tmp_path / "t.abc").write_text(TUNE)
    out = tmp_path / "p.wav"
    r = subprocess.run([sys.executable, "-m", "engine", "perform", str(tmp_path / "t.abc"), "string quartet",
                        "--model", str(folder), "--duration", "1", "-o", str(out), "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with wave.open(str(out)) as w:
        assert w.getnframes() == 32000
    assert out.with_suffix(".png").is_file()


def test_normalise_brings_quiet_and_loud_music_to_the_target():
    """A chord with a slow swell, quiet and loud: both come out within 1 LU of -14 LUFS with
    peaks under -1 dBFS (music-like crest factor, so the peak limit does not decide it)."""
    import torchaudio.functional as AF

    sr = 32000
    t = np.arange(4 * sr) / sr
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
    for level in (0.01, 0.3):
        clip = (level * chord / np.abs(chord).max()).astype(np.float32)[None, None]
        out, lufs = musicgen.normalise(clip, sr)
        measured = float(AF.loudness(torch.from_numpy(out[0]), sr))
        assert abs(measured - musicgen.TARGET_LUFS) <= 1.0 and abs(lufs[0] - measured) < 1e-3
        assert np.abs(out).max() <= 10 ** (musicgen.PEAK_DBFS / 20) + 1e-6
