"""Speed and memory of the STAR family at full size, with random weights (speed does not depend on their values).

Measures on one GPU, bf16, each figure as a spread over repeats (median, p10-p90, min-max, count):
  1. CLIP ViT-L/14 @224 encoding (layer -2) at several batch sizes, a different pixel batch every repeat;
  2. STAR memory streaming: ``update`` latency per frame after N frames, every timed update on a FRESH frame
     (made before the timed region, never seen by the memory), plus a control that repeats one frame (what the
     previous version of this script timed); ``read`` latency; the device-state size (must stay constant);
  3. offline ``compress`` latency for T-frame clips;
  4. answering with the Vicuna-7B shape: time to first token from a ready memory (splice + prefill of 681 visual
     + 60 text tokens + first token), decode ms/token over 128 forced tokens (``min_new_tokens=max_new_tokens=128``,
     so EOS cannot stop it early), end to end from 1,000 frames of CLIP features;
  5. peak GPU memory.

    python scripts/bench_star.py --out bench_star.json            # 1 GPU, ~2 min
    python scripts/bench_star.py --tiny                           # tiny model on the CPU: checks the script runs

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse

import torch
from benchlib import environment, launch_overhead_us, peak_gib, report, spread, sync, time_calls, time_repeats
from transformers import LlamaConfig

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.splice import embed_with_visual_tokens

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
PROMPT_TEXT_TOKENS = 60  # a short question in the vicuna_v1 template
DECODE_TOKENS = 128


# --- setup -------------------------------------------------------------------------------------------------------
def build_model(device: torch.device, dtype: torch.dtype, tiny: bool) -> FlashVStreamForCausalLM:
    if tiny:
        from flash_vstream.model.tiny import tiny_star_config

        config = tiny_star_config("llama", vocab_size=VICUNA_7B["vocab_size"])
    else:
        config = FlashVStreamConfig(text_config=LlamaConfig(**VICUNA_7B).to_dict(), vision_tower_name=None)
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = FlashVStreamForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


def random_features(model, frames: int, device, dtype) -> torch.Tensor:
    """``(frames, 256, d)`` distinct random CLIP-shaped features."""
    return torch.randn(frames, model.vision_tower.num_patches, model.vision_tower.hidden_size, device=device,
                       dtype=dtype)


# --- benchmarks --------------------------------------------------------------------------------------------------
def bench_clip(model, device, dtype, batches: list[int], repeats: int) -> list[dict]:
    rows = []
    size = model.vision_tower.image_size
    for batch in batches:
        pixel_sets = [torch.randn(batch, 3, size, size, device=device, dtype=dtype) for _ in range(repeats + 1)]
        model.encode_frames(pixel_sets[-1])  # warm-up on a set the timed calls do not use
        times = time_calls(model.encode_frames, pixel_sets[:-1], device)
        ms = spread(times)
        rows.append({"batch": batch, "ms": ms, "frames_per_s_at_median": round(1000 * batch / ms["median"], 1)})
    return rows


def bench_streaming(model, device, dtype, checkpoints: list[int], repeats: int) -> list[dict]:
    memory = model.memory
    state = memory.init_state(device, dtype=dtype)
    rows = []
    for target in checkpoints:
        while state.frames_seen < target:  # untimed fill-up, one new random frame per update
            state = memory.update(state, random_features(model, 1, device, dtype))
        seen = state.frames_seen
        fresh = random_features(model, repeats, device, dtype).unsqueeze(1)  # (repeats, 1, 256, d), distinct
        fresh_times = time_calls(lambda frame, state=state: memory.update(state, frame), fresh, device)
        repeated = [random_features(model, 1, device, dtype)] * repeats  # the old script's input: one frame
        repeated_times = time_calls(lambda frame, state=state: memory.update(state, frame), repeated, device)
        read_times = time_repeats(lambda state=state: memory.read(state), repeats, device, warmup=1)
        rows.append(
            {
                "frames_seen": seen,
                "update_ms_fresh_frames": spread(fresh_times),
                "update_ms_one_frame_repeated": spread(repeated_times),
                "read_ms": spread(read_times),
                "device_state_bytes": state.device_nbytes(),
                "bank_frames": state.bank_entries,
            }
        )
    return rows


def bench_compress(model, device, dtype, lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        clips = [random_features(model, length, device, dtype) for _ in range(min(repeats, 3))]
        model.memory.compress(clips[0])  # warm-up
        times = time_calls(model.memory.compress, [clips[i % len(clips)] for i in range(repeats)], device)
        rows.append({"frames": length, "ms": spread(times), "tokens": model.memory.num_tokens(length)})
    return rows


def bench_answer(model, device, dtype, repeats: int, frames: int = 1000) -> dict:
    memory_tokens = model.memory.num_tokens(frames)
    vocab = model.config.text_config.vocab_size
    text_ids = torch.randint(3, vocab, (1, PROMPT_TEXT_TOKENS), device=device)
    placeholders = torch.full((1, memory_tokens), model.config.image_token_id, device=device)
    input_ids = torch.cat([text_ids[:, :40], placeholders, text_ids[:, 40:]], dim=1)
    attention_mask = torch.ones_like(input_ids)
    feats = random_features(model, frames, device, dtype)
    # In streaming use the memory is ready when the question comes: time splice + prefill + first token.
    visual = model.project_memory(model.memory.compress(feats))

    def embeds():
        return embed_with_visual_tokens(model.get_input_embeddings(), input_ids, model.config.image_token_id, visual)

    def first_token():
        # logits of the last position only, as generate computes them
        out = model.language_model(inputs_embeds=embeds(), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def generate(tokens: int):
        out = model.language_model.generate(
            inputs_embeds=embeds(), attention_mask=attention_mask, do_sample=False, pad_token_id=0,
            min_new_tokens=tokens, max_new_tokens=tokens,
        )
        if out.shape[1] != tokens:  # the forced length is the point of the measurement
            raise RuntimeError(f"generate returned {out.shape[1]} tokens, expected {tokens}")

    def end_to_end():
        model.generate(input_ids, features=[feats], do_sample=False, pad_token_id=0,
                       min_new_tokens=DECODE_TOKENS, max_new_tokens=DECODE_TOKENS)

    ttft = time_repeats(first_token, repeats, device)
    one = time_repeats(lambda: generate(1), repeats, device, warmup=1)
    full = time_repeats(lambda: generate(DECODE_TOKENS), max(3, repeats // 4), device, warmup=1)
    one_median = sorted(one)[len(one) // 2]
    per_token = [(t - one_median) / (DECODE_TOKENS - 1) for t in full]
    e2e = time_repeats(end_to_end, 3, device, warmup=1)
    return {
        "prompt_tokens": int(input_ids.shape[1]),
        "visual_tokens": memory_tokens,
        "ttft_ms_from_ready_memory": spread(ttft),
        "generate_1_token_ms": spread(one),
        f"generate_{DECODE_TOKENS}_tokens_ms": spread(full),
        "decode_ms_per_token": spread(per_token),
        f"end_to_end_ms_{frames}_frame_features_{DECODE_TOKENS}_tokens": spread(e2e),
    }


# --- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: checks the script runs")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per figure")
    args = parser.parse_args()
    if args.tiny:
        device, dtype, repeats = torch.device("cpu"), torch.float32, 3
        batches, checkpoints, lengths = [1, 4], [30, 60], [26, 120]
    else:
        device, dtype, repeats = torch.device("cuda"), torch.bfloat16, args.repeats
        batches, checkpoints, lengths = [1, 8, 32, 128], [100, 1000, 5000], [26, 120, 1000]
    torch.manual_seed(0)
    model = build_model(device, dtype, args.tiny)
    attention = model.language_model.config._attn_implementation
    results = {"environment": environment(device), "launch_overhead_us": launch_overhead_us(device),
               "dtype": str(dtype), "attention": attention}
    with torch.inference_mode():
        results["clip"] = bench_clip(model, device, dtype, batches, min(repeats, 10))
        results["streaming"] = bench_streaming(model, device, dtype, checkpoints, repeats)
        results["compress"] = bench_compress(model, device, dtype, lengths, repeats)
        results["answer"] = bench_answer(model, device, dtype, repeats)
    sync(device)
    results["peak_gpu_gib"] = peak_gib(device)
    report(results, args.out)


if __name__ == "__main__":
    main()
