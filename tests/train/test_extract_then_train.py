"""``extract-features`` then ``train`` on the features gives the first-step loss of training from the videos.

Both runs go through the user's commands (``flash_vstream.cli.main``): the same tiny STAR checkpoint, the same two
rows, one step of ``configs/train/star_debug.yaml``; only the media root differs (the videos, or the extraction's
output). The first loss and gradient norm logged to each run's ``metrics.jsonl`` are compared, and a third run on
the two rows' features swapped shows the bounds would catch features given to the wrong row.
"""

from __future__ import annotations

import shutil

import pytest
from extractfixtures import row, write_jsonl, write_video
from trainerfixtures import TRAIN_CONFIGS

from flash_vstream.cli import main
from flash_vstream.model.tiny import make_tiny_star
from flash_vstream.train.callbacks import read_metrics

LOSS_TOLERANCE = 2e-6
"""The features are stored in float16 (the published layout); the tower computes them in float32 on CPU. On this
tiny random model that rounding moves the first loss (about 5.83) by 4.8e-7, one float32 ulp, while even handing each
row the other row's video moves it by only 1.1e-5: its loss barely looks at the pictures, so a looser bound (such as
the 1e-4 of the model-level test) could not tell right features from wrong ones. 2e-6 is 4 ulps."""
GRAD_NORM_RTOL = 3e-5
"""The first step's gradient norm is more sensitive: float16 storage moves it by 2.8e-6 (relative), the swap by
1.8e-4."""


def train_one_step(tmp_path, checkpoint, data, media_root, name: str) -> tuple[float, float]:
    """``flash-vstream train`` for one step of the STAR debug recipe; the loss and gradient norm it logged."""
    out = tmp_path / name
    overrides = [f"model.start={checkpoint}", f"data.data={data}", f"data.media_root={media_root}",
                 f"training.output_dir={out}", "training.max_steps=1", "training.save_steps=1"]  # fmt: skip
    assert main(["train", "--config", str(TRAIN_CONFIGS / "star_debug.yaml"), *overrides]) == 0
    logged = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in logged] == [1]
    return logged[0]["loss"], logged[0]["grad_norm"]


def test_training_on_extracted_features_gives_the_loss_of_the_videos(tmp_path):
    checkpoint = make_tiny_star(tmp_path / "ckpt", "star-vicuna", seed=3)
    videos = tmp_path / "videos"
    # 10 s and 6 s at 4 fps: 10 and 6 frames at the STAR family's 1 fps, distinct random blocks in each frame
    write_video(videos / "clips" / "a.mp4", frames=40, seed=1)
    write_video(videos / "clips" / "b.mp4", frames=24, seed=2)
    data = write_jsonl(tmp_path / "data.jsonl", [
        row("a", "video", "clips/a.mp4", question="What is shown in the video?"),
        row("b", "video", "clips/b.mp4", question="What colours appear?"),
    ])  # fmt: skip
    features = tmp_path / "features"
    argv = ["extract-features", "--data", str(data), "--media-root", str(videos), "--out", str(features),
            "--model", str(checkpoint), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in (features / "clips").glob("*.safetensors")) == ["a.safetensors", "b.safetensors"]

    from_videos = train_one_step(tmp_path, checkpoint, data, videos, "from_videos")
    from_features = train_one_step(tmp_path, checkpoint, data, features, "from_features")
    assert from_features[0] == pytest.approx(from_videos[0], abs=LOSS_TOLERANCE)
    assert from_features[1] == pytest.approx(from_videos[1], rel=GRAD_NORM_RTOL)

    # A control the tolerance must catch: the right features given to the wrong rows.
    swapped = tmp_path / "swapped"
    (swapped / "clips").mkdir(parents=True)
    shutil.copy(features / "clips" / "a.safetensors", swapped / "clips" / "b.safetensors")
    shutil.copy(features / "clips" / "b.safetensors", swapped / "clips" / "a.safetensors")
    from_swapped = train_one_step(tmp_path, checkpoint, data, swapped, "from_swapped")
    assert abs(from_swapped[0] - from_videos[0]) > 4 * LOSS_TOLERANCE, (from_swapped, from_videos)
    assert abs(from_swapped[1] - from_videos[1]) > 4 * GRAD_NORM_RTOL * from_videos[1], (from_swapped, from_videos)
