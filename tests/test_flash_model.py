"""The Flash model on transformers' Qwen2-VL and Qwen2.5-VL: memory before the merger, AM-RoPE ids, batches,
generation, parity with transformers' own classes, trainability."""

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.model.qwen2vl import backbone_for
from flash_vstream.model.qwen2vl_rope import batch_position_ids
from flash_vstream.model.tiny_qwen2vl import VARIANTS, tiny_flash_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.vision.qwen2vl import downsample_patches

TRANSFORMERS_CLASSES = {
    "flash-qwen2vl": Qwen2VLForConditionalGeneration,
    "flash-qwen2_5vl": Qwen2_5_VLForConditionalGeneration,
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer("chatml")


def make_model(tokenizer, variant="flash-qwen2vl", memory=None, **config):
    memory = memory or {"temporal_length": 4, "spatial_length": 2}  # N_CSM=2, N_DAM=1: the memory compresses
    cfg = tiny_flash_config(tokenizer, variant=variant, **memory)
    for key, value in config.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return backbone_for(cfg.model_type).model_class(cfg).eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def model(tokenizer, variant):
    return make_model(tokenizer, variant)


def frames(n, height=112, width=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def towers_own_merged_tokens(model, pixels, grid):
    """transformers' own tower on the full-resolution clip and on its 2x2-pooled pixels: merged LLM tokens."""
    small, small_grid = downsample_patches(pixels, tuple(grid[0].tolist()), 2, 14, 2)
    full = model.model.visual(pixels, grid_thw=grid).pooler_output  # (t*h*w/4, hidden), time order
    half = model.model.visual(small, grid_thw=torch.tensor([small_grid])).pooler_output
    return full, half


def test_video_embeddings_are_the_towers_own_merged_tokens(tokenizer, variant):
    """A memory larger than the clip keeps everything: [DAM = all full-res patches; CSM = all half-res patches]."""
    model = make_model(tokenizer, variant, memory={"temporal_length": 16, "spatial_length": 8})
    builder = FlashInputBuilder.for_model(model, tokenizer)
    inputs = builder("What happens?", frames=frames(7))
    with torch.no_grad():
        out = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        full, half = towers_own_merged_tokens(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
    # 7 frames -> 4 temporal patches of an 8x8 grid: DAM 4 x 64/4 + CSM 4 x 16/4 = 80 LLM tokens.
    assert out.pooler_output[0].shape == (80, 32) and builder.count_visual_tokens(inputs) == 80
    torch.testing.assert_close(out.pooler_output[0], torch.cat([full, half]), atol=1e-5, rtol=1e-5)
    lay = out.memory_layouts[0]
    assert lay.dam_times.tolist() == [0, 1, 2, 3] and lay.csm_times.tolist() == [0, 1, 2, 3]
    assert lay.dam_grid == (4, 4) and lay.csm_grid == (2, 2)


def test_compressed_memory_of_two_scenes(tokenizer, variant):
    """8 frames of scene A then 8 of scene B, N_CSM=2, N_DAM=1. By hand: the CSM centroids are the two scenes
    (timestamps 1.5 and 5.5, rounded half-to-even to 2 and 6), the DAM entry is scene A's first temporal patch
    (equal masses keep time order; the first nearest patch wins)."""
    model = make_model(tokenizer, variant)
    builder = FlashInputBuilder.for_model(model, tokenizer)
    a, b = frames(1, seed=1)[0], frames(1, seed=2)[0]
    video = np.stack([a] * 8 + [b] * 8)
    inputs = builder("What happens?", frames=video)
    with torch.no_grad():
        out = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        full, half = towers_own_merged_tokens(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
    lay = out.memory_layouts[0]
    assert lay.dam_times.tolist() == [0] and lay.csm_times.tolist() == [2, 6]
    assert out.pooler_output[0].shape == (16 + 2 * 4, 32) == (builder.count_visual_tokens(inputs), 32)
    # full: 8 patches x 16 tokens; half: 8 patches x 4 tokens. Scene A is patches 0-3, scene B patches 4-7.
    expected = torch.cat([full[:16], half[:4], half[16:20]])
    torch.testing.assert_close(out.pooler_output[0], expected, atol=1e-5, rtol=1e-5)


def test_forward_uses_am_rope_ids(model, tokenizer):
    builder = FlashInputBuilder.for_model(model, tokenizer)
    inputs = builder("What happens?", frames=frames(6))
    with torch.no_grad():
        video = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        ids, _ = batch_position_ids(inputs["mm_token_type_ids"], video.memory_layouts, inputs["attention_mask"])
        logits = model(**inputs).logits
        # Same forward with the ids given explicitly and the pre-encoded video: identical logits.
        explicit = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_encoder_outputs={"video": video},
            position_ids=ids,
        ).logits
        # Token types default to the <|video_pad|> tokens of input_ids.
        derived = model(
            input_ids=inputs["input_ids"],
            pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
        ).logits
        # ...while Qwen-VL's plain 1-D positions for the same tokens would differ.
        shifted = model(
            input_ids=inputs["input_ids"],
            mm_encoder_outputs={"video": video},
            position_ids=torch.arange(ids.shape[-1]).view(1, 1, -1).expand(3, 1, -1),
        ).logits
    torch.testing.assert_close(logits, explicit)
    torch.testing.assert_close(logits, derived)
    assert not torch.allclose(logits, shifted)


def test_cached_continuation_without_position_ids(model, tokenizer):
    """A prefill stores the rope deltas; the next cached step without position_ids continues at the right id."""
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(6, seed=4))
    nxt = torch.tensor([[7]])
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        step = model(input_ids=nxt, cache=prefill.cache).logits[0, -1]
        whole = model(
            input_ids=torch.cat([inputs["input_ids"], nxt], dim=1),
            pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
        ).logits[0, -1]
    torch.testing.assert_close(step, whole, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_generate_decodes_with_the_same_positions_as_a_full_forward(tokenizer, variant, mode):
    """Greedy generate (KV cache, ids extended per token) == argmax of full forwards over the growing sequence."""
    model = make_model(tokenizer, variant, rope_mode=mode)
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(8, seed=3))
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        ids, manual = inputs["input_ids"], []
        for _ in range(4):
            grown = ids.shape[1] - inputs["input_ids"].shape[1]
            types = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, grown))
            logits = model(
                input_ids=ids,
                mm_token_type_ids=types,
                pixel_values_videos=inputs["pixel_values_videos"],
                video_grid_thw=inputs["video_grid_thw"],
            ).logits
            manual.append(int(logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[manual[-1]]])], dim=1)
    assert generated.tolist() == manual


def test_text_only_logits_equal_transformers_own_class(model, tokenizer, variant):
    """Same weights in transformers' own Qwen2VL/Qwen2_5_VL ForConditionalGeneration: identical logits and greedy
    continuation (the Flash overrides change nothing without a video)."""
    own = TRANSFORMERS_CLASSES[variant](model.config).eval()
    assert own.load_state_dict(model.state_dict(), strict=True)
    ids = tokenizer("hello there, general", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, own(input_ids=ids).logits, rtol=0, atol=0)
        ours = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        theirs = own.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert ours.tolist() == theirs.tolist()


def test_images_are_refused(model):
    with pytest.raises(ValueError, match="videos only"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), pixel_values=torch.zeros(4, 1176))


def test_bad_video_inputs_are_refused(model, tokenizer):
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(4))
    with pytest.raises(ValueError, match="video_grid_thw is required"):
        model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"])
    with torch.no_grad():
        video = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    with pytest.raises(ValueError, match="not both"):
        model.generate(**inputs, mm_encoder_outputs={"video": video}, max_new_tokens=1)
    plain = type(video).__mro__[1](last_hidden_state=video.last_hidden_state, pooler_output=video.pooler_output)
    with pytest.raises(ValueError, match="memory layouts"):
        model(input_ids=inputs["input_ids"], mm_encoder_outputs={"video": plain})
    first_pad = int(inputs["mm_token_type_ids"][0].nonzero()[0])
    one_pad_short = torch.cat([inputs["input_ids"][:, :first_pad], inputs["input_ids"][:, first_pad + 1 :]], dim=1)
    with pytest.raises(ValueError, match="holds 23 <.video_pad.> tokens but Flash Memory produced 24"):
        model(input_ids=one_pad_short, mm_encoder_outputs={"video": video})


def test_builder_checks_the_tokenizer_against_the_config(tokenizer, variant):
    other = make_model(tokenizer, variant, vision_end_token_id=3)
    with pytest.raises(ValueError, match="vision_end_token_id is 3"):
        FlashInputBuilder.for_model(other, tokenizer)


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "flags",
    [
        {},  # published defaults: frozen ViT, trained merger and language model
        {"vision_trainable": True, "decoder_trainable": False},
        {"merger_trainable": False},
    ],
)
def test_trainable_parts_follow_the_config_and_all_get_gradients(tokenizer, variant, flags):
    cfg = tiny_flash_config(tokenizer, variant=variant, temporal_length=4, spatial_length=2)
    for key, value in flags.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = backbone_for(cfg.model_type).model_class(cfg).train()
    parts = {
        "vision": {n for n, _ in model.named_parameters() if n.startswith("model.visual.") and ".merger." not in n},
        "merger": {n for n, _ in model.named_parameters() if n.startswith("model.visual.merger.")},
        "decoder": {n for n, _ in model.named_parameters() if not n.startswith("model.visual.")},
    }
    assert all(parts.values()) and len(set.union(*parts.values())) == len(list(model.parameters()))
    expected = set()
    for part, default in (("vision", False), ("merger", True), ("decoder", True)):
        if flags.get(f"{part}_trainable", default):
            expected |= parts[part]
    assert trainable_names(model) == expected
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(8, seed=5))
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"].bool(), -100)
    model(**inputs, labels=labels).loss.backward()
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert no_grad == []


@pytest.mark.parametrize("vision_trainable", [False, True])
def test_a_frozen_tower_runs_without_autograd_even_with_input_gradients_hooked(tokenizer, vision_trainable):
    """Gradient checkpointing hooks input gradients on; a frozen ViT must still not be back-propagated through."""
    model = make_model(tokenizer, vision_trainable=vision_trainable, merger_trainable=True)
    model.train()
    model.enable_input_require_grads()  # what the Trainer does with gradient checkpointing and PEFT
    inputs = FlashInputBuilder.for_model(model, tokenizer)("What happens?", frames=frames(4))
    features = model.dual_resolution_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    assert features[0].high.requires_grad is vision_trainable
    video = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    video.pooler_output[0].float().pow(2).mean().backward()  # the merger trains either way
    assert all(p.grad is not None for p in model.model.visual.merger.parameters())
    assert (model.model.visual.patch_embed.proj.weight.grad is not None) is vision_trainable
