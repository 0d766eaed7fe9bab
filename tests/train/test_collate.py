"""Collators: padding to the batch's own longest sample, per-family visual inputs, batch == singles, a falling loss."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler

from flash_vstream.inference.prompts import IGNORE_INDEX
from flash_vstream.train.collate import FlashCollator, StarCollator, collator_for, pad_token_id
from flash_vstream.train.dataset import TrainDataset, sample_encoder_for
from tests.train.batchfixtures import (
    CAPTION,
    DIALOGUE,
    TEXT_ONLY,
    flash_model,
    per_sample_losses,
    random_features,
    row,
    samples,
    star_model,
    write_features,
    write_frame_folder,
)


@pytest.fixture(scope="module")
def star():
    return star_model("llama")


@pytest.fixture
def star_items(star, tmp_path):
    """Encoded STAR samples: a 3-frame video, a text-only dialogue, a 6-frame caption (different lengths)."""
    model, tok = star
    write_features(tmp_path / "a.safetensors", random_features(3, seed=1))
    write_features(tmp_path / "b.safetensors", random_features(6, seed=2))
    rows = [row("a", DIALOGUE, video="a.mp4"), row("t", TEXT_ONLY), row("b", CAPTION, video="b.mp4")]
    encoder = sample_encoder_for(model, tok, max_length=4096)
    return [encoder(s) for s in samples(tmp_path, rows)]


@pytest.fixture
def flash_items(flash, tmp_path):
    """Encoded Flash samples: 8 and 5 frames (the memory compresses the first), and a text-only dialogue."""
    model, tok = flash
    write_frame_folder(tmp_path / "a", 8, seed=1)
    write_frame_folder(tmp_path / "b", 5, size=(56, 112), seed=2)
    rows = [row("a", DIALOGUE, videos=["a"]), row("t", TEXT_ONLY), row("b", CAPTION, videos=["b"])]
    encoder = sample_encoder_for(model, tok, max_length=4096)
    return [encoder(s) for s in samples(tmp_path, rows)]


# ---------------------------------------------------------------------------------------------- padding


def test_star_batches_pad_to_their_own_longest_sample(star, star_items):
    model, tok = star
    batch = collator_for(model, tok)(star_items)
    lengths = [len(item["input_ids"]) for item in star_items]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths)) and max(lengths) < 4096
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row_index, item in enumerate(star_items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row_index, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row_index, :n], item["labels"])
        assert (batch["input_ids"][row_index, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row_index, n:] == IGNORE_INDEX).all()
    assert [f.shape[0] for f in batch["features"]] == [3, 6]  # one per sample with a medium, in batch order
    assert torch.equal(batch["features"][1], star_items[2]["features"])
    assert "pixel_values" not in batch


def test_pad_to_multiple_of(star, star_items):
    batch = collator_for(*star, pad_to_multiple_of=64)(star_items[:2])
    longest = max(len(item["input_ids"]) for item in star_items[:2])
    assert batch["input_ids"].shape[1] == -(-longest // 64) * 64
    assert batch["attention_mask"].sum().item() == sum(len(item["input_ids"]) for item in star_items[:2])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        collator_for(*star, pad_to_multiple_of=0)


def test_star_text_only_batches_and_mixed_kinds(star, star_items):
    collate = collator_for(*star)
    assert set(collate([star_items[1]])) == {"input_ids", "attention_mask", "labels"}
    frames = {**star_items[0], "pixel_values": torch.zeros(2, 3, 224, 224)}
    del frames["features"]
    with pytest.raises(ValueError, match=r"mixes frames \(1 samples\) and pre-extracted features \(1\)"):
        collate([frames, star_items[2]])


def test_flash_batches_concatenate_videos_and_pad_token_types(flash, flash_items):
    model, tok = flash
    batch = collator_for(model, tok)(flash_items)
    lengths = [len(item["input_ids"]) for item in flash_items]
    assert batch["mm_token_type_ids"].shape == (3, max(lengths))
    for row_index, item in enumerate(flash_items):
        n = len(item["input_ids"])
        assert torch.equal(batch["mm_token_type_ids"][row_index, :n], item["mm_token_type_ids"])
        assert not batch["mm_token_type_ids"][row_index, n:].any()
    assert batch["video_grid_thw"].tolist() == [[4, 8, 8], [3, 4, 8]]
    expected = torch.cat([flash_items[0]["pixel_values_videos"], flash_items[2]["pixel_values_videos"]])
    assert torch.equal(batch["pixel_values_videos"], expected)
    assert set(collator_for(model, tok)([flash_items[1]])) == {
        "input_ids",
        "attention_mask",
        "labels",
        "mm_token_type_ids",
    }


def test_bad_batches_and_tokenizers_are_refused(star_items):
    collate = StarCollator(0)
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(ValueError, match=r"sample 0 .*missing: \['labels'\]"):
        collate([{"input_ids": star_items[0]["input_ids"]}])
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        FlashCollator(0)([{"input_ids": torch.ones(3, dtype=torch.long), "labels": torch.ones(3, dtype=torch.long)}])
    none = SimpleNamespace(pad_token_id=None, unk_token_id=None, eos_token_id=None)
    with pytest.raises(ValueError, match="set tokenizer.pad_token"):
        pad_token_id(none)
    assert pad_token_id(SimpleNamespace(pad_token_id=None, unk_token_id=0, eos_token_id=2)) == 0


# ---------------------------------------------------------------------------------------------- the models


def test_star_batch_gives_each_sample_its_single_loss(star, star_items):
    model, tok = star
    collate = collator_for(model, tok)
    with torch.no_grad():
        batch = collate(star_items)
        batched = per_sample_losses(model(**batch).logits, batch["labels"])
        singles = torch.stack([model(**collate([item])).loss for item in star_items])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


def test_flash_batch_gives_each_sample_its_single_loss(flash, flash_items):
    """Per-sample AM-RoPE positions: a padded batch of 3 (two videos, one text) == each sample alone (fp32)."""
    model, tok = flash
    collate = collator_for(model, tok)
    with torch.no_grad():
        batch = collate(flash_items)
        batched = per_sample_losses(model(**batch).logits, batch["labels"])
        singles = torch.stack([model(**collate([item])).loss for item in flash_items])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["star", "flash"])
def test_loss_falls_over_a_few_steps_on_one_batch(family, tmp_path):
    model, tok = star_model("llama") if family == "star" else flash_model()
    if family == "star":
        write_features(tmp_path / "a.safetensors", random_features(4))
        rows = [row("a", DIALOGUE, video="a.mp4"), row("t", TEXT_ONLY)]
    else:
        write_frame_folder(tmp_path / "a", 6)
        rows = [row("a", DIALOGUE, videos=["a"]), row("t", TEXT_ONLY)]
    encoder = sample_encoder_for(model, tok, max_length=4096)
    batch = collator_for(model, tok)([encoder(s) for s in samples(tmp_path, rows)])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses


def test_a_length_grouped_loader_yields_model_batches(star, tmp_path):
    """transformers' LengthGroupedSampler over dataset.lengths, then the collator: every batch runs."""
    model, tok = star
    rows = []
    for i in range(6):
        write_features(tmp_path / f"v{i}.safetensors", random_features(1 + i, seed=i))
        rows.append(row(f"v{i}", DIALOGUE if i % 2 else CAPTION, video=f"v{i}.mp4"))
    dataset = TrainDataset(samples(tmp_path, rows), sample_encoder_for(model, tok, max_length=4096))
    sampler = LengthGroupedSampler(2, lengths=dataset.lengths, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collator_for(model, tok))
    seen = []
    with torch.no_grad():
        for batch in loader:
            assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(dim=1).max())
            assert torch.isfinite(model(**batch).loss)
            seen.append(len(batch["features"]))
    assert sum(seen) == 6
