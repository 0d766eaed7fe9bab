"""End-to-end answers on a CUDA device with tiny checkpoints of both families (skipped without a GPU)."""

from pathlib import Path

import pytest
import torch

from flash_vstream import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["star-vicuna", "star-qwen2", "flash-qwen2vl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_answer_on_cuda_matches_cpu_greedy_prefix(tmp_path, variant, dtype):
    if variant == "flash-qwen2vl":
        from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

        path = make_tiny_flash(tmp_path / "ckpt")
    else:
        from flash_vstream.model.tiny import make_tiny_star

        path = make_tiny_star(tmp_path / "ckpt", variant)
    gpu = load_model(path, device="cuda", dtype=dtype)
    details = gpu.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=4)
    assert details.num_visual_tokens > 0 and isinstance(details.text, str)
    if dtype == torch.float32:
        cpu = load_model(path, device="cpu", dtype=torch.float32)
        expected = cpu.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=4)
        assert details.num_visual_tokens == expected.num_visual_tokens
