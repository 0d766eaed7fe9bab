"""Speed and memory of the STAR family at full size, with random weights (speed does not depend on their values).

Measures on one GPU, bf16:
  1. CLIP ViT-L/14 @224 encoding throughput (frames/s) at several batch sizes;
  2. STAR memory streaming update latency per frame after N frames, and the device-state size (must stay constant);
  3. offline ``compress`` latency for T-frame clips;
  4. answer latency with Vicuna-7B: time to first token (prefill of 681 visual + ~60 text tokens) and decode rate;
  5. peak GPU memory.

    python scripts/bench_star.py --out bench_star.json            # 1 GPU
    python scripts/bench_star.py --quick                          # smaller sweep

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.model.modeling import FlashVStreamForCausalLM

VICUNA_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)


# --- helpers -----------------------------------------------------------------------------------------------------
def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs with a device sync around each (seconds)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 3)


def build_model(device: torch.device, dtype: torch.dtype, tiny: bool) -> FlashVStreamForCausalLM:
    if tiny:  # a CPU smoke run of this script
        from flash_vstream.model.tiny import tiny_star_config

        config = tiny_star_config("llama", vocab_size=32000)
    else:
        config = FlashVStreamConfig(text_config=LlamaConfig(**VICUNA_7B).to_dict(), vision_tower_name=None)
    torch.set_default_dtype(dtype)
    with device:
        model = FlashVStreamForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


# --- benchmarks ---------------------------------------------------------------------------------------------------
def bench_clip(model, device, dtype, batches) -> list[dict]:
    rows = []
    for batch in batches:
        pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        times = timed(lambda pixels=pixels: model.encode_frames(pixels), repeats=10)
        rate = round(batch / statistics.median(times), 1)
        rows.append({"batch": batch, "ms": median_ms(times), "frames_per_s": rate})
    return rows


def bench_streaming(model, device, dtype, checkpoints) -> list[dict]:
    memory = model.memory
    state = memory.init_state(device, dtype=dtype)
    rows, seen = [], 0
    frame = torch.randn(1, 256, model.vision_tower.hidden_size, device=device, dtype=dtype)
    for target in checkpoints:
        while seen < target - 20:
            state = memory.update(state, torch.randn_like(frame))
            seen += 1
        times = []
        for _ in range(20):
            sync()
            start = time.perf_counter()
            state = memory.update(state, frame)
            sync()
            times.append(time.perf_counter() - start)
            seen += 1
        read_times = timed(lambda state=state: memory.read(state), repeats=10, warmup=1)
        device_bytes = sum(t.numel() * t.element_size() for t in state.device_tensors())
        rows.append(
            {
                "frames_seen": seen,
                "update_ms": median_ms(times),
                "read_ms": median_ms(read_times),
                "device_state_bytes": device_bytes,
            }
        )
    return rows


def bench_compress(model, device, dtype, lengths) -> list[dict]:
    rows = []
    for length in lengths:
        feats = torch.randn(length, 256, model.vision_tower.hidden_size, device=device, dtype=dtype)
        times = timed(lambda feats=feats: model.memory.compress(feats), repeats=5)
        rows.append({"frames": length, "ms": median_ms(times), "tokens": model.memory.num_tokens(length)})
    return rows


def bench_answer(model, device, dtype, new_tokens: int) -> dict:
    memory_tokens = model.memory.num_tokens(1000)
    text_ids = torch.randint(3, 32000, (1, 60), device=device)
    placeholders = torch.full((1, memory_tokens), model.config.image_token_id, device=device)
    input_ids = torch.cat([text_ids[:, :40], placeholders, text_ids[:, 40:]], dim=1)
    feats = [torch.randn(1000, 256, model.vision_tower.hidden_size, device=device, dtype=dtype)]
    # Memory state is precomputed in streaming use: time the projector + prefill + first token from memory tokens.
    memory_out = model.memory.compress(feats[0])
    visual = model.project_memory(memory_out)
    from flash_vstream.model.splice import embed_with_visual_tokens

    def first_token():
        embeds = embed_with_visual_tokens(model.get_input_embeddings(), input_ids, model.config.image_token_id, visual)
        return model.language_model(inputs_embeds=embeds, use_cache=True).logits[:, -1].argmax(-1)

    with torch.inference_mode():
        ttft = timed(first_token, repeats=10)
        gen = timed(
            lambda: model.generate(input_ids, features=feats, max_new_tokens=new_tokens, min_new_tokens=new_tokens),
            repeats=3,
            warmup=1,
        )
    return {
        "prompt_tokens": int(input_ids.shape[1]),
        "ttft_ms_from_memory": median_ms(ttft),
        "end_to_end_generate_ms_1000_frame_features": median_ms(gen),
        "new_tokens": new_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: checks the script runs")
    args = parser.parse_args()
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    model = build_model(device, dtype, args.tiny)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny smoke run)",
        "torch": torch.__version__,
        "clip": bench_clip(model, device, dtype, [1, 8, 32] if args.quick else [1, 8, 32, 128]),
        "streaming": bench_streaming(model, device, dtype, [100, 500] if args.quick else [100, 1000, 5000]),
        "compress": bench_compress(model, device, dtype, [26, 120, 1000]),
    }
    with torch.inference_mode():
        results["answer"] = bench_answer(model, device, dtype, new_tokens=32)
    if device.type == "cuda":
        results["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
