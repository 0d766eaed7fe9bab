"""Streaming speed of both families at full size (random weights) through ``StreamSession``, beside offline answers.

For each family (STAR: CLIP ViT-L/14 + Vicuna-7B shape, 681 memory tokens; Flash: Qwen2-VL-7B, 11,520 memory
tokens at 448x448), bf16, one GPU, batch 1, every figure a spread over repeats (``benchlib.spread``):
  1. sustained ingest: frames per second of wall time from the first ``push_frames(block=True)`` of a round of
     fresh 448x448 frames until ``drain()`` (preprocessing, vision encoder and memory update; prefix cache off);
  2. after 10, 100, 1k, 10k and 100k frames: time to first token of ``ask`` with the prefix cache (each repeat
     first folds one new memory step of frames in and waits for the worker to prefill the new version's prompt
     head, so every question sees a new memory), ms per token (``(total - first token) / (N - 1)`` of an answer
     forced to N tokens), GPU memory allocated and peak, and the session's state, bank and prefix sizes;
  3. time to first token while a feeder thread pushes fresh frames at 30 fps of wall time (drop policy "oldest";
     the frames dropped and the rate actually ingested are reported);
  4. side by side at 100, 1k and 10k frames, as ratios to (2): the family's offline path (``compress`` over the
     clip's features, projection, splice and a full prefill to the first token, through the same decoder) and
     transformers' own ``Qwen2VLForConditionalGeneration`` (7B, random weights) answering from at most 64
     uniformly sampled frames of the clip (preprocessing, ViT and prefill to the first token, eager ``generate``).
     The offline path is handed the clip's features (its encoding, ``frames / ingest fps`` more, is left out);
     the uniform baseline must encode its frames when the question comes (which frames depends on when).

Reaching 100k frames: the frames between the measured points are folded in through a session whose backend
replaces only the vision encoder (``FeatureFeed``): each memory step gets fresh random features of exactly the
encoder's output shape (CLIP: 256 x 1024; Qwen2-VL: the 448x448 frame's 32x32 and 16x16 patch grids), and
``memory.update``, the bank, the prefix cache and the answers are the real ones. The state after N frames therefore
has the shapes, sizes and caps of a real N-frame stream; encoder speed is figure (1), independent of N.

Prompts: a tiny locally trained tokenizer (no downloads) with the models' special ids, so the text around the
memory is a few dozen tokens, as a short question is.

    python scripts/bench_stream.py --out bench_stream.json          # 1 GPU; not yet timed (2 compiles, 3 x 7B)
    python scripts/bench_stream.py --families flash --skip-uniform  # one part at a time
    python scripts/bench_stream.py --tiny                           # tiny models on the CPU: checks it runs

Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch
from bench_decode import QWEN2VL_7B_TEXT, QWEN2VL_7B_VISION, VICUNA_7B, build
from benchlib import environment, launch_overhead_us, peak_gib, spread, sync, time_calls
from transformers import LlamaConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.families import get_family
from flash_vstream.inference.pipeline import FlashVStream
from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.inference.session_backends import Snapshot, session_backend
from flash_vstream.inference.star_inputs import StarInputBuilder
from flash_vstream.inference.streaming import StreamSession
from flash_vstream.memory.flash import FlashMemoryConfig
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLConfig, FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.vision.features import DualResFeatures

QUESTION = "What is happening in the video? Describe the scene."
VISION_SPECIALS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                   "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


# --- setup -------------------------------------------------------------------------------------------------------
def qwen_ids(tokenizer) -> dict:
    """Special-token ids of a Qwen2-VL config, taken from ``tokenizer`` (the tiny ChatML one)."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in VISION_SPECIALS.items()}
    return {**ids, "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def star_vs(device, dtype, tiny: bool, decode: str) -> FlashVStream:
    """A STAR-family ``FlashVStream``: random CLIP ViT-L/14 + Vicuna-7B shape (tiny: the make-tiny shapes)."""
    tokenizer = build_tiny_tokenizer("llama")
    if tiny:
        from flash_vstream.model.tiny import tiny_star_config

        config = tiny_star_config("llama", vocab_size=len(tokenizer))
    else:
        config = FlashVStreamConfig(text_config=LlamaConfig(**VICUNA_7B).to_dict(), vision_tower_name=None)
    model = build(FlashVStreamForCausalLM, config, device, dtype)
    return FlashVStream(model, tokenizer, StarInputBuilder.for_model(model, tokenizer),
                        get_family("star").sampler.build(), family="star", decode=decode)


def flash_vs(device, dtype, tiny: bool, decode: str) -> FlashVStream:
    """A Flash-family ``FlashVStream``: random Qwen2-VL-7B with the published Flash Memory (tiny: make-tiny's)."""
    tokenizer = build_tiny_tokenizer("chatml")
    if tiny:
        from flash_vstream.model.tiny_qwen2vl import tiny_flash_config

        config = tiny_flash_config(tokenizer)
    else:
        config = FlashVStreamQwen2VLConfig(
            vision_config={**QWEN2VL_7B_VISION, "flash_memory_config": FlashMemoryConfig().to_published()},
            tie_word_embeddings=False, **QWEN2VL_7B_TEXT, **qwen_ids(tokenizer))
    model = build(FlashVStreamQwen2VLForConditionalGeneration, config, device, dtype)
    return FlashVStream(model, tokenizer, FlashInputBuilder.for_model(model, tokenizer, max_pixels=448 * 448),
                        get_family("flash").sampler.build(), family="flash", decode=decode)


class FeatureFeed:
    """A family's session backend with the vision encoder replaced by fresh random features of its output shape.

    Everything but ``ingest`` is the family's own backend; ``ingest`` ignores the pixels of the (tiny) frames it
    gets and folds ``len(frames)`` frames' worth of new random features into the memory with the real
    ``memory.update``, so long streams are reached at the memory's speed rather than the encoder's.

    Args:
        vs: the loaded model.
        frame_size: side of the square frames the real stream has (sets the Flash patch grids).
    """

    def __init__(self, vs: FlashVStream, frame_size: int):
        self.vs, self.inner = vs, session_backend(vs)
        self.frames_per_step = self.inner.frames_per_step
        self.dtype = next(vs.model.parameters()).dtype
        if vs.family == "flash":
            _, h, w = vs.input_builder.frame_processor.grid_thw(2, frame_size, frame_size)
            self.grid = (h, w)

    def ingest(self, state, frames: np.ndarray, times: np.ndarray) -> None:
        model, device, t = self.vs.model, self.vs.device, len(frames)
        if self.vs.family == "star":
            tower = model.vision_tower
            features = torch.randn(t, tower.num_patches, tower.hidden_size, device=device, dtype=self.dtype)
            model.memory.update(state, features, torch.as_tensor(np.asarray(times, dtype=np.float32)))
        else:
            model.flash_memory.update(state, random_dual_features(model, t // self.frames_per_step, self.grid))

    def init_state(self):
        return self.inner.init_state()

    def snapshot(self, state):
        return self.inner.snapshot(state)

    def prompt(self, snapshot, question, assistant_prefix=""):
        return self.inner.prompt(snapshot, question, assistant_prefix)

    def prefill(self, snapshot, prompt):
        return self.inner.prefill(snapshot, prompt)

    def generate(self, snapshot, prompt, prefix, **generation):
        return self.inner.generate(snapshot, prompt, prefix, **generation)


def random_dual_features(model, patches: int, grid: tuple[int, int]) -> DualResFeatures:
    """``patches`` temporal patches of new random Qwen2-VL ViT tokens at both resolutions, on the model's device."""
    width, (h, w) = model.config.vision_config.embed_dim, grid
    param = next(model.parameters())
    return DualResFeatures(
        high=torch.randn(patches, h * w, width, device=param.device, dtype=param.dtype),
        low=torch.randn(patches, (h // 2) * (w // 2), width, device=param.device, dtype=param.dtype),
        grid_hw=grid, pool_size=2,
    )


def random_frames(count: int, size: int, seed: int) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 noise frames (new ones for every seed)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def gpu_gib(device) -> dict:
    """GPU memory allocated now and at peak (since the family's part began), GiB; ``None`` on the CPU."""
    if device.type != "cuda":
        return {"gpu_allocated_gib": None, "gpu_peak_gib": None}
    allocated = round(torch.cuda.memory_allocated(device) / 2**30, 2)
    return {"gpu_allocated_gib": allocated, "gpu_peak_gib": peak_gib(device)}


# --- 1. sustained ingest -----------------------------------------------------------------------------------------
def bench_ingest(vs, args, device) -> dict:
    """Frames/s of the real backend over rounds of fresh frames pushed as fast as the session takes them."""
    rates = []
    with StreamSession(vs, micro_batch=args.micro_batch, queue_frames=4 * args.micro_batch,
                       prefix_cache=False) as session:
        session.push_frames(random_frames(2 * args.micro_batch, args.frame_size, 0), block=True)  # warm-up
        session.drain()
        for r in range(args.repeats):
            frames = random_frames(args.ingest_frames, args.frame_size, 1 + r)
            pushed = session.stats().frames_pushed
            times = np.arange(pushed, pushed + len(frames), dtype=np.float64)  # 1 fps of stream time
            sync(device)
            start = time.perf_counter()
            session.push_frames(frames, times, block=True)
            session.drain()
            sync(device)
            rates.append(len(frames) / (time.perf_counter() - start))
            del frames
        dropped = session.stats().frames_dropped
    return {"frame_size": args.frame_size, "frames_per_round": args.ingest_frames, "micro_batch": args.micro_batch,
            "frames_per_s": spread(rates, scale=1.0, digits=1), "frames_dropped": dropped}


# --- 2. time to first token and decode speed after N frames ------------------------------------------------------
def fill(session: StreamSession, target: int, batch: int) -> None:
    """Push tiny frames (the feature feed ignores their pixels) until ``target`` frames were pushed; drain."""
    step = session.backend.frames_per_step
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    while (pushed := session.stats().frames_pushed) < target:
        n = max(step, min(batch, target - pushed) // step * step)
        session.push_frames(np.broadcast_to(frame, (n, 2, 2, 3)), np.arange(pushed, pushed + n, dtype=np.float64),
                            block=True)
    session.drain()


def bench_points(vs, args, device) -> tuple[list[dict], dict]:
    """Per point: TTFT of fresh memory versions with the prefix cache, ms/token, memory; and the fill rate."""
    rows, fill_seconds, filled = [], 0.0, 0
    tokens = args.decode_tokens
    with StreamSession(vs, micro_batch=args.fill_batch, queue_frames=4 * args.fill_batch, max_new_tokens=1,
                       backend=FeatureFeed(vs, args.frame_size)) as session:
        step = session.backend.frames_per_step
        for target in args.points:
            start = time.perf_counter()
            fill(session, target, args.fill_batch)
            fill_seconds += time.perf_counter() - start
            filled = session.stats().frames_pushed
            first, per_token, cached = [], [], []
            for r in range(args.repeats):
                fill(session, session.stats().frames_pushed + step, step)  # a new version, its head prefilled
                sync(device)
                answer = session.ask(f"{QUESTION} ({r})")
                first.append(answer.first_token_seconds)
                cached.append(answer.prefix_cached)
                long = session.ask(f"{QUESTION} [{r}]", max_new_tokens=tokens, min_new_tokens=tokens)
                per_token.append((long.total_seconds - long.first_token_seconds) / (tokens - 1))
            stats = session.stats()
            rows.append({
                "frames": target, "frames_seen": stats.frames_seen, "first_token_ms": spread(first),
                "prefix_cached": all(cached), "ms_per_token": spread(per_token), "decode_tokens": tokens,
                "visual_tokens": answer.num_visual_tokens, "prompt_tokens": answer.prompt_tokens,
                "device_state_bytes": stats.device_nbytes, "bank_bytes": stats.bank_nbytes,
                "bank_entries": stats.bank_entries, "prefix_bytes": stats.prefix_nbytes, **gpu_gib(device),
            })
            print(f"[{vs.family}] {target} frames: first token {rows[-1]['first_token_ms']['median']} ms, "
                  f"{rows[-1]['ms_per_token']['median']} ms/token", flush=True)
    fill_rate = {"method": "FeatureFeed: random encoder-shaped features, real memory.update",
                 "frames": filled, "frames_per_s": round(filled / fill_seconds, 1) if fill_seconds else None}
    return rows, fill_rate


# --- 3. time to first token while ingesting at 30 fps ------------------------------------------------------------
def bench_live(vs, args, device) -> dict:
    """A feeder thread pushes fresh frames at ``args.live_fps`` of wall time; questions come one after another."""
    count = max(2, int(args.live_fps * args.live_seconds))
    frames = random_frames(count, args.frame_size, 100)
    first, queued, failures = [], [], []
    with StreamSession(vs, micro_batch=args.micro_batch, queue_frames=64, drop_policy="oldest",
                       max_new_tokens=1) as session:

        def feed() -> None:
            start = time.monotonic()
            try:
                for i, frame in enumerate(frames):
                    time.sleep(max(0.0, start + i / args.live_fps - time.monotonic()))
                    session.push_frames(frame, i / args.live_fps)
            except Exception as err:  # surfaced below, in the main thread
                failures.append(err)

        feeder = threading.Thread(target=feed, name="bench-feeder")
        start = time.monotonic()
        feeder.start()
        while session.stats().memory_version == 0 and feeder.is_alive():
            time.sleep(0.01)
        while feeder.is_alive():
            answer = session.ask(QUESTION)
            first.append(answer.first_token_seconds)
            queued.append(answer.queue_seconds)
            time.sleep(args.live_ask_interval)
        feeder.join()
        wall = time.monotonic() - start
        if failures:
            raise failures[0]
        if not first:  # the feed ended before the first memory step: one question after it
            first.append(session.ask(QUESTION).first_token_seconds)
        stats = session.stats()
    return {"fps": args.live_fps, "seconds": round(wall, 2), "frame_size": args.frame_size, "questions": len(first),
            "first_token_ms": spread(first), "queue_ms": spread(queued or [0.0]), "frames_pushed": stats.frames_pushed,
            "frames_seen": stats.frames_seen, "frames_dropped": stats.frames_dropped,
            "ingested_fps": round(stats.frames_seen / wall, 1), **gpu_gib(device)}


# --- 4a. the offline compress path -------------------------------------------------------------------------------
def offline_snapshot(vs, frames: int, frame_size: int) -> tuple[Snapshot, object]:
    """Fresh random features of a ``frames``-frame clip, and the offline read-out step ``compress`` -> snapshot."""
    model, dtype = vs.model, next(vs.model.parameters()).dtype
    if vs.family == "star":
        tower = model.vision_tower
        features = torch.randn(frames, tower.num_patches, tower.hidden_size, device=vs.device, dtype=dtype)

        def read(x):
            out = model.memory.compress(x)
            return Snapshot(model.project_memory(out), out.num_tokens)
    else:
        _, h, w = vs.input_builder.frame_processor.grid_thw(2, frame_size, frame_size)
        features = random_dual_features(model, (frames + 1) // 2, (h, w))

        def read(x):
            out = model.flash_memory.compress(x)
            return Snapshot(model.embed_memory([out]), model.flash_memory.decoder_tokens(out))
    return features, read


def bench_offline(vs, args, device) -> list[dict]:
    """From the clip's features: compress, project, splice, full prefill, first token (``answer(features=)``)."""
    backend, rows = session_backend(vs), []
    pad = vs.tokenizer.pad_token_id
    for frames in args.ratio_points:
        tokens = []

        def answer(item, tokens=tokens):
            features, read = item
            snapshot = read(features)
            prompt = backend.prompt(snapshot, QUESTION)
            backend.generate(snapshot, prompt, None, max_new_tokens=1, do_sample=False, pad_token_id=pad)
            tokens.append(snapshot.num_visual_tokens)

        answer(offline_snapshot(vs, frames, args.frame_size))  # warm-up
        times = []
        for _ in range(args.repeats):  # one clip in memory at a time (10k Flash frames: 16 GB of features)
            clip = offline_snapshot(vs, frames, args.frame_size)
            times += time_calls(answer, [clip], device)
            del clip
        rows.append({"frames": frames, "first_token_ms": spread(times), "visual_tokens": tokens[-1]})
        print(f"[{vs.family}] offline {frames} frames: {rows[-1]['first_token_ms']['median']} ms", flush=True)
    return rows


# --- 4b. transformers' Qwen2-VL from uniformly sampled frames ----------------------------------------------------
def bench_uniform(args, device, dtype, tiny: bool) -> dict:
    """transformers' ``Qwen2VLForConditionalGeneration``: min(N, budget) sampled frames -> first token."""
    tokenizer = build_tiny_tokenizer("chatml")
    if tiny:
        from flash_vstream.model.tiny_qwen2vl import TINY_TEXT, TINY_VISION

        config = Qwen2VLConfig(vision_config=TINY_VISION["flash-qwen2vl"], vocab_size=len(tokenizer),
                               tie_word_embeddings=False, **TINY_TEXT, **qwen_ids(tokenizer))
    else:
        config = Qwen2VLConfig(vision_config=QWEN2VL_7B_VISION, tie_word_embeddings=False, **QWEN2VL_7B_TEXT,
                               **qwen_ids(tokenizer))
    model = build(Qwen2VLForConditionalGeneration, config, device, dtype)
    from flash_vstream.vision.qwen2vl import FlashFrameProcessor  # Qwen2-VL's patch layout, without torchvision

    processor = FlashFrameProcessor(max_pixels=448 * 448, device=str(device) if device.type == "cuda" else None)
    video_id = config.video_token_id

    def answer(frames: np.ndarray) -> None:
        pixels, grid = processor(frames)
        count = int(grid.prod()) // 4  # merged tokens: 2x2 patches each
        video = "<|vision_start|>" + "<|video_pad|>" * count + "<|vision_end|>"
        text = tokenizer.apply_chat_template([{"role": "user", "content": video + QUESTION}], tokenize=False,
                                             add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=(ids == video_id).long() * 2, pixel_values_videos=pixels.to(device, dtype),
                       video_grid_thw=grid.to(device), max_new_tokens=1, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)

    rows, by_count = [], {}
    for frames in args.ratio_points:
        sampled = min(frames, args.uniform_frames)
        sampled += sampled % 2  # whole temporal patches
        if sampled not in by_count:
            answer(random_frames(sampled, args.frame_size, 0))  # warm-up
            clips = (random_frames(sampled, args.frame_size, 1 + r) for r in range(args.repeats))
            by_count[sampled] = spread(time_calls(answer, clips, device))
        rows.append({"frames": frames, "sampled_frames": sampled, "first_token_ms": by_count[sampled]})
        print(f"[uniform] {frames} frames ({sampled} sampled): {by_count[sampled]['median']} ms", flush=True)
    return {"model": "transformers Qwen2VLForConditionalGeneration", "frame_budget": args.uniform_frames,
            "decode": "eager generate", "points": rows, "peak_gpu_gib": peak_gib(device)}


def ratios(results: dict, points: list[int]) -> dict:
    """Medians of the offline and uniform first-token times over the streaming one, per family and frame count."""
    out = {}
    uniform = {row["frames"]: row["first_token_ms"]["median"] for row in results.get("uniform_qwen2vl", {}).get(
        "points", [])}
    for family in ("star", "flash"):
        if family not in results:
            continue
        stream = {row["frames"]: row["first_token_ms"]["median"] for row in results[family]["points"]}
        offline = {row["frames"]: row["first_token_ms"]["median"] for row in results[family]["offline_compress"]}
        out[family] = [{
            "frames": n, "stream_first_token_ms": stream[n], "offline_first_token_ms": offline[n],
            "uniform_first_token_ms": uniform.get(n),
            "offline_over_stream": round(offline[n] / stream[n], 2),
            "uniform_over_stream": round(uniform[n] / stream[n], 2) if n in uniform else None,
        } for n in points]
    return out


# --- main --------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (``argv``: default ``sys.argv``); exits with status 2 naming a bad flag."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here (rewritten after each part)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script runs")
    parser.add_argument("--families", default="star,flash", help="comma-separated: star, flash")
    parser.add_argument("--skip-uniform", action="store_true", help="do not run the transformers Qwen2-VL baseline")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure")
    parser.add_argument("--points", default="10,100,1000,10000,100000", help="frame counts of part 2")
    parser.add_argument("--ratio-points", default="100,1000,10000", help="frame counts of part 4 (among --points)")
    parser.add_argument("--frame-size", type=int, default=None, help="square frame side (default 448; tiny 56)")
    parser.add_argument("--micro-batch", type=int, default=16, help="frames per encoder call (parts 1 and 3)")
    parser.add_argument("--ingest-frames", type=int, default=None, help="frames per ingest round (default 256)")
    parser.add_argument("--fill-batch", type=int, default=64, help="frames per memory update while filling")
    parser.add_argument("--decode-tokens", type=int, default=None, help="forced answer length for ms/token")
    parser.add_argument("--live-fps", type=float, default=30.0, help="feeder rate of part 3 (wall-clock fps)")
    parser.add_argument("--live-seconds", type=float, default=None, help="length of part 3 (default 20; tiny 1)")
    parser.add_argument("--live-ask-interval", type=float, default=0.5, help="seconds between part-3 questions")
    parser.add_argument("--uniform-frames", type=int, default=64, help="frame budget of the uniform baseline")
    parser.add_argument("--decode", default="auto", help="decode mode of the families (auto: compiled on CUDA)")
    args = parser.parse_args(argv)
    args.points = [int(p) for p in args.points.split(",")]
    args.ratio_points = [int(p) for p in args.ratio_points.split(",")]
    if sorted(args.points) != args.points or min(args.points) < 2:
        parser.error(f"--points must be increasing frame counts of at least 2, got {args.points}")
    if set(args.ratio_points) - set(args.points):
        parser.error(f"--ratio-points {args.ratio_points} must be among --points {args.points}")
    tiny = args.tiny
    args.frame_size = args.frame_size or (56 if tiny else 448)
    args.ingest_frames = args.ingest_frames or (8 if tiny else 256)
    args.decode_tokens = args.decode_tokens or (4 if tiny else 64)
    args.live_seconds = args.live_seconds if args.live_seconds is not None else (1.0 if tiny else 20.0)
    if args.decode_tokens < 2 or args.repeats < 1:
        parser.error("--decode-tokens must be at least 2 and --repeats at least 1")
    return args


def main() -> None:
    args = parse_args()
    tiny = args.tiny
    device, dtype = (torch.device("cpu"), torch.float32) if tiny else (torch.device("cuda"), torch.bfloat16)
    results = {"environment": environment(device), "launch_overhead_us": launch_overhead_us(device),
               "dtype": str(dtype), "settings": {k: v for k, v in vars(args).items() if k != "out"}}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    torch.manual_seed(0)
    builders = {"star": star_vs, "flash": flash_vs}
    for family in [f for f in args.families.split(",") if f]:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        vs = builders[family](device, dtype, tiny, args.decode)
        part = {"build_seconds": round(time.perf_counter() - start, 1),
                "decoder": {"mode": vs.decoder.mode, "compile_seconds": vs.decoder.compile_seconds}}
        results[family] = part
        with torch.inference_mode():
            part["ingest"] = bench_ingest(vs, args, device)
            print(f"[{family}] ingest: {part['ingest']['frames_per_s']}", flush=True)
            part["points"], part["fill"] = bench_points(vs, args, device)
            save()
            part["live"] = bench_live(vs, args, device)
            print(f"[{family}] live: {part['live']['first_token_ms']}", flush=True)
            part["offline_compress"] = bench_offline(vs, args, device)
        part["peak_gpu_gib"] = peak_gib(device)
        save()
        del vs
        gc.collect()
    if not args.skip_uniform:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            results["uniform_qwen2vl"] = bench_uniform(args, device, dtype, tiny)
    results["ratios"] = ratios(results, args.ratio_points)
    sync(device)
    save()
    print(json.dumps(results["ratios"], indent=2))


if __name__ == "__main__":
    main()
