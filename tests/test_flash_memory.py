"""Flash Memory (CSM + DAM) against slow re-statements of the published algorithm, on random inputs."""

import math

import numpy as np
import pytest
import torch

from flash_vstream.memory.flash import DualResFeatures, FlashMemory, FlashMemoryConfig
from flash_vstream.memory.kmeans import kmeans_init_indices
from flash_vstream.vision.qwen2vl import FlashFrameProcessor

D = 8
GRID = (4, 4)  # full-resolution patch grid -> 16 high tokens, 4 low tokens per temporal patch


def random_clip(t: int, seed: int = 0) -> DualResFeatures:
    gen = torch.Generator().manual_seed(seed)
    return DualResFeatures(torch.randn(t, 16, D, generator=gen), torch.randn(t, 4, D, generator=gen), GRID)


def small_memory(csm: int = 6, dam: int = 3, **kw) -> FlashMemory:
    return FlashMemory(FlashMemoryConfig(temporal_length=2 * csm, spatial_length=2 * dam, bank_size=64, **kw))


# ---------------------------------------------------------------- slow re-statements of the published code


def slow_ordered_weighted_kmeans(x, k, weights, times, iters=10, tol=1e-4, seed=0):
    """Published ``weighted_kmeans_ordered_feature``, with the shared seeded init; loops, sqrt distances."""
    n = x.shape[0]
    centroids = x[kmeans_init_indices(x, k, seed)].clone()
    labels = [0] * n
    for _ in range(iters):
        for i in range(n):
            dists = [math.sqrt(float(((x[i] - centroids[j]) ** 2).sum())) for j in range(k)]
            labels[i] = min(range(k), key=lambda j: (dists[j], j))
        new = centroids.clone()
        for j in range(k):
            members = [i for i in range(n) if labels[i] == j]
            assert members, "an empty cluster: pick another seed for this reference test"
            mass = sum(float(weights[i]) for i in members)
            new[j] = sum(weights[i] * x[i] for i in members) / mass
        shift = float((new - centroids).norm(dim=1).sum())
        centroids = new
        if shift < tol:
            break
    masses = torch.tensor([sum(float(weights[i]) for i in range(n) if labels[i] == j) for j in range(k)])
    stamps = torch.tensor(
        [sum(float(weights[i] * times[i]) for i in range(n) if labels[i] == j) / float(masses[j]) for j in range(k)]
    )
    order = sorted(range(k), key=lambda j: float(stamps[j]))
    return centroids[order], masses[order], stamps[order]


def slow_klarge_retrieve(centroids, masses, bank_low, n_dam, cosine=False, fidelity="paper"):
    """DAM retrieval for the n_dam heaviest centroids, one bank patch each (``spatial_enhance``).

    Heavy order: "paper" a stable descending sort (ties by cluster id); "reference" the published call
    ``torch.argsort(masses, descending=True)``. L2: the nearest patch. Cosine: "paper" the MOST similar patch;
    "reference" the published ``argmin`` of the similarity, i.e. the LEAST similar one. Ties: first index.
    """
    if fidelity == "reference":
        heavy = torch.argsort(torch.as_tensor(masses), descending=True)[:n_dam].tolist()
    else:
        heavy = sorted(range(len(masses)), key=lambda j: (-float(masses[j]), j))[:n_dam]
    picked = []
    for j in heavy:
        if cosine:
            sims = [float(torch.dot(b, centroids[j]) / (b.norm() * centroids[j].norm())) for b in bank_low]
            dists = [-s for s in sims] if fidelity == "paper" else sims
        else:
            dists = [float(((bank_low[i] - centroids[j]) ** 2).sum().sqrt()) for i in range(bank_low.shape[0])]
        picked.append(min(range(len(dists)), key=lambda i: (dists[i], i)))
    return picked


def slow_published_few_distinct_csm(low, k):
    """Published CSM of a clip whose ``t > k`` patches hold fewer than ``k`` distinct values (offline, unit
    weights, times 0..t-1): the distinct patches in lexicographic order (``torch.unique``), each with mass 1 and
    the mean index of its members, sorted by that mean; then the first ``k - distinct`` patches prepended with
    mass 1 and times 0, 1, ..."""
    rows = [tuple(r.tolist()) for r in low.flatten(1)]
    distinct = sorted(set(rows))
    mean_index = {v: sum(i for i, r in enumerate(rows) if r == v) / rows.count(v) for v in distinct}
    ordered = sorted(distinct, key=lambda v: mean_index[v])
    pad = k - len(distinct)
    centroids = [rows[i] for i in range(pad)] + ordered
    times = list(range(pad)) + [mean_index[v] for v in ordered]
    return torch.tensor(centroids).view(k, *low.shape[1:]), [1.0] * k, times


# ---------------------------------------------------------------- tests


def test_published_token_budgets():
    memory = FlashMemory(FlashMemoryConfig())
    assert memory.config.csm_size == 60 and memory.config.dam_size == 30
    assert memory.num_tokens(240, grid_hw=(32, 32)) == 11520  # 448x448
    assert memory.num_tokens(240, grid_hw=(24, 40)) == 10800  # 336x560
    assert memory.num_tokens(16, grid_hw=(32, 32)) == 2560


@pytest.mark.parametrize(
    ("frames", "size", "expected"), [(240, (448, 448), 11520), (240, (720, 1280), 10800), (16, (448, 448), 2560)]
)
def test_token_counts_from_real_shapes(frames, size, expected):
    """The published budgets from real grids: frames resized by the processor, then ``compress`` on features."""
    processor = FlashFrameProcessor()
    _, grid = processor(np.zeros((2, *size, 3), dtype=np.uint8))
    t, h, w = processor.grid_thw(frames, *size)
    assert (h, w) == tuple(grid[0, 1:].tolist())
    gen = torch.Generator().manual_seed(0)
    high, low = torch.randn(t, h * w, 4, generator=gen), torch.randn(t, h * w // 4, 4, generator=gen)
    clip = DualResFeatures(high, low, (h, w))
    out = FlashMemory(FlashMemoryConfig()).compress(clip)
    assert out.num_tokens % 4 == 0 and out.num_tokens // 4 == expected  # the merger turns 4 tokens into 1
    assert out.segments["dam"] == min(t, 30) * h * w and out.segments["csm"] == min(t, 60) * h * w // 4


def test_short_clip_passes_through():
    clip = random_clip(3)  # t <= N_DAM
    out = small_memory().compress(clip)
    expected = torch.cat([clip.high.flatten(0, 1), clip.low.flatten(0, 1)])
    assert torch.equal(out.tokens, expected)
    assert out.segments == {"dam": 48, "csm": 12}
    assert out.extras["dam_times"].tolist() == [0, 1, 2] == out.extras["csm_times"].tolist()
    assert out.positions.tolist() == [0] * 16 + [1] * 16 + [2] * 16 + [0] * 4 + [1] * 4 + [2] * 4


def test_csm_matches_slow_published_kmeans():
    clip = random_clip(20, seed=3)
    memory = small_memory()
    out = memory.compress(clip)
    times = torch.arange(20, dtype=torch.float32)
    centroids, masses, stamps = slow_ordered_weighted_kmeans(clip.low.flatten(1), 6, torch.ones(20), times)
    csm = out.tokens[out.segments["dam"] :].view(6, 4, D)
    torch.testing.assert_close(csm.flatten(1), centroids, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.extras["csm_weights"], masses)
    torch.testing.assert_close(out.extras["csm_timestamps"], stamps)
    assert out.extras["csm_times"].tolist() == stamps.round().long().tolist()
    assert float(out.extras["csm_weights"].sum()) == 20


def test_dam_matches_slow_published_retrieval():
    clip = random_clip(20, seed=4)
    out = small_memory().compress(clip)
    csm = out.tokens[out.segments["dam"] :].view(6, 4, D)
    picked = slow_klarge_retrieve(csm.flatten(1), out.extras["csm_weights"], clip.low.flatten(1), 3)
    assert out.extras["dam_times"].tolist() == picked
    torch.testing.assert_close(out.tokens[: out.segments["dam"]], clip.high[picked].flatten(0, 1))


def test_dam_nearest_method():
    clip = random_clip(20, seed=5)
    nearest = small_memory(spatial_method="nearest").compress(clip)
    heavy = torch.sort(nearest.extras["csm_weights"], descending=True, stable=True).indices[:3]
    assert nearest.extras["dam_times"].tolist() == nearest.extras["csm_timestamps"][heavy].round().long().tolist()


@pytest.mark.parametrize("fidelity", ["paper", "reference"])
def test_dam_cosine_paper_takes_the_most_similar_patch_reference_the_least(fidelity):
    clip = random_clip(20, seed=5)
    out = small_memory(spatial_method="klarge_retrieve_cos", fidelity=fidelity).compress(clip)
    csm = out.tokens[out.segments["dam"] :].view(6, 4, D)
    masses = out.extras["csm_weights"]
    picked = slow_klarge_retrieve(csm.flatten(1), masses, clip.low.flatten(1), 3, cosine=True, fidelity=fidelity)
    assert out.extras["dam_times"].tolist() == picked
    torch.testing.assert_close(out.tokens[: out.segments["dam"]], clip.high[picked].flatten(0, 1))
    other = "reference" if fidelity == "paper" else "paper"
    flipped = slow_klarge_retrieve(csm.flatten(1), masses, clip.low.flatten(1), 3, cosine=True, fidelity=other)
    assert picked != flipped  # the switch changes what DAM retrieves


def test_l2_dam_in_reference_mode_matches_the_published_retrieval():
    clip = random_clip(20, seed=4)
    out = small_memory(fidelity="reference").compress(clip)
    csm = out.tokens[out.segments["dam"] :].view(6, 4, D)
    picked = slow_klarge_retrieve(csm.flatten(1), out.extras["csm_weights"], clip.low.flatten(1), 3,
                                  fidelity="reference")
    assert out.extras["dam_times"].tolist() == picked


def test_few_distinct_patches_reference_follows_the_published_csm():
    gen = torch.Generator().manual_seed(7)
    values = torch.randn(3, 4, D, generator=gen)  # three distinct half-resolution patches A, B, C
    pattern = [0, 1, 0, 2, 1, 0, 2, 2, 1, 0]  # mean member index: A 4.0, B 4.33, C 5.33
    clip = DualResFeatures(torch.randn(10, 16, D, generator=gen), values[pattern], GRID)
    out = small_memory(fidelity="reference").compress(clip)  # 10 patches > N_CSM = 6 > 3 distinct
    centroids, masses, times = slow_published_few_distinct_csm(clip.low, 6)
    csm = out.tokens[out.segments["dam"] :].view(6, 4, D)
    torch.testing.assert_close(csm, centroids, rtol=0, atol=0)
    assert out.extras["csm_weights"].tolist() == masses
    torch.testing.assert_close(out.extras["csm_timestamps"], torch.tensor(times, dtype=torch.float32))
    assert out.extras["csm_times"].tolist() == [0, 1, 2, 4, 4, 5]  # prepended patches: out of time order
    picked = slow_klarge_retrieve(centroids.flatten(1), masses, clip.low.flatten(1), 3, fidelity="reference")
    assert out.extras["dam_times"].tolist() == picked
    paper = small_memory().compress(clip)  # the ordinary weighted k-means: masses count the members
    assert float(paper.extras["csm_weights"].sum()) == 10 and paper.segments == out.segments


def test_streaming_carries_mass_and_time_and_bounds_the_bank():
    memory = FlashMemory(FlashMemoryConfig(temporal_length=8, spatial_length=4, bank_size=6, bank_device="cpu"))
    state = memory.init_state()
    high_at = {}
    for step in range(5):
        clip = random_clip(3, seed=10 + step)
        high_at.update({3 * step + i: clip.high[i] for i in range(3)})
        assert memory.update(state, clip) is state
    assert state.num_seen == 15 and state.frames_seen == 30
    assert float(state.weights.sum()) == 15  # every patch counted once through the carried masses
    assert bool((state.times[1:] >= state.times[:-1]).all()) and 0 <= float(state.times.min())
    assert float(state.times.max()) <= 14
    assert state.bank_low.shape[0] == len(state.bank_high) == 6
    assert all(entry.device.type == "cpu" for entry in state.bank_high)
    assert bool((state.bank_times[1:] > state.bank_times[:-1]).all())
    out = memory.read(state)
    assert out.segments == {"dam": 2 * 16, "csm": 4 * 4}
    assert set(out.extras["dam_times"].tolist()) <= set(state.bank_times.long().tolist())
    expected = torch.cat([high_at[t] for t in out.extras["dam_times"].tolist()])
    assert torch.equal(out.tokens[: out.segments["dam"]], expected)  # the bank returns the right frames


def test_stream_rejects_a_new_frame_size():
    memory = small_memory()
    state = memory.update(memory.init_state(), random_clip(2))
    other = DualResFeatures(torch.randn(1, 64, D), torch.randn(1, 16, D), (8, 8))
    with pytest.raises(ValueError, match="grid changed"):
        memory.update(state, other)
    coarser = DualResFeatures(torch.randn(1, 16, D), torch.randn(1, 1, D), GRID, pool_size=4)
    with pytest.raises(ValueError, match="pool_size changed"):
        memory.update(state, coarser)
    with pytest.raises(ValueError, match="empty"):
        memory.read(memory.init_state())


def test_config_round_trip_and_validation():
    published = {"flash_memory_temporal_length": 60, "flash_memory_spatial_length": 30}
    config = FlashMemoryConfig.from_published(published)
    assert (config.csm_size, config.dam_size) == (30, 15)
    assert FlashMemoryConfig.from_published(config.to_published()) == config
    with pytest.raises(ValueError, match="flash_memory_typo"):
        FlashMemoryConfig.from_published({"flash_memory_typo": 1})
    with pytest.raises(ValueError, match="temporal_length"):
        FlashMemoryConfig(temporal_length=7)
    with pytest.raises(ValueError, match="spatial_method"):
        FlashMemoryConfig(spatial_method="sample")
    with pytest.raises(ValueError, match="bank_size"):
        FlashMemoryConfig(bank_size=10)
    with pytest.raises(ValueError, match="fidelity"):
        FlashMemoryConfig(fidelity="published")
