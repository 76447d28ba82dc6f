"""Tests for ``bottleneck.neighbors``: kNN, kNN graph and farthest point sampling.

The pure-torch path is checked against brute-force references written per sample
with plain loops (slow but obviously right), comparing neighbour *distances* rather
than indices so that ties may be broken either way.
"""

from __future__ import annotations

import math
import resource

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bottleneck.neighbors as nb
from bottleneck.errors import BottleneckError
from bottleneck.neighbors import fps, knn, knn_graph, knn_neighbours

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------- helpers


def _batch(counts: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(
        torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long)
    )


def _points(n: int, dim: int, seed: int, grid: bool) -> torch.Tensor:
    """Random points; ``grid`` puts them on a coarse integer grid to force ties/duplicates."""
    gen = torch.Generator().manual_seed(seed)
    if grid:
        return torch.randint(0, 3, (n, dim), generator=gen).float()
    return torch.rand(n, dim, generator=gen) * 10 - 5


def _ref_knn_dists(
    x: torch.Tensor, y: torch.Tensor, k: int, bx: list[int], by: list[int], exclude_self: bool
) -> list[list[float]]:
    """For each query, the sorted distances to its k nearest same-sample points (float64)."""
    out = []
    for i in range(y.shape[0]):
        ds = [
            float(((y[i].double() - x[j].double()) ** 2).sum())
            for j in range(x.shape[0])
            if bx[j] == by[i] and not (exclude_self and i == j)
        ]
        out.append(sorted(ds)[:k])
    return out


def _got_knn_dists(
    x: torch.Tensor, y: torch.Tensor, edge: torch.Tensor, num_queries: int
) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in range(num_queries)]
    for q, j in edge.t().tolist():
        out[q].append(float(((y[q].double() - x[j].double()) ** 2).sum()))
    return [sorted(d) for d in out]


def _assert_close_lists(got: list[list[float]], ref: list[list[float]]) -> None:
    assert len(got) == len(ref)
    for q, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert len(g) == len(r), f"query {q}: {len(g)} neighbours, expected {len(r)}"
        assert g == pytest.approx(r, rel=1e-5, abs=1e-5), f"query {q}"


ragged = st.lists(st.integers(0, 9), min_size=1, max_size=5)


# --------------------------------------------------------------------------- knn


@SETTINGS
@given(
    counts_x=ragged,
    extra_y=st.lists(st.integers(0, 6), min_size=0, max_size=2),
    k=st.integers(1, 6),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    grid=st.booleans(),
    chunk_size=st.sampled_from([None, 1, 2, 5]),
)
def test_knn_matches_bruteforce(counts_x, extra_y, k, dim, seed, grid, chunk_size):
    # y may have more (or fewer) samples than x; samples smaller than k get all they have.
    counts_y = [(c * 7 + 3) % 8 for c in counts_x] + extra_y
    bx, by = _batch(counts_x), _batch(counts_y)
    x = _points(len(bx), dim, seed, grid)
    y = _points(len(by), dim, seed + 1, grid)
    edge = knn(x, y, k, bx, by, chunk_size=chunk_size, use_cluster=False)
    assert edge.dtype == torch.long and edge.shape[0] == 2
    if edge.numel():
        assert bool((bx[edge[1]] == by[edge[0]]).all()), "a neighbour from another sample"
        pairs = set(map(tuple, edge.t().tolist()))
        assert len(pairs) == edge.shape[1], "duplicate (query, neighbour) pair"
        assert bool((edge[0][1:] >= edge[0][:-1]).all()), "queries not grouped in order"
    ref = _ref_knn_dists(x, y, k, bx.tolist(), by.tolist(), exclude_self=False)
    _assert_close_lists(_got_knn_dists(x, y, edge, len(by)), ref)


def test_knn_batch_none_means_one_sample():
    x = _points(20, 3, 0, False)
    y = _points(7, 3, 1, False)
    a = knn(x, y, 4, use_cluster=False)
    b = knn(
        x,
        y,
        4,
        torch.zeros(20, dtype=torch.long),
        torch.zeros(7, dtype=torch.long),
        use_cluster=False,
    )
    assert torch.equal(a, b)
    assert a.shape == (2, 28)


def test_knn_far_from_origin_keeps_exact_order():
    # Coordinates far from the origin: the |a|^2 - 2ab + |b|^2 expansion would mix up
    # these neighbours in float32; the per-coordinate path must not.
    base = torch.tensor([[10_000.0, -10_000.0, 5_000.0]])
    offsets = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0, 0], [0.02, 0, 0], [0.04, 0, 0]])
    x = base + offsets
    edge = knn(x, x[:1], 4, use_cluster=False)
    assert edge[1].tolist() == [0, 1, 2, 3]


def test_knn_wide_features_use_matmul_path():
    x = _points(50, 32, 3, False)
    y = _points(9, 32, 4, False)
    edge = knn(x, y, 5, use_cluster=False)
    ref = _ref_knn_dists(x, y, 5, [0] * 50, [0] * 9, exclude_self=False)
    got = _got_knn_dists(x, y, edge, 9)
    for g, r in zip(got, ref, strict=True):
        assert g == pytest.approx(r, rel=1e-4)


def test_knn_empty_inputs():
    x = torch.zeros(0, 3)
    y = torch.rand(4, 3)
    assert knn(x, y, 3, use_cluster=False).shape == (2, 0)
    assert knn(y, x, 3, use_cluster=False).shape == (2, 0)


# --------------------------------------------------------------------- knn_graph


@SETTINGS
@given(
    counts=ragged,
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    grid=st.booleans(),
    chunk_size=st.sampled_from([None, 1, 3]),
)
def test_knn_graph_no_loops_and_degrees(counts, k, seed, grid, chunk_size):
    batch = _batch(counts)
    pos = _points(len(batch), 3, seed, grid)
    edge = knn_graph(pos, k, batch, chunk_size=chunk_size, use_cluster=False)
    src, dst = edge  # source_to_target: row 0 = neighbour, row 1 = centre
    assert not bool((src == dst).any()), "self loop without loop=True"
    if edge.numel():
        assert bool((batch[src] == batch[dst]).all())
    deg = torch.bincount(dst, minlength=len(batch))
    expected = torch.tensor([min(k, c - 1) for c in counts for _ in range(c)], dtype=torch.long)
    assert torch.equal(deg, expected)
    # Distances match the brute force that excludes the point itself (by index, so
    # duplicated coordinates still count as neighbours).
    ref = _ref_knn_dists(pos, pos, k, batch.tolist(), batch.tolist(), exclude_self=True)
    _assert_close_lists(_got_knn_dists(pos, pos, edge.flip(0), len(batch)), ref)


@SETTINGS
@given(counts=ragged, k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_knn_graph_with_loops(counts, k, seed):
    batch = _batch(counts)
    pos = _points(len(batch), 2, seed, grid=False)
    edge = knn_graph(pos, k, batch, loop=True, use_cluster=False)
    deg = torch.bincount(edge[1], minlength=len(batch))
    expected = torch.tensor([min(k, c) for c in counts for _ in range(c)], dtype=torch.long)
    assert torch.equal(deg, expected)
    # Distinct points: the nearest "neighbour" of each point is itself.
    if edge.numel():
        first = torch.ones(edge.shape[1], dtype=torch.bool)
        first[1:] = edge[1][1:] != edge[1][:-1]
        assert torch.equal(edge[0][first], edge[1][first])


def test_knn_graph_duplicates_drop_self_by_index():
    pos = torch.zeros(5, 3)  # five copies of one point
    edge = knn_graph(pos, 2, use_cluster=False)
    assert edge.shape == (2, 10)
    assert not bool((edge[0] == edge[1]).any())
    assert torch.equal(torch.bincount(edge[1], minlength=5), torch.full((5,), 2))


def test_knn_graph_flow():
    pos = _points(30, 3, 7, False)
    batch = _batch([12, 18])
    a = knn_graph(pos, 4, batch, flow="source_to_target", use_cluster=False)
    b = knn_graph(pos, 4, batch, flow="target_to_source", use_cluster=False)
    assert torch.equal(a, b.flip(0))
    # target_to_source = knn(pos, pos) semantics: row 0 is the centre, ascending.
    assert bool((b[0][1:] >= b[0][:-1]).all())


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64])
def test_chunking_matches_unchunked(chunk_size):
    # Continuous coordinates have no ties, so the edge sets must agree exactly.
    counts = [1, 40, 3, 0, 25, 7]
    batch = _batch(counts)
    pos = _points(len(batch), 3, 11, False)
    full = knn_graph(pos, 5, batch, use_cluster=False)
    chunked = knn_graph(pos, 5, batch, chunk_size=chunk_size, use_cluster=False)
    assert torch.equal(full, chunked)
    y = _points(30, 3, 12, False)
    by = _batch([10, 0, 5, 0, 15])
    assert torch.equal(
        knn(pos, y, 6, batch, by, use_cluster=False),
        knn(pos, y, 6, batch, by, chunk_size=chunk_size, use_cluster=False),
    )


def test_tiny_budget_matches_default(monkeypatch):
    counts = [30, 2, 50, 1, 17]
    batch = _batch(counts)
    pos = _points(len(batch), 3, 5, False)
    full = knn_graph(pos, 4, batch, use_cluster=False)
    monkeypatch.setattr(nb, "DEFAULT_BUDGET_BYTES", 64)  # 16 float32 distances per chunk
    assert torch.equal(knn_graph(pos, 4, batch, use_cluster=False), full)


# ------------------------------------------------------------------ memory bound


def test_chunk_rows_respects_budget():
    budget = nb.DEFAULT_BUDGET_BYTES
    assert budget == 64 * 2**20
    for n in [1, 10, 1_000, 100_000, 10_000_000, 10**9]:
        rows = nb._chunk_rows(n, budget)
        assert rows >= 1
        assert rows == 1 or rows * n * 4 <= budget
        assert (rows + 1) * n * 4 > budget  # and it is the largest such
    assert nb._chunk_rows(100_000, budget) == 167
    assert nb._chunk_rows(100_000, budget, element_size=8) == 83


@pytest.mark.parametrize(
    "counts",
    [[100_000], [60_000, 40_000], [3] * 1000 + [50_000], [7] * 5000],
    ids=["one-100k", "two", "many-small-plus-big", "many-tiny"],
)
@pytest.mark.parametrize("max_rows", [256, 4096])
def test_chunk_plan_is_bounded_and_covers_all_rows(counts, max_rows):
    budget_elems = nb.DEFAULT_BUDGET_BYTES // 4
    batch = _batch(counts).tolist()
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    chunks = nb._plan_chunks(batch, ptr, budget_elems, max_rows=max_rows)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(batch)
    for (s, e, lo, hi), nxt in zip(chunks, chunks[1:] + [None], strict=True):
        assert max_rows >= e - s > 0
        assert (e - s) * (hi - lo) <= budget_elems
        assert lo == ptr[batch[s]] and hi == ptr[batch[e - 1] + 1]
        if nxt is not None:
            assert nxt[0] == e


def test_distance_matrices_stay_under_budget(monkeypatch):
    """Every distance matrix the pure-torch kNN builds fits the (patched) budget.

    They must also all live in one reused buffer: fresh multi-MiB matrices per chunk
    let glibc's heap fragment and grow by tens of MiB per chunk (an OOM at 100k).
    """
    budget = 64 * 1024  # 16k float32 distances
    monkeypatch.setattr(nb, "DEFAULT_BUDGET_BYTES", budget)
    sizes: list[int] = []
    storages: set[int] = set()
    real = nb._sq_dists

    def spy(*args):
        out = real(*args)
        sizes.append(out.numel() * out.element_size())
        storages.add(out.untyped_storage().data_ptr())
        return out

    monkeypatch.setattr(nb, "_sq_dists", spy)
    counts = [3000, 5, 1200, 1, 800]
    batch = _batch(counts)
    pos = _points(len(batch), 3, 2, False)
    edge = knn_graph(pos, 8, batch, use_cluster=False)
    assert edge.shape[1] == sum(c * min(8, c - 1) for c in counts)
    assert len(sizes) > 1
    assert max(sizes) <= budget
    assert len(storages) == 1, "distance matrices are not reusing one scratch buffer"


def test_knn_graph_100k_points_bounded_memory(monkeypatch):
    n, k = 100_000, 16
    sizes: list[int] = []
    real = nb._sq_dists

    def spy(*args):
        out = real(*args)
        sizes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(nb, "_sq_dists", spy)
    pos = _points(n, 3, 0, False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    edge = knn_graph(pos, k, use_cluster=False)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert edge.shape == (2, n * k)
    assert max(sizes) <= min(nb.DEFAULT_BUDGET_BYTES, nb._CPU_BUDGET_BYTES)
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB (an N x N matrix is 40 GB)"
    assert not bool((edge[0] == edge[1]).any())
    # Spot-check some centres against brute force.
    for i in torch.randint(0, n, (20,), generator=torch.Generator().manual_seed(1)).tolist():
        d = ((pos - pos[i]) ** 2).sum(1)
        d[i] = math.inf
        ref = d.topk(k, largest=False).values.sort().values
        got = d[edge[0][edge[1] == i]].sort().values
        assert torch.allclose(got, ref)


# --------------------------------------------------------------------------- fps


def _check_fps(pos, batch, counts, ratio, out):
    assert out.dtype == torch.long
    expected = [math.ceil(ratio * c) for c in counts]
    assert out.numel() == sum(expected)
    assert out.unique().numel() == out.numel(), "an index picked twice"
    got_batch = batch[out]
    assert torch.equal(torch.bincount(got_batch, minlength=len(counts)), torch.tensor(expected))
    assert bool((got_batch[1:] >= got_batch[:-1]).all()), "samples not grouped in order"


@SETTINGS
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31 - 1),
    grid=st.booleans(),
    random_start=st.booleans(),
)
def test_fps_counts_uniqueness_and_greedy(counts, ratio, seed, grid, random_start):
    batch = _batch(counts)
    pos = _points(len(batch), 3, seed, grid)
    torch.manual_seed(seed)
    out = fps(pos, batch, ratio, random_start=random_start, use_cluster=False)
    _check_fps(pos, batch, counts, ratio, out)
    # Greedy property, per sample: each pick is (one of) the farthest from those before.
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    start = 0
    for b, c in enumerate(counts):
        m = math.ceil(ratio * c)
        picks = out[start : start + m].tolist()
        start += m
        if not random_start and m:
            assert picks[0] == ptr[b], "random_start=False must start at the first point"
        members = list(range(ptr[b], ptr[b + 1]))
        for t in range(1, m):
            chosen = picks[:t]

            def gap(j, chosen=chosen):
                return min(float(((pos[j] - pos[i]) ** 2).sum()) for i in chosen)

            best = max(gap(j) for j in members if j not in chosen)
            assert gap(picks[t]) == pytest.approx(best)


def test_fps_second_pick_is_farthest_from_first_point():
    counts = [10, 1, 25, 4]
    batch = _batch(counts)
    pos = _points(len(batch), 3, 9, False)
    out = fps(pos, batch, 0.5, random_start=False, use_cluster=False)
    _check_fps(pos, batch, counts, 0.5, out)
    ptr, start = 0, 0
    for c in counts:
        m = math.ceil(0.5 * c)
        picks = out[start : start + m]
        assert int(picks[0]) == ptr
        if m > 1:
            d = ((pos[ptr : ptr + c] - pos[ptr]) ** 2).sum(1)
            assert int(picks[1]) == ptr + int(d.argmax())
        ptr += c
        start += m


def test_fps_ratio_one_is_a_permutation_even_with_duplicates():
    pos = torch.zeros(9, 2)
    batch = _batch([4, 5])
    out = fps(pos, batch, 1.0, use_cluster=False)
    assert sorted(out.tolist()) == list(range(9))


def test_fps_single_sample_and_random_start_reproducible():
    pos = _points(200, 3, 4, False)
    torch.manual_seed(0)
    a = fps(pos, ratio=0.1, use_cluster=False)
    torch.manual_seed(0)
    b = fps(pos, ratio=0.1, use_cluster=False)
    assert torch.equal(a, b) and a.numel() == 20
    assert fps(torch.zeros(0, 3), use_cluster=False).numel() == 0


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: knn_graph(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1), "finite"),
        (lambda: knn_graph(torch.tensor([[0.0, float("inf")]]), 1), "finite"),
        (lambda: fps(torch.tensor([[float("nan"), 0.0]])), "finite"),
        (lambda: knn_graph(torch.rand(5), 2), "2-D [N, D]"),
        (lambda: knn_graph(torch.rand(2, 5, 3), 2), "2-D [N, D]"),
        (lambda: knn_graph(torch.arange(6).view(3, 2), 1), "floating-point"),
        (lambda: knn_graph([[0.0, 1.0]], 1), "torch.Tensor"),
        (lambda: knn_graph(torch.rand(5, 3), 0), "k must be an integer >= 1"),
        (lambda: knn(torch.rand(5, 3), torch.rand(2, 3), -1), "k must be an integer >= 1"),
        (lambda: knn_graph(torch.rand(5, 3), 1.5), "k must be an integer >= 1"),
        (lambda: knn_graph(torch.rand(4, 3), 1, torch.tensor([0, 1, 0, 1])), "sorted ascending"),
        (lambda: fps(torch.rand(4, 3), torch.tensor([1, 0, 0, 0])), "sorted ascending"),
        (lambda: knn_graph(torch.rand(4, 3), 1, torch.tensor([0, 0, 1])), "shape [4]"),
        (lambda: knn_graph(torch.rand(3, 3), 1, torch.tensor([0.0, 0, 1])), "torch.long"),
        (lambda: knn_graph(torch.rand(3, 3), 1, torch.tensor([-1, 0, 0])), "non-negative"),
        (lambda: knn(torch.rand(4, 3), torch.rand(4, 2), 1), "same number of coordinates"),
        (
            lambda: knn(torch.rand(4, 3), torch.rand(4, 3), 1, batch_y=torch.zeros(3).long()),
            "batch_y",
        ),
        (lambda: knn_graph(torch.rand(4, 3), 1, flow="sideways"), "source_to_target"),
        (lambda: knn_graph(torch.rand(4, 3), 1, chunk_size=0), "chunk_size"),
        (lambda: fps(torch.rand(4, 3), ratio=0.0), "(0, 1]"),
        (lambda: fps(torch.rand(4, 3), ratio=1.5), "(0, 1]"),
        (lambda: fps(torch.rand(4, 3), ratio=float("nan")), "(0, 1]"),
    ],
)
def test_validation_errors(call, needle):
    with pytest.raises(BottleneckError) as info:
        call()
    assert needle in str(info.value)


def test_validation_message_says_what_was_given():
    with pytest.raises(BottleneckError, match=r"shape \(5,\) and dtype torch.float32"):
        knn_graph(torch.rand(5), 2)
    with pytest.raises(BottleneckError, match=r"got 1 non-finite"):
        knn_graph(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(BottleneckError, match=r"got 0"):
        knn_graph(torch.rand(3, 2), 0)


@pytest.mark.skipif(nb.HAS_TORCH_CLUSTER, reason="torch_cluster is installed")
def test_use_cluster_true_without_torch_cluster_names_the_extra():
    for call in (
        lambda: knn(torch.rand(4, 3), torch.rand(2, 3), 1, use_cluster=True),
        lambda: knn_graph(torch.rand(4, 3), 1, use_cluster=True),
        lambda: fps(torch.rand(4, 3), use_cluster=True),
    ):
        with pytest.raises(BottleneckError, match=r"pip install bottleneck-mask\[cluster\]"):
            call()
    # None falls back to pure torch.
    assert knn_graph(torch.rand(4, 3), 1, use_cluster=None).shape == (2, 4)


@pytest.mark.skipif(not nb.HAS_TORCH_CLUSTER, reason="torch_cluster is not installed")
def test_pure_torch_agrees_with_torch_cluster():
    batch = _batch([30, 5, 60])
    pos = _points(len(batch), 3, 3, False)
    a = knn_graph(pos, 6, batch, use_cluster=False)
    b = knn_graph(pos, 6, batch, use_cluster=True)
    key = lambda e: sorted(map(tuple, e.t().tolist()))  # noqa: E731
    assert key(a) == key(b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    batch = _batch([300, 7, 1000])
    pos = _points(len(batch), 3, 8, False)
    cpu = knn_graph(pos, 8, batch, use_cluster=False)
    gpu = knn_graph(pos.cuda(), 8, batch.cuda(), use_cluster=False)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    out = fps(pos.cuda(), batch.cuda(), 0.25, random_start=False, use_cluster=False)
    ref = fps(pos, batch, 0.25, random_start=False, use_cluster=False)
    assert torch.equal(out.cpu(), ref)


# ------------------------------------------------------- per-sample blocked kNN



def _blocked(pos, k, batch, budget, **options):
    """The blocked search's ``[2, E]`` (centre, neighbour) pairs, or ``None`` where it declines."""
    layout = nb.SampleLayout.of(batch)
    magnitude = float(pos.abs().max())
    found = nb._knn_blocked(pos, pos, k, layout, layout, exclude_self=True, budget_elems=budget,
                            magnitude=magnitude, **options)
    return None if found is None else torch.stack(found)


@SETTINGS
@given(
    counts=st.lists(st.integers(4, 9), min_size=2, max_size=6),
    k=st.integers(1, 6),
    dim=st.sampled_from([2, 3, 12]),
    seed=st.integers(0, 2**31 - 1),
    grid=st.booleans(),
    one_sample_per_group=st.booleans(),
    nearest_first=st.booleans(),
)
def test_blocked_knn_graph_matches_bruteforce(counts, k, dim, seed, grid, one_sample_per_group, nearest_first):
    """Many similar small samples take the blocked path (padded per-sample blocks); it is exact,
    in one group of samples or in one group per sample (a budget of one 9 x 9 block), whether
    every sample has more than k points (the picks are gathered) or not (they are masked);
    ``nearest_first`` orders each centre's neighbours by distance."""
    batch = _batch(counts)
    pos = _points(len(batch), dim, seed, grid)
    budget = 81 if one_sample_per_group else 10**6
    blocked = _blocked(pos, k, batch, budget, nearest_first=nearest_first)
    assert blocked is not None, "similar small samples should take the blocked path"
    edge = knn_graph(pos, k, batch, use_cluster=False, nearest_first=nearest_first)
    assert torch.equal(edge, blocked.flip(0)), "knn_graph did not use the blocked path"
    src, dst = edge
    assert not bool((src == dst).any())
    assert bool((batch[src] == batch[dst]).all())
    assert bool((dst[1:] >= dst[:-1]).all()), "centres not grouped in order"
    ref = _ref_knn_dists(pos, pos, k, batch.tolist(), batch.tolist(), exclude_self=True)
    _assert_close_lists(_got_knn_dists(pos, pos, edge.flip(0), len(batch)), ref)
    if nearest_first:
        dist = (pos[src] - pos[dst]).double().square().sum(1)
        same_centre = dst[1:] == dst[:-1]
        assert bool((dist[1:][same_centre] >= dist[:-1][same_centre] - 1e-9).all()), "not nearest first"


@SETTINGS
@given(counts=ragged, k=st.integers(1, 8), dim=st.sampled_from([3, 12]), seed=st.integers(0, 2**31 - 1),
       grid=st.booleans(), loop=st.booleans())
@example(counts=[0, 0, 0, 6, 0], k=2, dim=12, seed=0, grid=True, loop=False)  # trailing empty sample, ties
def test_knn_graph_with_a_layout_gives_the_same_graph(counts, k, dim, seed, grid, loop):
    """A :class:`SampleLayout` built once and passed to several searches changes nothing but the
    bookkeeping: the graph is identical, on ragged samples with empty ones, ties and self loops.
    A layout that also counts trailing empty samples may pick the other search (their padded
    blocks count against the blocked one): the same neighbour distances, ties broken either way."""
    batch = _batch(counts)
    pos = _points(len(batch), dim, seed, grid)
    layout = nb.SampleLayout.of(batch)  # the samples knn_graph itself counts: up to the last id
    named = counts[: len(counts) - next((i for i, c in enumerate(reversed(counts)) if c), len(counts))]
    assert layout.num_samples == len(named) and layout.counts.tolist() == named
    if named:
        assert (layout.widest, layout.fewest, layout.pairs) == (max(named), min(named), sum(c * c for c in named))
    plain = knn_graph(pos, k, batch, loop=loop, use_cluster=False)
    assert torch.equal(knn_graph(pos, k, batch, loop=loop, use_cluster=False, layout=layout), plain)
    assert torch.equal(knn_graph(pos, k, loop=loop, use_cluster=False, layout=layout), plain)
    features = pos * 2 + 1  # another search over the same samples reuses the layout
    assert torch.equal(knn_graph(features, k, batch, loop=loop, use_cluster=False, layout=layout),
                       knn_graph(features, k, batch, loop=loop, use_cluster=False))
    every = nb.SampleLayout.of(batch, len(counts))
    assert every.num_samples == len(counts) and every.counts.tolist() == counts
    edge = knn_graph(pos, k, batch, loop=loop, use_cluster=False, layout=every)
    ref = _ref_knn_dists(pos, pos, k, batch.tolist(), batch.tolist(), exclude_self=not loop)
    _assert_close_lists(_got_knn_dists(pos, pos, edge.flip(0), len(batch)), ref)


@SETTINGS
@given(
    counts=st.lists(st.integers(2, 30), min_size=1, max_size=6),
    k=st.integers(1, 6),
    dim=st.sampled_from([2, 3, 12]),
    seed=st.integers(0, 2**31 - 1),
    grid=st.booleans(),
    with_layout=st.booleans(),
    nearest_first=st.booleans(),
)
@example(counts=[7, 7, 7], k=6, dim=12, seed=0, grid=True, with_layout=True, nearest_first=False)  # ties, k = n - 1
def test_knn_neighbours_is_the_knn_graph_as_a_table(counts, k, dim, seed, grid, with_layout, nearest_first):
    """Where every sample has more than k points, row i of the table is point i's k neighbours
    in the graph knn_graph builds without loops, in the same order: exact, with ties and
    duplicates, with or without a shared layout, on one sample or many."""
    counts = [max(c, k + 1) for c in counts]
    batch = _batch(counts)
    pos = _points(len(batch), dim, seed, grid)
    layout = nb.SampleLayout.of(batch) if with_layout else None
    table = knn_neighbours(pos, k, None if with_layout else batch, layout=layout, nearest_first=nearest_first)
    assert table.shape == (len(batch), k) and table.dtype == torch.long
    edge = knn_graph(pos, k, batch, use_cluster=False, nearest_first=nearest_first)  # (neighbour, centre)
    assert torch.equal(edge[1], torch.arange(len(batch)).repeat_interleave(k))
    assert torch.equal(table.reshape(-1), edge[0])
    centre = torch.arange(len(batch)).unsqueeze(1)
    assert not bool((table == centre).any())
    assert bool((batch[table] == batch.unsqueeze(1)).all())
    ref = _ref_knn_dists(pos, pos, k, batch.tolist(), batch.tolist(), exclude_self=True)
    _assert_close_lists(_got_knn_dists(pos, pos, edge.flip(0), len(batch)), ref)


@pytest.mark.parametrize("counts", [[300], [6] * 8 + [200]], ids=["one sample", "very ragged"])
def test_knn_neighbours_on_the_chunked_path(counts):
    """One large sample, or samples too ragged to pad, take the chunked search: the same table."""
    batch = _batch(counts)
    layout = nb.SampleLayout.of(batch)
    assert layout.num_samples == 1 or not nb._blocked_fits(layout, layout, nb._budget_elems(batch.device, torch.float32))
    pos = _points(len(batch), 12, 3, False)
    table = knn_neighbours(pos, 5, batch)
    assert torch.equal(table.reshape(-1), knn_graph(pos, 5, batch, use_cluster=False)[0])


def test_knn_neighbours_half_precision_and_empty():
    """Half-precision points are measured in float32 (the same table); no points, no rows."""
    pos = _points(40, 3, 1, False)
    batch = _batch([20, 20])
    assert torch.equal(knn_neighbours(pos.half(), 4, batch), knn_neighbours(pos.half().float(), 4, batch))
    assert knn_neighbours(torch.empty(0, 3), 2).shape == (0, 2)


def test_sample_layout_caches_the_blocked_search_indices():
    """The padded rows, first points, sample sizes and padding mask of a layout are built once and say
    what they should."""
    batch = _batch([2, 0, 3])
    layout = nb.SampleLayout.of(batch)
    assert layout.padded_row.tolist() == [0, 1, 6, 7, 8]  # widest 3: sample 2 starts at row 6
    assert layout.first_of_point.squeeze(1).tolist() == [0, 0, 2, 2, 2]
    assert layout.padding.squeeze(1).tolist() == [[False, False, True], [True, True, True], [False, False, False]]
    assert layout.sizes.flatten().tolist() == [2, 1, 3]  # an empty sample's mean divides by 1
    assert layout.padded_row is layout.padded_row  # cached


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: knn_neighbours(_points(13, 3, 0, False), 5, _batch([8, 5])),
         "more than k=5 points in every sample; the smallest of the 2 samples has 5"),
        (lambda: knn_neighbours(_points(5, 3, 0, False), 5), "the smallest of the 1 samples has 5"),
        (lambda: knn_neighbours(torch.tensor([[1e200, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64), 1),
         "overflow"),
        (lambda: knn_neighbours(torch.tensor([[0.0, math.nan], [1.0, 1.0]]), 1), "finite"),
        (lambda: knn_neighbours(_points(11, 3, 0, False), 3, layout=nb.SampleLayout.of(_batch([5, 5]))),
         "describes 10 points"),
        (lambda: knn_neighbours(_points(4, 3, 0, False), 0), "k must be an integer >= 1"),
        (lambda: knn_neighbours(_points(4, 3, 0, False), 1, torch.tensor([1, 0, 0, 0])), "sorted ascending"),
    ],
)
def test_knn_neighbours_errors(call, needle):
    """A table needs k neighbours for every point: a small sample, overflowing distances or bad
    input say so."""
    with pytest.raises(BottleneckError) as info:
        call()
    assert needle in str(info.value)


def test_sample_layout_rejects_what_it_cannot_describe():
    """The layout checks the batch vector once; a search given a layout for other points, or
    beside another batch vector, says so instead of pairing the wrong points."""
    with pytest.raises(BottleneckError, match="sorted"):
        nb.SampleLayout.of(torch.tensor([0, 1, 0]))
    with pytest.raises(BottleneckError, match="1-D"):
        nb.SampleLayout.of([0, 0, 1])
    with pytest.raises(BottleneckError, match="torch.long"):
        nb.SampleLayout.of(torch.tensor([0.0, 1.0]))
    with pytest.raises(BottleneckError, match="names sample 2 but num_samples is 2"):
        nb.SampleLayout.of(torch.tensor([0, 1, 2]), 2)
    batch = _batch([5, 6])
    layout = nb.SampleLayout.of(batch)
    pos = _points(11, 3, 0, False)
    with pytest.raises(BottleneckError, match="describes 11 points"):
        knn_graph(pos[:10], 3, layout=layout)
    with pytest.raises(BottleneckError, match="batch and layout disagree"):
        knn_graph(pos, 3, batch.clone(), layout=layout)
    with pytest.raises(BottleneckError, match="SampleLayout"):
        knn_graph(pos, 3, batch, layout=batch)
    with pytest.raises(BottleneckError, match="finite"):
        knn_graph(torch.full((11, 3), math.nan), 3, layout=layout)


def test_knn_graph_any_order_has_the_same_neighbours_on_the_chunked_path():
    """``nearest_first=False`` changes the order of each centre's neighbours, never the set."""
    batch = _batch([400, 12, 2, 30, 2])  # too ragged for the blocked path
    pos = _points(len(batch), 3, 3, False)
    assert _blocked(pos, 8, batch, 10**7) is None
    ordered = knn_graph(pos, 8, batch, use_cluster=False)
    anyhow = knn_graph(pos, 8, batch, use_cluster=False, nearest_first=False)
    assert torch.equal(ordered[1], anyhow[1])
    key = ordered[1] * len(batch)
    assert torch.equal(torch.sort(key + ordered[0]).values, torch.sort(key + anyhow[0]).values)


def test_blocked_knn_with_overflowing_distances_links_only_real_points():
    """Coordinates near 1e20 are finite but their squared distances overflow to inf: the gathered
    picks could then be padding or the point itself, so that case takes the masked path."""
    batch = _batch([6, 7, 6])
    pos = _points(len(batch), 3, 0, False) * 1e19
    edge = _blocked(pos, 3, batch, 10**6)
    assert edge is not None
    centre, nbr = edge
    assert not bool((centre == nbr).any()) and bool((batch[centre] == batch[nbr]).all())


@pytest.mark.parametrize("counts", [[6, 7, 6], [400]], ids=["blocked", "chunked"])
def test_coordinates_whose_squares_overflow_float32_are_measured_in_float64(counts):
    """Float32 points near 1e25 have squared distances beyond float32's range: they are measured in
    float64, so they get the neighbours their float64 copy gets, k each, never themselves (the
    chunked search used to pick a point as its own neighbour among the infinite distances)."""
    batch = _batch(counts)
    pos = _points(len(batch), 3, 0, False) * 1e25
    edge = knn_graph(pos, 3, batch, use_cluster=False)
    assert torch.equal(edge, knn_graph(pos.double(), 3, batch, use_cluster=False))
    assert edge.shape[1] == 3 * len(batch) and not bool((edge[0] == edge[1]).any())
    assert torch.equal(knn_neighbours(pos, 3, batch).reshape(-1), edge[0])


def test_distances_beyond_float64_keep_only_finite_neighbours():
    """Beyond float64's range (about 1e150) every distance is infinite: no neighbour is defined, and
    the chunked search links nothing rather than a point to itself or to an arbitrary point."""
    pos = torch.tensor([[1e200, 0.0], [-1e200, 0.0], [0.0, 1e200], [0.0, -1e200]], dtype=torch.float64)
    assert knn_graph(pos, 2, use_cluster=False).shape == (2, 0)
    near = torch.cat([pos, torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)])
    edge = knn_graph(near, 1, use_cluster=False)
    assert not bool((edge[0] == edge[1]).any())
    assert sorted(map(tuple, edge.t().tolist())) == [(4, 5), (5, 4)]  # the two near points, at a finite distance
    # a query whose sample has no candidates gets none, even where a chunk spans two samples
    x = torch.tensor([[1e200, 0.0], [0.0, 1e200], [1.0, 1.0]], dtype=torch.float64)  # all of sample 0
    y = torch.tensor([[1.0, 2.0], [1.0, 1.5]], dtype=torch.float64)
    found = knn(x, y, 2, None, torch.tensor([0, 1]), use_cluster=False, chunk_size=2)
    assert found.t().tolist() == [[0, 2]]


def test_blocked_knn_declines_very_ragged_batches():
    """One large sample among tiny ones would pad every block to its size: the chunked path runs."""
    batch = _batch([400, 2, 2, 2, 2, 2, 2, 2])
    pos = _points(len(batch), 3, 0, False)
    assert _blocked(pos, 4, batch, 10**7) is None


# ------------------------------------------------------- serialised (approximate) kNN


@SETTINGS
@given(counts=ragged, k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), grid=st.booleans())
def test_serial_knn_graph_is_a_valid_neighbour_graph(counts, k, seed, grid):
    batch = _batch(counts)
    pos = _points(len(batch), 3, seed, grid)
    edge = nb.serial_knn_graph(pos, k, batch)
    src, dst = edge
    assert edge.dtype == torch.long and edge.shape[0] == 2
    assert not bool((src == dst).any()), "self loop"
    if edge.numel():
        assert bool((batch[src] == batch[dst]).all()), "an edge across samples"
        assert len(set(map(tuple, edge.t().tolist()))) == edge.shape[1], "duplicate edge"
    deg = torch.bincount(dst, minlength=len(batch))
    most = torch.tensor([min(k, c - 1) for c in counts for _ in range(c)], dtype=torch.long)
    assert bool((deg <= most).all())
    # a sample small enough to sit inside every point's windows is linked completely
    for sample, count in enumerate(counts):
        if 1 < count <= k // 2 + 1:
            assert bool((deg[batch == sample] == count - 1).all())


def test_serial_knn_graph_finds_near_points():
    """Against the exact graph on 32 clouds of 256 points: most true neighbours, short edges."""
    batch = _batch([256] * 32)
    pos = _points(len(batch), 3, 5, False)
    exact = knn_graph(pos, 8, batch, use_cluster=False)
    approx = nb.serial_knn_graph(pos, 8, batch)
    assert approx.shape[1] >= 0.95 * exact.shape[1]
    found = set(map(tuple, exact.t().tolist())) & set(map(tuple, approx.t().tolist()))
    assert len(found) >= 0.45 * exact.shape[1]

    def mean_length(edge: torch.Tensor) -> float:
        return float((pos[edge[0]] - pos[edge[1]]).norm(dim=1).mean())

    assert mean_length(approx) <= 1.7 * mean_length(exact)


def test_serial_knn_graph_errors():
    with pytest.raises(BottleneckError, match="3-d points"):
        nb.serial_knn_graph(torch.rand(10, 2), 4)
    with pytest.raises(BottleneckError, match="finite"):
        nb.serial_knn_graph(torch.tensor([[0.0, float("nan"), 1.0]]), 4)
    assert nb.serial_knn_graph(torch.empty(0, 3), 4).shape == (2, 0)


@pytest.mark.parametrize("path", ["blocked", "chunked"])
def test_points_that_require_grad_are_searched_as_they_are(path: str, monkeypatch) -> None:
    """Features of a model in training (``requires_grad``) give the graph of their values: the
    distance kernels write into preallocated buffers, which autograd refuses, so the search
    works on the points detached (its indices carry no gradient). ``knn_graph`` on such points
    raised torch's own ``out=`` error on the chunked path."""
    if path == "chunked":
        monkeypatch.setattr(nb, "_blocked_fits", lambda *args: False)
    torch.manual_seed(0)
    pos = torch.randn(300, 3)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([100, 120, 80]))
    tracked = pos.clone().requires_grad_()
    for search in (lambda p: knn_graph(p, 8, batch), lambda p: knn_neighbours(p, 8, batch),
                   lambda p: knn(p, p, 4, batch, batch), lambda p: fps(p, batch, ratio=0.5, random_start=False)):
        assert torch.equal(search(tracked), search(pos))
    assert tracked.grad is None
