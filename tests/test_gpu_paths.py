"""End-to-end answers on a CUDA device with tiny checkpoints of both families (skipped without a GPU).

Greedy text is not compared across devices: TF32 convolutions on CUDA may flip a near-tie of a random model.
"""

from pathlib import Path

import pytest
import torch

from flash_vstream import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["star-vicuna", "star-qwen2", "flash-qwen2vl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_answer_on_cuda_gives_the_cpu_token_counts(tmp_path, variant, dtype):
    if variant == "flash-qwen2vl":
        from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

        path = make_tiny_flash(tmp_path / "ckpt")
    else:
        from flash_vstream.model.tiny import make_tiny_star

        path = make_tiny_star(tmp_path / "ckpt", variant)
    gpu = load_model(path, device="cuda", dtype=dtype)
    details = gpu.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=4)
    assert details.num_visual_tokens > 0 and isinstance(details.text, str)
    cpu = load_model(path, device="cpu", dtype=torch.float32)
    expected = cpu.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=4)
    assert (details.num_frames, details.num_visual_tokens, details.prompt_tokens) == (
        expected.num_frames,
        expected.num_visual_tokens,
        expected.prompt_tokens,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_features_reach_a_cuda_model(dtype):
    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.model.tiny import tiny_star_config

    torch.manual_seed(0)
    model = FlashVStreamForCausalLM(tiny_star_config("llama")).eval()
    features = torch.randn(30, 256, 32)  # long enough for every memory component
    expected = model.visual_tokens(features=[features])
    tokens = model.to("cuda", dtype).visual_tokens(features=[features])
    assert tokens.device.type == "cuda" and tokens.dtype == dtype and tokens.shape == expected.shape
    tolerance = 1e-4 if dtype == torch.float32 else 1e-1
    torch.testing.assert_close(tokens.float().cpu(), expected, atol=tolerance, rtol=tolerance)
