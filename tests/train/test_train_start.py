"""Start points: a plain LLM + a CLIP tower (what crashes the published code), a stage-1 output, released layouts,
plain Qwen2.5-VL; templates, trainable flags and attention set through the config; LoRA targets per family."""

from __future__ import annotations

import json
import re

import pytest
import torch
from trainerfixtures import make_tiny_models, recipe_config
from transformers import AutoModelForCausalLM, CLIPVisionModel

from flash_vstream import load_model
from flash_vstream.train.config import ConfigError, LoraArgs, ModelArgs
from flash_vstream.train.start import build_start, lora_config
from flash_vstream.train.trainer import run_training

LLM_LINEARS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def test_from_plain_llm_and_clip_keeps_every_pretrained_weight(tiny):
    start = build_start(ModelArgs(llm=str(tiny.llm), vision_tower=str(tiny.clip)))
    model = start.model
    assert start.family == "star" and model.config.conv_template == "vicuna_v1"  # a LLaMA without a chat template
    llm = AutoModelForCausalLM.from_pretrained(tiny.llm).state_dict()
    clip = CLIPVisionModel.from_pretrained(tiny.clip).state_dict()
    ours = model.state_dict()
    assert all(torch.equal(ours[f"language_model.{k}"], v) for k, v in llm.items())
    assert all(torch.equal(ours[f"vision_tower.clip.{k}"], v) for k, v in clip.items())
    new = {k for k in ours if not k.startswith(("language_model.", "vision_tower.clip."))}
    assert new and all(k.startswith(("projector.", "memory.")) for k in new)
    assert all(torch.isfinite(ours[k]).all() for k in new)  # no uninitialised buffers
    assert torch.equal(ours["memory.attention.out_ln.weight"], torch.ones_like(ours["memory.attention.out_ln.weight"]))
    assert start.tokenizer.pad_token is not None


def test_from_parts_refuses_folders_that_do_not_fit(tiny):
    with pytest.raises(ValueError, match=r"model\.vision_tower .* holds a 'llama' checkpoint, not CLIP"):
        build_start(ModelArgs(llm=str(tiny.llm), vision_tower=str(tiny.llm)))
    with pytest.raises(ValueError, match=r"model\.llm .* holds a 'clip_vision_model' checkpoint, not a causal"):
        build_start(ModelArgs(llm=str(tiny.clip), vision_tower=str(tiny.clip)))


def test_stage1_output_starts_stage2_with_its_template(tiny, tmp_path):
    stage1 = run_training(recipe_config("star_stage1_debug", tiny, tmp_path / "s1", "training.max_steps=2"))
    assert json.loads((stage1.model_dir / "config.json").read_text())["conv_template"] == "plain"
    stage2 = run_training(
        recipe_config("star_debug", tiny, tmp_path / "s2", f"model.start={stage1.model_dir}", "training.max_steps=2")
    )
    config = json.loads((stage2.model_dir / "config.json").read_text())
    assert (config["model_type"], config["conv_template"], config["decoder_trainable"]) == (
        "flash_vstream", "vicuna_v1", True)
    assert load_model(stage2.model_dir, device="cpu").model.config.conv_template == "vicuna_v1"


def test_released_star_layout_trains_into_the_own_format(tiny, tmp_path):
    from flash_vstream.model.tiny import make_tiny_star

    released = make_tiny_star(tmp_path / "released", "star-vicuna", layout="released", weights_format="bin")
    result = run_training(recipe_config("star_debug", tiny, tmp_path / "run", f"model.start={released}",
                                        "training.max_steps=2"))
    assert json.loads((result.model_dir / "config.json").read_text())["model_type"] == "flash_vstream"
    assert load_model(result.model_dir, device="cpu").family == "star"


def test_plain_qwen2_5_vl_trains_with_lora_and_merges(tiny, tmp_path):
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

    plain = make_tiny_flash(tmp_path / "qwen2_5_vl", "flash-qwen2_5vl", layout="released")
    assert json.loads((plain / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    result = run_training(recipe_config("flash_debug", tiny, tmp_path / "run", f"model.start={plain}",
                                        "training.max_steps=2"))
    assert json.loads((result.model_dir / "config.json").read_text())["model_type"] == "flash_vstream_qwen2_5_vl"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert load_model(result.model_dir, device="cpu").family == "flash"


def test_flags_and_templates_of_the_other_family_are_refused(tiny):
    with pytest.raises(ConfigError, match=r"model\.memory_trainable does not apply to a flash_vstream_qwen2_vl"):
        build_start(ModelArgs(start=str(tiny.flash), memory_trainable=True))
    with pytest.raises(ConfigError, match="model.template 'plain' is not one the flash family trains with"):
        build_start(ModelArgs(start=str(tiny.flash), template="plain"))


def test_trainable_flags_and_attention_reach_the_model(tiny):
    model = build_start(ModelArgs(start=str(tiny.star), decoder_trainable=False, projector_trainable=True,
                                  attn_implementation="eager")).model
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector", "memory"} and model.config.decoder_trainable is False
    assert model.language_model.config._attn_implementation == "eager"


@pytest.mark.parametrize(("family", "extra"), [("star", set()), ("flash", {"model.visual.merger.mlp.0",
                                                                           "model.visual.merger.mlp.2"})])
def test_default_lora_targets_every_llm_linear(tiny, family, extra):
    model = build_start(ModelArgs(start=str(tiny.star if family == "star" else tiny.flash))).model
    prefix = "language_model.model.layers." if family == "star" else "model.language_model.layers."
    expected = {f"{prefix}{i}.{name}" for i in range(2) for name in LLM_LINEARS} | extra
    pattern = lora_config(model, family, LoraArgs(enabled=True)).target_modules
    names = {name for name, _ in model.named_modules() if re.fullmatch(pattern, name)}
    assert names == expected
