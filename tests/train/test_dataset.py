"""Sample encoders and TrainDataset: what one sample becomes, per family and medium; lengths; cuts; refusals."""

import pickle
import warnings
from types import SimpleNamespace

import pytest
import torch

from flash_vstream.families import SamplerPreset
from flash_vstream.inference.prompts import IGNORE_INDEX
from flash_vstream.train.collate import collator_for
from flash_vstream.train.data import DataError
from flash_vstream.train.dataset import (
    FlashSampleEncoder,
    SampleError,
    SampleTooLongError,
    StarSampleEncoder,
    TrainDataset,
    TruncationWarning,
    sample_encoder_for,
)
from flash_vstream.train.templates import supervised_spans
from tests.train.batchfixtures import (
    CAPTION,
    DIALOGUE,
    TEXT_ONLY,
    TINY_FEATURE,
    random_features,
    row,
    samples,
    write_features,
    write_frame_folder,
)
from tests.train.trainfixtures import write_image

TWO_VIDEOS = [{"from": "human", "value": "<video>\n<video>\nCompare them."}, {"from": "gpt", "value": "Same."}]


# ---------------------------------------------------------------------------------------------- construction


def test_family_comes_from_the_model_type(star_llama, flash):
    assert isinstance(sample_encoder_for(*star_llama, max_length=64), StarSampleEncoder)
    assert isinstance(sample_encoder_for(*flash, max_length=64), FlashSampleEncoder)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        sample_encoder_for(SimpleNamespace(config=SimpleNamespace(model_type="bert")), None, max_length=64)


def test_bad_arguments_are_refused(star_llama, flash):
    with pytest.raises(ValueError, match="template must be one of"):
        sample_encoder_for(*star_llama, template="llava_v9", max_length=64)
    with pytest.raises(ValueError, match="chat template"):
        sample_encoder_for(*flash, template="vicuna_v1", max_length=64)
    with pytest.raises(ValueError, match="max_length"):
        sample_encoder_for(*star_llama, max_length=0)
    with pytest.raises(ValueError, match="SamplerPreset"):
        sample_encoder_for(*star_llama, max_length=64, sampler="fps")
    with pytest.raises(ValueError, match="fast tokenizer"):
        sample_encoder_for(star_llama[0], SimpleNamespace(is_fast=False), max_length=64)
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        sample_encoder_for(star_llama[0], star_llama[1], template="chat_template", max_length=64)


def test_building_an_encoder_leaves_the_random_state_alone(star_llama):
    """Token counts need a memory module, whose random init must not shift the training run's RNG stream."""
    state = torch.random.get_rng_state()
    sample_encoder_for(*star_llama, max_length=64)
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------- STAR media


def test_star_features_images_frames_and_text(star_llama, tmp_path):
    model, tok = star_llama
    video = random_features(3, seed=1)
    write_features(tmp_path / "v.safetensors", video)
    write_features(tmp_path / "img.safetensors", random_features(1, seed=2)[0])  # image features (256, d)
    write_frame_folder(tmp_path / "frames", 5, size=(64, 80))
    write_image(tmp_path / "photo.jpg", 48, 64)
    rows = [
        row("feat", DIALOGUE, video="v.mp4"),
        row("imgfeat", CAPTION, image="img.jpg"),
        row("frames", DIALOGUE, video="frames"),
        row("image", CAPTION, image="photo.jpg"),
        row("text", TEXT_ONLY),
    ]
    feat, imgfeat, frames, image, text = map(sample_encoder_for(model, tok, max_length=4096), samples(tmp_path, rows))
    assert set(feat) == {"input_ids", "labels", "features"} and torch.equal(feat["features"], video)
    assert imgfeat["features"].shape == (1, *TINY_FEATURE)
    assert frames["pixel_values"].shape == (5, 3, 224, 224) and frames["pixel_values"].dtype == torch.float32
    assert image["pixel_values"].shape == (1, 3, 224, 224)
    assert set(text) == {"input_ids", "labels"}
    for out, count in ((feat, 3), (imgfeat, 1), (frames, 5), (image, 1), (text, 0)):
        placeholders = int((out["input_ids"] == model.config.image_token_id).sum())
        assert placeholders == (model.memory.num_tokens(count) if count else 0)
        assert out["input_ids"].dtype == out["labels"].dtype == torch.long


def test_features_and_frames_give_the_same_sequence_and_the_same_loss(star_llama, tmp_path):
    """Features extracted by the model's own tower from the frames train exactly like the frames themselves."""
    model, tok = star_llama
    write_frame_folder(tmp_path / "clip", 4, seed=5)
    encoder = sample_encoder_for(model, tok, max_length=4096)
    [from_frames] = map(encoder, samples(tmp_path, [row("f", DIALOGUE, video="clip")], "frames.json"))
    with torch.no_grad():
        extracted = model.encode_frames(from_frames["pixel_values"])  # (4, 256, d)
    write_features(tmp_path / "features" / "clip.safetensors", extracted)
    rows = [row("f", DIALOGUE, video="features/clip.mp4")]
    [from_features] = map(encoder, samples(tmp_path, rows, "features.json"))
    assert torch.equal(from_frames["input_ids"], from_features["input_ids"])
    assert torch.equal(from_frames["labels"], from_features["labels"])
    collate = collator_for(model, tok)
    with torch.no_grad():
        loss_frames = model(**collate([from_frames])).loss
        loss_features = model(**collate([from_features])).loss
    torch.testing.assert_close(loss_features, loss_frames, rtol=1e-5, atol=1e-6)


def test_frames_follow_the_sampler(star_llama, tmp_path):
    model, tok = star_llama
    write_frame_folder(tmp_path / "clip", 6, size=(32, 32))
    encoder = sample_encoder_for(model, tok, max_length=4096, sampler=SamplerPreset(max_frames=3))
    [out] = map(encoder, samples(tmp_path, [row("f", DIALOGUE, video="clip")]))
    assert out["pixel_values"].shape[0] == 3
    assert int((out["input_ids"] == -200).sum()) == model.memory.num_tokens(3)


# ---------------------------------------------------------------------------------------------- Flash media


def test_flash_video_image_and_text(flash, tmp_path):
    model, tok = flash
    write_frame_folder(tmp_path / "a", 6, seed=1)
    write_frame_folder(tmp_path / "b", 3, size=(56, 112), seed=2)
    write_image(tmp_path / "photo.png", 112, 112)
    rows = [
        row("two", TWO_VIDEOS, videos=["a", "b"]),
        row("image", CAPTION, image="photo.png"),
        row("text", TEXT_ONLY),
    ]
    two, image, text = map(sample_encoder_for(model, tok, max_length=4096), samples(tmp_path, rows))
    grids = two["video_grid_thw"].tolist()
    assert grids == [[3, 8, 8], [2, 4, 8]]  # 6 frames of 112x112; 3 frames (padded to 4) of 56x112
    assert two["pixel_values_videos"].shape[0] == 3 * 8 * 8 + 2 * 4 * 8
    text_ids = two["input_ids"].tolist()
    start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    assert text_ids.count(start) == 2 and text_ids.count(end) == 2
    assert image["video_grid_thw"].tolist() == [[1, 8, 8]]  # an image is a 1-frame video
    assert set(text) == {"input_ids", "labels", "mm_token_type_ids"} and not text["mm_token_type_ids"].any()
    with torch.no_grad():  # the model takes both videos of one sample (one AM-RoPE block each)
        loss = model(**collator_for(model, tok)([two])).loss
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- lengths


def test_lengths_equal_the_encoded_lengths_where_the_estimate_is_exact(star_qwen, flash, tmp_path):
    """Chat-template text and features: the metadata estimate is the real token count, sample by sample."""
    write_features(tmp_path / "v.safetensors", random_features(30))
    write_features(tmp_path / "w.safetensors", random_features(2))
    write_features(tmp_path / "i.safetensors", random_features(1)[0])
    rows = [
        row("v", DIALOGUE, video="v.mp4"),
        row("w", CAPTION, video="w.mp4"),
        row("i", CAPTION, image="i.jpg"),
        row("t", TEXT_ONLY),
        row("t2", TEXT_ONLY[:2]),
    ]
    star = TrainDataset(samples(tmp_path, rows), sample_encoder_for(*star_qwen, max_length=4096))
    assert star.lengths == [len(star[i]["input_ids"]) for i in range(len(star))]
    assert int((star[0]["input_ids"] == -200).sum()) == 681  # 30 frames: the released memory's full budget
    flash_rows = [
        row("t", TEXT_ONLY),
        row("t2", TEXT_ONLY[:2]),
        row("t3", [{"from": "user", "value": "Why?"}, {"from": "assistant", "value": "Because."}]),
    ]
    text_only = TrainDataset(samples(tmp_path, flash_rows, "flash.json"), sample_encoder_for(*flash, max_length=4096))
    assert text_only.lengths == [len(text_only[i]["input_ids"]) for i in range(3)]


# ---------------------------------------------------------------------------------------------- over-long samples


def long_dialogue(exchanges: int) -> list[dict]:
    conversation = [DIALOGUE[0], DIALOGUE[1]]
    for i in range(exchanges - 1):
        conversation += [{"from": "human", "value": f"And then {i}?"}, {"from": "gpt", "value": "The cat sits."}]
    return conversation


def test_long_samples_lose_text_after_the_visual_tokens_only(star_llama, tmp_path):
    model, tok = star_llama
    write_features(tmp_path / "v.safetensors", random_features(2))
    data = samples(tmp_path, [row("a", long_dialogue(12), video="v.mp4"), row("b", long_dialogue(11), video="v.mp4")])
    full = sample_encoder_for(model, tok, max_length=100_000)(data[0])
    supervised = (full["labels"] != IGNORE_INDEX).nonzero().flatten().tolist()
    first_reply_end = next(i for i, j in zip(supervised, supervised[1:] + [None], strict=True) if j != i + 1) + 1
    limit = first_reply_end + 3  # the first reply whole, the rest of the dialogue cut
    assert limit < len(full["input_ids"])
    encoder = sample_encoder_for(model, tok, max_length=limit)
    with pytest.warns(TruncationWarning, match="cut to max_length"):
        cut = encoder(data[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second cut is counted, not warned
        encoder(data[1])
    assert encoder.truncated == 2
    assert torch.equal(cut["input_ids"], full["input_ids"][:limit])
    assert torch.equal(cut["labels"], full["labels"][:limit])
    assert int((cut["input_ids"] == -200).sum()) == model.memory.num_tokens(2)
    assert supervised_spans(tok, cut["input_ids"].tolist(), cut["labels"].tolist()) == [" A cat.</s>"]


def test_samples_whose_visual_tokens_do_not_fit_are_refused(star_llama, flash, tmp_path):
    model, tok = star_llama
    write_features(tmp_path / "v.safetensors", random_features(3))
    [sample] = samples(tmp_path, [row("a", DIALOGUE, video="v.mp4")])
    with pytest.raises(SampleTooLongError, match=r"data.json:1 \(id a\).*raise max_length to at least"):
        sample_encoder_for(model, tok, max_length=model.memory.num_tokens(3))(sample)
    write_frame_folder(tmp_path / "clip", 4)
    [video] = samples(tmp_path, [row("f", DIALOGUE, videos=["clip"])], "flash.json")
    with pytest.raises(SampleTooLongError, match="its visual tokens end at token"):
        sample_encoder_for(*flash, max_length=20)(video)


# ---------------------------------------------------------------------------------------------- refusals


def test_dataset_refuses_what_the_family_cannot_take(star_llama, flash, tmp_path):
    model, tok = star_llama
    write_features(tmp_path / "v.safetensors", random_features(2))
    write_features(tmp_path / "narrow.safetensors", torch.zeros(2, 256, 16))
    write_frame_folder(tmp_path / "clip", 2, size=(32, 32))
    star = sample_encoder_for(model, tok, max_length=4096)
    two = samples(tmp_path, [row("two", TWO_VIDEOS, videos=["v.mp4", "clip"]), row("t", TEXT_ONLY)], "two.json")
    with pytest.raises(DataError, match=r"1 of 2 samples.*two.json:1 \(id two\): it has 2 media"):
        TrainDataset(two, star)
    dialogue = samples(tmp_path, [row("d", DIALOGUE, video="v.mp4")], "dialogue.json")
    with pytest.raises(DataError, match="template 'plain' takes one exchange"):
        TrainDataset(dialogue, sample_encoder_for(model, tok, template="plain", max_length=4096))
    mixed = samples(tmp_path, [row("f", CAPTION, video="v.mp4"), row("p", CAPTION, video="clip")], "mixed.json")
    with pytest.raises(DataError, match=r"mix visual inputs \(features \(e.g. .*mixed.json:1\), frames"):
        TrainDataset(mixed, star)
    narrow = samples(tmp_path, [row("n", CAPTION, video="narrow.mp4")], "narrow.json")
    with pytest.raises(
        DataError, match=r"narrow.safetensors have shape \(2, 256, 16\); this model takes \(2, 256, 32\)"
    ):
        TrainDataset(narrow, star)
    features = samples(tmp_path, [row("f", CAPTION, video="v.mp4")], "features.json")
    with pytest.raises(DataError, match="the Flash family encodes pixels"):
        TrainDataset(features, sample_encoder_for(*flash, max_length=4096))


def test_an_unreadable_medium_names_its_row(star_llama, tmp_path):
    model, tok = star_llama
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    [sample] = samples(tmp_path, [row("x", CAPTION, video="broken.mp4")])
    with pytest.raises(SampleError, match=r"data.json:1 \(id x\): .*broken.mp4"):
        sample_encoder_for(model, tok, max_length=4096)(sample)


def test_dataset_is_a_picklable_torch_dataset(star_llama, tmp_path):
    """DataLoader workers receive a copy: it encodes the same, and it carries no model."""
    model, tok = star_llama
    write_features(tmp_path / "v.safetensors", random_features(2))
    dataset = TrainDataset(
        samples(tmp_path, [row("v", DIALOGUE, video="v.mp4"), row("t", TEXT_ONLY)]),
        sample_encoder_for(model, tok, max_length=4096),
    )
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == 2 and copy.lengths == dataset.lengths
    for i in range(2):
        assert all(torch.equal(copy[i][key], dataset[i][key]) for key in dataset[i])
    assert b"FlashVStreamForCausalLM" not in pickle.dumps(dataset)
    assert (copy[1]["labels"] != IGNORE_INDEX).sum() == (dataset[1]["labels"] != IGNORE_INDEX).sum() > 0
