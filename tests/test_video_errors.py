"""Bad video input: one clear ``VideoError`` line, and nothing from FFmpeg or decord on stderr.

The end-to-end check runs ``read_video`` in a fresh interpreter (PyAV's logging starts at its defaults there)
on damaged files with every backend and compares the process's whole stderr with the lines it printed itself.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from av import logging as av_logging
from PIL import Image

from flash_vstream.video import VideoError, read_video
from flash_vstream.video.quiet import (
    _LevelScope,
    captured_stderr,
    decord_reason,
    ffmpeg_log_scope,
    ffmpeg_reason,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "sample.mp4"


def has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def write_faststart_video(path: Path, num_frames: int = 60) -> Path:
    """An mp4 with its index (moov atom) first, so a cut copy opens and fails only when frames decode."""
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        stream.options = {"g": "8"}
        noise = np.random.default_rng(0)
        for _ in range(num_frames):
            image = noise.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # incompressible: big packets to cut
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from av import logging as av_logging
    from flash_vstream.video import VideoError, read_video

    messages = {}
    for path in sys.argv[2:]:
        for backend in json.loads(sys.argv[1]):
            try:
                read_video(path, backend=backend)
            except VideoError as err:
                sys.stderr.write(f"{err}\\n")
                messages[f"{path} {backend}"] = str(err)
    print(json.dumps({"messages": messages, "level": av_logging.get_level(),
                      "skip_repeated": av_logging.get_skip_repeated()}))
    """
)


def test_damaged_files_print_only_our_line(tmp_path):
    cut = cut_in_half(SAMPLE, tmp_path / "cut.mp4")  # the moov atom is at the end: FFmpeg cannot open it
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    partial = cut_in_half(write_faststart_video(tmp_path / "whole.mp4"), tmp_path / "partial.mp4")  # decodes, then not
    backends = ["pyav", "decord", "auto"] if has_decord() else ["pyav", "auto"]
    files = [cut, text, empty, partial]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARN")}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(backends), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    messages = result["messages"]
    assert len(messages) == len(files) * len(backends)  # every file fails with a VideoError under every backend
    assert run.stderr == "".join(f"{m}\n" for m in messages.values())  # nothing from FFmpeg, decord or tqdm
    assert (result["level"], result["skip_repeated"]) == (None, True)  # PyAV's logging is left as it was found
    for key, message in messages.items():
        path, backend = key.rsplit(" ", 1)
        assert message.startswith(f"{path}: ") and message.endswith(".") and "\n" not in message
    for backend in backends:
        assert messages[f"{cut} {backend}"] == (
            f"{cut}: FFmpeg cannot open it as a video: moov atom not found (Invalid data found when processing "
            "input). Check that it is a whole video file (not text, an archive or a partial download)."
        )
        assert messages[f"{text} {backend}"] == messages[f"{cut} {backend}"].replace(str(cut), str(text))
        assert messages[f"{empty} {backend}"] == f"{empty}: file is empty (0 bytes). Re-download or re-export it."
    for backend in ("pyav", "auto"):  # "auto" falls back to PyAV after decord fails
        assert "does not decode" in messages[f"{partial} {backend}"]
        assert "partial file" in messages[f"{partial} {backend}"]  # FFmpeg's reason, quoted
    if has_decord():
        assert messages[f"{partial} decord"].startswith(f"{partial}: frames do not decode (")
        assert "backend='pyav'" in messages[f"{partial} decord"]


# --- the pieces -------------------------------------------------------------------------------------------


def test_log_scope_captures_and_restores():
    assert av_logging.get_level() is None  # PyAV's default: FFmpeg's log is dropped
    with ffmpeg_log_scope() as messages:
        assert av_logging.get_level() == av_logging.WARNING
        av_logging.log(av_logging.ERROR, "mov", "moov atom not found\n")
        av_logging.log(av_logging.ERROR, "mov", "moov atom not found\n")  # repeats are kept
    assert messages == [(av_logging.ERROR, "mov", "moov atom not found\n")] * 2
    assert av_logging.get_level() is None and av_logging.get_skip_repeated() is True


def test_overlapping_scopes_restore_the_first_level():
    """Scopes in two threads may end in any order; the level returns only when the last one ends."""
    scope = _LevelScope()
    assert scope.enter() is True
    assert scope.enter() is True
    scope.leave()
    assert av_logging.get_level() == av_logging.WARNING
    scope.leave()
    assert av_logging.get_level() is None


def test_a_callers_own_level_is_kept_and_fed(caplog):
    av_logging.set_level(av_logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="libav"):
            with ffmpeg_log_scope() as messages:
                assert av_logging.get_level() == av_logging.INFO
                av_logging.log(av_logging.WARNING, "h264", "mmco: unref short failure\n")
        assert av_logging.get_level() == av_logging.INFO
    finally:
        av_logging.set_level(None)
    assert messages == [(av_logging.WARNING, "h264", "mmco: unref short failure\n")]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("libav.h264", logging.WARNING, "mmco: unref short failure")
    ]


def test_reasons_quote_the_last_distinct_errors():
    error, warning = av_logging.ERROR, av_logging.WARNING
    assert ffmpeg_reason([]) == ""
    assert ffmpeg_reason([(warning, "mov", "misdetection possible!\n")]) == "misdetection possible!"
    said = [
        (warning, "mov", "Packet corrupt (stream = 0, dts = 27648).\n"),
        (error, "h264", "Invalid NAL unit size (4450 > 3572).\n"),
        (error, "h264", "Invalid NAL unit size (4450 > 3572).\n (repeated 2 more times)"),
        (error, "mov", "stream 0, offset 0x226f0: partial file\n"),
    ]
    assert ffmpeg_reason(said) == "Invalid NAL unit size (4450 > 3572); stream 0, offset 0x226f0: partial file"
    decord_error = RuntimeError("[08:13:15] /project/src/runtime/ndarray.cc:171: Check failed: a == b\n")
    assert decord_reason(decord_error, []) == "Check failed: a == b"
    assert decord_reason(decord_error, ["partial file"]) == "partial file"


def test_captured_stderr_keeps_library_lines_and_passes_the_rest(capfd):
    with captured_stderr() as logged:
        os.write(2, b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x563f82bff740] moov atom not found\n")
        os.write(2, b"    Last message repeated 1 times\n")
        os.write(2, b"[08:11:09] /project/src/video/video_reader.cc:86: ERROR opening: cut.mp4\n")
        os.write(2, b"another thread's line\n")
    os.write(2, b"after\n")
    assert logged == ["moov atom not found"]
    assert capfd.readouterr().err == "another thread's line\nafter\n"


def test_captured_stderr_restores_fd2_after_an_error(capfd):
    with pytest.raises(KeyError), captured_stderr():
        os.write(2, b"[h264 @ 0x1] gone\n")
        raise KeyError("boom")
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"


# --- messages ---------------------------------------------------------------------------------------------


def test_messages_are_one_line():
    err = VideoError("clip.mp4", "frames do not decode (first line\nsecond line)\n", "re-encode it.")
    assert str(err) == "clip.mp4: frames do not decode (first line; second line). Re-encode it."
    assert err.reason == "frames do not decode (first line; second line)" and err.fix == "re-encode it"


def test_folder_of_non_images(tmp_path):
    folder = tmp_path / "clips"
    (folder / "part1").mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    (folder / "readme.md").write_text("x")
    with pytest.raises(VideoError) as caught:
        read_video(folder)
    assert str(caught.value) == (
        f"{folder}: folder holds no frame images, only 2 other files (e.g. notes.txt) and 1 folder (e.g. part1). "
        "Pass a video file, an image, or a folder of frames named like 000000.jpg (.jpg, .jpeg, .png, .webp)."
    )


def test_image_named_file_that_is_not_an_image(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "000000.jpg").write_text("not a jpeg")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / "000001.jpg")
    expected = "not a readable image (Pillow does not recognise its format). Replace it or extract it again."
    with pytest.raises(VideoError) as caught:
        read_video(folder)  # the first frame fixes the size, so it is read when the folder opens
    assert str(caught.value) == f"{folder / '000000.jpg'}: {expected}"
    with pytest.raises(VideoError) as caught:
        read_video(folder / "000000.jpg")
    assert str(caught.value) == f"{folder / '000000.jpg'}: {expected}"
    (folder / "000002.png").write_bytes(b"")
    with pytest.raises(VideoError, match=r"000002.png: file is empty \(0 bytes\)"):
        read_video(folder / "000002.png")
