"""Strict loading of the published Flash-VStream-Qwen layout and plain Qwen2-VL, the LM re-init guard, the golden
key list, load options, config.json errors (both backbones), and ``load_model(...).answer(...)`` end to end."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vstream.inference.pipeline import load_model
from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.qwen2vl_checkpoints import (
    FLASH_MODEL_TYPES,
    load_flash_model,
    to_published_state_dict,
    validate_flash_options,
)
from flash_vstream.model.tiny_qwen2vl import VARIANTS, make_tiny_flash

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_flash(tmp_path_factory.mktemp("flash") / "tiny", layout="released", seed=0)


@pytest.fixture(scope="module")
def saved(tiny_dir):
    return load_file(str(tiny_dir / "model.safetensors"))


def read_golden(name: str) -> dict[str, str]:
    lines = (GOLDEN / name).read_text().splitlines()
    return dict(line.split(" ") for line in lines if line and not line.startswith("#"))


def stored_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read with safetensors / torch.load(weights_only=True) directly."""
    if (ckpt / "model.safetensors").is_file():
        return load_file(str(ckpt / "model.safetensors"))
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())["weight_map"]
    state = {}
    for shard in sorted(set(index.values())):
        state.update(torch.load(ckpt / shard, weights_only=True))
    assert sorted(state) == sorted(index)
    return state


def assert_every_tensor_loaded(model, saved):
    """The guard against transformers 5.x silently re-initialising weights: compare every tensor."""
    loaded = to_published_state_dict(model.state_dict())
    assert sorted(loaded) == sorted(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), f"{key} was not loaded from the checkpoint"


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_config(ckpt: Path, edit) -> Path:
    config = json.loads((ckpt / "config.json").read_text())
    edit(config)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def test_flash_model_types():
    assert set(FLASH_MODEL_TYPES) == {"flash_vstream_qwen2_vl", "qwen2_vl", "flash_vstream_qwen2_5_vl", "qwen2_5_vl"}


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_released_layout_writes_exactly_the_golden_keys(tmp_path, weights_format):
    ckpt = make_tiny_flash(tmp_path / "ckpt", layout="released", weights_format=weights_format)
    if weights_format == "bin":
        assert len(list(ckpt.glob("pytorch_model-*-of-*.bin"))) > 1  # really sharded
    got = {key: "x".join(map(str, value.shape)) for key, value in stored_tensors(ckpt).items()}
    assert got == read_golden("flash_vstream_qwen_tiny_keys.txt")
    assert_every_tensor_loaded(load_flash_model(ckpt), stored_tensors(ckpt))


def test_published_layout_loads_every_tensor(tiny_dir, saved):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "flash_vstream_qwen2_vl" and "flash_memory_config" in config["vision_config"]
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 1, 1]}  # flat 4.45 text config
    model = load_flash_model(tiny_dir)
    assert_every_tensor_loaded(model, saved)
    assert model.flash_memory.config.csm_size == 60 and model.flash_memory.config.dam_size == 30


def test_the_guard_catches_a_plain_from_pretrained(tiny_dir, saved):
    """Without our key map, transformers 5.x loads the subclass with a random language model."""
    model, info = FlashVStreamQwen2VLForConditionalGeneration.from_pretrained(tiny_dir, output_loading_info=True)
    assert info["missing_keys"]  # what load_flash_model turns into an error
    with pytest.raises(AssertionError, match="was not loaded|sorted"):
        assert_every_tensor_loaded(model, saved)


def test_plain_qwen2vl_gets_flash_defaults(tiny_dir, saved, tmp_path):
    def to_plain(config):
        config.update(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"])
        del config["vision_config"]["flash_memory_config"]

    ckpt = edit_config(copy_checkpoint(tiny_dir, tmp_path / "qwen2vl"), to_plain)
    model = load_flash_model(ckpt)
    assert_every_tensor_loaded(model, saved)
    assert model.config.model_type == "flash_vstream_qwen2_vl"
    assert model.flash_memory.config.to_published()["flash_memory_temporal_length"] == 120


def test_renamed_key_fails_naming_it(tiny_dir, saved, tmp_path):
    ckpt = copy_checkpoint(tiny_dir, tmp_path / "renamed")
    state = dict(saved)
    state["model.norm_renamed.weight"] = state.pop("model.norm.weight")
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: model\.language_model\.norm\.weight.*norm_renamed"):
        load_flash_model(ckpt)


def test_bad_memory_config_fails_naming_the_field(tiny_dir, tmp_path):
    def bad(config):
        config["vision_config"]["flash_memory_config"]["flash_memory_spatial_length"] = 7

    ckpt = edit_config(copy_checkpoint(tiny_dir, tmp_path / "badcfg"), bad)
    with pytest.raises(ValueError, match="config.json.*spatial_length"):
        load_flash_model(ckpt)


def test_load_options(tiny_dir):
    model = load_flash_model(
        tiny_dir,
        rope_mode="reference",
        spatial_method="nearest",
        fidelity="reference",
        bank_size="960",
        bank_device="cpu",
    )
    cfg = model.flash_memory.config
    assert model.config.rope_mode == "reference"
    assert (cfg.spatial_method, cfg.fidelity, cfg.bank_size, cfg.bank_device) == ("nearest", "reference", 960, "cpu")
    assert validate_flash_options({"bank_size": "960"}) == {"bank_size": 960}
    for options, message in (
        ({"rope_mode": "virtual"}, "rope_mode must be one of"),
        ({"spatial_method": "random"}, "spatial_method must be one of"),
        ({"fidelity": "exact"}, "fidelity must be one of"),
        ({"bank_size": 0}, "bank_size must be a positive integer"),
        ({"bank_device": "gpu"}, "bank_device must name a device"),
        ({"retrieval": "paper"}, r"unknown Flash-family option\(s\) \['retrieval'\]; valid options are rope_mode"),
    ):
        with pytest.raises(ValueError, match=message):
            validate_flash_options(options)
        with pytest.raises(ValueError, match=message):
            load_flash_model(tiny_dir, **options)
    with pytest.raises(ValueError, match="bank_size=10 must be >= N_CSM=60"):
        load_flash_model(tiny_dir, bank_size=10)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("layout", ["own", "released"])
def test_config_json_errors_name_the_file_field_and_fix(tmp_path, variant, layout):
    """One ValueError naming config.json, the field and the fix; not a traceback from inside transformers."""
    clean = make_tiny_flash(tmp_path / "clean", variant, layout=layout)
    config = json.loads((clean / "config.json").read_text())
    text = config if layout == "released" else config["text_config"]
    text_prefix = "" if layout == "released" else "text_config."
    cases = [
        (lambda c, t: t.update(hidden_size="thirty-two"), rf"field '{text_prefix}hidden_size' has the wrong type"),
        (lambda c, t: c["vision_config"].update(depth="two"), r"field 'vision_config.depth' has the wrong type"),
        (
            lambda c, t: t.update(num_attention_heads=5),
            r"num_attention_heads=5 does not divide hidden_size=32; set num_attention_heads to a divisor",
        ),
        (lambda c, t: c["vision_config"].update(num_heads=3), r"vision_config.num_heads=3 does not divide"),
        (lambda c, t: t.update(num_hidden_layers=0), r"num_hidden_layers.{0,40}\b0\b"),
    ]
    assert text["hidden_size"] == 32
    for i, (edit, message) in enumerate(cases):
        ckpt = copy_checkpoint(clean, tmp_path / f"case{i}")

        def apply(c, edit=edit):
            edit(c, c if layout == "released" else c["text_config"])

        edit_config(ckpt, apply)
        with pytest.raises(ValueError) as err:
            load_flash_model(ckpt)
        assert str(ckpt / "config.json") in str(err.value)
        assert re.search(message, str(err.value)), str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # one error, no inner traceback


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


def test_trainability_survives_loading(tiny_dir, tmp_path):
    def unfreeze_vision(config):
        config["vision_trainable"] = True
        config["decoder_trainable"] = False

    frozen = load_flash_model(tiny_dir)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if ".blocks." in n or "patch_embed" in n)
    assert all(p.requires_grad for n, p in frozen.named_parameters() if "merger" in n or "language_model" in n)
    ckpt = edit_config(copy_checkpoint(tiny_dir, tmp_path / "train_vit"), unfreeze_vision)
    vit = load_flash_model(ckpt)
    assert all(p.requires_grad for n, p in vit.named_parameters() if n.startswith("model.visual."))
    assert not any(p.requires_grad for n, p in vit.named_parameters() if not n.startswith("model.visual."))


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
