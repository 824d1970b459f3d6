"""Dataset building from real corpus scores, and training / fine-tuning on a few of them."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_model
from engine.data import build as data
from engine.errors import CadenzaError
from engine.symbolic.checkpoint import load_model, save_model
from engine.symbolic.patches import split_tunebody
from engine.symbolic.prompts import PromptTable
from engine.symbolic.train import TrainConfig, crop, piece_patches, train


def corpus_source(source_id: str) -> data.Source:
    sources, _ = data.corpus_sources()
    return next(s for s in sources if s.id == source_id)


@pytest.mark.parametrize("source_id,labels,voices", [
    ("bach/bwv66.6.mxl", ["Baroque", "Bach, Johann Sebastian", "Choral"], 4),
    ("mozart/k80/movement1.mxl", ["Classical", "Mozart, Wolfgang Amadeus", "Chamber"], 4),
    ("schoenberg/opus19/movement2.mxl", ["20th century", "Schoenberg, Arnold", "Keyboard"], 3),  # 2 staves, 3 voices
    ("oneills1850/0001-0050.abc#3", ["Folk", "Traditional, Irish", "Melody"], 1),
])
def test_corpus_pieces_become_the_models_format(source_id, labels, voices):
    result = data.convert_source(corpus_source(source_id), transpose=(2,))
    assert "skipped" not in result, result
    assert result["labels"] == labels and result["voices"] == voices
    text = result["text"]
    assert text.startswith("".join(f"%{x}\n" for x in labels))
    meta, body = split_tunebody(text)
    assert not any(ln.startswith(("T:", "C:", "X:", "w:")) for ln in meta)  # titles, composer, lyrics gone
    n = len(body)
    assert [ln[: ln.index("]") + 1] for ln in body] == [f"[r:{i}/{n - 1 - i}]" for i in range(n)]
    assert all("%" not in ln for ln in body)  # bar-number comments removed
    if voices > 1:
        assert sum(ln.count("[V:") >= 2 for ln in body) > n // 2  # voices interleaved bar by bar
    assert len(result["augmented"]) == 1 and result["augmented"][0] != text  # transposed copy


def test_build_dedups_splits_resumes_and_reports(tmp_path, monkeypatch):
    good = corpus_source("bach/bwv66.6.mxl")
    twin = data.Source("copy/bwv66.6.mxl", good.path, None, good.period, good.composer, None)
    (tmp_path / "broken.mxl").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "empty.abc").write_text("X:1\nT:nothing\nL:1/8\nM:4/4\nK:C\n")
    bad = [data.Source(p.name, str(p), None, "Baroque", "Test, A", None)
           for p in (tmp_path / "broken.mxl", tmp_path / "empty.abc")]
    sources = [good, twin, corpus_source("oneills1850/0001-0050.abc#3")] + bad
    report = data.build(sources, tmp_path / "ds", workers=2, transpose=(2,))
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert reasons["copy/bwv66.6.mxl"] == "duplicate of bach/bwv66.6.mxl"
    assert "no notes" in reasons["empty.abc"] or "could not" in reasons["empty.abc"]
    assert "broken.mxl" in reasons
    assert report["train_originals"] + report["val_pieces"] == 2
    assert len(data.read_split(tmp_path / "ds", "train")) + len(data.read_split(tmp_path / "ds", "val")) >= 2
    # a second build converts nothing again
    monkeypatch.setattr(data, "convert_source", lambda *a, **k: pytest.fail("converted twice"))
    assert data.build(sources, tmp_path / "ds", workers=1, transpose=(2,))["per_label"] == report["per_label"]


def test_bad_folders(tmp_path):
    with pytest.raises(CadenzaError, match="not a folder"):
        data.folder_sources(tmp_path / "nope", "Romantic", "Test, A", None)
    with pytest.raises(CadenzaError, match="holds no scores"):
        data.folder_sources(tmp_path, "Romantic", "Test, A", None)


def test_training_encoding_and_crop():
    text = "%Folk\n%Traditional, Irish\n%Melody\nL:1/8\nM:4/4\nK:G\n" + "".join(
        f"[r:{i}/{39 - i}][V:1]GABc dBAG|\n" for i in range(40))
    patches = piece_patches(text)
    assert patches[0] == [1] * 15 + [2] and patches[-1] == [1] + [2] * 15
    import random
    cropped = crop(text, 40, random.Random(0))
    assert len(cropped) <= 40 and cropped[1] == patches[1]  # metadata kept


def _pieces(n=2):
    texts = [data.convert_source(corpus_source(s))["text"] for s in ("bach/bwv66.6.mxl", "oneills1850/0001-0050.abc#3")]
    return [{"id": f"p{i}", "labels": ["Romantic", "Test, Composer", "Choral"], "text": t} for i, t in enumerate(texts[:n])]


def test_training_moves_the_loss_checkpoints_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(patch_length=256, hidden=64, std=0.02)
    pieces = _pieces()
    cfg = TrainConfig(steps=30, batch_pieces=2, patch_sampling=64, lr=3e-3, warmup=5, eval_every=15,
                      min_prompt_pieces=1)
    history = train(model, pieces, pieces, tmp_path / "m", cfg)
    losses = [s["loss"] for s in history["steps"]]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert [v["step"] for v in history["val_bpc"]] == [15, 30]
    assert history["val_bpc"][1]["bpc"] < history["val_bpc"][0]["bpc"]
    loaded = load_model(tmp_path / "m")
    assert [p.key() for p in loaded.prompts.prompts] == ["Romantic_Test, Composer_Choral"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)
    cfg.steps = 35  # resume: continues from step 30
    more = train(loaded.model, pieces, pieces, tmp_path / "m", cfg)
    assert [s["step"] for s in more["steps"]][-6:] == [30, 31, 32, 33, 34, 35]


def test_finetune_command_adds_the_composer(tmp_path):
    from music21 import corpus

    base = tmp_path / "base"
    save_model(tiny_model(patch_length=256, hidden=64, std=0.02), base,
               prompts=PromptTable.parse("Baroque_Bach, Johann Sebastian_Choral\n"))
    scores = tmp_path / "scores"
    scores.mkdir()
    for work in ("bach/bwv66.6", "bach/bwv84.5"):
        shutil.copy(corpus.getWork(work), scores / f"{work.split('/')[1]}.mxl")
    (scores / "junk.mxl").write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "engine", "finetune", str(scores), "--period", "Romantic",
                        "--composer", "Hensel, Fanny", "--model", str(base), "--out", str(tmp_path / "ft"),
                        "--steps", "12", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "junk.mxl" in r.stderr or "1 " in r.stderr  # the unreadable file is reported, not fatal
    table = load_model(tmp_path / "ft").prompts
    assert "Romantic_Hensel, Fanny_Choral" in [p.key() for p in table.prompts]
    assert "Baroque_Bach, Johann Sebastian_Choral" in [p.key() for p in table.prompts]
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert history["steps"][-1]["loss"] < history["steps"][0]["loss"]


def test_part_names_with_line_breaks_become_plain_words():
    """MusicXML names like "\\n\\t\\t\\t:Violin I" (75 pieces of the v1 dataset) must not reach the model."""
    from engine.symbolic.abcformat import clean_part_names, to_model_text

    line = 'V:1 treble nm="\\n\t\t\t:Violin I" snm="\\n\t\t\t:Vln. I"\n'  # a literal backslash-n, as xml2abc writes
    assert clean_part_names(line) == 'V:1 treble nm="Violin I" snm="Vln. I"\n'
    assert clean_part_names('V:2 bass nm="Cello"\n') == 'V:2 bass nm="Cello"\n'
    text = to_model_text(["L:1/8\n", "K:C\n", line, "[V:1]C8|\n"])
    assert 'nm="Violin I"' in text and "\t" not in text


def test_balanced_drawing_evens_out_labels():
    from collections import Counter
    import random

    from engine.symbolic.train import draw, label_weights

    pieces = [{"id": f"a{i}", "labels": ["P", "Big, Label", "Choral"]} for i in range(90)]
    pieces += [{"id": f"b{i}", "labels": ["P", "Small, Label", "Chamber"]} for i in range(10)]
    assert label_weights(pieces, 0.0) is None
    rng = random.Random(0)
    as_data = Counter(p["labels"][1] for _ in range(400) for p in draw(pieces, None, 8, rng))
    even = Counter(p["labels"][1] for _ in range(400) for p in draw(pieces, label_weights(pieces, 1.0), 8, rng))
    half = Counter(p["labels"][1] for _ in range(400) for p in draw(pieces, label_weights(pieces, 0.5), 8, rng))
    share = lambda c: c["Small, Label"] / sum(c.values())  # noqa: E731
    assert 0.07 < share(as_data) < 0.13  # 10 of 100 pieces
    assert 0.45 < share(even) < 0.55  # 2 labels, equally often
    assert 0.19 < share(half) < 0.30  # sqrt(10) / (sqrt(10) + sqrt(90)) = 0.25
    with pytest.raises(CadenzaError, match="balance"):
        TrainConfig(balance=1.5)
