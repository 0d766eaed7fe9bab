"""Live frame sources: the sample video at every speed, truncated and corrupt copies, frame folders, a local HTTP
server that drops or stalls the connection mid-way, and Python iterators."""

import itertools
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flash_vstream.video import VideoError, read_video
from flash_vstream.video.sources import (
    ArraySource,
    FrameFolderSource,
    LiveSource,
    VideoFileSource,
    open_source,
)

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
SAMPLE_FRAMES, SAMPLE_FPS = 56, 8.0


def remux(src: Path, dst: Path, fmt: str, **options) -> Path:
    """Copy the sample's packets into another container (``faststart`` mp4 or MPEG-TS), no re-encoding."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt, options=options) as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = target
                out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def faststart(tmp_path_factory) -> Path:
    """The sample with its index first, so a copy cut mid-way still opens (as a stream would)."""
    return remux(SAMPLE, tmp_path_factory.mktemp("remux") / "fast.mp4", "mp4", movflags="faststart")


@pytest.fixture(scope="module")
def transport_stream(tmp_path_factory) -> Path:
    return remux(SAMPLE, tmp_path_factory.mktemp("remux") / "sample.ts", "mpegts")


def drain(source):
    frames, times = [], []
    for frame, seconds in source:
        frames.append(frame)
        times.append(seconds)
    return frames, times


def test_file_as_fast_as_possible_yields_every_frame_with_its_time():
    frames, times = drain(VideoFileSource(SAMPLE, speed=None))
    assert len(frames) == SAMPLE_FRAMES
    assert times == pytest.approx([i / SAMPLE_FPS for i in range(SAMPLE_FRAMES)])
    assert frames[0].shape == (240, 320, 3) and frames[0].dtype == np.uint8
    # the same pixels read_video decodes
    np.testing.assert_array_equal(np.stack(frames[::11]), read_video(SAMPLE, indices=list(range(0, 56, 11))).frames)


def test_fps_keeps_one_frame_per_second_on_the_grid_and_the_end_is_recorded():
    source = VideoFileSource(SAMPLE, speed=None, fps=1.0)
    frames, times = drain(source)
    assert times == pytest.approx([0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(np.stack(frames), read_video(SAMPLE, indices=[0, 8, 16, 24, 32, 40, 48]).frames)
    assert source.end.reason == "ended" and source.end.frames == 7 and source.end.stream_time == 6.0
    assert str(source.end) == f"{SAMPLE}: stream ended after 7 frames (6.0 s)"


def test_real_speed_and_n_times_real_speed_are_paced():
    start = time.monotonic()
    _, times = drain(VideoFileSource(SAMPLE, speed=8.0, fps=2.0))
    elapsed = time.monotonic() - start
    assert times[-1] == pytest.approx(6.5) and len(times) == 14
    assert 6.5 / 8 - 0.05 <= elapsed < 6.5 / 8 + 1.0  # 6.5 s of video at 8x: about 0.81 s
    frames = [np.zeros((4, 4, 3), np.uint8)] * 7
    start = time.monotonic()
    _, times = drain(ArraySource(frames, fps=10.0, speed=1.0))
    assert times[-1] == pytest.approx(0.6) and time.monotonic() - start >= 0.6 - 0.05  # never ahead of the clock


def test_file_cut_before_its_index_cannot_start(tmp_path):
    head = tmp_path / "head.mp4"
    head.write_bytes(SAMPLE.read_bytes()[:5000])  # the sample keeps its index (moov) at the end
    with pytest.raises(VideoError, match=r"head\.mp4: .*moov atom not found"):
        VideoFileSource(head)
    with pytest.raises(VideoError, match="no such file"):
        VideoFileSource(tmp_path / "missing.mp4")


def test_truncated_copy_breaks_mid_stream_and_keeps_the_frames_before(faststart, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    source = VideoFileSource(cut, speed=None)
    frames, _ = drain(source)
    assert 0 < len(frames) < SAMPLE_FRAMES
    np.testing.assert_array_equal(np.stack(frames), read_video(SAMPLE, indices=list(range(len(frames)))).frames)
    assert source.end.reason == "broken" and source.end.frames == len(frames)
    assert source.end.message.startswith(f"{cut}: stream broke after {len(frames)} frames")
    assert "frames delivered so far are kept" in source.end.message and "\n" not in source.end.message


def test_corrupt_packet_breaks_the_stream(faststart, tmp_path):
    data = bytearray(faststart.read_bytes())
    start = data.find(b"mdat")
    middle = start + (len(data) - start) // 2
    data[middle : middle + 200] = bytes(200)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    source = VideoFileSource(corrupt, speed=None)
    frames, _ = drain(source)
    assert 0 < len(frames) < SAMPLE_FRAMES
    assert source.end.reason == "broken" and "Invalid" in source.end.message


def write_frames(folder: Path, count: int, size=(20, 12)) -> list[np.ndarray]:
    folder.mkdir()
    arrays = []
    for i in range(count):
        array = np.full((size[1], size[0], 3), 10 * i, dtype=np.uint8)
        Image.fromarray(array).save(folder / f"frame_{i:03d}.png")
        arrays.append(array)
    return arrays


def test_frame_folder_plays_at_its_frame_rate(tmp_path):
    arrays = write_frames(tmp_path / "frames", 5)
    source = FrameFolderSource(tmp_path / "frames", frames_fps=2.0, speed=None)
    frames, times = drain(source)
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0]
    np.testing.assert_array_equal(np.stack(frames), np.stack(arrays))
    assert source.end.reason == "ended"


def test_frame_folder_with_a_bad_frame_breaks_at_it(tmp_path):
    write_frames(tmp_path / "frames", 5)
    (tmp_path / "frames" / "frame_003.png").write_bytes(b"not a png")
    source = FrameFolderSource(tmp_path / "frames", speed=None)
    frames, _ = drain(source)
    assert len(frames) == 3 and source.end.reason == "broken" and "frame_003.png" in source.end.message
    with pytest.raises(VideoError, match="empty"):
        (tmp_path / "empty").mkdir()
        FrameFolderSource(tmp_path / "empty")


class _Server:
    """A local HTTP server that serves ``data`` but sends only ``cut`` bytes, then drops or holds the line."""

    def __init__(self, data: bytes, cut: int, hold: bool):
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server hook name
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                self.wfile.write(data[:cut])
                self.wfile.flush()
                if hold:
                    release.wait(10)  # bounded: the test releases it, or it gives up by itself
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_http_stream_dropped_mid_way_ends_broken(transport_stream):
    server = _Server(transport_stream.read_bytes(), transport_stream.stat().st_size // 2, hold=False)
    try:
        source = open_source(server.url)
        assert isinstance(source, LiveSource)
        frames, times = drain(source)
    finally:
        server.stop()
    assert 0 < len(frames) < SAMPLE_FRAMES and times == sorted(times) and times[0] == 0.0
    np.testing.assert_array_equal(frames[0], read_video(SAMPLE, indices=[0]).frames[0])
    assert source.end.reason == "broken" and "ends prematurely" in source.end.message


def test_http_stream_that_stops_sending_ends_stalled(transport_stream):
    server = _Server(transport_stream.read_bytes(), transport_stream.stat().st_size // 2, hold=True)
    try:
        start = time.monotonic()
        source = LiveSource(server.url, stall_timeout=0.5, open_timeout=5)
        frames, _ = drain(source)
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    assert len(frames) > 0 and source.end.reason == "stalled"
    assert "stall timeout 0.5 s" in source.end.message and elapsed < 5


def test_unreachable_url_cannot_start():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(VideoError, match="FFmpeg cannot open it"):
        LiveSource(f"http://127.0.0.1:{port}/none.ts", open_timeout=2)


def test_array_source_numbers_bare_frames_and_keeps_given_times():
    frames = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(4)]
    _, times = drain(ArraySource(frames, fps=4.0))
    assert times == [0.0, 0.25, 0.5, 0.75]
    got, times = drain(ArraySource([(f, 10.0 + i) for i, f in enumerate(frames)], sample_fps=0.5))
    assert times == [10.0, 12.0] and [int(g[0, 0, 0]) for g in got] == [0, 2]


def test_array_source_stall_bad_item_and_close():
    def slow():
        yield np.zeros((4, 4, 3), np.uint8)
        time.sleep(1.5)
        yield np.zeros((4, 4, 3), np.uint8)

    source = ArraySource(slow(), fps=1.0, stall_timeout=0.3)
    assert len(drain(source)[0]) == 1 and source.end.reason == "stalled"
    source = ArraySource([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32)])
    assert len(drain(source)[0]) == 1 and source.end.reason == "broken" and "item 1" in source.end.message

    def endless():
        while True:
            yield np.zeros((4, 4, 3), np.uint8)

    source = ArraySource(endless(), fps=100.0)
    next(source)
    source.close()
    assert list(source) == [] and source.end.reason == "stopped"
    source._thread.join(2)
    assert not source._thread.is_alive()


def test_open_source_dispatch_and_bad_settings(tmp_path):
    write_frames(tmp_path / "frames", 2)
    assert isinstance(open_source(str(tmp_path / "frames")), FrameFolderSource)
    assert isinstance(open_source(str(SAMPLE), speed=None), VideoFileSource)
    with pytest.raises(VideoError, match="no such file, folder, camera or URL"):
        open_source(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="speed must be a positive number"):
        VideoFileSource(SAMPLE, speed=0)


def test_close_races_the_first_frame_without_error():
    """``close`` from another thread while the consumer starts the reader: never a join of an unstarted thread."""

    def endless():
        while True:
            yield np.zeros((4, 4, 3), np.uint8)

    for _ in range(50):
        source = ArraySource(endless(), fps=1000.0)
        errors = []
        closer = threading.Thread(target=_record, args=(errors, source.close))
        closer.start()
        _record(errors, lambda s=source: list(itertools.islice(s, 3)))  # stops early once closed
        closer.join()
        assert errors == [] and source.end.reason == "stopped"
    source = ArraySource(endless())
    source.close()  # before any frame: nothing starts afterwards
    assert list(source) == [] and source._thread is None


def _record(errors: list, call) -> None:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the test asserts there was none
        errors.append(err)
