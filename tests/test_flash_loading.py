"""Strict loading of the published Flash-VStream-Qwen layout and plain Qwen2-VL, the LM re-init guard, and
``load_model(...).answer(...)`` end to end with the tiny checkpoint."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vstream.inference.pipeline import load_model
from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.qwen2vl_checkpoints import load_flash_model, to_published_state_dict
from flash_vstream.model.tiny_qwen2vl import make_tiny_flash


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_flash(tmp_path_factory.mktemp("flash") / "tiny", seed=0)


@pytest.fixture(scope="module")
def saved(tiny_dir):
    return load_file(str(tiny_dir / "model.safetensors"))


def assert_every_tensor_loaded(model, saved):
    """The guard against transformers 5.x silently re-initialising weights: compare every tensor."""
    loaded = to_published_state_dict(model.state_dict())
    assert sorted(loaded) == sorted(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), f"{key} was not loaded from the checkpoint"


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_published_layout_loads_every_tensor(tiny_dir, saved):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "flash_vstream_qwen2_vl" and "flash_memory_config" in config["vision_config"]
    assert any(k.startswith("visual.") for k in saved) and "model.layers.0.self_attn.q_proj.weight" in saved
    model = load_flash_model(tiny_dir)
    assert_every_tensor_loaded(model, saved)
    assert model.flash_memory.config.csm_size == 60 and model.flash_memory.config.dam_size == 30


def test_the_guard_catches_a_plain_from_pretrained(tiny_dir, saved):
    """Without our key map, transformers 5.x loads the subclass with a random language model."""
    model, info = FlashVStreamQwen2VLForConditionalGeneration.from_pretrained(tiny_dir, output_loading_info=True)
    assert info["missing_keys"]  # what load_flash_model turns into an error
    with pytest.raises(AssertionError, match="was not loaded|sorted"):
        assert_every_tensor_loaded(model, saved)


def test_sharded_bin_layout_loads(tiny_dir, saved, tmp_path):
    ckpt = copy_checkpoint(tiny_dir, tmp_path / "bin")
    (ckpt / "model.safetensors").unlink()
    keys = sorted(saved)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        torch.save({k: saved[k] for k in shard_keys}, ckpt / name)
        weight_map.update(dict.fromkeys(shard_keys, name))
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_every_tensor_loaded(load_flash_model(ckpt), saved)


def test_plain_qwen2vl_gets_flash_defaults(tiny_dir, saved, tmp_path):
    ckpt = copy_checkpoint(tiny_dir, tmp_path / "qwen2vl")
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "qwen2_vl"
    config["architectures"] = ["Qwen2VLForConditionalGeneration"]
    del config["vision_config"]["flash_memory_config"]
    (ckpt / "config.json").write_text(json.dumps(config))
    model = load_flash_model(ckpt)
    assert_every_tensor_loaded(model, saved)
    assert model.flash_memory.config.to_published()["flash_memory_temporal_length"] == 120


def test_renamed_key_fails_naming_it(tiny_dir, saved, tmp_path):
    ckpt = copy_checkpoint(tiny_dir, tmp_path / "renamed")
    state = dict(saved)
    state["model.norm_renamed.weight"] = state.pop("model.norm.weight")
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: model\.language_model\.norm\.weight.*norm_renamed"):
        load_flash_model(ckpt)


def test_bad_memory_config_fails_naming_the_field(tiny_dir, tmp_path):
    ckpt = copy_checkpoint(tiny_dir, tmp_path / "badcfg")
    config = json.loads((ckpt / "config.json").read_text())
    config["vision_config"]["flash_memory_config"]["flash_memory_spatial_length"] = 7
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="spatial_length"):
        load_flash_model(ckpt)
    with pytest.raises(ValueError, match="rope_mode"):
        load_flash_model(tiny_dir, rope_mode="virtual")


def test_own_save_loads_back_bit_identically(tiny_dir, saved, tmp_path):
    model = load_flash_model(tiny_dir, rope_mode="reference")
    model.save_pretrained(tmp_path / "own")
    again = load_flash_model(tmp_path / "own")
    assert again.config.rope_mode == "reference"
    assert_every_tensor_loaded(again, saved)
    fresh = FlashVStreamQwen2VLForConditionalGeneration(model.config)  # never loaded: transformers 5.x key names
    fresh.save_pretrained(tmp_path / "fresh")
    reloaded = load_flash_model(tmp_path / "fresh")
    for key, value in fresh.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_token_counts_of_the_published_settings(tiny_dir):
    model = load_flash_model(tiny_dir)
    from transformers import AutoTokenizer

    builder = FlashInputBuilder.for_model(model, AutoTokenizer.from_pretrained(tiny_dir))
    assert builder.num_video_tokens(240, 448, 448) == 11520
    assert builder.num_video_tokens(240, 720, 1280) == 10800  # 16:9 -> 336x560
    assert builder.num_video_tokens(16, 448, 448) == 2560
    prompt = builder.prompt("Q?", 11520)
    ids = builder.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(model.config.video_token_id) == 11520


def test_load_model_answers_end_to_end(tiny_dir):
    """16 real 448x448 frames through the whole pipeline: ViT at two resolutions, memory, merger, LLM."""
    vs = load_model(tiny_dir, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (16, 448, 448, 3), dtype=np.uint8)
    answer = vs.answer_with_details("What is happening?", frames=frames, assistant_prefix="Best option: (")
    assert answer.num_visual_tokens == 2560 and answer.num_frames == 16
    assert isinstance(answer.text, str) and answer.prompt_tokens > 2560
