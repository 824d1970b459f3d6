"""Growing a model deeper: the grown model computes what the small one did, then learns with its new depth."""
import pytest
import torch

from conftest import tiny_model
from engine.errors import CadenzaError
from engine.symbolic.grow import deepen, placement_of
from engine.symbolic.train import TrainConfig, loss_on, train
from test_data_train import _pieces


def test_old_blocks_are_spread_with_the_ends_kept():
    assert placement_of(6, 12) == [0, 2, 4, 7, 9, 11]
    assert placement_of(2, 3) == [0, 2]
    assert placement_of(1, 3) == [0]
    assert placement_of(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("patch_layers,char_layers", [(4, 1), (5, 3), (2, 2)])
def test_grown_model_computes_the_same_logits(patch_layers, char_layers):
    small = tiny_model(patch_layers=2, char_layers=1)
    grown = deepen(small, patch_layers, char_layers).eval()
    assert (grown.config.patch_num_layers, grown.config.char_num_layers) == (patch_layers, char_layers)
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in small.parameters()) or \
        (patch_layers, char_layers) == (2, 1)
    patches = torch.randint(3, 128, (2, 9, 16))
    with torch.no_grad():
        a = small.char_level_decoder(small.patch_level_decoder(patches)[0], patches[0])
        b = grown.char_level_decoder(grown.patch_level_decoder(patches)[0], patches[0])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_grown_model_trains_its_new_blocks(tmp_path):
    torch.manual_seed(0)
    small = tiny_model(patch_length=256, hidden=64, std=0.02)
    grown = deepen(small, 4, 2)
    pieces = _pieces()
    new_proj = grown.patch_level_decoder.base.h[1].mlp.c_proj.weight  # a new block (0 and 3 are the old ones)
    assert float(new_proj.detach().abs().sum()) == 0.0
    before, _ = loss_on(grown, *_batch(grown, pieces), None)
    train(grown, pieces, [], tmp_path / "g", TrainConfig(steps=20, batch_pieces=2, patch_sampling=64, lr=3e-3,
                                                          warmup=2, eval_every=20, min_prompt_pieces=1))
    assert float(grown.patch_level_decoder.base.h[1].mlp.c_proj.weight.abs().sum()) > 0
    after, _ = loss_on(grown, *_batch(grown, pieces), None)
    assert float(after) < float(before)


def test_a_model_is_not_shrunk():
    with pytest.raises(CadenzaError, match="only be grown"):
        deepen(tiny_model(patch_layers=3), 2, 1)


def _batch(model, pieces):
    import random

    from engine.symbolic.train import batch_tensor, crop

    rng = random.Random(0)
    return batch_tensor([crop(p["text"], model.config.patch_length, rng) for p in pieces], model.device)
