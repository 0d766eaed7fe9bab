"""The family registry: every record resolves, names are unique, and the CLI, load_model and make-tiny read it."""

import json

import pytest
import torch

from flash_vstream import families as registry
from flash_vstream.families import Family, family_for_model_type, get_family, register_family, tiny_variants

CALLABLES = ("load_model", "input_builder", "validate_options", "make_tiny", "session_backend")


@pytest.mark.parametrize("name", sorted(registry.families()))
def test_every_record_resolves(name):
    family = get_family(name)
    for attribute in CALLABLES:
        assert callable(family.resolve(attribute)), attribute
    for config in family.configs():
        assert config.model_type in family.model_types
    assert family.sampler.build().max_frames == family.sampler.max_frames


def test_model_types_and_variants_map_to_their_family():
    assert {t: family_for_model_type(t).name for t in ("vstream", "flash_vstream", "qwen2_vl", "qwen2_5_vl")} == {
        "vstream": "star",
        "flash_vstream": "star",
        "qwen2_vl": "flash",
        "qwen2_5_vl": "flash",
    }
    assert {v: f.name for v, f in tiny_variants().items()} == {
        "star-vicuna": "star",
        "star-qwen2": "star",
        "flash-qwen2vl": "flash",
        "flash-qwen2_5vl": "flash",
        "streamingvlm": "streamingvlm",
    }
    with pytest.raises(ValueError, match="model_type 'bert'.*supported model types: flash_vstream"):
        family_for_model_type("bert")


def test_a_clashing_registration_is_refused():
    star = get_family("star")
    with pytest.raises(ValueError, match="already registered"):
        register_family(star)
    twin = Family(**{**star.__dict__, "name": "star-twin", "tiny_variants": ()})
    with pytest.raises(ValueError, match=r"model_type \['flash_vstream', 'vstream'\] of family 'star-twin'"):
        register_family(twin)
    assert "star-twin" not in registry.families()


def test_options_schema_names_the_bad_option():
    with pytest.raises(ValueError, match="model options: unknown STAR option"):
        get_family("star").check_options({"retreival": "paper"}, where="model options")
    with pytest.raises(ValueError, match="rope_mode"):
        get_family("flash").check_options({"rope_mode": "sideways"})
    assert get_family("flash").check_options({"rope_mode": "reference"}) == {"rope_mode": "reference"}


@pytest.mark.parametrize("variant", sorted(tiny_variants()))
def test_make_tiny_and_load_model_go_through_the_registry(tmp_path, variant):
    from flash_vstream import load_model

    family = tiny_variants()[variant]
    out = family.resolve("make_tiny")(tmp_path / variant, variant=variant, layout="own", weights_format="bin", seed=1)
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] in family.model_types + family.shared_model_types
    assert registry.family_for_config(written).name == family.name  # a shared model_type needs the marker
    vs = load_model(out, device="cpu")
    assert vs.family == family.name and vs.model.dtype == torch.float32
    assert vs.sampler.max_frames == family.sampler.max_frames
    frames = torch.randint(0, 256, (4, 56, 56, 3), dtype=torch.uint8).numpy()
    answer = vs.answer_with_details("What moves?", frames=frames, max_new_tokens=2)
    assert answer.num_frames == 4 and answer.num_visual_tokens > 0


def test_auto_classes_load_every_own_format(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    import flash_vstream

    flash_vstream.register_auto_classes()
    for variant, auto in (("star-qwen2", AutoModelForCausalLM), ("flash-qwen2_5vl", AutoModelForImageTextToText)):
        family = tiny_variants()[variant]
        out = family.resolve("make_tiny")(
            tmp_path / variant, variant=variant, layout="own", weights_format="safetensors", seed=0
        )
        model = auto.from_pretrained(out)
        assert type(model).__name__ in {c.__name__ for c in _model_classes(family)}


def _model_classes(family):
    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.model.qwen2vl import BACKBONES

    return [FlashVStreamForCausalLM] if family.name == "star" else [b.model_class for b in BACKBONES]
