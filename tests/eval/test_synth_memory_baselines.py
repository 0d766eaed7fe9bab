"""The synth-memory baselines (flash_vstream.memory.baselines): equal token budgets, FIFO and uniform selection.

Each baseline is checked against a slow restatement: a Python list of frames for the FIFO window, hand-computed
indices for uniform sampling, explicit block means for the spatial pooling.
"""

import pytest
import torch

from flash_vstream.data.demo import MEMORY
from flash_vstream.memory.baselines import (
    FifoFrameMemory,
    SpatialOnlyMemory,
    UniformFrameMemory,
    budget_memory,
    frames_at_budget,
    star_budget,
)
from flash_vstream.memory.star import StarMemory, StarMemoryConfig
from tests.memoryfixtures import stream


def demo_star(dim=8):
    """The demo model's STAR memory sizes (8 x 8 patch grid) with narrow features."""
    torch.manual_seed(0)
    return StarMemory(StarMemoryConfig(**MEMORY, feature_grid=8, feature_dim=dim)).eval()


def released_star(dim=4):
    torch.manual_seed(0)
    return StarMemory(StarMemoryConfig(feature_dim=dim)).eval()


def feats(star, t, seed=0):
    return star.random_features(t, generator=torch.Generator().manual_seed(seed))


def slow_pool(frames, side):
    """Block means of each frame's row-major p x p grid, one block at a time."""
    t, n, d = frames.shape
    p = int(n**0.5)
    block = p // side
    grid = frames.reshape(t, p, p, d)
    out = torch.empty(t, side * side, d)
    for r in range(side):
        for c in range(side):
            out[:, r * side + c] = grid[:, r * block:(r + 1) * block, c * block:(c + 1) * block].mean(dim=(1, 2))
    return out


# --- equal budgets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, budget, frames, spatial", [
    (demo_star, 202, 11, (12, 192)),      # 10 + 10*16 + 16 + 16; 12 frames of 4x4
    (released_star, 681, 26, (10, 640)),  # 25 + 25*16 + 3*64 + 64; 10 frames of 8x8
])
def test_token_counts_at_the_star_budget(make, budget, frames, spatial):
    star = make()
    assert star_budget(star) == budget and frames_at_budget(star) == frames
    assert star.num_tokens(frames - 1) < budget == star.num_tokens(frames)
    stream_length = 300
    clip = feats(star, stream_length)
    expected = {"star": budget, "uniform": budget, "fifo": budget, "spatial": spatial[1]}
    for name, tokens in expected.items():
        memory = budget_memory(name, star, stream_length=stream_length)
        state = stream(memory, clip, [1] * stream_length)
        out = memory.read(state)
        assert out.num_tokens == tokens == memory.num_tokens(stream_length), name
        assert sum(out.segments.values()) == tokens
    fifo = budget_memory("fifo", star).compress(clip)
    assert fifo.segments == star.compress(clip[:frames]).segments  # the layout of a short clip
    assert budget_memory("spatial", star).compress(clip).segments == {"spatial": spatial[1]}
    assert budget_memory("spatial", star).num_frames == spatial[0]


def test_budget_memory_names():
    star = demo_star()
    assert budget_memory("star", star) is star
    with pytest.raises(ValueError, match="stream_length"):
        budget_memory("uniform", star)
    with pytest.raises(ValueError, match="unknown memory 'lifo'"):
        budget_memory("lifo", star)


# --- FIFO ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [[1] * 40, [3, 7, 1, 13, 16], [40]])
def test_fifo_keeps_exactly_the_last_n_frames(chunks):
    star = demo_star()
    memory = FifoFrameMemory(star)
    clip = feats(star, 40, seed=1)
    window = []  # the restatement: append each frame, drop the oldest beyond N
    for frame in clip:
        window.append(frame)
        if len(window) > memory.num_frames:
            window.pop(0)
    expected = star.compress(torch.stack(window))
    state = stream(memory, clip, chunks)
    out = memory.read(state)
    assert out.extras["kept_frames"].tolist() == list(range(40 - memory.num_frames, 40))
    assert out.segments == expected.segments
    torch.testing.assert_close(out.tokens, expected.tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(memory.compress(clip).tokens, expected.tokens, rtol=0, atol=1e-6)


def test_fifo_on_a_short_stream_keeps_every_frame():
    star = demo_star()
    memory = FifoFrameMemory(star)
    clip = feats(star, 4, seed=2)
    out = memory.read(stream(memory, clip, [1, 1, 1, 1]))
    assert out.extras["kept_frames"].tolist() == [0, 1, 2, 3]
    assert out.num_tokens == star.num_tokens(4) == memory.num_tokens(4)


# --- spatial memory alone ------------------------------------------------------------------------------------


def test_spatial_only_is_the_pooled_last_frames():
    star = demo_star()
    memory = SpatialOnlyMemory.for_budget(star)
    clip = feats(star, 30, seed=3)
    out = memory.read(stream(memory, clip, [2] * 15))
    expected = slow_pool(clip[-12:], 4).reshape(-1, 8)
    torch.testing.assert_close(out.tokens, expected, rtol=0, atol=1e-6)
    assert out.extras["spatial_frames"].tolist() == list(range(18, 30))
    torch.testing.assert_close(memory.compress(clip).tokens, expected, rtol=0, atol=1e-6)


# --- uniform sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, picks", [
    (15, [0, 1, 3, 4, 6, 7, 8, 10, 11, 13, 14]),  # linspace(0, 14, 11) = 0, 1.4, 2.8, ... rounded
    (10_005, [0, 1000, 2001, 3001, 4002, 5002, 6002, 7003, 8003, 9004, 10004]),  # steps of 1000.4
    (5, [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]),  # fewer frames than picks: repeated, half to even
])
def test_uniform_picks_the_expected_indices(length, picks):
    star = demo_star(dim=2)
    memory = UniformFrameMemory(star, stream_length=length)
    assert memory.picks.tolist() == picks
    frame_ids = torch.arange(length, dtype=torch.float32)
    state = memory.init_state()
    for t in range(length):  # frame t's features are all t, so every kept row says which frame it is
        memory.update(state, torch.full((1, 64, 2), float(t)))
    assert state.frame_ids.tolist() == picks
    assert state.frames[:, 0, 0].tolist() == frame_ids[picks].tolist()
    out = memory.read(state)
    assert out.extras["kept_frames"].tolist() == picks
    assert out.num_tokens == memory.num_tokens(length) == 202


@pytest.mark.parametrize("chunks", [[1] * 60, [7, 20, 33], [60]])
def test_uniform_read_after_the_stream_is_compress_of_it(chunks):
    star = demo_star()
    memory = UniformFrameMemory(star, stream_length=60)
    clip = feats(star, 60, seed=4)
    expected = star.compress(clip[memory.picks])
    out = memory.read(stream(memory, clip, chunks))
    assert out.segments == expected.segments
    torch.testing.assert_close(out.tokens, expected.tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(memory.compress(clip).tokens, expected.tokens, rtol=0, atol=1e-6)


def test_uniform_refuses_a_longer_stream():
    star = demo_star()
    memory = UniformFrameMemory(star, stream_length=5)
    state = stream(memory, feats(star, 5), [5])
    with pytest.raises(ValueError, match="5-frame stream"):
        memory.update(state, feats(star, 1))


# --- the mutation rule and bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "spatial", "fifo"])
def test_read_is_pure_and_clone_is_independent(name):
    star = demo_star()
    memory = budget_memory(name, star, stream_length=30)
    clip = feats(star, 30, seed=5)
    with pytest.raises(ValueError, match="empty"):
        memory.read(memory.init_state())
    state = stream(memory, clip[:20], [20])
    snapshot = state.clone()
    first = memory.read(state)
    torch.testing.assert_close(memory.read(state).tokens, first.tokens, rtol=0, atol=0)
    assert torch.equal(state.frames, snapshot.frames) and state.frames_seen == snapshot.frames_seen
    memory.update(state, clip[20:])
    assert snapshot.frames_seen == 20 and state.frames_seen == 30
    torch.testing.assert_close(memory.read(snapshot).tokens, first.tokens, rtol=0, atol=0)
    with pytest.raises(ValueError, match="feature_grid"):
        memory.update(state, torch.zeros(1, 16, 8))
