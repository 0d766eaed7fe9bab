"""Factories for the ``extract-features`` tests: small real videos, a data tree of every medium kind, the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np
from PIL import Image

from flash_vstream.train.extract_cli import add_extract_command

VIDEO_FPS = 4
VIDEO_SIZE = 64  # decord cannot decode widths below 64


def write_video(path: Path, frames: int, fps: int = VIDEO_FPS, seed: int = 0) -> Path:
    """An MPEG-4 video whose frames are distinct random blocks (so CLIP features differ frame to frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # (64, 64, 3), 8x8 blocks survive coding
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_frames(folder: Path, count: int, seed: int) -> Path:
    for i in range(count):
        write_image(folder / f"{i:06d}.png", seed + i, size=(40, 40))
    return folder


def row(sample_id: str, key: str | None = None, value=None, question: str = "What happens?") -> dict:
    record = {
        "id": sample_id,
        "conversations": [
            {"from": "human", "value": ("<image>\n" if key else "") + question},
            {"from": "gpt", "value": "Something happens."},
        ],
    }
    if key is not None:
        record[key] = value
    return record


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


EXPECTED_FRAMES = {"videos/a.safetensors": 3, "videos/b.safetensors": 2, "frames/split_2.safetensors": 4}
"""Frames at 1 fps of each extracted video (12 and 8 frames at 4 fps; a 4-frame folder read at 1 fps)."""
IMAGE_TARGETS = ("images/cat.safetensors",)
GOOD_TARGETS = (*EXPECTED_FRAMES, *IMAGE_TARGETS)


def data_tree(root: Path) -> Path:
    """``root/media`` with every kind of medium and ``root/data.jsonl`` naming them; returns the data file.

    Rows: a video, a video used by two rows, a frame folder named by its ``.mp4`` row path (the Qwen recipe), an
    image, a broken video used by two rows, a missing video, a text-only row, and pre-extracted features.
    """
    media = root / "media"
    write_video(media / "videos" / "a.mp4", frames=12, seed=1)
    write_video(media / "videos" / "b.mp4", frames=8, seed=2)
    write_frames(media / "frames" / "split_2", count=4, seed=10)
    write_image(media / "images" / "cat.jpg", seed=20)
    (media / "videos" / "bad.mp4").write_bytes(b"this is not a video" * 10)
    from safetensors.numpy import save_file

    (media / "feats").mkdir()
    save_file({"feature": np.zeros((2, 256, 32), np.float16)}, str(media / "feats" / "old.safetensors"))
    rows = [
        row("a", "video", "videos/a.mp4"),
        row("b1", "video", "videos/b.mp4"),
        row("split", "video", "frames/split_2.mp4"),
        row("cat", "image", "images/cat.jpg"),
        row("bad1", "video", "videos/bad.mp4"),
        row("b2", "videos", ["videos/b.mp4"], question="And then?"),
        row("gone", "video", "videos/gone.mp4"),
        row("text"),
        row("bad2", "video", "videos/bad.mp4", question="Again?"),
        row("old", "video", "feats/old.mp4"),
    ]
    return write_jsonl(root / "data.jsonl", rows)


def extract(argv: list[str]) -> int:
    """Run ``flash-vstream extract-features ARGV`` in this process; its exit code."""
    parser = argparse.ArgumentParser(prog="flash-vstream")
    add_extract_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["extract-features", *argv])
    return args.func(args)
