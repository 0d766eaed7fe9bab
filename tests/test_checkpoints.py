"""Strict loading of the released Flash-VStream-7b layout and the project's own format."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from flash_vstream import load_model, register_auto_classes
from flash_vstream.model.checkpoints import CheckpointLayoutError, load_star_model, map_released_key
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.tiny import make_tiny_star


def _load_bin(file: str) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read straight from its files (independently of transformers).

    ``.bin`` files load with ``weights_only=True``.

    Raises:
        FileNotFoundError: when the directory holds no weights file.
    """
    for index_name, loader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(str(path / shard)))
            return state
    for single, loader in (("model.safetensors", load_file), ("pytorch_model.bin", _load_bin)):
        if (path / single).is_file():
            return loader(str(path / single))
    raise FileNotFoundError(
        f"{path} holds no weights (expected model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


GOLDEN_KEYS = Path(__file__).parent / "golden" / "flash_vstream_7b_tiny_keys.txt"


def golden_released_keys() -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of the tiny released layout, from the golden file (see tests/golden/README.md)."""
    keys = {}
    for line in GOLDEN_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = tuple(int(n) for n in shape.split("x"))
    return keys


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_released_layout_writes_exactly_the_golden_keys_and_loads_them(tmp_path, weights_format):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", weights_format=weights_format, seed=1)
    stem = "model" if weights_format == "safetensors" else "pytorch_model"
    index = json.loads((tmp_path / f"{stem}.{weights_format}.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2, "the test should exercise several shards"
    released = read_state_dict(tmp_path)
    golden = golden_released_keys()
    missing, extra = sorted(set(golden) - set(released)), sorted(set(released) - set(golden))
    assert not missing and not extra, f"not written: {missing}; not in the released layout: {extra}"
    wrong_shape = {k: (tuple(t.shape), golden[k]) for k, t in released.items() if tuple(t.shape) != golden[k]}
    assert not wrong_shape, f"(written, golden) shapes differ: {wrong_shape}"
    assert set(index["weight_map"]) == set(golden)
    model = load_star_model(tmp_path)
    ours = model.state_dict()
    assert set(ours) == {map_released_key(k) for k in released}
    for key, tensor in released.items():
        assert torch.equal(ours[map_released_key(key)], tensor), key


def test_released_tensors_land_in_the_published_modules(tmp_path):
    # Reached through module attributes, not through the key map, so a map that swapped two tensors of the
    # same shape (q/k, gate/up, fc1 of two layers) fails here.
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=2)
    released = read_state_dict(tmp_path)
    model = load_star_model(tmp_path)
    llama, clip, ntm = model.language_model.model, model.vision_tower.clip, model.memory.attention
    layer, clip_layer = llama.layers[1], clip.encoder.layers[2]
    clip_prefix = "model.vision_tower.vision_tower.vision_model."
    expected = {
        "model.embed_tokens.weight": llama.embed_tokens.weight,
        "model.layers.1.self_attn.q_proj.weight": layer.self_attn.q_proj.weight,
        "model.layers.1.self_attn.k_proj.weight": layer.self_attn.k_proj.weight,
        "model.layers.1.self_attn.v_proj.weight": layer.self_attn.v_proj.weight,
        "model.layers.1.self_attn.o_proj.weight": layer.self_attn.o_proj.weight,
        "model.layers.1.mlp.gate_proj.weight": layer.mlp.gate_proj.weight,
        "model.layers.1.mlp.up_proj.weight": layer.mlp.up_proj.weight,
        "model.layers.1.mlp.down_proj.weight": layer.mlp.down_proj.weight,
        "model.layers.0.mlp.up_proj.weight": llama.layers[0].mlp.up_proj.weight,
        "model.norm.weight": llama.norm.weight,
        "lm_head.weight": model.language_model.lm_head.weight,
        "model.mm_projector.0.weight": model.projector[0].weight,
        "model.mm_projector.2.bias": model.projector[2].bias,
        "model.attention_model.q_proj.weight": ntm.q_proj.weight,
        "model.attention_model.k_proj.weight": ntm.k_proj.weight,
        "model.attention_model.v_proj.bias": ntm.v_proj.bias,
        "model.attention_model.out_proj.weight": ntm.out_proj.weight,
        clip_prefix + "embeddings.patch_embedding.weight": clip.embeddings.patch_embedding.weight,
        clip_prefix + "embeddings.class_embedding": clip.embeddings.class_embedding,
        clip_prefix + "encoder.layers.2.mlp.fc1.weight": clip_layer.mlp.fc1.weight,
        clip_prefix + "encoder.layers.2.self_attn.k_proj.weight": clip_layer.self_attn.k_proj.weight,
        clip_prefix + "encoder.layers.0.self_attn.k_proj.weight": clip.encoder.layers[0].self_attn.k_proj.weight,
    }
    for name, parameter in expected.items():
        assert torch.equal(parameter, released[name]), name


def test_derived_buffers_saved_by_old_transformers_are_ignored(tmp_path):
    # transformers 4.31-era checkpoints may carry buffers recomputed from the config; they are not weights.
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=1)
    index_file = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    state = load_file(str(tmp_path / shard))
    derived = {
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.rand(4),
        "model.vision_tower.vision_tower.vision_model.embeddings.position_ids": torch.arange(257)[None],
    }
    state.update(derived)
    index["weight_map"].update(dict.fromkeys(derived, shard))
    save_file(state, str(tmp_path / shard), metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    model = load_star_model(tmp_path)
    released = {k: v for k, v in read_state_dict(tmp_path).items() if k not in derived}
    for key, tensor in released.items():
        assert torch.equal(model.state_dict()[map_released_key(key)], tensor), key


def test_released_config_fields_are_converted(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=1)
    flat = json.loads((tmp_path / "config.json").read_text())
    assert flat["model_type"] == "vstream" and flat["mm_projector_type"] == "mlp2x_gelu"
    model = load_star_model(tmp_path)
    cfg = model.config
    assert cfg.text_config.model_type == "llama"
    assert cfg.text_config.hidden_size == flat["hidden_size"]
    assert cfg.vision_feature_layer == -2 and cfg.image_aspect_ratio == "pad"
    assert model.memory.num_tokens(100) == 681


def test_clip_weights_come_from_mm_vision_tower_when_absent(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", include_vision=False, seed=3)
    assert not any("vision_tower" in k for k in read_state_dict(tmp_path))
    model = load_star_model(tmp_path)
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(tmp_path / "clip")
    for key, tensor in clip.state_dict().items():
        assert torch.equal(model.vision_tower.clip.state_dict()[key], tensor), key


def test_unloadable_vision_tower_is_a_layout_error(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", include_vision=False, seed=3)
    (tmp_path / "clip" / "model.safetensors").unlink()
    with pytest.raises(CheckpointLayoutError, match="mm_vision_tower"):
        load_star_model(tmp_path)


def _rename_key(directory, old, new):
    """Rename key ``old`` of a released-layout checkpoint to ``new``, or delete it when ``new`` is None."""
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = directory / index["weight_map"][old]
    state = load_file(str(shard))
    tensor, shard_name = state.pop(old), index["weight_map"].pop(old)
    if new is not None:
        state[new], index["weight_map"][new] = tensor, shard_name
    save_file(state, str(shard), metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))


def test_renamed_key_fails_naming_it(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=1)
    _rename_key(tmp_path, "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.upp_proj.weight")
    with pytest.raises(CheckpointLayoutError) as err:
        load_star_model(tmp_path)
    assert "language_model.model.layers.1.mlp.up_proj.weight" in str(err.value)
    assert "model.layers.1.mlp.upp_proj.weight" in str(err.value)


def test_partly_missing_vision_tower_fails_naming_the_key(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=1)
    _rename_key(tmp_path, "model.vision_tower.vision_tower.vision_model.post_layernorm.bias", None)
    with pytest.raises(CheckpointLayoutError) as err:
        load_star_model(tmp_path)
    assert "missing keys (1): vision_tower.clip.post_layernorm.bias" in str(err.value)


def test_unexpected_extra_key_fails(tmp_path):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=1)
    _rename_key(tmp_path, "model.attention_model.v_proj.bias", "model.attention_model.extra.bias")
    with pytest.raises(CheckpointLayoutError) as err:
        load_star_model(tmp_path)
    assert "unexpected keys (1): model.attention_model.extra.bias" in str(err.value)
    assert "missing keys (1): memory.attention.v_proj.bias" in str(err.value)


@pytest.mark.parametrize("variant", ["star-vicuna", "star-qwen2"])
def test_own_format_round_trips_bit_identically(tmp_path, variant):
    make_tiny_star(tmp_path / "a", variant, seed=4)
    first = load_star_model(tmp_path / "a")
    first.save_pretrained(tmp_path / "b")
    second = load_star_model(tmp_path / "b")
    assert set(first.state_dict()) == set(second.state_dict())
    for key, tensor in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], tensor), key
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "flash_vstream"


def test_released_layout_resaved_in_own_format(tmp_path):
    make_tiny_star(tmp_path / "rel", "star-vicuna", layout="released", seed=5)
    model = load_star_model(tmp_path / "rel")
    model.save_pretrained(tmp_path / "own")
    again = load_star_model(tmp_path / "own")
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


@pytest.fixture
def auto_classes():
    register_auto_classes()  # explicit: importing flash_vstream registers nothing


@pytest.mark.parametrize("layout", ["own", "released"])
def test_auto_model_from_pretrained(tmp_path, layout, auto_classes):
    make_tiny_star(tmp_path, "star-vicuna", layout=layout, seed=6)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(model, FlashVStreamForCausalLM)
    reference = load_star_model(tmp_path)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'.*supported model types"):
        load_model(tmp_path)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_config_rejects_features_the_memory_cannot_pool():
    from flash_vstream.config import FlashVStreamConfig

    with pytest.raises(ValueError, match="vision_feature_select must be 'patch'"):
        FlashVStreamConfig(vision_feature_select="cls_patch")
    with pytest.raises(ValueError, match="conv_template"):
        FlashVStreamConfig(conv_template="llava_v9")


def test_auto_dtype_follows_the_released_config(tmp_path, auto_classes):
    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=7)
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    config.pop("dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.float32


def test_released_layout_with_sentencepiece_tokenizer_answers(tmp_path):
    import numpy as np

    make_tiny_star(tmp_path, "star-vicuna", layout="released", seed=8)
    assert (tmp_path / "tokenizer.model").is_file() and not (tmp_path / "tokenizer.json").exists()
    vs = load_model(tmp_path)
    assert vs.tokenizer.pad_token == "<unk>"  # LLaMA has no pad token; the released training padded with unk
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    inputs = vs.input_builder("What moves?", frames=frames)
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == vs.tokenizer.bos_token_id
    assert ids.count(-200) == vs.model.memory.num_tokens(3)
    assert vs.tokenizer.decode([i for i in ids if i >= 0]).endswith("What moves? ASSISTANT:")
    details = vs.answer_with_details("What moves?", frames=frames, max_new_tokens=3)
    assert details.num_visual_tokens == vs.model.memory.num_tokens(3)
