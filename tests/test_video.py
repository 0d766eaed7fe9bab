"""Reading videos, frame folders and images: exact frames, both backends, sampling, progress, one error type.

Quiet failures (nothing from FFmpeg or decord on stderr) are tested in ``test_video_errors.py``.
"""

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flash_vstream.video import PROGRESS_MIN_FRAMES, FrameSampler, VideoError, probe_video, read_video
from flash_vstream.video.progress import FrameProgress

NUM_FRAMES, FPS, WIDTH, HEIGHT = 30, 10, 128, 64  # decord2 mis-sizes some widths (e.g. 96)


def colour(k: int) -> np.ndarray:
    return np.array([(k * 8) % 256, 255 - (k * 8) % 256, 128], dtype=np.uint8)


def write_video(path: Path, num_frames: int = NUM_FRAMES, codec: str = "libx264") -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0", "g": "8"}  # lossless-ish, keyframe every 8 frames: seeks are exercised
        for k in range(num_frames):
            image = np.broadcast_to(colour(k), (HEIGHT, WIDTH, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_ids(frames: np.ndarray) -> list[int]:
    """Recover each frame's index from its colour (nearest of the colours written)."""
    palette = np.stack([colour(k) for k in range(NUM_FRAMES)]).astype(int)
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return [int(np.abs(palette - m).sum(axis=1).argmin()) for m in means]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4")


def test_pyav_reads_every_frame_in_order(video):
    clip = read_video(video, backend="pyav")
    assert clip.frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3) and clip.frames.dtype == np.uint8
    assert frame_ids(clip.frames) == list(range(NUM_FRAMES))
    assert clip.native_fps == FPS and clip.total_frames == NUM_FRAMES
    np.testing.assert_allclose(clip.timestamps, np.arange(NUM_FRAMES) / FPS)


def test_sparse_reads_equal_sequential_decoding(video):
    everything = read_video(video, backend="pyav").frames
    wanted = [29, 3, 17, 17, 0, 9]
    sparse = read_video(video, indices=wanted, backend="pyav")
    assert np.array_equal(sparse.frames, everything[wanted])
    assert sparse.indices.tolist() == wanted


def test_decord_and_pyav_return_identical_frames(video):
    pytest.importorskip("decord")
    for indices in (None, [0, 7, 8, 21, 29]):
        a = read_video(video, indices=indices, backend="pyav").frames
        b = read_video(video, indices=indices, backend="decord").frames
        assert np.array_equal(a, b)


def test_sampler_selects_frames(video):
    clip = read_video(video, FrameSampler("fps", target_fps=1.0, min_frames=4))  # 3 s clip: clamped to 4
    assert clip.indices.tolist() == [0, 10, 19, 29]
    assert frame_ids(clip.frames) == [0, 10, 19, 29]
    clip = read_video(video, FrameSampler("uniform", num_frames=3), backend="pyav")
    assert clip.indices.tolist() == [0, 14, 29]  # linspace(0, 29, 3) = [0, 14.5, 29], 14.5 rounds half to even
    assert frame_ids(clip.frames) == [0, 14, 29]


def test_probe(video):
    info = probe_video(video)
    assert (info.num_frames, info.fps, info.width, info.height, info.kind) == (NUM_FRAMES, FPS, WIDTH, HEIGHT, "video")
    assert info.duration == pytest.approx(3.0)


def test_frame_folder_sorted_by_number(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):  # frame_10 must come after frame_9, not after frame_1
        Image.fromarray(np.broadcast_to(colour(k), (8, 10, 3)).copy()).save(folder / f"frame_{k}.png")
    clip = read_video(folder, frames_fps=2.0)
    assert frame_ids(clip.frames) == list(range(12))
    np.testing.assert_allclose(clip.timestamps, np.arange(12) / 2.0)
    assert probe_video(folder).kind == "frames_dir"


def test_image_is_a_one_frame_video(tmp_path):
    path = tmp_path / "still.jpg"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(path)
    clip = read_video(path)
    assert clip.frames.shape == (1, 20, 30, 3) and clip.total_frames == 1


def test_missing_path(tmp_path):
    with pytest.raises(VideoError, match="nope.mp4.*no such file"):
        read_video(tmp_path / "nope.mp4")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match="notes.mp4"):
        read_video(path)


def test_truncated_video(tmp_path, video):
    data = video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        read_video(cut, indices=[NUM_FRAMES - 1])


def test_video_with_zero_frames(tmp_path):
    path = write_video(tmp_path / "empty.mp4", num_frames=0)
    with pytest.raises(VideoError, match="empty.mp4"):
        read_video(path)


def test_empty_frame_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoError, match="frames: folder is empty"):
        read_video(tmp_path / "frames")


def test_small_videos_fall_back_to_pyav_in_auto_mode(tmp_path, monkeypatch):
    from flash_vstream.video.backends import DecordSource, decord_available

    path = tmp_path / "tiny.mp4"
    if decord_available():
        # decord2 fails on frames under 64 px wide on some machines and reads them on others: fail it everywhere
        def mis_sized(self, wanted, progress):
            raise VideoError(self.path, "frames do not decode (mis-sized)", "use backend='pyav'")

        monkeypatch.setattr(DecordSource, "read", mis_sized)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), k * 30, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    calls: list[tuple[int, int]] = []
    clip = read_video(path, on_frames=lambda d, t: calls.append((d, t)))
    assert clip.frames.shape == (6, 32, 32, 3)
    assert calls == [(k, 6) for k in range(7)]  # one count from 0 to 6 across decord's failure and PyAV's read


# --- progress -----------------------------------------------------------------------------------------------


def backends() -> list[str]:
    try:
        import decord  # noqa: F401
    except ImportError:
        return ["pyav"]
    return ["pyav", "decord"]


def recorded(path, **kwargs) -> tuple[list[tuple[int, int]], np.ndarray]:
    calls: list[tuple[int, int]] = []
    clip = read_video(path, on_frames=lambda done, total: calls.append((done, total)), **kwargs)
    return calls, clip.frames


@pytest.mark.parametrize("backend", backends())
def test_on_frames_counts_up_to_the_distinct_frames(video, backend):
    wanted = [29, 3, 17, 17, 0, 9, 3]  # 5 distinct frames
    calls, frames = recorded(video, indices=wanted, backend=backend)
    assert calls[0] == (0, 5) and calls[-1] == (5, 5)
    assert {total for _, total in calls} == {5}
    done = [d for d, _ in calls]
    assert done == sorted(set(done))  # strictly increasing
    assert frame_ids(frames) == wanted  # reporting does not change what is read
    calls, _ = recorded(video, backend=backend)  # all 30 frames: decord's 32-frame batches, PyAV per frame
    assert calls[0] == (0, NUM_FRAMES) and calls[-1] == (NUM_FRAMES, NUM_FRAMES)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})


def test_on_frames_for_folders_and_images(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(4):
        Image.fromarray(np.broadcast_to(colour(k), (8, 10, 3)).copy()).save(folder / f"{k:06d}.png")
    assert recorded(folder)[0] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert recorded(folder / "000002.png", indices=[0, 0, 0])[0] == [(0, 1), (1, 1)]


def test_progress_restarts_never_count_down():
    """A read that starts over (a wrong seek, or "auto" moving from decord to PyAV) reports only new highs."""
    calls: list[tuple[int, int]] = []
    progress = FrameProgress("clip.mp4", on_frames=lambda d, t: calls.append((d, t)))
    progress.start(5)
    for done in (1, 2, 3):
        progress.advance_to(done)
    progress.start(5)
    for done in (1, 2, 3, 4, 5):
        progress.advance_to(done)
    assert calls == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    with pytest.raises(ValueError, match="on_frames"):
        FrameProgress("clip.mp4", on_frames=5)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", num_frames=PROGRESS_MIN_FRAMES + 6)


def test_no_output_unless_asked(long_video, capfd):
    read_video(long_video, backend="pyav")
    read_video(long_video, backend="pyav", progress=False)
    assert capfd.readouterr() == ("", "")


def test_progress_bar_on_stderr_for_long_reads_only(long_video, capfd):
    total = PROGRESS_MIN_FRAMES + 6
    read_video(long_video, backend="pyav", progress=True)
    out, err = capfd.readouterr()
    assert out == "" and f"long.mp4:   0%|          | 0/{total} " in err  # later redraws are throttled by time
    assert err.endswith("\r")  # the bar erases itself when the read ends, so the next line starts clean
    read_video(long_video, indices=list(range(PROGRESS_MIN_FRAMES - 1)), backend="pyav", progress=True)
    assert capfd.readouterr() == ("", "")  # 63 frames: too few for a bar


# --- iter_video: the same frames, a bounded chunk at a time ----------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 8, 64])
def test_iter_video_chunks_concatenate_to_read_video(video, chunk_size):
    from flash_vstream.video.reader import iter_video

    sampler = FrameSampler("uniform", num_frames=23)
    whole = read_video(video, sampler=sampler)
    chunks = list(iter_video(video, sampler=sampler, chunk_size=chunk_size))
    assert [len(c.frames) for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
    assert 1 <= len(chunks[-1].frames) <= chunk_size
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    assert np.array_equal(np.concatenate([c.indices for c in chunks]), whole.indices)
    assert np.array_equal(np.concatenate([c.timestamps for c in chunks]), whole.timestamps)
    assert all(c.total_frames == whole.total_frames and c.native_fps == whole.native_fps for c in chunks)


def test_iter_video_decodes_lazily_and_keeps_no_chunk(video):
    """Each chunk is decoded when asked for; once the consumer drops a chunk nothing holds its frames."""
    import gc
    import weakref

    from flash_vstream.video.reader import iter_video

    seen = []
    chunks = iter_video(video, chunk_size=8, on_frames=lambda done, total: seen.append(done))
    assert seen == []  # nothing decoded before the first next()
    first = next(chunks)
    assert max(seen) == 8
    ref = weakref.ref(first.frames)
    del first
    second = next(chunks)
    gc.collect()
    assert ref() is None  # the iterator kept no reference to the first chunk
    assert max(seen) == 16 and frame_ids(second.frames) == list(range(8, 16))
    assert [len(c.frames) for c in chunks] == [8, 6] and seen[-1] == NUM_FRAMES


def test_iter_video_repeats_and_refusals(video, tmp_path):
    from flash_vstream.video.reader import iter_video

    indices = [5, 5, 2, 9, 9, 9]
    chunks = list(iter_video(video, indices=indices, chunk_size=4))
    assert [frame_ids(c.frames) for c in chunks] == [[5, 5, 2, 9], [9, 9]]
    with pytest.raises(ValueError, match="chunk_size"):
        iter_video(video, chunk_size=0)
    with pytest.raises(ValueError, match="not both"):
        iter_video(video, sampler=FrameSampler("uniform", num_frames=2), indices=[0])
    with pytest.raises(VideoError, match="no such file"):
        iter_video(tmp_path / "missing.mp4")
