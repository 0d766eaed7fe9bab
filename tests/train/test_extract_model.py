"""Extracted features fed to the STAR model give the loss of its frames; the tower is read strictly from any layout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from extractfixtures import extract, row, write_jsonl, write_video
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPVisionModel

from flash_vstream.families import get_family
from flash_vstream.inference.star_inputs import StarInputBuilder
from flash_vstream.model.checkpoints import load_star_model
from flash_vstream.model.tiny import make_tiny_star, tiny_clip_config
from flash_vstream.train.features import FeatureExtractor
from flash_vstream.video.reader import read_video

QUESTION, ANSWER = "What is shown in the video?", "Coloured blocks that change every second."
LOSS_TOLERANCE = 1e-4


@pytest.mark.parametrize("variant", ["star-vicuna", "star-qwen2"])
def test_features_give_the_loss_of_the_frames(tmp_path, variant):
    """The issue's check: the written features, fed as ``features=``, give the frames' loss within fp16 rounding."""
    checkpoint = make_tiny_star(tmp_path / "ckpt", variant, seed=3)
    media = tmp_path / "media"
    video = write_video(media / "clips" / "v.mp4", frames=40, seed=7)  # 10 s at 4 fps -> 10 frames at 1 fps
    data = write_jsonl(tmp_path / "d.jsonl", [row("v", "video", "clips/v.mp4")])
    out = tmp_path / "out"
    assert extract(["--data", str(data), "--media-root", str(media), "--out", str(out),
                    "--model", str(checkpoint), "--batch-size", "3"]) == 0  # fmt: skip
    features = load_file(str(out / "clips" / "v.safetensors"))["feature"]

    model = load_star_model(checkpoint)
    builder = StarInputBuilder.for_model(model, AutoTokenizer.from_pretrained(checkpoint))
    frames = read_video(video, sampler=get_family("star").sampler.build()).frames
    assert features.shape == (len(frames), 256, 32) == (10, 256, 32)
    with torch.no_grad():
        from_frames = model(**builder(QUESTION, frames=frames, answer=ANSWER)).loss
        from_features = model(**builder(QUESTION, features=features, answer=ANSWER)).loss
        # fp32 features of the same frames: the gap above is the fp16 storage, nothing else
        exact = model.encode_frames(builder.processor(frames))
        from_exact = model(**builder(QUESTION, features=exact, answer=ANSWER)).loss
        # A control the tolerance must catch: the right features in the wrong frame order.
        reversed_order = model(**builder(QUESTION, features=features.flip(0), answer=ANSWER)).loss
    assert torch.equal(from_exact, from_frames)
    assert torch.allclose(features.float(), exact, rtol=1e-3, atol=1e-3)
    # fp16 storage moves this tiny model's loss by ~1e-6; reversing the frames moves it by ~1e-3.
    assert from_features.item() == pytest.approx(from_frames.item(), abs=LOSS_TOLERANCE)
    assert abs(reversed_order.item() - from_frames.item()) > 3 * LOSS_TOLERANCE


def one_frame_features(extractor: FeatureExtractor) -> torch.Tensor:
    frames = np.random.default_rng(0).integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    return extractor.encode(extractor.preprocess(frames))


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Path:
    return make_tiny_star(tmp_path_factory.mktemp("own") / "ckpt", seed=5)


@pytest.mark.parametrize(
    "layout, weights_format, include_vision",
    [("released", "bin", True), ("released", "safetensors", True), ("released", "bin", False), ("own", "bin", True)],
)
def test_the_tower_of_every_layout_is_the_same(tmp_path, own, layout, weights_format, include_vision):
    """Same weights written in each layout (the tower in the shards, or only in the ``clip/`` folder) -> same tower."""
    other = make_tiny_star(tmp_path / "ckpt", layout=layout, weights_format=weights_format,
                           include_vision=include_vision, seed=5)  # fmt: skip
    reference = FeatureExtractor.from_star_checkpoint(own, device="cpu")
    extractor = FeatureExtractor.from_star_checkpoint(other, device="cpu")
    assert extractor.fingerprint == reference.fingerprint
    assert torch.equal(one_frame_features(extractor), one_frame_features(reference))


def test_a_tower_of_other_weights_has_another_fingerprint(tmp_path, own):
    other = make_tiny_star(tmp_path / "ckpt", seed=6)
    first, second = (FeatureExtractor.from_star_checkpoint(p, device="cpu") for p in (own, other))
    assert first.fingerprint != second.fingerprint
    assert not torch.equal(one_frame_features(first), one_frame_features(second))


def test_an_incomplete_tower_is_an_error_naming_the_key(tmp_path, own):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((own / name).read_bytes())
    state = load_file(str(own / "model.safetensors"))
    del state["vision_tower.clip.encoder.layers.1.mlp.fc2.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"vision_tower\.clip\.encoder\.layers\.1\.mlp\.fc2\.weight"):
        FeatureExtractor.from_star_checkpoint(broken, device="cpu")


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="flash-family checkpoint .* --vision-tower"):
        FeatureExtractor.from_star_checkpoint(folder, device="cpu")


def test_a_checkpoint_without_weights_is_a_file_not_found(tmp_path, own):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_bytes((own / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        FeatureExtractor.from_star_checkpoint(folder, device="cpu")


def test_vision_tower_flag_takes_a_clip_folder(tmp_path):
    torch.manual_seed(0)
    clip = CLIPVisionModel(tiny_clip_config())
    clip.save_pretrained(tmp_path / "clip")
    pad = FeatureExtractor.from_vision_tower(tmp_path / "clip", device="cpu")
    crop = FeatureExtractor.from_vision_tower(tmp_path / "clip", aspect="crop", device="cpu")
    assert pad.fingerprint != crop.fingerprint  # preprocessing is part of the identity
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 90, 3), dtype=np.uint8)
    with torch.no_grad():  # the patch tokens of hidden layer -2, computed by transformers' own CLIP
        hidden = clip(pixel_values=crop.processor(frames), output_hidden_states=True).hidden_states[-2]
    assert torch.equal(crop.encode(crop.preprocess(frames)), hidden[:, 1:].to(torch.float16))
    with pytest.raises(FileNotFoundError, match="--vision-tower"):
        FeatureExtractor.from_vision_tower(tmp_path / "nowhere", device="cpu")
