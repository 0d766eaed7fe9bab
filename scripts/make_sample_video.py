"""Write the demo clip ``assets/sample.mp4`` (7 s, 8 fps, 320x240, H.264) with PyAV only.

Content, drawn with the synthetic generator's shapes (``flash_vstream.data.scenes``): a red circle rolls right
past a static yellow triangle on a dark grey background; halfway through the scene cuts to a dark blue background
where the red circle moves left and a blue square moves up, so memory and retrieval demos have one clear scene
change, and the demo model can be asked ``"What colour is the circle?"`` (red, in both scenes). Every frame is
computed from its index, so the clip can be regenerated at will:

    python scripts/make_sample_video.py                      # writes assets/sample.mp4
    python scripts/make_sample_video.py --out /tmp/clip.mp4 --seconds 20 --fps 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

from flash_vstream.data.scenes import Scene, SceneObject, render_frame

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


def scenes(num_frames: int, width: int, height: int) -> tuple[Scene, Scene]:
    """The two scenes: the first ``num_frames // 2`` frames, then the rest."""
    half = num_frames // 2
    first = Scene(width, height, half, (60, 60, 60), (
        SceneObject("triangle", "yellow", "static", 0.72, 0.3, 0.14),
        SceneObject("circle", "red", "right", 0.2, 0.68, 0.14, travel=0.45),
    ))
    second = Scene(width, height, num_frames - half, (30, 40, 60), (
        SceneObject("circle", "red", "left", 0.8, 0.3, 0.14, travel=0.45),
        SceneObject("square", "blue", "up", 0.8, 0.8, 0.13, travel=0.3),
    ))
    return first, second


def render_clip_frame(k: int, num_frames: int, width: int, height: int) -> np.ndarray:
    """Frame ``k`` of ``num_frames`` as ``(height, width, 3)`` uint8 RGB."""
    first, second = scenes(num_frames, width, height)
    return render_frame(first, k) if k < first.num_frames else render_frame(second, k - first.num_frames)


def write_video(out: Path, seconds: float, fps: int, width: int, height: int) -> int:
    """Encode the clip to ``out``; returns the number of frames written."""
    num_frames = int(round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = 2 * fps
        # crf 18 spreads the bytes so that the first half of the file holds 2-3 s of video, which the stream
        # tests cut it at (flat shapes at crf 26 put almost all bytes in the key frames).
        stream.options = {"crf": "18", "preset": "medium", "threads": "1"}
        for k in range(num_frames):
            image = av.VideoFrame.from_ndarray(render_clip_frame(k, num_frames, width, height), format="rgb24")
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
