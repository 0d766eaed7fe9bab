"""Both families on a CUDA device, checked against the same tiny checkpoint run on the CPU in fp32.

What is compared is what the GPU computed: its visual tokens (after the memory and projector or merger), the
logits of the first generated position, and for fp32 its greedy tokens. fp32 on the GPU runs with TF32 off, so
it differs from the CPU by rounding only and the greedy tokens must be identical. bf16 rounds every weight and
activation (relative error ~1e-2 through a few layers), so its tensors are compared by relative error and its
greedy text is not compared: a near-tie of a random model may flip.

The STAR runs use ``retrieval="paper"``. The default ``"reference"`` retrieval reproduces the published
non-stable sort of the cluster masses, so which of several equally heavy clusters it picks depends on the
device's sort kernel; a separate test checks that on the GPU those picks differ from the CPU's only among ties.

Skipped without a GPU (the ``gpu`` marker).
"""

from pathlib import Path

import pytest
import torch

from flash_vstream import load_model
from flash_vstream.video import read_video

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
QUESTION = "What moves?"
FP32_TOL = 1e-4
BF16_RELATIVE = 5e-2


@pytest.fixture
def exact_fp32():
    """TF32 off for matmuls and convolutions while a test runs (the CPU computes in full fp32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# Load options that make a family's computation device-independent (see the module docstring).
EXACT_OPTIONS = {
    "star-vicuna": {"retrieval": "paper"},
    "star-qwen2": {"retrieval": "paper"},
    "flash-qwen2vl": {},
    "flash-qwen2_5vl": {},
}


def _tiny_checkpoint(variant: str, directory: Path) -> Path:
    from flash_vstream.families import tiny_variants

    family = tiny_variants()[variant]
    return family.resolve("make_tiny")(directory, variant=variant, layout="own", weights_format="safetensors", seed=0)


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(item, device) for item in value)
    return value


def _visual_embeddings(model, inputs) -> torch.Tensor:
    """The LLM-space visual tokens the model computes for ``inputs``: ``(n, hidden)``."""
    if hasattr(model, "flash_memory"):  # the Flash family, on either Qwen-VL backbone
        video = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        return torch.cat(list(video.pooler_output))
    return model.visual_tokens(pixel_values=inputs["pixel_values"])


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.detach().float().cpu(), reference.detach()
    return float((ours - reference).norm() / reference.norm())


def compare_with_cpu(path: Path, device: str, dtype: torch.dtype, **options) -> None:
    """Run the checkpoint on ``device`` in ``dtype`` and on the CPU in fp32; assert they agree (see module doc)."""
    cpu = load_model(path, device="cpu", dtype=torch.float32, **options)
    other = load_model(path, device=device, dtype=dtype, decode="eager", **options)  # compiled decode: test_decode
    frames = read_video(SAMPLE, sampler=cpu.sampler).frames
    inputs = cpu.input_builder(QUESTION, frames=frames)
    moved = {key: _to(value, device) for key, value in inputs.items()}
    with torch.inference_mode():
        expected_visual = _visual_embeddings(cpu.model, inputs)
        visual = _visual_embeddings(other.model, moved)
        expected_logits = cpu.model(**inputs).logits[0, -1]
        logits = other.model(**moved).logits[0, -1]
    assert visual.device.type == torch.device(device).type and visual.dtype == dtype
    assert visual.shape == expected_visual.shape
    details = other.answer_with_details(QUESTION, frames=frames, max_new_tokens=4)
    reference = cpu.answer_with_details(QUESTION, frames=frames, max_new_tokens=4)
    assert visual.shape[0] == reference.num_visual_tokens > 0
    assert (details.num_frames, details.num_visual_tokens, details.prompt_tokens) == (
        reference.num_frames,
        reference.num_visual_tokens,
        reference.prompt_tokens,
    )
    if dtype == torch.float32:
        torch.testing.assert_close(visual.cpu(), expected_visual, atol=FP32_TOL, rtol=FP32_TOL)
        torch.testing.assert_close(logits.cpu(), expected_logits, atol=FP32_TOL, rtol=FP32_TOL)
        greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=cpu.tokenizer.pad_token_id)
        with torch.inference_mode():
            tokens = other.model.generate(**moved, **greedy).cpu()
            expected_tokens = cpu.model.generate(**inputs, **greedy)
        assert torch.equal(tokens, expected_tokens), (tokens.tolist(), expected_tokens.tolist())
        # (details.text is not compared with reference.text: on CUDA the builder resizes frames on the GPU, within
        # two 8-bit levels of the CPU's Pillow path, so the two pipelines see slightly different pixels.)
    else:
        assert _relative_error(visual, expected_visual) < BF16_RELATIVE
        assert _relative_error(logits, expected_logits) < BF16_RELATIVE


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["star-vicuna", "star-qwen2", "flash-qwen2vl", "flash-qwen2_5vl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_run_matches_a_cpu_fp32_run(tmp_path, variant, dtype, exact_fp32):
    compare_with_cpu(_tiny_checkpoint(variant, tmp_path / "ckpt"), "cuda", dtype, **EXACT_OPTIONS[variant])


def _tiny_star(retrieval: str):
    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.model.tiny import tiny_star_config

    torch.manual_seed(0)
    config = tiny_star_config("llama")
    config.memory_config = {"retrieval": retrieval}
    return FlashVStreamForCausalLM(config).eval()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_features_reach_a_cuda_model(dtype, exact_fp32):
    # 26 frames = 25 history frames for 25 clusters: the k-means keeps every frame, so each retrieved frame is at
    # distance 0 from its centroid and no rounding difference can change the pick. Longer clips make the
    # heaviest clusters 2-frame means, whose two frames are equally near in exact arithmetic (rounding decides,
    # device by device); the test below covers them for the default retrieval.
    model = _tiny_star("paper")
    features = torch.randn(26, 256, 32)
    expected = model.visual_tokens(features=[features])
    tokens = model.to("cuda", dtype).visual_tokens(features=[features])
    assert tokens.device.type == "cuda" and tokens.dtype == dtype and tokens.shape == expected.shape
    if dtype == torch.float32:
        torch.testing.assert_close(tokens.cpu(), expected, atol=FP32_TOL, rtol=FP32_TOL)
    else:
        assert _relative_error(tokens, expected) < BF16_RELATIVE


@pytest.mark.gpu
def test_reference_retrieval_on_cuda_differs_from_the_cpu_only_among_tied_clusters(exact_fp32):
    memory = _tiny_star("reference").memory
    torch.manual_seed(3)
    features = torch.randn(30, 256, 32)  # 29 history frames into 25 clusters: most masses tie at 1
    expected = memory.compress(features)
    out = memory.to("cuda").compress(features.to("cuda"))
    assert out.segments == expected.segments
    masses = expected.extras["temporal_weights"]
    torch.testing.assert_close(out.extras["temporal_weights"].cpu(), masses)
    picks = out.extras["retrieved_frames"].cpu()
    top = torch.sort(masses, descending=True).values[: picks.numel()]
    assert torch.equal(torch.sort(masses[picks], descending=True).values, top), "GPU picked a lighter cluster"
    start = expected.segments["abstract"] + expected.segments["temporal"]
    end = start + expected.segments["retrieved"]
    tokens, reference = out.tokens.cpu(), expected.tokens
    torch.testing.assert_close(tokens[:start], reference[:start], atol=FP32_TOL, rtol=FP32_TOL)
    torch.testing.assert_close(tokens[end:], reference[end:], atol=FP32_TOL, rtol=FP32_TOL)
    # The retrieved tokens are the 8x8-pooled history frames at the GPU's picks (the positions, as published).
    grid = features.transpose(1, 2).reshape(30, 32, 16, 16)
    pooled = torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (30, 64, 32)
    torch.testing.assert_close(tokens[start:end], pooled[picks].reshape(-1, 32), atol=FP32_TOL, rtol=FP32_TOL)
