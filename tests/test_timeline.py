"""Memory timelines: exact content on hand-checked small streams (STAR and Flash memories), the recorder's bounds
(capped thumbnails and anchors, exact times at a constant rate), and live answers against offline ones."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from flash_vstream.cli import main as cli_main
from flash_vstream.inference.streaming import StreamSession
from flash_vstream.inference.timeline import TimelineRecorder, read_timeline
from flash_vstream.memory.flash import FlashMemory
from flash_vstream.memory.star import StarMemory, StarMemoryConfig
from flash_vstream.vision.features import DualResFeatures

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


def image(value: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_star_timeline_of_two_scenes_is_hand_checked():
    # Frames 0-2 are scene A (feature values 0, 0.1, 0.2), frames 3-6 scene B (all 10), frame 7 is the newest.
    # Two clusters: A = frames 0-2 at mean time 0.5 s, weight 3; B = frames 3-6 at mean 2.25 s, weight 4.
    # "paper" retrieval: the frame nearest to each of the heaviest centroids, in time order: frame 1 (the value
    # 0.1 is A's centroid) and frame 3 (the first of B's equal frames); the spatial window holds frame 7.
    memory = StarMemory(StarMemoryConfig(feature_dim=8, temporal_clusters=2, abstract_slots=2, retrieval="paper",
                                         bank_capacity=16))
    state, recorder = memory.init_state(), TimelineRecorder()
    values = [0.0, 0.1, 0.2, 10.0, 10.0, 10.0, 10.0, 3.0]
    for i, value in enumerate(values):
        seconds = 0.5 * i
        memory.update(state, torch.full((1, 256, 8), value), torch.tensor([seconds]))
        recorder.add(image(i)[None], [seconds])
    timeline = read_timeline(SimpleNamespace(family="star", model=SimpleNamespace(memory=memory)), state, recorder)
    assert timeline.to_dict() == {
        "family": "star", "num_frames": 8, "start_seconds": 0.0, "end_seconds": 3.5,
        "clusters": [{"seconds": 0.5, "weight": 3.0}, {"seconds": 2.25, "weight": 4.0}],
        "retrieved": [{"frame": 1, "seconds": 0.5, "thumbnail": 1}, {"frame": 3, "seconds": 1.5, "thumbnail": 3}],
        "recent": [{"frame": 7, "seconds": 3.5, "thumbnail": 7}],
    }
    assert [int(f.thumbnail.image[0, 0, 0]) for f in timeline.retrieved] == [1, 3]  # the frames' own pictures


def test_flash_timeline_maps_temporal_patches_to_stream_seconds():
    # Five temporal patches (ten frames at uneven times) fit the CSM (6 clusters): each is its own cluster of
    # weight 1 at its patch index, i.e. at the time of its first frame. The bank (5) exceeds the DAM (3), so the
    # three heaviest clusters in stable order (patches 0, 1, 2) pick their own patches: frames 0, 2 and 4.
    memory = FlashMemory.tiny()
    state, recorder = memory.init_state(), TimelineRecorder()
    times = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]
    generator = torch.Generator().manual_seed(0)
    for patch in range(5):
        high, low = torch.randn(1, 16, 8, generator=generator), torch.randn(1, 4, 8, generator=generator)
        memory.update(state, DualResFeatures(high, low, (4, 4), 2))
        recorder.add(np.stack([image(2 * patch), image(2 * patch + 1)]), times[2 * patch:2 * patch + 2])
    model = SimpleNamespace(flash_memory=memory, config=SimpleNamespace(
        vision_config=SimpleNamespace(temporal_patch_size=2)))
    timeline = read_timeline(SimpleNamespace(family="flash", model=model), state, recorder)
    assert timeline.to_dict() == {
        "family": "flash", "num_frames": 10, "start_seconds": 0.0, "end_seconds": 15.0,
        "clusters": [{"seconds": s, "weight": 1.0} for s in (0.0, 2.0, 5.0, 9.0, 13.0)],
        "retrieved": [{"frame": f, "seconds": s, "thumbnail": f} for f, s in ((0, 0.0), (2, 2.0), (4, 5.0))],
        "recent": [],
    }


def test_recorder_stays_bounded_evenly_spread_and_keeps_times_exact_at_a_constant_rate():
    recorder = TimelineRecorder(max_thumbnails=16, thumbnail_side=8, max_anchors=8)
    frames = np.zeros((1, 24, 40, 3), np.uint8)
    for i in range(5000):
        frames[0, :, :, 0] = i % 251
        recorder.add(frames, [i / 4.0])
        assert len(recorder.thumbnails) <= 17 and recorder.num_anchors <= 9  # the cap plus the newest frame
    assert recorder.frames == 5000
    # 5000 frames at 16 per stride: stride 512 (16 * 512 >= 5000 > 16 * 256), frames 0, 512, ..., 4608, + 4999.
    assert [t.frame for t in recorder.thumbnails] == [*range(0, 5000, 512), 4999]
    assert recorder.nbytes() == 11 * 5 * 8 * 3  # 40x24 shrinks to 8x5
    positions = np.arange(0, 5000, 7)
    np.testing.assert_allclose(recorder.seconds_at(positions), positions / 4.0)
    newest = recorder.thumbnails[-1].image
    expected = Image.fromarray(frames[0]).resize((8, 5), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(newest, np.asarray(expected))
    assert int(newest[0, 0, 0]) == 4999 % 251
    assert recorder.thumbnail_near(4700).frame == 4608 and recorder.thumbnail(4700) is None


def test_recorder_skips_pad_frames_and_rejects_bad_sizes():
    recorder = TimelineRecorder()
    recorder.add(np.stack([image(1), image(1)]), [2.0, 2.0], real=[True, False])
    assert [t.frame for t in recorder.thumbnails] == [0] and recorder.frames == 2
    with pytest.raises(ValueError, match="max_thumbnails"):
        TimelineRecorder(max_thumbnails=0)
    with pytest.raises(ValueError, match="no frame recorded"):
        TimelineRecorder().seconds_at([0])


def test_session_recorder_stays_flat_over_a_long_stream():
    from test_stream_session import fake_session

    with fake_session(queue_frames=4096) as session:
        for i in range(3000):
            session.push_frames(image(i % 200, 32, 32), i / 10)
        session.drain()
        recorder = session._s.recorder
        assert recorder.frames == 3000
        assert len(recorder.thumbnails) <= recorder.max_thumbnails and recorder.num_anchors <= recorder.max_anchors
        assert recorder.nbytes() <= recorder.max_thumbnails * 32 * 32 * 3
        assert session.timeline() is None  # a fake model has no memory to read
        assert session.ask("q").timeline is None


@pytest.fixture(scope="module")
def tiny_star(tmp_path_factory):
    from flash_vstream import load_model

    out = tmp_path_factory.mktemp("tiny") / "star"
    assert cli_main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    return load_model(out)


def test_live_timeline_equals_the_offline_answers(tiny_star):
    from flash_vstream.video import read_video

    clip = read_video(SAMPLE, sampler=tiny_star.sampler)  # 7 frames, within STAR's exact streaming range
    offline = tiny_star.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=2, timeline=True)
    with StreamSession(tiny_star, micro_batch=3) as session:
        assert session.timeline() is None
        session.push_frames(clip.frames, clip.timestamps)
        session.drain()
        live = session.ask("What moves?", max_new_tokens=2)
        assert session.timeline().to_dict() == live.timeline.to_dict()
    assert live.timeline.to_dict() == offline.timeline.to_dict()
    times = [round(float(t), 3) for t in clip.timestamps]
    tl = live.timeline
    # 6 history frames, each its own cluster (weight 1, at its own time); the newest is the spatial window.
    assert [(c.seconds, c.weight) for c in tl.clusters] == [(t, 1.0) for t in times[:6]]
    assert [f.frame for f in tl.recent] == [6] and len(tl.retrieved) == 3
    assert all(f.thumbnail.frame == f.frame and f.seconds == pytest.approx(times[f.frame]) for f in tl.retrieved)
    assert tl.retrieved[0].thumbnail.image.shape == (48, 64, 3)  # 320x240 shrunk to 64 px wide


def test_plot_writes_a_png_of_the_timeline(tiny_star, tmp_path):
    pytest.importorskip("matplotlib")
    from flash_vstream.inference.plot import plot_timeline

    answer = tiny_star.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=2, timeline=True)
    figure = plot_timeline(answer.timeline, tmp_path / "memory.png")
    data = (tmp_path / "memory.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # one time axis plus a thumbnail per retrieved (3) and spatial-window (1) frame
    assert len(figure.axes) == 1 + 4 and [a.get_title().split("\n")[0] for a in figure.axes[1:]] == [
        "retrieved", "retrieved", "retrieved", "recent"]
    with pytest.raises(ValueError, match="no memory timeline"):
        plot_timeline(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_timeline(answer.timeline, tmp_path / "missing" / "memory.png")


def test_ask_plot_writes_the_picture(tiny_star, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = tmp_path / "star"
    tiny_star.model.save_pretrained(model)
    tiny_star.tokenizer.save_pretrained(model)
    out = tmp_path / "memory.png"
    assert cli_main(["ask", "--model", str(model), "--video", str(SAMPLE), "What moves?", "--max-new-tokens", "2",
                     "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert f"wrote the memory timeline to {out}" in capsys.readouterr().err
    assert cli_main(["ask", "--model", str(model), "--video", str(SAMPLE), "q", "--plot",
                     str(tmp_path / "nowhere" / "m.png")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err


def test_flash_offline_timeline_equals_the_live_one(tmp_path):
    from flash_vstream import load_model
    from flash_vstream.video import read_video

    out = tmp_path / "flash"
    assert cli_main(["make-tiny", "--variant", "flash-qwen2vl", "--out", str(out)]) == 0
    vs = load_model(out)
    clip = read_video(SAMPLE, sampler=vs.sampler)  # 7 frames: 4 temporal patches, the last padded
    offline = vs.answer_with_details("What moves?", video=SAMPLE, max_new_tokens=2, timeline=True).timeline
    from_frames = vs.answer_with_details("What moves?", frames=clip.frames, timestamps=clip.timestamps,
                                         max_new_tokens=2, timeline=True).timeline
    with StreamSession(vs) as session:
        session.push_frames(clip.frames, clip.timestamps)
        session.finish()
        live = session.ask("What moves?", max_new_tokens=2).timeline
    assert offline.to_dict() == from_frames.to_dict()
    assert (live.num_frames, offline.num_frames) == (8, 7)  # the live stream counts its pad frame
    for key in ("clusters", "retrieved", "recent", "start_seconds", "end_seconds"):
        assert live.to_dict()[key] == offline.to_dict()[key], key
    times = [round(float(t), 3) for t in clip.timestamps]
    assert [c.seconds for c in live.clusters] == [times[0], times[2], times[4], times[6]]
