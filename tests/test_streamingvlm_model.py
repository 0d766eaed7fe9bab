"""StreamingVLM family: strict loading of both layouts, family resolution (marker, family=, preset), settings,
and the cache manager's M-RoPE positions equal transformers' own ``get_rope_index`` on a fresh prompt."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vstream import families, load_model
from flash_vstream.families import family_for_config, load_preset
from flash_vstream.inference.streamingvlm_cache import pending_inputs
from flash_vstream.inference.streamingvlm_session import StreamingVLMSessionBackend
from flash_vstream.model import streamingvlm
from flash_vstream.model.streamingvlm import (
    StreamingVLMSettings,
    forward_embeds,
    make_tiny_streamingvlm,
    settings_of,
    validate_streamingvlm_options,
)

PRESET = Path(__file__).resolve().parents[1] / "configs" / "models" / "streamingvlm.yaml"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("svlm")
    own = make_tiny_streamingvlm(root / "own", seed=5)
    released = make_tiny_streamingvlm(root / "released", layout="released", weights_format="bin", seed=5)
    return own, released


def test_family_resolution_marker_request_and_default(layouts):
    own, released = layouts
    own_config, released_config = (json.loads((p / "config.json").read_text()) for p in layouts)
    assert families.FAMILY_MARKER == streamingvlm.FAMILY_MARKER == "flash_vstream_family"
    assert own_config["flash_vstream_family"] == "streamingvlm" and "flash_vstream_family" not in released_config
    assert family_for_config(own_config).name == "streamingvlm"
    assert family_for_config(released_config).name == "flash"  # a plain Qwen2.5-VL is Flash's by default
    assert family_for_config(released_config, "streamingvlm").name == "streamingvlm"
    with pytest.raises(ValueError, match="the options are for the star family but ckpt is a flash checkpoint"):
        family_for_config(released_config, "star", where="ckpt")
    with pytest.raises(ValueError, match="names model family 'nope'"):
        family_for_config({**own_config, "flash_vstream_family": "nope"})
    assert load_preset(PRESET) == ("streamingvlm", {k: v for k, v in load_preset(PRESET)[1].items()})
    assert StreamingVLMSettings(**load_preset(PRESET)[1]) == StreamingVLMSettings()  # the preset = the defaults


def test_both_layouts_load_strictly_to_the_same_model(layouts):
    own, released = layouts
    a = load_model(own, device="cpu")
    b = load_model(released, device="cpu", family="streamingvlm")
    assert a.family == b.family == "streamingvlm"
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert settings_of(a.model).max_pixels == 112 * 112 and settings_of(b.model) == StreamingVLMSettings()


def test_missing_and_unexpected_keys_are_named(layouts, tmp_path):
    own, _ = layouts
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in own.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    state.pop("lm_head.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: lm_head\.weight; unexpected keys: extra\.weight"):
        load_model(broken, device="cpu")


def test_options_are_settings_fields():
    assert validate_streamingvlm_options({"text_sink": 256}) == {"text_sink": 256}
    with pytest.raises(ValueError, match=r"unknown StreamingVLM option\(s\) \['sink'\]"):
        validate_streamingvlm_options({"sink": 256})
    with pytest.raises(ValueError, match="policy must be one of"):
        StreamingVLMSettings(policy="lru")
    with pytest.raises(ValueError, match="whole number of frames"):
        StreamingVLMSettings(fps=2.5)


@pytest.mark.parametrize("fps", [4.0, 8.0])
def test_positions_and_logits_equal_transformers_on_a_fresh_prompt(layouts, fps):
    """One 1-s chunk at 4 or 8 fps (two or four temporal patches, temporal scales 1 and 0.5): the records'
    positions and the prefill logits equal Qwen2.5-VL's own forward with ``get_rope_index``."""
    vs = load_model(layouts[0], device="cpu", fps=fps, do_sample=False)
    backend = StreamingVLMSessionBackend(vs, speak=False, previous_text="Game one.")
    state = backend.init_state()
    frames = np.random.default_rng(0).integers(0, 256, (int(fps), 84, 112, 3), dtype=np.uint8)
    pixels, grid = backend.processor(frames)
    t, h, w = (int(x) for x in grid[0])
    state.layout.rounds.append(backend.new_round(0, 0.0, 1.0, (t, h // 2, w // 2), first=True))
    state.layout.place()
    ids, positions = pending_inputs(state.layout.pending())
    vision = torch.cat(list(vs.model.model.get_video_features(pixels, grid, return_dict=True).pooler_output))
    ours = forward_embeds(vs.model, None, ids, positions, vision, logits="all")
    types = (ids == vs.model.config.video_token_id).long()[None] * 2
    second_per_grid = torch.tensor([2 / fps])
    theirs_positions, _ = vs.model.model.get_rope_index(ids[None], types, video_grid_thw=grid,
                                                        second_per_grid_ts=second_per_grid)
    assert torch.equal(positions, theirs_positions[:, 0])
    theirs = vs.model(input_ids=ids[None], pixel_values_videos=pixels, video_grid_thw=grid, mm_token_type_ids=types,
                      second_per_grid_ts=second_per_grid).logits[0]
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)


def test_make_tiny_command_writes_a_checkpoint_load_model_picks_up(tmp_path, capsys):
    from argparse import Namespace

    from flash_vstream.cli import run_make_tiny

    args = Namespace(out=str(tmp_path / "svlm"), variant="streamingvlm", force=False, layout="own",
                     weights_format="bin", seed=0)
    assert run_make_tiny(args) == 0 and "wrote tiny streamingvlm checkpoint" in capsys.readouterr().out
    vs = load_model(tmp_path / "svlm", device="cpu")
    assert vs.family == "streamingvlm" and vs.sampler.target_fps == 2.0
    frames = np.random.default_rng(1).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    answer = vs.answer_with_details("What moves?", frames=frames, max_new_tokens=2)  # offline path: whole clip
    assert answer.num_frames == 4 and answer.num_visual_tokens == 2 * 2 * 2
