"""Both generation modes reproduce what NotaGen's own code computed with a tiny checkpoint.
Set NOTAGEN_REFERENCE=/path/prefix to check another reference pair (prefix.pth, prefix.json)."""
import json

import pytest
import torch

from conftest import reference_prefix
from engine.symbolic.checkpoint import load_model
from engine.symbolic.generate import FastBackend, PatchEvent, PieceRequest, stream
from engine.symbolic.patches import prompt_patches
from engine.symbolic.prompts import Prompt
from engine.symbolic.reference import ReferenceBackend, ReferenceModel
from engine.symbolic.sampling import SamplingSettings

PREFIX = reference_prefix()
pytestmark = pytest.mark.skipif(not PREFIX.with_suffix(".pth").is_file(),
                                reason=f"reference files not found at {PREFIX}.pth/.json (set NOTAGEN_REFERENCE)")


@pytest.fixture(scope="module")
def ref():
    return json.loads(PREFIX.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def loaded():
    return load_model(PREFIX.with_suffix(".pth"))


def _prompt(ref) -> Prompt:
    lines = ref["prompt"].splitlines()
    return Prompt(*(ln.lstrip("%") for ln in lines))


def test_sizes_inferred_from_tensors(ref, loaded):
    cfg, want = loaded.model.config, ref["config"]
    assert (cfg.patch_size, cfg.patch_length, cfg.patch_num_layers, cfg.char_num_layers, cfg.hidden_size) == (
        want["patch_size"], want["patch_length"], want["patch_num_layers"], want["char_num_layers"], want["hidden_size"])


def test_prompt_patches(ref):
    assert prompt_patches(ref["prompt"].splitlines(keepends=True)) == ref["input_patches"]


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_hidden_state_and_first_char_probs(ref, loaded, mode):
    model = loaded.model
    ids = torch.tensor(ref["input_patches"])[None]
    with torch.inference_mode():
        if mode == "fast":
            hidden = model.patch_level_decoder(ids)[0, -1]
            logits = model.char_level_decoder(hidden[None], torch.zeros(1, 0, dtype=torch.long))[0, -1]
            probs = torch.softmax(logits, -1)
        else:
            rm = ReferenceModel(model)
            hidden = rm.patch_hidden(ids)[0, -1]
            probs = rm.char_probs(hidden, torch.tensor([1]))
    torch.testing.assert_close(hidden[:8], torch.tensor(ref["patch_last_hidden_state_first8"]), atol=1e-4, rtol=0)
    top = probs.topk(5)
    want = ref["first_char_probs_top5"]
    assert top.indices.tolist() == [i for i, _ in want]
    torch.testing.assert_close(top.values, torch.tensor([p for _, p in want]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_greedy_patches(ref, loaded, mode):
    n = len(ref["greedy_patches"])
    req = PieceRequest(_prompt(ref), sampling=SamplingSettings(top_k=1, top_p=1.0, temperature=1.0), max_patches=n)
    backend = ReferenceBackend if mode == "reference" else FastBackend
    events = [e for e in stream(loaded.model, [req], backend) if isinstance(e, PatchEvent)]
    assert [e.ids for e in events] == ref["greedy_patches"]
