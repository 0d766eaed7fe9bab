"""Speed and memory of Flash Memory's vision side at full size (Qwen2-VL-7B ViT, random weights), one GPU, bf16.

Measures, for 240 frames at 448x448 and at 16:9 (336x560):
  1. frame preprocessing (CPU: resize, normalise, patchify);
  2. the dual-resolution ViT pass (full + half resolution in one call);
  3. Flash Memory ``compress`` (CSM k-means + DAM retrieval) and the patch merger; the LLM token count;
  4. streaming: ``update`` latency per new temporal patch after N patches, with the bank on the CPU;
  5. answering from a ready memory: Qwen2-VL-7B decoder prefill of the visual + text prompt and the first token
     (time to first token), and the decode rate;
  6. peak GPU memory.

    python scripts/bench_flash_qwen2vl.py --out bench_flash.json

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import Qwen2VLVisionConfig

from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig
from flash_vstream.vision.qwen2vl import FlashFrameProcessor, FlashVisionTower

QWEN2VL_7B_VISION = dict(
    depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14, temporal_patch_size=2
)


def timed(fn, repeats: int = 3):
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def offline(tower, memory, height: int, width: int, frames: int) -> dict:
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    processor = FlashFrameProcessor()
    start = time.perf_counter()
    pixels, grid = processor(video)
    prep = time.perf_counter() - start
    pixels, grid = pixels.cuda(), grid.cuda()
    with torch.no_grad():
        vit_s, (clip,) = timed(lambda: tower.forward_dual_resolution(pixels, grid))
        mem_s, out = timed(lambda: memory.compress(clip))
        merge_s, embeds = timed(lambda: tower.merger(out.tokens))
    return {
        "frames": frames,
        "size": [height, width],
        "grid_thw": grid[0].tolist(),
        "llm_tokens": int(embeds.shape[0]),
        "preprocess_s": round(prep, 3),
        "dual_vit_s": round(vit_s, 4),
        "memory_compress_s": round(mem_s, 4),
        "merger_s": round(merge_s, 4),
    }


def streaming(tower, memory, seen: list[int]) -> list[dict]:
    processor = FlashFrameProcessor()
    pixels, grid = processor(np.random.default_rng(1).integers(0, 256, (2, 448, 448, 3), dtype=np.uint8))
    with torch.no_grad():
        (patch,) = tower.forward_dual_resolution(pixels.cuda(), grid.cuda())
    rows, state = [], memory.init_state("cuda")
    for target in seen:
        while state.num_seen < target:
            noisy = type(patch)(
                patch.high + torch.randn_like(patch.high), patch.low + torch.randn_like(patch.low), patch.grid_hw
            )
            state = memory.update(state, noisy)
        update_s, _ = timed(lambda state=state: memory.update(state, patch))
        read_s, _ = timed(lambda state=state: memory.read(state))
        rows.append(
            {
                "patches_seen": target,
                "update_s": round(update_s, 4),
                "read_s": round(read_s, 4),
                "bank_entries": int(state.bank_low.shape[0]),
            }
        )
    return rows


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


def answer_latency(prompt_lengths: list[int], new_tokens: int = 16) -> list[dict]:
    """Prefill + first token, and decode rate, of the Qwen2-VL-7B decoder on prompts of the given lengths."""
    from transformers import DynamicCache
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextConfig, Qwen2VLTextModel

    config = Qwen2VLTextConfig(**QWEN2VL_7B_TEXT)
    with torch.device("cuda"):
        decoder = Qwen2VLTextModel(config).to(torch.bfloat16).eval()
        lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=torch.bfloat16)
    embed = decoder.get_input_embeddings()
    rows = []
    for length in prompt_lengths:
        embeds = torch.randn(1, length, config.hidden_size, device="cuda", dtype=torch.bfloat16)
        positions = torch.arange(length, device="cuda").view(1, 1, -1).expand(3, 1, -1)

        def first_token(embeds=embeds, positions=positions):
            cache = DynamicCache(config=config)
            hidden = decoder(inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True)
            return lm_head(hidden.last_hidden_state[:, -1]).argmax(-1), cache

        def decode(length=length):
            token, cache = first_token()
            for step in range(new_tokens - 1):
                pos = torch.full((3, 1, 1), length + step, device="cuda")
                hidden = decoder(inputs_embeds=embed(token[:, None]), position_ids=pos, past_key_values=cache)
                token = lm_head(hidden.last_hidden_state[:, -1]).argmax(-1)
            return token

        with torch.no_grad():
            ttft_s, _ = timed(first_token, repeats=5)
            total_s, _ = timed(decode, repeats=3)
        rows.append(
            {
                "prompt_tokens": length,
                "ttft_s": round(ttft_s, 4),
                "decode_tokens_per_s": round((new_tokens - 1) / max(total_s - ttft_s, 1e-9), 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--frames", type=int, default=240)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        tower = FlashVisionTower(Qwen2VLVisionConfig(**QWEN2VL_7B_VISION)).to(torch.bfloat16).eval()
    memory = FlashMemory(FlashMemoryConfig(bank_size=120, bank_device="cpu"))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["offline"] = [offline(tower, memory, h, w, args.frames) for h, w in ((448, 448), (720, 1280))]
    results["streaming"] = streaming(tower, memory, [60, 120, 240])
    del tower
    torch.cuda.empty_cache()
    # 11,520 visual tokens + ~80 text tokens (square video); 10,800 + 80 (16:9); 2,560 + 80 (16 frames).
    results["answer"] = answer_latency([11600, 10880, 2640])
    results["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
