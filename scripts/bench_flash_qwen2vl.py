"""Speed and memory of the Flash Memory family at full size (Qwen2-VL-7B shapes, random weights), one GPU, bf16.

Each figure is a spread over repeats (median, p10-p90, min-max, count). Measures:
  1. offline, 240 frames at 448x448 and at 16:9 (720x1280 -> 336x560): frame preprocessing (CPU), the
     dual-resolution ViT pass, Flash Memory ``compress`` (CSM k-means + DAM retrieval), the patch merger, and the
     LLM token count;
  2. streaming: ``update`` latency per new temporal patch after N patches, every timed update on a FRESH patch
     (real ViT output of frames never seen before, made before the timed region), bank on the CPU; ``read``;
  3. answering from a ready memory with the Qwen2-VL-7B decoder: prefill of the visual + text prompt and the
     first token (time to first token), then decode ms/token over 128 greedy steps with the KV cache (a plain
     loop, so no EOS can end it early);
  4. peak GPU memory.

    python scripts/bench_flash_qwen2vl.py --out bench_flash.json      # 1 GPU, ~2 min
    python scripts/bench_flash_qwen2vl.py --tiny                      # tiny model on the CPU: checks the script runs

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from benchlib import environment, launch_overhead_us, peak_gib, report, spread, sync, time_calls, time_repeats
from transformers import DynamicCache, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLTextConfig,
    Qwen2VLTextModel,
)

from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig
from flash_vstream.vision.features import DualResFeatures
from flash_vstream.vision.qwen2vl import FlashFrameProcessor, encode_dual_resolution

QWEN2VL_7B_VISION = dict(
    depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14, temporal_patch_size=2
)
QWEN2VL_7B_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)
TINY_VISION = dict(
    depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4, patch_size=14, temporal_patch_size=2
)
TINY_TEXT = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32768,
                 rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
DECODE_TOKENS = 128


# --- setup -------------------------------------------------------------------------------------------------------
def random_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def fresh_patches(tower, device, count: int, seed: int, chunk: int = 60) -> list[DualResFeatures]:
    """``count`` distinct temporal patches of 448x448 random frames, through the ViT (chunk patches per call)."""
    processor = FlashFrameProcessor()
    patches = []
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        pixels, grid = processor(random_video(2 * size, 448, 448, seed + start))
        (clip,) = encode_dual_resolution(tower, pixels.to(device), grid.to(device))
        patches += [
            DualResFeatures(clip.high[i : i + 1], clip.low[i : i + 1], clip.grid_hw, clip.pool_size)
            for i in range(size)
        ]
    return patches


# --- benchmarks --------------------------------------------------------------------------------------------------
def offline(tower, memory, device, height: int, width: int, frames: int, repeats: int) -> dict:
    video = random_video(frames, height, width, seed=0)
    processor = FlashFrameProcessor()
    prep = time_repeats(lambda: processor(video), 3, torch.device("cpu"), warmup=0)
    pixels, grid = processor(video)
    pixels, grid = pixels.to(device), grid.to(device)
    vit = time_repeats(lambda: encode_dual_resolution(tower, pixels, grid), repeats, device, warmup=1)
    (clip,) = encode_dual_resolution(tower, pixels, grid)
    compress = time_repeats(lambda: memory.compress(clip), repeats, device)
    tokens = memory.compress(clip).tokens
    merge = time_repeats(lambda: tower.merger(tokens), repeats, device)
    return {
        "frames": frames,
        "size": [height, width],
        "grid_thw": grid[0].tolist(),
        "llm_tokens": int(tower.merger(tokens).shape[0]),
        "preprocess_cpu_ms": spread(prep),
        "dual_vit_ms": spread(vit),
        "memory_compress_ms": spread(compress),
        "merger_ms": spread(merge),
    }


def streaming(tower, memory, device, checkpoints: list[int], repeats: int) -> list[dict]:
    pool = iter(fresh_patches(tower, device, checkpoints[-1] + repeats * len(checkpoints), seed=1))
    sync(device)
    current = {"state": memory.init_state(device)}

    def push(patch):
        current["state"] = memory.update(current["state"], patch)

    rows = []
    for target in checkpoints:
        while current["state"].num_seen < target:  # untimed fill-up, also with distinct patches
            push(next(pool))
        timed = [next(pool) for _ in range(repeats)]  # never seen by the memory
        update = time_calls(push, timed, device)
        state = current["state"]
        read = time_repeats(lambda state=state: memory.read(state), repeats, device, warmup=1)
        rows.append(
            {
                "patches_seen": target,
                "update_ms_fresh_patches": spread(update),
                "read_ms": spread(read),
                "bank_entries": state.bank_entries,
                "device_state_bytes": state.device_nbytes(),
            }
        )
    return rows


def answer_latency(device, dtype, text: dict, prompt_lengths: list[int], repeats: int) -> list[dict]:
    """Time to first token and decode ms/token of the Qwen2-VL decoder on prompts of the given lengths."""
    config = Qwen2VLTextConfig(**text)
    with torch.device(device):
        decoder = Qwen2VLTextModel(config).to(dtype).eval()
        lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
    embed = decoder.get_input_embeddings()
    rows = []
    for length in prompt_lengths:
        embeds = torch.randn(1, length, config.hidden_size, device=device, dtype=dtype)
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)

        def first_token(embeds=embeds, positions=positions):
            cache = DynamicCache(config=config)
            hidden = decoder(inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True)
            return lm_head(hidden.last_hidden_state[:, -1]).argmax(-1), cache

        def decode_steps(length=length) -> float:
            """Seconds of DECODE_TOKENS - 1 greedy steps after a (untimed) prefill."""
            token, cache = first_token()
            sync(device)
            start = time.perf_counter()
            for step in range(DECODE_TOKENS - 1):
                pos = torch.full((3, 1, 1), length + step, device=device)
                hidden = decoder(inputs_embeds=embed(token[:, None]), position_ids=pos, past_key_values=cache)
                token = lm_head(hidden.last_hidden_state[:, -1]).argmax(-1)
            sync(device)
            return time.perf_counter() - start

        ttft = time_repeats(first_token, repeats, device)
        decode_steps()  # warm-up
        per_token = [decode_steps() / (DECODE_TOKENS - 1) for _ in range(max(3, repeats // 2))]
        rows.append(
            {
                "prompt_tokens": length,
                "ttft_ms": spread(ttft),
                "decode_ms_per_token": spread(per_token),
                "decode_tokens": DECODE_TOKENS,
            }
        )
    return rows


# --- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--frames", type=int, default=240, help="frames of the offline clips")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per figure")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: checks the script runs")
    args = parser.parse_args()
    if args.tiny:
        device, dtype, repeats, frames = torch.device("cpu"), torch.float32, 3, 16
        vision, text, checkpoints, prompts = TINY_VISION, TINY_TEXT, [10, 20], [600, 200]
    else:
        device, dtype, repeats, frames = torch.device("cuda"), torch.bfloat16, args.repeats, args.frames
        vision, text, checkpoints, prompts = QWEN2VL_7B_VISION, QWEN2VL_7B_TEXT, [60, 120, 240], [11600, 10880, 2640]
    torch.manual_seed(0)
    with torch.device(device):
        tower = Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**vision)).to(dtype).eval()
    memory = FlashMemory(FlashMemoryConfig(bank_size=120, bank_device="cpu"))
    results = {"environment": environment(device), "launch_overhead_us": launch_overhead_us(device),
               "dtype": str(dtype)}
    with torch.inference_mode():
        sizes = ((448, 448), (720, 1280))
        results["offline"] = [offline(tower, memory, device, h, w, frames, repeats) for h, w in sizes]
        results["streaming"] = streaming(tower, memory, device, checkpoints, repeats)
        del tower
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # 11,520 visual tokens + 80 text tokens (square video); 10,800 + 80 (16:9); 2,560 + 80 (16 frames).
        results["answer"] = answer_latency(device, dtype, text, prompts, repeats)
    results["peak_gpu_gib"] = peak_gib(device)
    report(results, args.out)


if __name__ == "__main__":
    main()
