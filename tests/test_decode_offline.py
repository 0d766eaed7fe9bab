"""``answer(video=...)`` reads STAR videos a chunk at a time: the same tokens, and RAM that does not grow with length.

The STAR memory needs only each frame's CLIP features pooled to its spatial grid, so the pipeline preprocesses,
encodes and pools one chunk of frames at a time and keeps only the pooled features. Tested on tiny models at fp32:
the pooled features and the answer are exactly those of the all-frames path; the peak of Python-tracked memory
(numpy: decoded frames and preprocessed pixels) while answering about a 600-frame video stays at the level of a
60-frame one, where holding the frames (or their pixels) would make it ten times larger.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from flash_vstream import load_model
from flash_vstream.model.tiny import make_tiny_star
from flash_vstream.model.tiny_qwen2vl import make_tiny_flash
from flash_vstream.video import read_video

HEIGHT, WIDTH = 96, 128


def write_video(path: Path, num_frames: int, fps: int = 1) -> Path:
    """``num_frames`` distinct frames (moving gradients) at ``fps``: the STAR sampler (1 fps) takes every one."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"g": "16"}
        for k in range(num_frames):
            image = np.stack([(rows * 2 + k * 5) % 256, (cols * 2 + k * 3) % 256, (rows + cols + k) % 256], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    return load_model(make_tiny_star(tmp_path_factory.mktemp("star") / "ckpt", seed=5))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {n: write_video(root / f"v{n}.mp4", n) for n in (60, 150, 600)}


def test_chunked_video_features_and_answers_equal_the_all_frames_path(star, videos):
    video = videos[150]  # 150 frames: chunks of 64, 64 and 22
    frames = read_video(video, sampler=star.sampler).frames
    assert len(frames) == 150 and star.model.vision_tower.batch_size == 64
    with torch.inference_mode():
        pixels = star.input_builder.processor(frames)
        expected = star.model.memory.pool_frames(star.model.encode_frames(pixels))
    pooled = star.input_builder.read_video(video, star.sampler)["features"]
    assert torch.equal(pooled, expected)  # bit for bit: same chunks through the tower, per-frame pooling
    question = "What changes over time?"
    from_video = star.answer_with_details(question, video=video, max_new_tokens=10)
    from_frames = star.answer_with_details(question, frames=frames, max_new_tokens=10)
    assert from_video == from_frames
    assert from_video.num_frames == 150 and from_video.num_visual_tokens == star.model.memory.num_tokens(150)


def peak_bytes(run) -> int:
    """Peak of Python-tracked allocations (numpy arrays included) while ``run()`` runs, above the start."""
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


def test_peak_memory_of_a_long_video_stays_at_one_chunk(star, videos):
    short = peak_bytes(lambda: star.answer("What moves?", video=videos[60], max_new_tokens=2))
    long = peak_bytes(lambda: star.answer("What moves?", video=videos[600], max_new_tokens=2))
    # All 600 frames at once: the decoded frames plus the processor's float64 rescale and float32 output per frame.
    held = 600 * (HEIGHT * WIDTH * 3 + 3 * 224 * 224 * (8 + 4))
    assert long <= 1.25 * short + 2**21, (short, long)  # a 60-frame chunk and a 64-frame chunk: about the same
    assert long < held / 4, (long, held)


def test_flash_reads_its_bounded_sample_in_one_go(tmp_path, videos):
    """The Flash family samples at most 240 frames, so its offline path is not chunked (and unchanged)."""
    flash = load_model(make_tiny_flash(tmp_path / "flash", seed=5))
    assert flash.sampler.max_frames == 240
    frames = read_video(videos[60], sampler=flash.sampler).frames
    assert np.array_equal(flash.input_builder.read_video(videos[60], flash.sampler)["frames"], frames)
    question = "What moves?"
    assert flash.answer_with_details(question, video=videos[60], max_new_tokens=4) == flash.answer_with_details(
        question, frames=frames, max_new_tokens=4
    )
