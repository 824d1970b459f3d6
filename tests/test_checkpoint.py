"""Loading NotaGen checkpoints unchanged, inferring sizes, Cadenza's folder format, bad files."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import BACH, NOTAGEN_SHARED, ROOT, tiny_model
from engine.errors import CheckpointError
from engine.symbolic.checkpoint import infer_config, load_model, save_model
from engine.symbolic.config import PRESETS
from engine.symbolic.generate import PieceRequest, generate
from engine.symbolic.model import NotaGenModel
from engine.symbolic.prompts import PromptTable

X_SHAPES = NOTAGEN_SHARED / "notagen_x_state_dict_shapes.json"
TINY_PTH = NOTAGEN_SHARED / "notagen_tiny_reference.pth"
needs_shared = pytest.mark.skipif(not X_SHAPES.is_file(), reason="../shared/notagen reference files not present")


def meta_model(name: str) -> NotaGenModel:
    with torch.device("meta"):
        return NotaGenModel(PRESETS[name])


@needs_shared
def test_notagen_x_sized_model_has_notagens_keys_and_shapes():
    want = json.loads(X_SHAPES.read_text())
    got = {k: list(v.shape) for k, v in meta_model("notagen-x").state_dict().items()}
    assert got == want


@needs_shared
def test_sizes_inferred_back_from_notagen_x_shapes():
    want = json.loads(X_SHAPES.read_text())
    state = {k: torch.empty(v, device="meta") for k, v in want.items()}
    assert infer_config(state) == PRESETS["notagen-x"]
    assert PRESETS["notagen-x"].num_parameters() == pytest.approx(516e6, rel=0.01)


@pytest.mark.parametrize("name", ["notagen-small", "notagen-medium", "notagen-large", "notagen-x", "tiny"])
def test_every_published_size_is_inferred(name):
    model = meta_model(name)
    assert infer_config(model.state_dict()) == PRESETS[name]
    unique = sum(p.numel() for p in model.parameters())
    assert PRESETS[name].num_parameters() == unique


def _save_notagen_style(model: NotaGenModel, path):
    """What NotaGen's own training code writes: {'model': state_dict} (lm_head and wte both present)."""
    torch.save({"model": model.state_dict(), "epoch": 3}, path)


def test_notagen_checkpoint_round_trips_and_generates_the_same(tmp_path):
    model = tiny_model(seed=4)
    _save_notagen_style(model, tmp_path / "weights.pth")
    loaded = load_model(tmp_path / "weights.pth")
    assert loaded.prompts is None and "any prompt" in loaded.warnings[0]
    req = lambda: [PieceRequest(BACH, seed=5, max_patches=15)]  # noqa: E731
    assert generate(loaded.model, req())[0].text == generate(model, req())[0].text


def test_cadenza_folder_round_trip_with_prompt_table(tmp_path):
    model = tiny_model(seed=4)
    table = PromptTable([BACH])
    save_model(model, tmp_path / "m", prompts=table,
               extra_config={"name": "tiny-test", "prompt_voices": {BACH.key(): [4, 5], "Folk_T, I_Melody": 1}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "prompts.txt"]
    loaded = load_model(tmp_path / "m")
    assert loaded.name == "tiny-test" and loaded.model.config == model.config
    assert loaded.prompts.prompts == [BACH]
    assert loaded.voices == {BACH.key(): (4, 5), "Folk_T, I_Melody": (1,)}  # lists, or one number (v1/v2 models)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)
    # and back to NotaGen's format
    _save_notagen_style(loaded.model, tmp_path / "back.pth")
    again = load_model(tmp_path / "back.pth")
    assert generate(again.model, [PieceRequest(BACH, max_patches=10)])[0].text == \
        generate(model, [PieceRequest(BACH, max_patches=10)])[0].text


def test_prompts_txt_beside_a_checkpoint_is_read(tmp_path):
    _save_notagen_style(tiny_model(), tmp_path / "w.pth")
    (tmp_path / "prompts.txt").write_text("Baroque_Bach, Johann Sebastian_Keyboard\nRomantic_Chopin, Frederic_Keyboard\n")
    loaded = load_model(tmp_path / "w.pth")
    assert len(loaded.prompts) == 2 and loaded.warnings == []


def test_loading_maps_the_file_instead_of_copying_it(tmp_path):
    """Peak memory of a load stays well under twice the checkpoint (mmap + meta-device build)."""
    model = NotaGenModel(PRESETS["tiny"].__class__(patch_length=256, patch_num_layers=8, char_num_layers=2,
                                                   hidden_size=512)).init_weights(seed=0)
    path = tmp_path / "big.pth"
    _save_notagen_style(model, path)
    size = path.stat().st_size
    del model
    code = (
        "import resource, sys, torch; sys.path.insert(0, %r)\n"
        "from engine.symbolic.checkpoint import load_model\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "m = load_model(%r).model\n"
        "s = sum(float(p.sum()) for p in m.parameters())  # touch every weight\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n" % (str(ROOT), str(path)))
    grew = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
    assert size > 80e6
    assert grew < 1.5 * size, f"loading {size / 1e6:.0f} MB grew the process by {grew / 1e6:.0f} MB"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nope.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip" + bytes(100)])
def test_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "bad.pth")


def test_truncated_checkpoint(tmp_path):
    _save_notagen_style(tiny_model(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "cut.pth")


def test_checkpoint_of_another_model(tmp_path):
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="checkpoint of another model"):
        load_model(tmp_path / "other.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(tmp_path / "list.pth")


def test_checkpoint_with_a_missing_layer(tmp_path):
    state = tiny_model().state_dict()
    del state["patch_level_decoder.base.h.0.mlp.c_fc.weight"]
    torch.save({"model": state}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "w.pth")


def test_folder_with_bad_config(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid model config"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"hidden_size": 256, "patch_length": 64}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "m")
    (tmp_path / "m").rename(tmp_path / "gone")
    save_model(tiny_model(), tmp_path / "m", extra_config={"prompt_voices": {"A_B, C_Choral": "four"}})
    with pytest.raises(CheckpointError, match="prompt_voices"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path / "m")


@pytest.mark.skipif(not TINY_PTH.is_file(), reason="../shared/notagen reference files not present")
def test_reference_checkpoint_loads_on_meta_then_mmap():
    loaded = load_model(TINY_PTH)
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert loaded.model.char_level_decoder.base.lm_head.weight is loaded.model.char_level_decoder.base.transformer.wte.weight
