"""What the GPU is for, checked on one (skipped without CUDA; `python -m bench.gpu_suite` runs them
first): the fast path writes what NotaGen's algorithm writes there too, batched and alone, compiled
(CUDA graphs) and eager, in bf16 as well as fp32; MusicGen in fp16."""
import pytest
import torch

from conftest import BACH, tiny_model
from engine.symbolic.generate import FastBackend, PieceRequest, generate
from engine.symbolic.reference import ReferenceBackend
from engine.symbolic.sampling import SamplingSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GREEDY = SamplingSettings(top_k=1, top_p=1.0, temperature=1.0)


def reqs(n=1, patches=40, sampling=GREEDY):
    return [PieceRequest(BACH, seed=s, sampling=sampling, max_patches=patches, stop_at_eos=False) for s in range(n)]


def test_the_fast_path_writes_what_notagens_algorithm_writes_on_the_gpu():
    model = tiny_model(seed=11).to("cuda")
    assert [p.text for p in generate(model, reqs(), FastBackend)] == [p.text for p in generate(model, reqs(), ReferenceBackend)]


def test_a_batch_on_the_gpu_writes_what_each_piece_writes_alone():
    model = tiny_model(seed=12).to("cuda")
    sampling = SamplingSettings()
    together = generate(model, reqs(4, sampling=sampling), FastBackend)
    alone = [generate(model, [r], FastBackend)[0] for r in reqs(4, sampling=sampling)]
    assert [p.text for p in together] == [p.text for p in alone]


def test_compiled_decoding_on_the_gpu_equals_eager_under_greedy_decoding():
    import functools

    model = tiny_model(seed=13).to("cuda")
    eager = generate(model, reqs(2), functools.partial(FastBackend, decode="eager"))
    compiled = generate(model, reqs(2), functools.partial(FastBackend, decode="compiled"))
    assert [p.text for p in compiled] == [p.text for p in eager]


def test_bf16_on_the_gpu_writes_every_patch_asked():
    model = tiny_model(seed=14).to(device="cuda", dtype=torch.bfloat16)
    (piece,) = generate(model, reqs(patches=40), FastBackend)
    assert piece.patches == 40 and piece.text.isascii()


def test_musicgen_in_fp16_on_the_gpu_makes_finite_audio(tmp_path):
    from bench.musicgen_speed import PROMPT, build
    from engine.audio import musicgen

    am = musicgen.load(str(build(tmp_path / "tiny-musicgen", tiny=True)), device="cuda")
    codes, _, _ = musicgen.generate_codes(am, PROMPT, musicgen.AudioSettings(duration=1.0, seed=0))
    audio = musicgen.decode(am, codes)
    assert torch.isfinite(torch.as_tensor(audio).float()).all()
