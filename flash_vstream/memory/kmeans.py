"""Weighted k-means shared by both memory families (STAR temporal memory, Flash Memory's CSM).

Weighted Lloyd iterations over the rows of a matrix, vectorised (no Python loop over clusters), seeded and
deterministic, with fp32 accumulation for half-precision inputs. It restates the published
``weighted_kmeans_feature`` (STAR) and its time-ordered variant (Flash Memory's CSM) with these fixes: a seeded
init, deterministic reseeding of empty clusters, squared-norm distances clamped at zero (the published ``sqrt``
produced NaNs), vectorised updates instead of a Python loop over clusters, and carried weights in streaming.

Shapes: n: rows (frames), d: row dimension (flattened tokens of a frame), k: clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    """The clustering of ``n`` weighted rows into ``k' = min(k, n)`` clusters.

    Attributes:
        centroids: ``(k', d)`` cluster centres, in the dtype of the input rows.
        weights: ``(k',)`` float32 cluster masses (sum of the member weights). A cluster can only have mass 0
            when the input has fewer than ``k`` distinct rows (see :func:`weighted_kmeans`).
        labels: ``(n,)`` int64 cluster id of every input row.
        times: ``(k',)`` float32 weighted-mean timestamp of each cluster, or ``None`` without input times.
    """

    centroids: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    times: torch.Tensor | None


def weighted_kmeans(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    times: torch.Tensor | None = None,
    *,
    iters: int = 10,
    tol: float = 1e-4,
    seed: int = 0,
    order_by_time: bool = False,
) -> KMeansResult:
    """Cluster the rows of ``x`` with weighted Lloyd iterations.

    Algorithm (each step vectorised over rows and clusters):

    1. If ``n <= k`` the rows are their own clusters (identity; ``labels = arange(n)``).
    2. Init: ``k`` rows with distinct values drawn by a CPU ``torch.Generator`` seeded with ``seed``
       (:func:`kmeans_init_indices`), so CPU and GPU runs start from the same rows.
    3. Up to ``iters`` times: assign every row to its nearest centre (squared distance
       ``|a|^2 + |b|^2 - 2ab`` clamped at 0; ties go to the lower cluster id); if a cluster is empty,
       reseed it at the row farthest from its centre (several empty clusters take the farthest rows in
       order, ties by row index) and assign once more; move every centre to the weighted mean of its
       members; stop early when ``sum_k |c_old - c_new| < tol``.
    4. The returned labels are the last assignment and the centroids/masses are exactly the weighted
       means/sums over those labels, so the three always agree.

    Args:
        x: ``(n, d)`` rows, any float dtype; half precision is accumulated in fp32.
        k: number of clusters (>= 1).
        weights: ``(n,)`` non-negative row weights (default ones), e.g. the carried masses of old centroids.
        times: ``(n,)`` row timestamps; when given, each cluster gets the weighted mean of its members' times.
        iters: maximum number of Lloyd iterations (>= 1).
        tol: early-stop threshold on the summed centroid shift (>= 0).
        seed: seed of the initial row draw.
        order_by_time: sort clusters by their timestamp (requires ``times``) and remap ``labels`` to match.
            On the identity path the rows are sorted by time too, a no-op when ``times`` are increasing.

    Returns:
        A :class:`KMeansResult` with ``min(k, n)`` clusters.

    Raises:
        ValueError: on a non-2-D or non-float ``x``, ``k < 1``, mismatched or negative ``weights``, mismatched
            ``times``, ``iters < 1``, ``tol < 0``, or ``order_by_time`` without ``times``.

    Degenerate input: when ``x`` has fewer than ``k`` distinct rows, the init takes every distinct row
    (first occurrences, in row order) and pads with the remaining rows in row order. The padding centres
    coincide with earlier ones, lose every tie, and stay empty: they come back with mass 0 and the timestamp
    of the row they were last seeded from.

    Example:
        >>> out = weighted_kmeans(torch.randn(100, 8), 5, seed=0)
        >>> out.centroids.shape, int(out.weights.sum())
        (torch.Size([5, 8]), 100)
    """
    w, t = _check_inputs(x, k, weights, times, iters, tol, order_by_time)
    n = x.shape[0]
    if n <= k:
        result = KMeansResult(x, w, torch.arange(n, device=x.device), t)
        return _sort_by_time(result) if order_by_time else result

    x32 = x.float()
    seeds = kmeans_init_indices(x32, k, seed)  # (k,) row each centre was last seeded from
    centroids = x32[seeds]
    for _ in range(iters):
        labels, seeds, centroids = _assign(x32, centroids, seeds)
        new_centroids, mass = _weighted_means(x32, w, labels, k)
        # An empty cluster keeps the centre it was (re)seeded at.
        new_centroids = torch.where(mass[:, None] > 0, new_centroids, centroids)
        shift = (new_centroids - centroids).norm(dim=1).sum()
        centroids = new_centroids
        if shift.item() < tol:
            break

    cluster_times = None
    if t is not None:
        onehot = _weighted_onehot(labels, w, k)  # (n, k)
        time_sums = t @ onehot  # (k,)
        cluster_times = torch.where(mass > 0, time_sums / mass.clamp_min(1e-30), t[seeds])
    result = KMeansResult(centroids.to(x.dtype), mass, labels, cluster_times)
    return _sort_by_time(result) if order_by_time else result


def kmeans_init_indices(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of the ``k`` initial rows used by :func:`weighted_kmeans` (exposed for re-statement tests).

    The candidates are the first occurrences of the distinct rows of ``x``, in row order. With at least
    ``k`` candidates, ``k`` of them are drawn by ``torch.randperm`` on a CPU generator seeded with ``seed``;
    otherwise all candidates are used, padded with the remaining rows in row order.

    Args:
        x: ``(n, d)`` rows with ``n > k``.
        k: number of clusters.
        seed: generator seed.

    Returns:
        ``(k,)`` int64 row indices on ``x.device``.
    """
    n = x.shape[0]
    first = _first_occurrences(x)  # (u,) sorted indices of the first row of each distinct value
    num_unique = first.numel()
    rows = torch.arange(n, device=x.device)
    if num_unique >= k:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pick = torch.randperm(num_unique, generator=generator)[:k].to(x.device)
        return first[pick]
    is_first = torch.zeros(n, dtype=torch.bool, device=x.device)
    is_first[first] = True
    return torch.cat([first, rows[~is_first]])[:k]


def count_distinct_rows(x: torch.Tensor) -> int:
    """Number of distinct rows of the 2-D ``x`` (compared bit for bit, without sorting the rows)."""
    return int(_first_occurrences(x).numel())


def _first_occurrences(x: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the first occurrence of every distinct row of ``x`` (rows compared bit for bit).

    ``torch.unique(x, dim=0)`` sorts rows lexicographically, which costs ~0.4 s on a GPU for 61 rows of 327,680
    values (Flash Memory's half-resolution patches). Instead each row's bit pattern is hashed with exact int64
    arithmetic (wrap-around sums are order-independent, so equal rows always get equal keys), and rows sharing a
    key are compared exactly, so a hash collision can never merge distinct rows.
    """
    n = x.shape[0]
    int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    bits = x.contiguous().view(int_type).to(torch.int64)  # (n, d) exact bit patterns
    generator = torch.Generator(device="cpu").manual_seed(0x5EED)
    coefficients = torch.randint(1, 2**31 - 1, (x.shape[1],), generator=generator).to(x.device)
    keys = (bits * coefficients).sum(dim=1)  # (n,)
    order = torch.argsort(keys, stable=True)  # equal keys stay in row order
    sorted_keys = keys[order]
    is_first = torch.ones(n, dtype=torch.bool, device=x.device)
    tied = (sorted_keys[1:] == sorted_keys[:-1]).nonzero().flatten()
    if tied.numel():
        for group in _key_groups(order, sorted_keys, tied):
            representatives: list[int] = []
            for row in group:
                if any(torch.equal(bits[row], bits[rep]) for rep in representatives):
                    is_first[row] = False
                else:
                    representatives.append(row)
    return is_first.nonzero().flatten()


def _key_groups(order: torch.Tensor, sorted_keys: torch.Tensor, tied: torch.Tensor) -> list[list[int]]:
    """Groups (lists of row indices, ascending) of rows whose keys are equal; only groups of two or more."""
    order, keys = order.tolist(), sorted_keys.tolist()
    groups: dict[int, list[int]] = {}
    for position in tied.tolist():
        for p in (position, position + 1):
            groups.setdefault(keys[p], [])
            if order[p] not in groups[keys[p]]:
                groups[keys[p]].append(order[p])
    return [sorted(g) for g in groups.values()]


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(n, k)`` squared Euclidean distances ``|x|^2 + |c|^2 - 2 x.c``, clamped at 0 against rounding.

    Avoids the ``(n, k, d)`` broadcast of the published code; the clamp avoids the NaNs its ``sqrt`` produced
    on tiny negative values.
    """
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (n, 1)
    c_sq = (centroids * centroids).sum(dim=1)  # (k,)
    return (x_sq + c_sq - 2.0 * (x @ centroids.T)).clamp_min(0.0)


def _assign(
    x: torch.Tensor, centroids: torch.Tensor, seeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-centre labels; empty clusters are reseeded at the farthest rows, then assignment is redone."""
    k = centroids.shape[0]
    dist = squared_distances(x, centroids)  # (n, k)
    labels = dist.argmin(dim=1)  # first minimum: ties go to the lower cluster id
    counts = torch.bincount(labels, minlength=k)
    empty = counts == 0
    if not bool(empty.any()):
        return labels, seeds, centroids
    # Rows sorted by distance to their centre, farthest first; the stable sort breaks ties by row index.
    own_dist = dist.gather(1, labels[:, None]).squeeze(1)  # (n,)
    farthest = torch.sort(own_dist, descending=True, stable=True).indices
    empty_ids = empty.nonzero().squeeze(1)  # (e,) in cluster order
    new_rows = farthest[: empty_ids.numel()]
    centroids = centroids.clone()
    centroids[empty_ids] = x[new_rows]
    seeds = seeds.clone()
    seeds[empty_ids] = new_rows
    labels = squared_distances(x, centroids).argmin(dim=1)
    return labels, seeds, centroids


def _weighted_onehot(labels: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """``(n, k)`` matrix with ``weights[i]`` at ``(i, labels[i])``."""
    onehot = torch.nn.functional.one_hot(labels, k).to(weights.dtype)  # (n, k)
    return onehot * weights[:, None]


def _weighted_means(
    x: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster weighted means ``(k, d)`` and masses ``(k,)``; empty clusters get zeros.

    A weighted one-hot matmul rather than ``index_add_``: same cost as the distance step, and deterministic on
    CUDA, where ``index_add_`` accumulates with atomics in a run-dependent order.
    """
    onehot = _weighted_onehot(labels, weights, k)  # (n, k)
    mass = onehot.sum(dim=0)  # (k,)
    sums = onehot.T @ x  # (k, d)
    return sums / mass.clamp_min(1e-30)[:, None], mass


def _sort_by_time(result: KMeansResult) -> KMeansResult:
    """Reorder clusters by timestamp (stable) and remap labels to the new cluster ids."""
    order = torch.sort(result.times, stable=True).indices  # new id -> old id
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(order.numel(), device=order.device)  # old id -> new id
    return KMeansResult(
        centroids=result.centroids[order],
        weights=result.weights[order],
        labels=new_id[result.labels],
        times=result.times[order],
    )


def _check_inputs(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None,
    times: torch.Tensor | None,
    iters: int,
    tol: float,
    order_by_time: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate arguments; return float32 weights (ones by default) and float32 times (or ``None``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"weighted_kmeans: x must be a 2-D float tensor (n, d); got {shape}. Flatten rows.")
    if int(k) != k or k < 1:
        raise ValueError(f"weighted_kmeans: k must be a positive integer; got {k!r}.")
    if iters < 1:
        raise ValueError(f"weighted_kmeans: iters must be >= 1; got {iters}.")
    if tol < 0:
        raise ValueError(f"weighted_kmeans: tol must be >= 0; got {tol}.")
    n = x.shape[0]
    if weights is None:
        w = torch.ones(n, dtype=torch.float32, device=x.device)
    else:
        if weights.shape != (n,):
            got = tuple(weights.shape)
            raise ValueError(f"weighted_kmeans: weights must have shape ({n},) to match x; got {got}.")
        w = weights.to(device=x.device, dtype=torch.float32)
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError("weighted_kmeans: weights must be finite and non-negative.")
    t = None
    if times is not None:
        if times.shape != (n,):
            got = tuple(times.shape)
            raise ValueError(f"weighted_kmeans: times must have shape ({n},) to match x; got {got}.")
        t = times.to(device=x.device, dtype=torch.float32)
    if order_by_time and t is None:
        raise ValueError("weighted_kmeans: order_by_time=True needs times; pass times=(n,) timestamps.")
    return w, t
