"""The Flash model on transformers' Qwen2-VL: memory before the merger, AM-RoPE ids, batches, generation."""

import numpy as np
import pytest
import torch

from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.qwen2vl_rope import batch_position_ids
from flash_vstream.model.tiny_qwen2vl import tiny_flash_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer("chatml")


def make_model(tokenizer, **config):
    cfg = tiny_flash_config(tokenizer, temporal_length=4, spatial_length=2)  # N_CSM=2, N_DAM=1: memory compresses
    for key, value in config.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return FlashVStreamQwen2VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def frames(n, height=112, width=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_video_embeddings_are_merger_of_memory_of_dual_pass(model, tokenizer):
    builder = FlashInputBuilder.for_model(model, tokenizer)
    inputs = builder("What happens?", frames=frames(7))
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        (clip,) = model.model.visual.forward_dual_resolution(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        memory = model.flash_memory.compress(clip)
        expected = model.model.visual.merger(memory.tokens)
    # 7 frames -> 4 temporal patches of an 8x8 grid: DAM 1 x 64/4 + CSM 2 x 16/4 = 24 LLM tokens.
    assert out.pooler_output[0].shape == (24, 32) == (builder.count_visual_tokens(inputs), 32)
    torch.testing.assert_close(out.pooler_output[0], expected)
    lay = out.memory_layouts[0]
    assert lay.dam_grid == (4, 4) and lay.csm_grid == (2, 2) and lay.num_tokens == 24


def test_forward_uses_am_rope_ids(model, tokenizer):
    builder = FlashInputBuilder.for_model(model, tokenizer)
    inputs = builder("What happens?", frames=frames(6))
    with torch.no_grad():
        video = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        ids, _ = batch_position_ids(inputs["mm_token_type_ids"], video.memory_layouts, inputs["attention_mask"])
        logits = model(**inputs).logits
        # Same forward with the ids given explicitly and the pre-encoded video: identical logits.
        explicit = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            mm_encoder_outputs={"video": video},
            position_ids=ids,
        ).logits
        # ...while Qwen2-VL's default positions for the same tokens would differ.
        shifted = model(
            input_ids=inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            mm_encoder_outputs={"video": video},
            position_ids=torch.arange(ids.shape[-1]).view(1, 1, -1).expand(3, 1, -1),
        ).logits
    torch.testing.assert_close(logits, explicit)
    assert not torch.allclose(logits, shifted)


def test_batch_of_two_left_padded_equals_single_samples(model, tokenizer):
    builder = FlashInputBuilder.for_model(model, tokenizer)
    singles = [builder("What happens?", frames=frames(6, seed=1)), builder("Why?", frames=frames(3, seed=2))]
    length = max(s["input_ids"].shape[1] for s in singles)
    batch = {"input_ids": [], "attention_mask": [], "mm_token_type_ids": []}
    for s in singles:
        pad = length - s["input_ids"].shape[1]
        batch["input_ids"].append(torch.nn.functional.pad(s["input_ids"], (pad, 0), value=tokenizer.pad_token_id))
        batch["attention_mask"].append(torch.nn.functional.pad(s["attention_mask"], (pad, 0)))
        batch["mm_token_type_ids"].append(torch.nn.functional.pad(s["mm_token_type_ids"], (pad, 0)))
    batch = {k: torch.cat(v) for k, v in batch.items()}
    batch["pixel_values_videos"] = torch.cat([s["pixel_values_videos"] for s in singles])
    batch["video_grid_thw"] = torch.cat([s["video_grid_thw"] for s in singles])
    with torch.no_grad():
        batched = model(**batch).logits
        for row, s in enumerate(singles):
            single = model(**s).logits[0]
            torch.testing.assert_close(batched[row, length - single.shape[0] :], single, atol=1e-4, rtol=1e-4)
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
        for row, s in enumerate(singles):
            alone = model.generate(**s, max_new_tokens=3, do_sample=False)
            assert generated[row, -3:].tolist() == alone[0, -3:].tolist()


def test_generate_decodes_with_the_same_positions_as_a_full_forward(model, tokenizer):
    """Greedy generate (KV cache, rope deltas) == argmax of full forwards over the growing sequence."""
    builder = FlashInputBuilder.for_model(model, tokenizer)
    for mode in ("paper", "reference"):
        model.config.rope_mode = mode
        inputs = builder("What happens?", frames=frames(8, seed=3))
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
            ids = inputs["input_ids"]
            manual = []
            for _ in range(4):
                grown = ids.shape[1] - inputs["input_ids"].shape[1]
                types = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, grown))
                logits = model(
                    input_ids=ids,
                    mm_token_type_ids=types,
                    pixel_values_videos=inputs["pixel_values_videos"],
                    video_grid_thw=inputs["video_grid_thw"],
                ).logits
                token = int(logits[0, -1].argmax())
                manual.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert generated.tolist() == manual, mode
    model.config.rope_mode = "paper"


def test_images_are_refused(model):
    with pytest.raises(ValueError, match="videos only"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), pixel_values=torch.zeros(4, 1176))


def test_generate_refuses_a_video_without_its_grid_or_token_types(model, tokenizer):
    """Otherwise transformers would silently fall back to 1-D text positions."""
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(4))
    with torch.no_grad():
        video = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        for missing in ("video_grid_thw", "mm_token_type_ids"):
            kwargs = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", missing)}
            with pytest.raises(ValueError, match="video_grid_thw and mm_token_type_ids"):
                model.generate(**kwargs, mm_encoder_outputs={"video": video}, max_new_tokens=1)


def test_builder_checks_the_tokenizer_against_the_config(tokenizer):
    other = make_model(tokenizer, vision_end_token_id=3)
    with pytest.raises(ValueError, match="vision_end_token_id is 3"):
        FlashInputBuilder.for_model(other, tokenizer)
