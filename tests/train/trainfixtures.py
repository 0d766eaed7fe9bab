"""Factories for the training-data tests: media files and data trees shaped like the published recipes' data.

- :func:`llava_tree`: the LLaVA / LLaMA-VID layout of the STAR recipe: ``pretrain/llava_558k_with_webvid.json`` (a
  JSON list, pretty-printed) and ``finetune/llava_v1_5_mix665k_with_video_chatgpt.json`` with their
  ``image_features``/``video_features`` folders of safetensors whose names are the rows' image/video names.
- :func:`qwen_tree`: the Qwen recipe's LLaVA-Video-178K layout: ``trainset.json`` rows with ``video`` (``.mp4``
  names of frame folders) or ``videos`` (a list naming the frame folder), frames under ``frames/``.

Row texts are copied in shape from the published files (placeholder position, roles, multi-turn, text-only rows).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

CLIP_PATCHES, CLIP_DIM = 256, 1024


def write_features(path: Path, shape: tuple[int, ...]) -> Path:
    """A real safetensors file ``{"feature": zeros(shape, float16)}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"feature": np.zeros(shape, np.float16)}, str(path))
    return path


def write_header_only_features(path: Path, shape: tuple[int, ...]) -> Path:
    """A safetensors header announcing ``feature`` of ``shape`` with NO tensor bytes after it.

    Reading it succeeds only for code that reads nothing but the header.
    """
    count = int(np.prod(shape))
    header = {"feature": {"dtype": "F16", "shape": list(shape), "data_offsets": [0, 2 * count]}}
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    return path


def write_image(path: Path, height: int = 32, width: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
    return path


def write_frames(folder: Path, count: int, height: int = 32, width: int = 32) -> Path:
    """``count`` JPEG frames ``000000.jpg`` ... (the published extraction's names)."""
    for i in range(count):
        write_image(folder / f"{i:06d}.jpg", height, width)
    return folder


def write_json(path: Path, rows: list, indent: int | None = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=indent))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def turn(who: str, value: str) -> dict:
    return {"from": who, "value": value}


STAGE1_ROWS = [
    {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            turn("human", "Render a clear and concise summary of the photo.\n<image>"),
            turn("gpt", "select luxury furniture 3 - inch gel memory foam mattress topper"),
        ],
    },
    {
        "id": "1026004934",
        "video": "webvid/1026004934.mp4",
        "conversations": [
            turn("human", "<image>\nGive a brief explanation of the video."),
            turn("gpt", "Aerial view of a forest in autumn."),
        ],
    },
]

STAGE2_ROWS = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            turn("human", "<image>\nWhat are the colors of the bus in the image?"),
            turn("gpt", "The bus in the image is white and red."),
            turn("human", "What feature can be seen on the back of the bus?"),
            turn("gpt", "The back of the bus features an advertisement."),
        ],
    },
    {
        "id": "i6IyJda_0",
        "conversations": [
            turn("human", "How to tell if a customer segment is well segmented? In 3 bullet points."),
            turn("gpt", "1. Homogeneity 2. Distinctiveness 3. Reliability"),
        ],
    },
    {
        "id": "v_k_ZXmr8pmrs",
        "video": "v_k_ZXmr8pmrs.mp4",
        "conversations": [
            turn("human", "<video>\nWhat is the man doing in the video?"),
            turn("gpt", "He is playing the bagpipes."),
        ],
    },
]


def llava_tree(root: Path) -> Path:
    """The STAR recipe's data folders under ``root``; returns ``root``."""
    write_json(root / "pretrain" / "llava_558k_with_webvid.json", STAGE1_ROWS)
    write_features(root / "pretrain" / "image_features" / "00453" / "004539375.safetensors", (CLIP_PATCHES, CLIP_DIM))
    write_features(
        root / "pretrain" / "video_features" / "webvid" / "1026004934.safetensors", (3, CLIP_PATCHES, CLIP_DIM)
    )
    write_json(root / "finetune" / "llava_v1_5_mix665k_with_video_chatgpt.json", STAGE2_ROWS)
    write_features(
        root / "finetune" / "image_features" / "coco" / "train2017" / "000000033471.safetensors",
        (CLIP_PATCHES, CLIP_DIM),
    )
    write_features(root / "finetune" / "video_features" / "v_k_ZXmr8pmrs.safetensors", (2, CLIP_PATCHES, CLIP_DIM))
    return root


QWEN_ROWS = [
    {
        "id": "v_-5ZX-hQJ1Xs",
        "conversations": [
            turn(
                "human",
                "<image>\nWhat is the main activity in the video?\nA. Cooking\nB. Surfing\nC. Dancing\n"
                "Answer with the option's letter from the given choices directly.",
            ),
            turn("gpt", "B."),
        ],
        "data_source": "activitynet",
        "video": "academic_source/activitynet/v_-5ZX-hQJ1Xs.mp4",
    },
    {
        "id": "ytb_7nRmsEw7nsE_2",
        "conversations": [
            turn("user", "<image>\nDescribe the video in detail."),
            turn("assistant", "A woman ties a knot."),
            turn("user", "What colour is the rope?"),
            turn("assistant", "Blue."),
        ],
        "videos": ["liwei_youtube_videos/ytb_7nRmsEw7nsE/split_2"],
    },
]


def qwen_tree(root: Path, frames: tuple[int, int] = (6, 4), size: tuple[int, int] = (32, 32)) -> Path:
    """The Qwen recipe's rows (``trainset.json``) and frame folders under ``root/frames``; returns ``root``."""
    write_json(root / "trainset.json", QWEN_ROWS, indent=None)
    write_frames(root / "frames" / "academic_source" / "activitynet" / "v_-5ZX-hQJ1Xs", frames[0], *size)
    write_frames(root / "frames" / "liwei_youtube_videos" / "ytb_7nRmsEw7nsE" / "split_2", frames[1], *size)
    return root
