"""StreamingVLM streaming speed at full size (Qwen2.5-VL-7B shape, random weights, bf16) under each cache policy.

A simulated stream at 2 fps of 560x1008 frames (720 vision tokens per 1-s chunk, as 16:9 HD video gives) runs
through the StreamingVLM session backend (:mod:`flash_vstream.inference.streamingvlm_session`) exactly as a live
stream does: per chunk, eviction (the cache follows its segment records: ``index_select`` and delta rotation), the
ViT on the chunk's two frames, the prefill of the round, and the commentary (at most 20 tokens; random weights
practically never say ``<|im_end|>``, so every chunk speaks all 20: the worst case). Each phase is bracketed by a
device synchronisation. Per chunk it records the phase times, ms per token (decode only, and the published
measure: prefill + decode over the tokens spoken), the cache length, the largest position and GPU memory; per
``--segment`` seconds of stream it reports spreads (``benchlib.spread``), the seconds of video processed per second
of wall time (chunk seconds / chunk wall time) and the peak GPU memory of the segment.

Policies (``--policies``): streamingvlm (the method), full (no eviction; it stops at OOM or ``--seconds``), sliding
(no eviction, restart every 100 s), recompute (the method's windows re-prefilled every chunk).

Decoding (``--decode``, default auto): the static cache with the compiled step on CUDA
(:mod:`flash_vstream.inference.streamingvlm_decode`), or "eager". Before each policy's measured run,
``--warmup-seconds`` of stream on a throwaway state compile the step and warm the allocator (not recorded).
``--profile`` prints a ``torch.profiler`` table of one chunk after the warm-up. "ingest fps" is the frames of a
chunk over its eviction + ViT + prefill time (what reading the video costs, speech aside).

    python scripts/bench_streamingvlm.py --policies streamingvlm --seconds 3600 --out svlm.json   # 1 GPU
    python scripts/bench_streamingvlm.py --policies full,sliding,recompute --seconds 300 --out base.json
    python scripts/bench_streamingvlm.py --tiny                   # tiny model on the CPU: checks it runs

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from benchlib import environment, peak_gib, report, spread, sync
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from flash_vstream.inference.streamingvlm_session import StreamingVLMSessionBackend
from flash_vstream.model.streamingvlm import SETTINGS_KEY, StreamingVLMSettings, tiny_streamingvlm_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

QWEN25VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                        rms_norm_eps=1e-6, rope_theta=1000000.0,
                        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
QWEN25VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
PHASES = ("evict", "vision", "prefill", "speak")


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> SimpleNamespace:
    """A random-weight model (full size, or the tiny test shape) with the tiny tokenizer's special ids.

    Returned as the two fields the backend reads (``model``, ``tokenizer``), so nothing of the video-file layer
    (PyAV, decord) is imported: the frames are synthetic.
    """
    tokenizer = build_tiny_tokenizer("chatml")
    if tiny:
        config = tiny_streamingvlm_config(tokenizer)
    else:
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        config = Qwen2_5_VLConfig(vision_config=QWEN25VL_7B_VISION, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **ids,
                                  **QWEN25VL_7B_TEXT)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    return SimpleNamespace(model=model, tokenizer=tokenizer, family="streamingvlm")


def chunk_times(settings: StreamingVLMSettings, second: int) -> np.ndarray:
    return np.array([second + k / settings.fps for k in range(settings.frames_per_chunk)])


def warm_up(backend, pool: list[np.ndarray], seconds: int, profile: bool) -> None:
    """``seconds`` chunks on a throwaway state (compilation, allocator); then, with ``profile``, one profiled chunk."""
    state = backend.init_state()
    for i in range(seconds):
        backend.step(state, pool[i % len(pool)], chunk_times(backend.settings, i))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profiler(activities=activities) as prof:
            backend.step(state, pool[seconds % len(pool)], chunk_times(backend.settings, seconds))
            sync(backend.model.device)
        key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25), file=sys.stderr)


def run_policy(vs, settings: StreamingVLMSettings, seconds: int, frame_size: tuple[int, int], segment: int,
               device: torch.device, *, decode: str = "auto", warmup: int = 0, profile: bool = False,
               on_segment=None) -> dict:
    """Stream ``seconds`` chunks under ``settings``; per-chunk records and per-segment spreads.

    ``on_segment(partial)``, when given, gets the results so far after every segment (a run cut short keeps them).
    """
    setattr(vs.model.config, SETTINGS_KEY, settings.__dict__)
    backend = StreamingVLMSessionBackend(vs, settings, previous_text="A basketball game: home team against the "
                                         "visitors, first quarter.", seed=0, decode=decode)
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (settings.frames_per_chunk, *frame_size, 3), dtype=np.uint8) for _ in range(4)]
    began = time.perf_counter()
    warm_up(backend, pool, warmup, profile)
    warmup_seconds = time.perf_counter() - began
    state = backend.init_state()
    records, oom_at = [], None

    def results() -> dict:
        return {"settings": settings.__dict__, "decode": backend.decoder.mode, "warmup_seconds": warmup_seconds,
                "static_cache_slots": backend.decoder.max_cache_len, "compiles": backend.decoder.compiles,
                "seconds_run": len(records), "oom_at_second": oom_at, "segments": summarise(records, segment),
                "chunks": records}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(seconds):
        stamps = {}

        def clock(phase, stamps=stamps):
            sync(device)
            stamps[phase] = time.perf_counter()

        sync(device)
        start = time.perf_counter()
        try:
            backend.step(state, pool[i % len(pool)], chunk_times(settings, i), clock)
        except torch.OutOfMemoryError:
            oom_at = i
            break
        last = state.layout.rounds[-1].parts if state.layout.rounds else {}
        spoken = sum(last[p].length for p in ("assistant_body", "assistant_mark") if p in last)
        times, previous = {}, start
        for phase in PHASES:
            times[phase] = stamps[phase] - previous
            previous = stamps[phase]
        wall = previous - start
        records.append({
            "second": i, "wall_ms": wall * 1e3, **{f"{p}_ms": t * 1e3 for p, t in times.items()},
            "tokens": spoken, "ms_per_token": times["speak"] * 1e3 / spoken if spoken else None,
            "ms_per_token_published": (times["prefill"] + times["speak"]) * 1e3 / spoken if spoken else None,
            "ingest_fps": settings.frames_per_chunk / (times["evict"] + times["vision"] + times["prefill"]),
            "cache_tokens": state.layout.cached_length(), "max_position": state.layout.max_position(),
            "allocated_gib": torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        })
        if (i + 1) % segment == 0:
            if device.type == "cuda":
                records[-1]["segment_peak_gib"] = peak_gib(device)
                torch.cuda.reset_peak_memory_stats(device)
            print(f"{settings.policy}: {i + 1}/{seconds} s, last chunk {wall * 1e3:.0f} ms", file=sys.stderr,
                  flush=True)
            if on_segment is not None:
                on_segment(results())
    del state
    return results()


def summarise(records: list[dict], segment: int) -> list[dict]:
    out = []
    for first in range(0, len(records), segment):
        part = records[first: first + segment]
        row = {"from_second": first, "to_second": first + len(part)}
        for key in ("wall_ms", "evict_ms", "vision_ms", "prefill_ms", "speak_ms", "ms_per_token",
                    "ms_per_token_published"):
            values = [r[key] / 1e3 for r in part if r[key] is not None]
            if values:
                row[key] = spread(values)
        row["video_seconds_per_second"] = spread([1.0 / (r["wall_ms"] / 1e3) for r in part], scale=1.0)
        row["ingest_fps"] = spread([r["ingest_fps"] for r in part], scale=1.0)
        row["cache_tokens_max"] = max(r["cache_tokens"] for r in part)
        row["max_position"] = max(r["max_position"] for r in part)
        peaks = [r["segment_peak_gib"] for r in part if r.get("segment_peak_gib") is not None]
        row["peak_gib"] = max(peaks) if peaks else None
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="streamingvlm,full,sliding,recompute")
    parser.add_argument("--seconds", type=int, default=600, help="seconds of stream per policy (default 600)")
    parser.add_argument("--policy-seconds", default="",
                        help="per-policy stream seconds overriding --seconds, e.g. streamingvlm=600,full=120")
    parser.add_argument("--segment", type=int, default=60, help="seconds per reported segment (default 60)")
    parser.add_argument("--restart-seconds", type=float, default=100.0, help="sliding: seconds between restarts")
    parser.add_argument("--decode", default="auto", choices=["auto", "eager", "static", "compiled"],
                        help="how tokens are decoded (default auto: compiled on CUDA, eager on the CPU)")
    parser.add_argument("--warmup-seconds", type=int, default=3, help="unrecorded chunks before each policy")
    parser.add_argument("--profile", action="store_true", help="print a profiler table of one chunk per policy")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (checks the script runs)")
    parser.add_argument("--out", default=None, help="JSON file for the results (default: print)")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    bad = sorted(set(policies) - {"streamingvlm", "full", "sliding", "recompute"})
    if bad:
        raise SystemExit(f"--policies: unknown {bad}; choose from streamingvlm, full, sliding, recompute")
    try:
        policy_seconds = {k: int(v) for k, v in (item.split("=") for item in args.policy_seconds.split(",") if item)}
    except ValueError:
        raise SystemExit(f"--policy-seconds: expected policy=seconds pairs, got {args.policy_seconds!r}") from None
    if sorted(set(policy_seconds) - set(policies)):
        raise SystemExit(f"--policy-seconds: {sorted(set(policy_seconds) - set(policies))} not in --policies")
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    vs = build(args.tiny, device, dtype)
    base = StreamingVLMSettings(restart_seconds=args.restart_seconds)
    frame_size = (560, 1008)
    if args.tiny:  # small frames and windows, so every policy evicts or restarts within a few seconds
        base = base.replace(min_pixels=56 * 56, max_pixels=112 * 112, text_sink=8, text_window=8, vision_window=2,
                            text_rounds=3, max_new_tokens=4, restart_seconds=min(args.restart_seconds, 3.0))
        frame_size = (84, 112)
    results = {"environment": environment(device), "dtype": str(dtype), "frame_size": frame_size}
    with torch.inference_mode():
        for policy in policies:
            def save(partial, policy=policy):
                results[policy] = partial
                if args.out:
                    Path(args.out).write_text(json.dumps(results, indent=2, default=str))

            seconds = policy_seconds.get(policy, args.seconds)
            results[policy] = run_policy(vs, base.replace(policy=policy), seconds, frame_size, args.segment,
                                         device, decode=args.decode, warmup=args.warmup_seconds,
                                         profile=args.profile, on_segment=save)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if args.out:  # after every policy, so a run cut short keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    report(results, args.out)


if __name__ == "__main__":
    main()
