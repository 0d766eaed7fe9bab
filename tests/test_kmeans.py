"""Tests of the shared weighted k-means against a slow, literal numpy re-statement of weighted Lloyd."""

import numpy as np
import pytest
import torch

from flash_vstream.memory.kmeans import KMeansResult, _assign, kmeans_init_indices, weighted_kmeans


def slow_weighted_lloyd(x, k, weights, init_rows, iters, tol, times=None, on_empty=None):
    """Weighted Lloyd one row and one cluster at a time, float64, from the given init rows."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    centroids = [x[i].copy() for i in init_rows]
    seeds = list(init_rows)

    def nearest(cents):
        labels, own = [], []
        for i in range(n):
            d = [float(((x[i] - c) ** 2).sum()) for c in cents]
            best = min(range(k), key=lambda j: (d[j], j))
            labels.append(best)
            own.append(d[best])
        return labels, own

    for _ in range(iters):
        labels, own = nearest(centroids)
        empty = [j for j in range(k) if labels.count(j) == 0]
        if empty:
            if on_empty is not None:
                on_empty.append(empty)
            far = sorted(range(n), key=lambda i: (-own[i], i))
            for j, row in zip(empty, far, strict=False):
                centroids[j] = x[row].copy()
                seeds[j] = row
            labels, _ = nearest(centroids)
        new, mass = [], []
        for j in range(k):
            members = [i for i in range(n) if labels[i] == j]
            m = sum(w[i] for i in members)
            mass.append(m)
            new.append(sum(w[i] * x[i] for i in members) / m if m > 0 else centroids[j])
        shift = sum(float(np.sqrt(((a - b) ** 2).sum())) for a, b in zip(new, centroids, strict=True))
        centroids = new
        if shift < tol:
            break
    out_times = None
    if times is not None:
        out_times = []
        for j in range(k):
            members = [i for i in range(n) if labels[i] == j]
            if mass[j] > 0:
                out_times.append(sum(w[i] * times[i] for i in members) / mass[j])
            else:
                out_times.append(times[seeds[j]])
    return np.stack(centroids), np.array(mass), np.array(labels), out_times


def _clustered(n, d, groups, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, d, generator=g) * 4
    return centres[torch.arange(n) % groups] + torch.randn(n, d, generator=g)


def test_identity_when_n_not_above_k():
    x = torch.randn(5, 3)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    t = torch.arange(5.0)
    out = weighted_kmeans(x, 5, w, t)
    assert torch.equal(out.centroids, x)
    assert torch.equal(out.weights, w)
    assert torch.equal(out.labels, torch.arange(5))
    assert torch.equal(out.times, t)
    plain = weighted_kmeans(x[:3], 25)
    assert torch.equal(plain.weights, torch.ones(3)) and plain.times is None
    assert plain.labels.dtype == torch.int64


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matches_slow_reference(seed):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(40, 6, generator=g)
    w = torch.rand(40, generator=g) * 3 + 0.1
    t = torch.rand(40, generator=g) * 100
    k = 5
    out = weighted_kmeans(x, k, w, t, iters=10, tol=1e-4, seed=seed)
    init = kmeans_init_indices(x, k, seed).tolist()
    assert len(set(init)) == k
    cents, mass, labels, times = slow_weighted_lloyd(x.numpy(), k, w.numpy(), init, 10, 1e-4, t.numpy())
    assert out.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(out.centroids.numpy(), cents, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.weights.numpy(), mass, rtol=1e-5)
    np.testing.assert_allclose(out.times.numpy(), times, rtol=1e-5)


def test_weights_shift_centroid_to_heavy_row():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    unweighted = weighted_kmeans(x, 2, iters=5)
    weighted = weighted_kmeans(x, 2, torch.tensor([1.0, 9.0, 1.0]), iters=5)
    pair = lambda r: r.centroids[r.labels[0]].item()  # noqa: E731 - centroid of the {0, 1} cluster
    assert pair(unweighted) == pytest.approx(0.5)
    assert pair(weighted) == pytest.approx(0.9)
    assert sorted(weighted.weights.tolist()) == [1.0, 10.0]


def test_masses_are_member_sums_and_centroids_member_means():
    x = _clustered(60, 4, 6, seed=3)
    w = torch.rand(60) + 0.5
    out = weighted_kmeans(x, 6, w)
    for j in range(6):
        members = out.labels == j
        assert out.weights[j].item() == pytest.approx(w[members].sum().item(), rel=1e-5)
        expected = (w[members, None] * x[members]).sum(0) / w[members].sum()
        torch.testing.assert_close(out.centroids[j], expected, rtol=1e-5, atol=1e-5)


def test_empty_cluster_reseeding_in_full_run_matches_reference():
    # A weighted integer grid on which seed 0 empties a cluster mid-run (found by search; checked below).
    g = torch.Generator().manual_seed(698)
    x = torch.randint(0, 6, (12, 2), generator=g).float()
    w = torch.randint(1, 10, (12,), generator=g).float()
    k = 6
    first = weighted_kmeans(x, k, w, seed=0)
    second = weighted_kmeans(x, k, w, seed=0)
    assert torch.equal(first.centroids, second.centroids) and torch.equal(first.labels, second.labels)
    init = kmeans_init_indices(x, k, 0).tolist()
    empties = []
    cents, mass, labels, _ = slow_weighted_lloyd(x.numpy(), k, w.numpy(), init, 10, 1e-4, on_empty=empties)
    assert empties, "this input must exercise the empty-cluster path"
    assert first.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(first.centroids.numpy(), cents, atol=1e-5)
    np.testing.assert_allclose(first.weights.numpy(), mass)


def test_empty_cluster_reseeded_at_farthest_rows_ties_by_index():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    seeds = torch.tensor([1, 0, 0])
    # Every row is nearest to centre 0, so clusters 1 and 2 are empty; own distances are 1, 0, 1, 81.
    labels, new_seeds, centroids = _assign(x, torch.tensor([[1.0], [100.0], [200.0]]), seeds)
    assert new_seeds.tolist() == [1, 3, 0]  # farthest row 3, then rows 0 and 2 tie at 1 -> row 0
    assert centroids.squeeze(1).tolist() == [1.0, 10.0, 0.0]
    assert labels.tolist() == [2, 0, 0, 1]
    assert seeds.tolist() == [1, 0, 0]  # inputs untouched


def test_fewer_unique_rows_than_k():
    x = torch.tensor([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)  # 2 distinct rows, k = 4
    t = torch.arange(10.0)
    init = kmeans_init_indices(x, 4, 0)
    assert init.tolist() == [0, 5, 1, 2]  # first occurrences, then the remaining rows in order
    out = weighted_kmeans(x, 4, times=t)
    assert out.centroids.shape == (4, 2)
    assert out.weights.tolist() == [5.0, 5.0, 0.0, 0.0]
    assert out.labels.tolist() == [0] * 5 + [1] * 5
    assert out.times[:2].tolist() == [2.0, 7.0]
    assert torch.isfinite(out.times).all() and torch.isfinite(out.centroids).all()


def test_bf16_close_to_fp32():
    x = _clustered(50, 8, 5, seed=5)
    ref = weighted_kmeans(x, 5, seed=2)
    half = weighted_kmeans(x.bfloat16(), 5, seed=2)
    assert half.centroids.dtype == torch.bfloat16 and half.weights.dtype == torch.float32
    assert half.labels.tolist() == ref.labels.tolist()
    torch.testing.assert_close(half.centroids.float(), ref.centroids, rtol=2e-2, atol=2e-2)


def test_seed_determinism_and_seed_dependence():
    x = torch.randn(80, 5, generator=torch.Generator().manual_seed(9))
    a = weighted_kmeans(x, 7, seed=11)
    b = weighted_kmeans(x, 7, seed=11)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(kmeans_init_indices(x, 7, 11), kmeans_init_indices(x, 7, 12))


def test_order_by_time_sorts_clusters_and_remaps_labels():
    x = _clustered(45, 3, 5, seed=8)
    t = torch.rand(45, generator=torch.Generator().manual_seed(1)) * 50
    plain = weighted_kmeans(x, 5, times=t, seed=3)
    ordered = weighted_kmeans(x, 5, times=t, seed=3, order_by_time=True)
    assert torch.all(ordered.times[1:] >= ordered.times[:-1])
    assert sorted(ordered.times.tolist()) == sorted(plain.times.tolist())
    # Every row still sits in the same cluster, under its new id.
    torch.testing.assert_close(ordered.centroids[ordered.labels], plain.centroids[plain.labels])
    for j in range(5):
        assert ordered.times[j].item() == pytest.approx(t[ordered.labels == j].mean().item(), rel=1e-5)


def test_order_by_time_identity_path_sorts_rows():
    x = torch.randn(3, 2)
    out = weighted_kmeans(x, 5, times=torch.tensor([2.0, 0.0, 1.0]), order_by_time=True)
    assert torch.equal(out.centroids, x[[1, 2, 0]])
    assert out.labels.tolist() == [2, 0, 1]


def test_tolerance_stops_early_and_iters_cap():
    x = _clustered(30, 2, 3, seed=2)
    one = weighted_kmeans(x, 3, iters=1)
    init = kmeans_init_indices(x, 3, 0).tolist()
    cents, _, labels, _ = slow_weighted_lloyd(x.numpy(), 3, None, init, 1, 1e-4)
    np.testing.assert_allclose(one.centroids.numpy(), cents, rtol=1e-5, atol=1e-6)
    # A tolerance larger than any first shift stops after one iteration; the default runs on from there.
    assert torch.equal(weighted_kmeans(x, 3, tol=1e9).centroids, one.centroids)
    assert not torch.equal(weighted_kmeans(x, 3).centroids, one.centroids)


def test_result_type_and_errors():
    assert isinstance(weighted_kmeans(torch.randn(4, 2), 2), KMeansResult)
    with pytest.raises(ValueError, match="2-D float"):
        weighted_kmeans(torch.randn(4, 2, 2), 2)
    with pytest.raises(ValueError, match="k must be"):
        weighted_kmeans(torch.randn(4, 2), 0)
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_kmeans(torch.randn(4, 2), 2, weights=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_kmeans(torch.randn(4, 2), 2, weights=-torch.ones(4))
    with pytest.raises(ValueError, match="order_by_time"):
        weighted_kmeans(torch.randn(4, 2), 2, order_by_time=True)
    with pytest.raises(ValueError, match="iters"):
        weighted_kmeans(torch.randn(4, 2), 2, iters=0)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_is_deterministic():
    x = _clustered(500, 64, 20, seed=6)
    w = torch.rand(500) + 0.5
    cpu = weighted_kmeans(x, 20, w, seed=1)
    first = weighted_kmeans(x.cuda(), 20, w.cuda(), seed=1)
    second = weighted_kmeans(x.cuda(), 20, w.cuda(), seed=1)
    assert torch.equal(first.centroids, second.centroids) and torch.equal(first.labels, second.labels)
    assert first.labels.cpu().tolist() == cpu.labels.tolist()
    torch.testing.assert_close(first.centroids.cpu(), cpu.centroids, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_first_occurrences_match_torch_unique(dtype):
    from flash_vstream.memory.kmeans import _first_occurrences, count_distinct_rows

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 24, generator=gen).to(dtype)
    x[[5, 17, 33]] = x[2].clone()  # planted duplicates of row 2
    x[30] = x[9].clone()
    x[39] = x[38].clone()
    _, inverse = torch.unique(x.float(), dim=0, return_inverse=True)
    expected = sorted({int(torch.nonzero(inverse == u)[0]) for u in inverse.unique().tolist()})
    assert _first_occurrences(x).tolist() == expected
    assert len(expected) == 40 - 5 == count_distinct_rows(x)
