"""Write the synthetic demo clip ``assets/sample.mp4`` (7 s, 8 fps, 320x240, H.264) with PyAV only.

Content: a coloured square slides across a gradient background; halfway through the scene cuts to a new
background and a square of another colour moving back, so memory and retrieval demos have something that
changes over time and one clear scene change. Every frame is computed from its index, so the clip can be
regenerated at will:

    python scripts/make_sample_video.py                      # writes assets/sample.mp4
    python scripts/make_sample_video.py --out /tmp/clip.mp4 --seconds 20 --fps 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


def render_frame(k: int, num_frames: int, width: int, height: int) -> np.ndarray:
    """Frame ``k`` of ``num_frames`` as ``(height, width, 3)`` uint8 RGB."""
    half = num_frames // 2
    second_scene = k >= half
    ramp_x = np.broadcast_to(np.linspace(0.0, 1.0, width)[None, :], (height, width))  # (h, w)
    ramp_y = np.broadcast_to(np.linspace(0.0, 1.0, height)[:, None], (height, width))  # (h, w)
    if second_scene:  # green-to-yellow vertical gradient
        frame = np.stack([230 * ramp_y, np.full_like(ramp_y, 200), np.full_like(ramp_y, 40)], axis=-1)
    else:  # blue-to-purple horizontal gradient
        frame = np.stack([40 + 150 * ramp_x, np.full_like(ramp_x, 30), np.full_like(ramp_x, 200)], axis=-1)
    # Progress through the current scene, 0 -> 1; the second square travels right to left.
    progress = (k - half) / max(num_frames - half - 1, 1) if second_scene else k / max(half - 1, 1)
    if second_scene:
        progress = 1.0 - progress
    side = height // 4
    x = int(round(progress * (width - side)))
    y = (height - side) // 2 + int(round(0.25 * (height - side) * np.sin(2 * np.pi * progress)))
    frame[y : y + side, x : x + side] = (30, 60, 230) if second_scene else (250, 60, 40)
    return frame.round().astype(np.uint8)


def write_video(out: Path, seconds: float, fps: int, width: int, height: int) -> int:
    """Encode the clip to ``out``; returns the number of frames written."""
    num_frames = int(round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = 2 * fps
        stream.options = {"crf": "26", "preset": "medium", "threads": "1"}
        for k in range(num_frames):
            image = av.VideoFrame.from_ndarray(render_frame(k, num_frames, width, height), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return num_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .mp4 path")
    parser.add_argument("--seconds", type=float, default=7.0, help="clip length in seconds")
    parser.add_argument("--fps", type=int, default=8, help="frames per second")
    parser.add_argument("--width", type=int, default=320, help="frame width (even)")
    parser.add_argument("--height", type=int, default=240, help="frame height (even)")
    args = parser.parse_args()
    num_frames = write_video(args.out, args.seconds, args.fps, args.width, args.height)
    print(f"wrote {args.out} ({num_frames} frames, {args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
