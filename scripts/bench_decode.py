"""Decode speed of both families at full size (random weights), eager against the compiled static-cache decoder.

For each family (STAR: Vicuna-7B shape with a 681-token memory; Flash: Qwen2-VL-7B with an 11,520-token memory),
bf16, batch 1, one GPU, through :class:`flash_vstream.inference.decode.Decoder` exactly as answers use it (the
static cache sized as ``FlashVStream.set_decoder`` sizes it by default: 1,792 and 12,544 positions):
  1. the compile cost of the compiled mode (``Decoder.warmup``: a short answer that traces, compiles and
     captures the decode step), and whether any timed call recompiled (TorchDynamo's graph count);
  2. per mode, ``generate`` of 1 token and of 128 forced tokens (``min_new_tokens = max_new_tokens``, so EOS
     cannot stop it), every call on a FRESH prompt (new random text ids and a new memory read-out from new
     random features, made before the timed region); ms per token = ``(t_128 - median t_1) / 127``.
Then, frame preprocessing on the CPU (Pillow) against the GPU (torch) path of both processors, with the
largest difference between the two in 8-bit levels; and (``--attention``) one decode step's attention over the
Flash decoder's padded cache computed four ways, to show what the grouped-query layout costs.

    python scripts/bench_decode.py --out bench_decode.json          # 1 GPU, ~5 min (most of it compiling)
    python scripts/bench_decode.py --tiny                           # tiny models on the CPU: checks it runs

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import environment, launch_overhead_us, peak_gib, spread, sync, time_calls
from transformers import CompileConfig, LlamaConfig

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.inference.decode import Decoder, cache_len_for
from flash_vstream.memory.flash import FlashMemoryConfig
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLConfig, FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.splice import embed_with_visual_tokens
from flash_vstream.vision.clip import CLIPFrameProcessor
from flash_vstream.vision.features import DualResFeatures
from flash_vstream.vision.qwen2vl import QWEN2VL_STD, FlashFrameProcessor

VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
QWEN2VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
QWEN2VL_7B_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                         patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
TINY_TEXT = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096)
TINY_QWEN_TEXT = {**TINY_TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}, "bos_token_id": 1,
                  "eos_token_id": 2, "vision_start_token_id": 300, "vision_end_token_id": 301,
                  "video_token_id": 302, "image_token_id": 303}
TINY_VISION = dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4, in_channels=3, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2)
DECODE_TOKENS = 128
TEXT_TOKENS = 80  # a short question and the template around it


# --- setup -------------------------------------------------------------------------------------------------------
def build(model_class, config, device, dtype):
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = model_class(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


def star_model(device, dtype, tiny: bool):
    from flash_vstream.model.tiny import tiny_clip_config

    text = TINY_TEXT if tiny else VICUNA_7B
    vision = {"vision_config": tiny_clip_config().to_dict()} if tiny else {}
    config = FlashVStreamConfig(text_config=LlamaConfig(**text).to_dict(), vision_tower_name=None, **vision)
    return build(FlashVStreamForCausalLM, config, device, dtype)


def flash_model(device, dtype, tiny: bool):
    vision = TINY_VISION if tiny else QWEN2VL_7B_VISION
    text = TINY_QWEN_TEXT if tiny else QWEN2VL_7B_TEXT
    memory = FlashMemoryConfig().to_published()
    config = FlashVStreamQwen2VLConfig(vision_config={**vision, "flash_memory_config": memory},
                                       tie_word_embeddings=False, **text)
    return build(FlashVStreamQwen2VLForConditionalGeneration, config, device, dtype)


# --- fresh prompts -----------------------------------------------------------------------------------------------
def star_prompt(model, device, dtype, frames: int = 100) -> dict:
    """``generate`` kwargs of a new STAR prompt: random text around the memory of new random features."""
    vocab = model.config.text_config.vocab_size
    tower = model.vision_tower
    features = torch.randn(frames, tower.num_patches, tower.hidden_size, device=device, dtype=dtype)
    visual = model.project_memory(model.memory.compress(features))  # (681, h)
    text = torch.randint(3, vocab, (1, TEXT_TOKENS), device=device)
    slots = torch.full((1, visual.shape[0]), model.config.image_token_id, device=device)
    ids = torch.cat([text[:, :40], slots, text[:, 40:]], dim=1)
    embeds = embed_with_visual_tokens(model.get_input_embeddings(), ids, model.config.image_token_id, visual)
    return {"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}


def flash_prompt(model, device, dtype, patches: int, grid: tuple[int, int]) -> dict:
    """``generate`` kwargs of a new Flash prompt: random text around the memory of new random ViT features."""
    width = model.config.vision_config.embed_dim
    h, w = grid
    features = DualResFeatures(
        high=torch.randn(patches, h * w, width, device=device, dtype=dtype),
        low=torch.randn(patches, (h // 2) * (w // 2), width, device=device, dtype=dtype),
        grid_hw=grid, pool_size=2,
    )
    video = model.embed_memory([model.flash_memory.compress(features)])
    count = sum(int(e.shape[0]) for e in video.pooler_output)
    cfg = model.config
    text = torch.randint(0, min(cfg.text_config.vocab_size, cfg.vision_start_token_id), (1, TEXT_TOKENS), device=device)
    slots = torch.full((1, count), cfg.video_token_id, device=device)
    start = torch.full((1, 1), cfg.vision_start_token_id, device=device)
    end = torch.full((1, 1), cfg.vision_end_token_id, device=device)
    ids = torch.cat([text[:, :20], start, slots, end, text[:, 20:]], dim=1)
    types = (ids == cfg.video_token_id).long() * 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types,
            "mm_encoder_outputs": {"video": video}}


# --- measurements ------------------------------------------------------------------------------------------------
def graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def bench_mode(model, target, decoder: Decoder, make_prompt, repeats: int, device, first_only: bool = False) -> dict:
    """Time 1-token and 128-token answers of ``decoder`` on fresh prompts (``first_only``: 1-token ones only)."""

    def generate(prompt: dict, tokens: int) -> None:
        out = decoder.generate(target, **prompt, do_sample=False, pad_token_id=0, min_new_tokens=tokens,
                               max_new_tokens=tokens)
        new = out.shape[1] - (prompt["input_ids"].shape[1] if "input_ids" in prompt else 0)
        if new != tokens:  # the forced length is the point of the measurement
            raise RuntimeError(f"generate returned {new} new tokens, expected {tokens}")

    generate(make_prompt(), 1 if first_only else DECODE_TOKENS)  # untimed: first use of this mode's paths
    graphs = graph_count()
    one = time_calls(lambda p: generate(p, 1), [make_prompt() for _ in range(repeats)], device)
    if first_only:
        return {"generate_1_token_ms": spread(one)}
    full = time_calls(lambda p: generate(p, DECODE_TOKENS), [make_prompt() for _ in range(repeats)], device)
    one_median = float(np.median(one))
    per_token = [(t - one_median) / (DECODE_TOKENS - 1) for t in full]
    return {
        "generate_1_token_ms": spread(one),
        f"generate_{DECODE_TOKENS}_tokens_ms": spread(full),
        "decode_ms_per_token": spread(per_token),
        "graphs_compiled_during_timed_calls": graph_count() - graphs,
    }


def bench_family(name, model, target, make_prompt, warm_prompt, repeats, device, compile_config, modes,
                 max_cache_len, first_only_modes=()) -> dict:
    results = {"prompt_tokens": int(next(iter(make_prompt().values())).shape[1])}
    for mode in first_only_modes:  # time to first token only (prefill through this mode's cache)
        decoder = Decoder.for_model(model, mode, max_cache_len=max_cache_len)
        results[f"{mode}_first_token_only"] = bench_mode(model, target, decoder, make_prompt, repeats, device, True)
        print(f"[{name}] {mode} 1 token: {results[f'{mode}_first_token_only']['generate_1_token_ms']}", flush=True)
    for mode in modes:
        torch._dynamo.reset()
        decoder = Decoder.for_model(model, mode, compile_config=compile_config, max_cache_len=max_cache_len)
        results["decoder_attention"] = model.config.get_text_config(decoder=True)._attn_implementation
        if mode == "compiled":
            prompt = warm_prompt()
            graphs = graph_count()
            decoder.warmup(lambda prompt=prompt, decoder=decoder: decoder.generate(
                target, **prompt, do_sample=False, pad_token_id=0, min_new_tokens=4, max_new_tokens=4))
            results["compile_seconds"] = round(decoder.compile_seconds, 2)
            results["graphs_compiled_at_warmup"] = graph_count() - graphs
        results["max_cache_len"] = decoder.max_cache_len
        results[mode] = bench_mode(model, target, decoder, make_prompt, repeats, device)
        print(f"[{name}] {mode}: {results[mode]['decode_ms_per_token']}", flush=True)
    return results


def bench_attention(device, dtype, tiny: bool, filled: int = 11_602, length: int = 12_544) -> dict:
    """One decode step's attention over a padded static cache, every layer, four ways (CUDA-graphed on a GPU).

    Qwen2-7B shape: 28 query heads sharing 4 key/value heads of 128, 28 layers, each layer its own cache (so
    nothing is served from L2). ``repeat``: keys and values copied per query head, then SDPA (transformers'
    path under torch.compile); ``packed``: the 7 query heads of a group as 7 query rows of its key/value head;
    ``enable_gqa``: SDPA's own grouped-query flag; ``matmul``: packed, with plain matmuls and a softmax.
    """
    import torch.nn.functional as F

    layers, heads, kv_heads, dim = (2, 4, 2, 8) if tiny else (28, 28, 4, 128)
    length, filled = (64, 40) if tiny else (length, filled)
    groups = heads // kv_heads
    keys = [torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype) for _ in range(layers)]
    values = [torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype) for _ in range(layers)]
    query = torch.randn(1, heads, 1, dim, device=device, dtype=dtype)
    mask = (torch.arange(length, device=device) < filled).view(1, 1, 1, length)

    def repeat(q, k, v):
        k = k[:, :, None].expand(1, kv_heads, groups, length, dim).reshape(1, heads, length, dim)
        v = v[:, :, None].expand(1, kv_heads, groups, length, dim).reshape(1, heads, length, dim)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def packed(q, k, v):
        return F.scaled_dot_product_attention(q.reshape(1, kv_heads, groups, dim), k, v, attn_mask=mask)

    def enable_gqa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def matmul(q, k, v):
        scores = q.reshape(1, kv_heads, groups, dim) @ k.transpose(-1, -2) / dim**0.5
        return scores.masked_fill(~mask, float("-inf")).float().softmax(-1).to(v.dtype) @ v

    reference = repeat(query, keys[0], values[0]).float().flatten()
    rows = {}
    for name, fn in (("repeat", repeat), ("packed", packed), ("enable_gqa", enable_gqa), ("matmul", matmul)):
        try:
            error = float((fn(query, keys[0], values[0]).float().flatten() - reference).abs().max())

            def step(fn=fn):
                return [fn(query, k, v) for k, v in zip(keys, values, strict=True)]

            if device.type == "cuda":
                step()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                step = graph.replay  # noqa: PLW2901 - the timed call is the graph replay
            times = time_calls(lambda _, run=step: run(), range(20), device)
            rows[name] = {"ms_all_layers": spread(times), "max_abs_difference_to_repeat": round(error, 5)}
        except RuntimeError as err:  # a kernel that does not take this shape on this device
            rows[name] = {"error": str(err).splitlines()[0]}
        print(f"[attention] {name}: {rows[name]}", flush=True)
    return {"layers": layers, "cache_positions": length, "filled": filled, "variants": rows}


def bench_preprocess(device, repeats: int, tiny: bool) -> dict:
    """Pillow on the CPU against torch on ``device``, 720p frames, both processors."""
    rng = np.random.default_rng(0)
    size = (96, 160) if tiny else (720, 1280)
    rows = {}
    for name, count, cpu, gpu in (
        ("clip_pad_224", 64, CLIPFrameProcessor(), CLIPFrameProcessor(device=str(device))),
        ("flash_448x448_budget", 240 if not tiny else 8, FlashFrameProcessor(),
         FlashFrameProcessor(device=str(device))),
    ):
        frames = rng.integers(0, 256, (count, *size, 3), dtype=np.uint8)
        reference = cpu(frames)
        fast = gpu(frames)  # warm-up, and the difference
        a = reference if isinstance(reference, torch.Tensor) else reference[0]
        b = (fast if isinstance(fast, torch.Tensor) else fast[0]).cpu()
        std = min(QWEN2VL_STD)
        levels = float((a - b).abs().max() * std * 255)
        cpu_times = time_calls(lambda _, f=frames, p=cpu: p(f), range(2), torch.device("cpu"))
        gpu_times = time_calls(lambda _, f=frames, p=gpu: p(f), range(repeats), device)
        rows[name] = {"frames": count, "size": list(size), "cpu_ms": spread(cpu_times), "gpu_ms": spread(gpu_times),
                      "max_difference_8bit_levels": round(levels, 3)}
        print(f"[preprocess] {name}: cpu {rows[name]['cpu_ms']['median']} ms, gpu {rows[name]['gpu_ms']['median']} "
              f"ms, max diff {levels:.2f} levels", flush=True)
    return rows


# --- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here (rewritten after each part)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure")
    parser.add_argument("--families", default="star,flash", help="comma-separated: star, flash")
    parser.add_argument("--modes", default="eager,compiled", help="comma-separated decode modes to time")
    parser.add_argument("--first-token-modes", default="", help="comma-separated modes timed for 1 token only")
    parser.add_argument("--skip-preprocess", action="store_true", help="do not time frame preprocessing")
    parser.add_argument("--attention", action="store_true", help="also time decode attention variants")
    args = parser.parse_args()
    tiny = args.tiny
    device, dtype = (torch.device("cpu"), torch.float32) if tiny else (torch.device("cuda"), torch.bfloat16)
    compile_config = None
    if tiny:  # the compiled mode on a CPU: trace whole, run eagerly (checks the graph, not the speed)
        compile_config = CompileConfig(backend="eager", fullgraph=True, mode=None)
        compile_config._compile_all_devices = True
    modes = args.modes.split(",")
    first_only = [m for m in args.first_token_modes.split(",") if m]
    results = {"environment": environment(device), "launch_overhead_us": launch_overhead_us(device),
               "dtype": str(dtype), "decode_tokens": DECODE_TOKENS, "repeats": args.repeats}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    torch.manual_seed(0)
    with torch.inference_mode():
        if "star" in args.families:
            start = time.perf_counter()
            model = star_model(device, dtype, tiny)
            results["star_build_seconds"] = round(time.perf_counter() - start, 1)
            results["star"] = bench_family(
                "star", model, model.language_model, lambda: star_prompt(model, device, dtype),
                lambda: star_prompt(model, device, dtype, frames=2), args.repeats, device, compile_config, modes,
                cache_len_for(model.memory.num_tokens(1 << 20)), first_only)
            results["star"]["peak_gpu_gib"] = peak_gib(device)
            del model
            gc.collect()
            save()
        if "flash" in args.families:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            model = flash_model(device, dtype, tiny)
            results["flash_build_seconds"] = round(time.perf_counter() - start, 1)
            grid = (8, 8) if tiny else (32, 32)
            results["flash"] = bench_family(
                "flash", model, model, lambda: flash_prompt(model, device, dtype, 8 if tiny else 120, grid),
                lambda: flash_prompt(model, device, dtype, 1, (8, 8)), args.repeats, device, compile_config, modes,
                cache_len_for(model.flash_memory.num_tokens(1 << 20, grid_hw=(32, 32))), first_only)
            results["flash"]["peak_gpu_gib"] = peak_gib(device)
            del model
            gc.collect()
            save()
        if args.attention:
            results["attention"] = bench_attention(device, dtype, tiny)
            save()
        if not args.skip_preprocess:
            results["preprocess"] = bench_preprocess(device, args.repeats, tiny)
    sync(device)
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
