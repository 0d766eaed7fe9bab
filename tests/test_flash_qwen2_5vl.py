"""Flash Memory on Qwen2.5-VL end to end: tiny windows that really split, the plain Qwen2.5-VL layout (golden keys,
strict loading), this project's own layout, ``load_model(...).answer(...)`` and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.vision_utils import get_vision_window_index

from flash_vstream.cli import main
from flash_vstream.inference.pipeline import load_model
from flash_vstream.model.qwen2vl import FlashVStreamQwen2_5_VLForConditionalGeneration
from flash_vstream.model.qwen2vl_checkpoints import load_flash_model, to_published_state_dict
from flash_vstream.model.tiny_qwen2vl import TINY_VISION, make_tiny_flash

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
VARIANT = "flash-qwen2_5vl"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_tiny_flash(tmp_path_factory.mktemp("q25") / "released", VARIANT, layout="released")


def stored(ckpt: Path) -> dict[str, torch.Tensor]:
    if (ckpt / "model.safetensors").is_file():
        return load_file(str(ckpt / "model.safetensors"))
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())["weight_map"]
    state = {}
    for shard in sorted(set(index.values())):
        state.update(torch.load(ckpt / shard, weights_only=True))
    return state


def golden() -> dict[str, str]:
    lines = (GOLDEN / "qwen2_5_vl_tiny_keys.txt").read_text().splitlines()
    return dict(line.split(" ") for line in lines if line and not line.startswith("#"))


def test_tiny_windows_really_split():
    """56-px windows: a 112x112 frame (8x8 patches, 4x4 merged) has 4 windows of 4 merged tokens each."""
    vision = TINY_VISION[VARIANT]
    assert vision["fullatt_block_indexes"] == [1] and vision["depth"] == 2  # one windowed, one full block
    window_index, cu = get_vision_window_index(
        torch.tensor([[1, 8, 8]]), spatial_merge_size=2, window_size=vision["window_size"], patch_size=14
    )
    assert cu.tolist() == [0, 16, 32, 48, 64]
    assert window_index.tolist()[:4] == [0, 1, 4, 5]  # the first window is the top-left 2x2 merged tokens


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_plain_qwen2_5_vl_layout_is_golden_and_loads_every_tensor(tmp_path, weights_format):
    ckpt = make_tiny_flash(tmp_path / "ckpt", VARIANT, layout="released", weights_format=weights_format)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and "flash_memory_config" not in config["vision_config"]
    assert config["vision_config"]["in_chans"] == 3  # the hub file's 4.x-era extra keys are tolerated
    state = stored(ckpt)
    assert {k: "x".join(map(str, v.shape)) for k, v in state.items()} == golden()
    model = load_flash_model(ckpt)
    assert isinstance(model, FlashVStreamQwen2_5_VLForConditionalGeneration)
    assert model.config.model_type == "flash_vstream_qwen2_5_vl"
    assert model.flash_memory.config.csm_size == 60 and model.flash_memory.config.dam_size == 30
    loaded = to_published_state_dict(model.state_dict())
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), f"{key} was not loaded from the checkpoint"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("visual.merger.ln_q.weight"), r"missing keys: model\.visual\.merger\.ln_q\.weight"),
        (lambda s: s.update({"visual.merger.ln_q.bias": torch.zeros(32)}), r"unexpected keys: .*ln_q\.bias"),
        (
            lambda s: s.update({"lm_head.weight": torch.zeros(320, 16)}),
            r"mis-shaped keys: lm_head\.weight \(checkpoint \[320, 16\], model \[320, 32\]\)",
        ),
    ],
)
def test_plain_qwen2_5_vl_loading_is_strict(released, tmp_path, edit, message):
    ckpt = tmp_path / "edited"
    ckpt.mkdir()
    for item in released.iterdir():
        (ckpt / item.name).write_bytes(item.read_bytes())
    state = load_file(str(released / "model.safetensors"))
    edit(state)
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=message):
        load_flash_model(ckpt)


def test_own_layout_round_trips(tmp_path):
    own = make_tiny_flash(tmp_path / "own", VARIANT, seed=3)
    assert json.loads((own / "config.json").read_text())["model_type"] == "flash_vstream_qwen2_5_vl"
    model = load_flash_model(own, rope_mode="reference")
    assert model.config.vision_config.window_size == 56 and model.config.vision_config.fullatt_block_indexes == [1]
    model.save_pretrained(tmp_path / "again")
    again = load_flash_model(tmp_path / "again")
    assert again.config.rope_mode == "reference"
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_load_model_answers_end_to_end(released):
    """16 real 448x448 frames: windowed dual-resolution ViT, memory, merger, Qwen2.5 LLM."""
    vs = load_model(released, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (16, 448, 448, 3), dtype=np.uint8)
    answer = vs.answer_with_details("What is happening?", frames=frames, max_new_tokens=3)
    # 8 temporal patches of 32x32: DAM 8 x 256 + CSM 8 x 64 LLM tokens.
    assert answer.num_visual_tokens == 8 * 256 + 8 * 64 and answer.num_frames == 16
    assert isinstance(answer.text, str) and answer.prompt_tokens > 2560


def test_cli_make_tiny_and_ask(tmp_path, capsys):
    """Needs the CLI's make-tiny to know the flash-qwen2_5vl variant (the family registry wires it)."""
    out = tmp_path / "cli"
    assert main(["make-tiny", "--variant", VARIANT, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "flash_vstream_qwen2_5_vl"
    args = ["ask", "--model", str(out), "--video", str(SAMPLE), "What moves?", "--json", "--max-new-tokens", "2"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 7 s at 1 fps = 7 frames (4 temporal patches, all kept); 320x240 resizes to 336x224: full-res 16x24 patches
    # -> 96 LLM tokens, half-res 8x12 -> 24 per temporal patch.
    assert payload["num_frames"] == 7 and payload["num_visual_tokens"] == 4 * 96 + 4 * 24
