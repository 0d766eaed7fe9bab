"""What is trainable is declared by the config's ``*_trainable`` flags and survives loading."""

import numpy as np
import pytest

from flash_vstream import load_model
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.tiny import make_tiny_star, tiny_star_config


def trainable_prefixes(model) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_star(tmp_path_factory.mktemp("tiny"), variant="star-vicuna")


def test_defaults_train_everything_but_the_vision_tower_after_loading(tiny_dir):
    model = load_model(tiny_dir, device="cpu").model
    assert trainable_prefixes(model) == {"memory", "projector", "language_model"}
    memory = {n for n, p in model.memory.named_parameters() if p.requires_grad}
    assert memory == {f"attention.{proj}.{kind}" for proj in ("q_proj", "k_proj") for kind in ("weight", "bias")}


def test_stage_one_flags_survive_save_and_load(tmp_path):
    config = tiny_star_config("llama")
    config.decoder_trainable = False
    FlashVStreamForCausalLM(config).save_pretrained(tmp_path)
    loaded = FlashVStreamForCausalLM.from_pretrained(tmp_path)
    assert trainable_prefixes(loaded) == {"memory", "projector"}


def test_a_trainable_vision_tower_trains_exactly_the_layers_that_feed_the_memory(tiny_dir):
    config = tiny_star_config("llama")
    config.vision_trainable = True
    model = FlashVStreamForCausalLM(config).train()
    vision = {n for n, p in model.vision_tower.named_parameters() if p.requires_grad}
    layers = config.vision_config.num_hidden_layers  # hidden state -2 = output of all but the last layer
    assert not any(n.startswith(f"clip.encoder.layers.{layers - 1}.") or "post_layernorm" in n for n in vision)
    assert any(n.startswith(f"clip.encoder.layers.{layers - 2}.") for n in vision)
    assert model.vision_tower.training
    vs = load_model(tiny_dir, device="cpu")  # for its input builder
    frames = np.random.default_rng(0).integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    model(**vs.input_builder("What?", frames=frames, answer="A cat.")).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
