"""STAR memory: token counts, each component against a slow literal re-statement, streaming vs offline."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from flash_vstream.memory import StarMemory, StarMemoryConfig, pool_grid, weighted_kmeans


def tiny_config(**overrides):
    values = dict(feature_grid=4, spatial_size=2, temporal_size=1, abstract_size=1, temporal_clusters=4,
                  abstract_slots=3, retrieved_frames=2, feature_dim=6, attention_dim=5, bank_capacity=8)
    values.update(overrides)
    return StarMemoryConfig(**values)


def make_memory(config, seed=0):
    torch.manual_seed(seed)
    return StarMemory(config).eval()


def frames(n, config, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.feature_grid**2, config.feature_dim, generator=g).to(dtype)


# --- slow re-statements -------------------------------------------------------------------------------------


def naive_pool(x, size):
    """Block means one frame, one output cell at a time (float64)."""
    x = np.asarray(x, dtype=np.float64)
    t, n, d = x.shape
    p = math.isqrt(n)
    b = p // size
    out = np.zeros((t, size * size, d))
    for f in range(t):
        for i in range(size):
            for j in range(size):
                rows, cols = range(i * b, (i + 1) * b), range(j * b, (j + 1) * b)
                cells = [x[f, r * p + c] for r in rows for c in cols]
                out[f, i * size + j] = np.mean(cells, axis=0)
    return out


def literal_abstract(tokens, slots, ratio, attention):
    """The published semantic-attention update, literally.

    M = X[:T0]; per chunk M <- M (1 - sum A) + A C; A = r softmax(q(M) k(C)^T / sqrt).
    """
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    wq, bq = as_np(attention.q_proj.weight), as_np(attention.q_proj.bias)
    wk, bk = as_np(attention.k_proj.weight), as_np(attention.k_proj.bias)
    x = np.asarray(tokens, dtype=np.float64)  # (h, n, d)
    if len(x) <= slots:
        return x
    memory = x[:slots].reshape(-1, x.shape[-1])
    for start in range(slots, len(x), slots):
        chunk = x[start:start + slots].reshape(-1, x.shape[-1])
        scores = (memory @ wq.T + bq) @ (chunk @ wk.T + bk).T / math.sqrt(wq.shape[0])
        attn = np.exp(scores - scores.max(axis=1, keepdims=True))
        attn = attn / attn.sum(axis=1, keepdims=True) * ratio
        memory = memory * (1 - attn.sum(axis=1, keepdims=True)) + attn @ chunk
    return memory.reshape(slots, -1, x.shape[-1])


def literal_paper_retrieval(centroids, masses, candidates, count):
    """Heaviest centroids in mass order (stable), nearest unused frame each, then time order."""
    order = sorted(range(len(masses)), key=lambda i: (-masses[i], i))[:count]
    taken = []
    for c in order:
        dists = [(float(((candidates[f] - centroids[c]) ** 2).sum()), f) for f in range(len(candidates))
                 if f not in taken]
        taken.append(min(dists)[1])
    return sorted(taken)


def split(output):
    """Component name -> token block, following the declared segment order."""
    blocks, start = {}, 0
    for name, count in output.segments.items():
        blocks[name] = output.tokens[start:start + count]
        start += count
    return blocks


# --- config and module --------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    config = StarMemoryConfig()
    assert StarMemoryConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        StarMemoryConfig.from_dict({"bogus": 1})
    bad = {"spatial_size": 5, "temporal_size": 3, "retrieval": "nearest", "update_ratio": 1.5,
           "bank_capacity": 10, "temporal_clusters": 0, "kmeans_tol": -1.0, "abstract_size": 3}
    for field, value in bad.items():
        with pytest.raises(ValueError, match=field):
            StarMemoryConfig(**{field: value})


def test_parameter_names_match_released_attention_model():
    memory = StarMemory(StarMemoryConfig(feature_dim=8))
    shapes = {k: tuple(v.shape) for k, v in memory.state_dict().items()}
    assert shapes == {
        "attention.q_proj.weight": (32, 8), "attention.q_proj.bias": (32,),
        "attention.k_proj.weight": (32, 8), "attention.k_proj.bias": (32,),
        "attention.v_proj.weight": (32, 8), "attention.v_proj.bias": (32,),
        "attention.out_proj.weight": (8, 32), "attention.out_proj.bias": (8,),
        "attention.out_ln.weight": (8,), "attention.out_ln.bias": (8,),
    }
    assert memory.attention.out_ln.eps == 1e-12


def test_only_query_and_key_are_trainable_and_unused_weights_still_load_strictly():
    memory = StarMemory(StarMemoryConfig(feature_dim=8))
    expected = ["attention.q_proj.weight", "attention.q_proj.bias", "attention.k_proj.weight", "attention.k_proj.bias"]
    assert [n for n, _ in memory.named_parameters()] == expected
    memory.requires_grad_(True)  # cannot reach the load-only buffers
    assert [n for n, p in memory.named_parameters() if p.requires_grad] == expected
    assert not any(b.requires_grad for b in memory.buffers())
    # A released state dict (random values under every key) loads strictly, buffers included.
    released = {k: torch.randn_like(v) for k, v in memory.state_dict().items()}
    assert not memory.load_state_dict(released, strict=True).missing_keys
    assert torch.equal(memory.attention.out_ln.weight, released["attention.out_ln.weight"])
    del released["attention.v_proj.bias"]
    with pytest.raises(RuntimeError, match="attention.v_proj.bias"):
        memory.load_state_dict(released, strict=True)
    # The buffers follow dtype casts like the weights they replace.
    assert memory.to(torch.bfloat16).attention.out_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("num_frames", [1, 2, 26, 60])
def test_every_parameter_gets_a_gradient_in_every_compress(num_frames):
    """DDP without find_unused_parameters needs q/k in each step's graph, also when short clips skip them."""
    config = StarMemoryConfig(feature_dim=8)
    memory = make_memory(config)
    clip = frames(num_frames, config, seed=num_frames)
    with torch.no_grad():
        plain = memory.compress(clip).tokens  # no graph, no zero term
    tokens = memory.compress(clip).tokens
    assert torch.equal(tokens, plain)
    tokens.sum().backward()
    grads = {n: p.grad for n, p in memory.named_parameters()}
    assert all(g is not None for g in grads.values())
    uses_attention = num_frames - 1 > config.abstract_slots  # a history beyond the first chunk
    assert any(bool(g.abs().sum() > 0) for g in grads.values()) == uses_attention


# --- token counts -------------------------------------------------------------------------------------------


def test_default_counts_long_clip_and_image():
    config = StarMemoryConfig(feature_dim=4)
    memory = make_memory(config)
    long = memory.compress(frames(40, config))
    assert long.segments == {"abstract": 25, "temporal": 400, "retrieved": 192, "spatial": 64}
    assert long.num_tokens == 681 == memory.num_tokens(40)
    image = memory.compress(frames(1, config))
    assert image.segments == {"abstract": 0, "temporal": 0, "retrieved": 0, "spatial": 64}
    assert image.num_tokens == 64


@pytest.mark.parametrize("retrieval", ["reference", "paper"])
def test_default_counts_short_clips(retrieval):
    config = StarMemoryConfig(feature_dim=2, retrieval=retrieval)
    memory = make_memory(config)
    clip = frames(30, config)
    for t in range(2, 31):
        hist = t - 1  # one spatial frame; the rest is history
        expected = {"abstract": min(hist, 25), "temporal": 16 * min(hist, 25),
                    "retrieved": 64 * min(hist, 3), "spatial": 64}
        out = memory.compress(clip[:t])
        assert out.segments == expected, t
        assert out.num_tokens == sum(expected.values()) == memory.num_tokens(t)
    assert memory.num_tokens(2) == 145


# --- components against the slow re-statement ---------------------------------------------------------------


def test_pool_grid_matches_naive_loop_and_rejects_bad_sizes():
    x = torch.randn(3, 256, 5, dtype=torch.float64)
    for size in (1, 2, 4, 8, 16):
        np.testing.assert_allclose(pool_grid(x, size).numpy(), naive_pool(x.numpy(), size), atol=1e-12)
    assert torch.equal(pool_grid(x, 16), x)
    with pytest.raises(ValueError, match="spatial_size=3"):
        pool_grid(x, 3, name="spatial_size")
    with pytest.raises(ValueError, match="square grid"):
        pool_grid(torch.randn(1, 10, 2), 1)


@pytest.mark.parametrize("retrieval", ["reference", "paper"])
@pytest.mark.parametrize("num_frames", [3, 5, 15])
def test_compress_components_match_literal_algorithm(retrieval, num_frames):
    config = tiny_config(retrieval=retrieval)
    memory = make_memory(config)
    clip = frames(num_frames, config, seed=num_frames).double()
    memory = memory.double()
    with torch.no_grad():
        out = memory.compress(clip)
    blocks = split(out)
    assert list(out.segments) == ["abstract", "temporal", "retrieved", "spatial"]

    pooled = naive_pool(clip.numpy(), config.spatial_size)  # (t, 4, d)
    hist, current = pooled[:-1], pooled[-1:]
    hist_tem = naive_pool(hist, config.temporal_size)  # (h, 1, d)
    np.testing.assert_allclose(blocks["spatial"].numpy(), current.reshape(-1, 6), atol=1e-12)

    clusters = weighted_kmeans(torch.from_numpy(hist_tem.reshape(len(hist), -1)), config.temporal_clusters)
    centroids = clusters.centroids.numpy()
    np.testing.assert_allclose(blocks["temporal"].numpy(), centroids.reshape(-1, 6), atol=1e-10)

    ratio = config.update_ratio
    abstract = literal_abstract(naive_pool(hist, 1), config.abstract_slots, ratio, memory.attention)
    np.testing.assert_allclose(blocks["abstract"].numpy(), abstract.reshape(-1, 6), atol=1e-10)

    count = min(config.retrieved_frames, len(clusters.weights))
    masses = clusters.weights.tolist()
    if retrieval == "reference":  # the published call; its cluster ids are used as frame positions
        ids = torch.argsort(clusters.weights, descending=True)[:count].tolist()
    else:
        ids = literal_paper_retrieval(centroids, masses, hist_tem.reshape(len(hist), -1), count)
    assert out.extras["retrieved_frames"].tolist() == ids
    np.testing.assert_allclose(blocks["retrieved"].numpy(), hist[ids].reshape(-1, 6), atol=1e-12)


def test_reference_retrieval_uses_the_published_unstable_argsort():
    """26 frames: 25 history frames, all clusters of mass 1, so only the sort's tie order picks the frames."""
    config = StarMemoryConfig(feature_dim=2)
    clip = frames(26, config)
    out = make_memory(config).compress(clip)
    published = torch.argsort(torch.ones(25), descending=True)[:3]  # what the published code computes here
    assert out.extras["retrieved_frames"].tolist() == published.tolist()
    retrieved = split(out)["retrieved"].reshape(3, 64, 2)
    torch.testing.assert_close(retrieved, pool_grid(clip, 8)[published], rtol=0, atol=0)
    paper = make_memory(StarMemoryConfig(feature_dim=2, retrieval="paper")).compress(clip)
    assert paper.segments == out.segments


def test_compress_trains_attention_query_and_key():
    config = tiny_config()
    memory = make_memory(config)
    memory.compress(frames(12, config)).tokens.square().sum().backward()
    for proj in (memory.attention.q_proj, memory.attention.k_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_bf16_features_follow_fp32():
    config = tiny_config()
    memory = make_memory(config)
    clip = frames(12, config)
    full, half = memory.compress(clip), memory.compress(clip.bfloat16())
    assert half.tokens.dtype == torch.bfloat16 and half.segments == full.segments
    torch.testing.assert_close(split(half)["abstract"].float(), split(full)["abstract"], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(split(half)["spatial"].float(), split(full)["spatial"], atol=2e-2, rtol=2e-2)


def test_bad_features_raise_naming_the_fix():
    memory = make_memory(tiny_config())
    with pytest.raises(ValueError, match="feature_grid\\*\\*2, feature_dim"):
        memory.compress(torch.randn(3, 15, 6))
    with pytest.raises(ValueError, match="push at least one frame"):
        memory.read(memory.init_state())


# --- streaming ----------------------------------------------------------------------------------------------


def stream(memory, clip, chunks, times=None):
    state = memory.init_state()
    start = 0
    for size in chunks:
        piece_times = None if times is None else times[start:start + size]
        state = memory.update(state, clip[start:start + size], piece_times)
        start += size
    assert start == clip.shape[0]
    return state


@pytest.mark.parametrize("retrieval", ["reference", "paper"])
@pytest.mark.parametrize("spatial_frames", [1, 2])
def test_streaming_equals_offline_while_clusters_not_full(retrieval, spatial_frames):
    config = tiny_config(retrieval=retrieval, spatial_frames=spatial_frames)
    memory = make_memory(config)
    limit = config.temporal_clusters + spatial_frames
    clip = frames(limit, config, seed=5)
    for t in range(1, limit + 1):
        for chunks in ([1] * t, [t], [2] * (t // 2) + [t % 2]):
            chunks = [c for c in chunks if c]
            state = stream(memory, clip[:t], chunks)
            online, offline = memory.read(state), memory.compress(clip[:t])
            assert online.segments == offline.segments
            torch.testing.assert_close(online.tokens, offline.tokens, rtol=0, atol=0)
            if "retrieved_frames" in offline.extras:
                picked = offline.extras["retrieved_frames"].tolist()
                assert online.extras["retrieved_frames"].tolist() == picked


def test_streaming_abstract_equals_offline_for_long_streams():
    config = tiny_config()
    memory = make_memory(config)
    clip = frames(41, config, seed=6)
    for t in (4, 6, 7, 9, 10, 23, 41):  # history = t - 1: exactly full chunks and partial ones
        for chunks in ([1] * t, [5] * (t // 5) + [t % 5], [t]):
            state = stream(memory, clip[:t], [c for c in chunks if c])
            online = split(memory.read(state))["abstract"]
            # The same sums in other chunks: bit-exact on some CPUs, a rounding step apart where the BLAS blocks a
            # product by its shape (seen: 7e-9 on an AVX2-only machine); a wrong recurrence is off by far more.
            torch.testing.assert_close(online, split(memory.compress(clip[:t]))["abstract"], rtol=1e-6, atol=1e-7)


def test_streaming_carries_cluster_masses_and_read_is_pure():
    config = tiny_config()
    memory = make_memory(config)
    clip = frames(30, config, seed=7)
    times = torch.arange(30, dtype=torch.float32) * 0.5
    state = stream(memory, clip, [1] * 30, times)
    assert state.masses.sum().item() == 29  # each history frame counted once (published code drops masses)
    low, high = times[:29].min().item(), times[:29].max().item()
    assert all(low <= t <= high for t in state.centroid_times.tolist())
    before = [t.clone() for t in state.device_tensors()]
    first, second = memory.read(state), memory.read(state)
    assert torch.equal(first.tokens, second.tokens)
    assert all(torch.equal(a, b) for a, b in zip(before, state.device_tensors(), strict=True))
    assert first.segments == {"abstract": 3, "temporal": 4, "retrieved": 8, "spatial": 4}


def test_bank_eviction_keeps_every_other_from_the_newest():
    config = tiny_config()
    memory = make_memory(config)
    state = stream(memory, frames(10, config), [10])  # 9 history frames, capacity 8
    assert state.bank.frame_ids[:state.bank.size].tolist() == [1, 3, 5, 7, 8]
    state = memory.update(state, frames(5, config, seed=2))
    assert state.bank.frame_ids[:state.bank.size].tolist() == [3, 7, 9, 11, 12, 13]


@pytest.mark.parametrize("retrieval", ["reference", "paper"])
def test_long_stream_keeps_masses_and_the_newest_bank_frames(retrieval):
    config = tiny_config(feature_grid=2, spatial_size=2, feature_dim=8, bank_capacity=16, retrieval=retrieval)
    memory = make_memory(config)
    state = memory.init_state()
    clip = frames(400, config, seed=3)
    start, step = 0, 0
    while start < 400:  # updates of 1..7 frames
        size = min(1 + step % 7, 400 - start)
        memory.update(state, clip[start:start + size])
        start, step = start + size, step + 1
    ids = state.bank.frame_ids[:state.bank.size]
    assert ids[-1].item() == 398 and bool((ids[1:] > ids[:-1]).all())  # the newest history frame stays
    assert state.masses.sum().item() == 399  # every history frame counted once
    out = memory.read(state)
    assert out.num_tokens == memory.num_tokens(400)
    assert set(out.extras["retrieved_frames"].tolist()) <= set(ids.tolist())


def test_state_is_a_dataclass_and_update_returns_it():
    config = tiny_config()
    memory = make_memory(config)
    state = memory.init_state()
    assert dataclasses.is_dataclass(state)
    assert memory.update(state, frames(3, config)) is state
    assert state.frames_seen == 3 and state.num_spatial == 1 and state.num_centroids == 2


@pytest.mark.gpu
def test_cuda_matches_cpu():
    config = tiny_config(retrieval="paper")
    memory = make_memory(config)
    clip = frames(20, config, seed=4)
    cpu = memory.compress(clip)
    gpu = memory.cuda().compress(clip.cuda())
    assert gpu.segments == cpu.segments
    torch.testing.assert_close(gpu.tokens.cpu(), cpu.tokens, atol=1e-5, rtol=1e-5)
    state = stream(memory, clip.cuda(), [3] * 6 + [2])
    assert state.slots.is_cuda and state.bank.features.device.type == "cpu"
    assert memory.read(state).num_tokens == memory.num_tokens(20)


# --- pre-pooled features (the chunked offline path) -------------------------------------------------------------


@pytest.mark.parametrize("retrieval", ["reference", "paper"])
@pytest.mark.parametrize("num_frames", [1, 5, 40])
def test_compress_of_features_pooled_chunk_by_chunk_is_identical(retrieval, num_frames):
    """Pooling a clip in chunks of any size and compressing the pooled clip gives exactly the tokens and extras."""
    memory = StarMemory.tiny(retrieval=retrieval)
    features = torch.randn(num_frames, 16, 6, generator=torch.Generator().manual_seed(num_frames))
    times = torch.arange(num_frames, dtype=torch.float32) * 0.5
    whole = memory.compress(features, times)
    for chunk in (1, 3, 64):
        pooled = torch.cat([memory.pool_frames(part) for part in features.split(chunk)])
        assert pooled.shape == (num_frames, 4, 6)  # S*S = 2*2 tokens per frame
        got = memory.compress(pooled, times)
        assert torch.equal(got.tokens, whole.tokens)
        assert got.segments == whole.segments
        assert whole.extras.keys() == got.extras.keys()
        assert all(torch.equal(got.extras[k], whole.extras[k]) for k in whole.extras)


def test_pooled_features_are_accepted_only_by_compress():
    memory = StarMemory.tiny()
    pooled = memory.pool_frames(torch.randn(3, 16, 6))
    with pytest.raises(ValueError, match="pooled"):
        memory.compress(torch.randn(3, 9, 6))  # neither the patch grid nor the pooled grid
    with pytest.raises(ValueError, match="feature_grid"):
        memory.pool_frames(pooled)  # pool_frames takes patch tokens
    with pytest.raises(ValueError, match="feature_grid"):
        memory.update(memory.init_state(), pooled)  # streaming takes patch tokens, as before
