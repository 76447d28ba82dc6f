"""Segment ops equal per-sample loops (hypothesis over ragged batches)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from bottleneck.metrics import segment_auroc
from bottleneck.segment import (
    _top_of_equal_samples,
    compact,
    keep_counts,
    segment_rank,
    segment_topk_mask,
)
from bottleneck.units import batch_from_counts

ragged = st.lists(st.integers(1, 12), min_size=1, max_size=6)


def make(counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)
    batch = batch_from_counts(torch.tensor(counts))
    scores = torch.randn(batch.numel(), generator=g)
    return scores, batch, len(counts)


@settings(max_examples=60, deadline=None)
@given(counts=ragged, keep=st.floats(0.01, 1.0), seed=st.integers(0, 10_000))
def test_segment_topk_equals_per_sample_loop(counts: list[int], keep: float, seed: int) -> None:
    scores, batch, num_samples = make(counts, seed)
    mask = segment_topk_mask(scores, batch, num_samples, keep)
    k = keep_counts(torch.tensor(counts), keep)
    offset = 0
    for i, n in enumerate(counts):
        piece = scores[offset:offset + n]
        expected = torch.zeros(n, dtype=torch.bool)
        expected[piece.topk(int(k[i])).indices] = True
        assert torch.equal(mask[offset:offset + n], expected)
        assert 1 <= int(k[i]) <= n
        offset += n


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=6), seed=st.integers(0, 10_000),
       special=st.sampled_from(["none", "-inf", "nan", "inf"]))
def test_segment_topk_breaks_ties_by_unit_order_like_the_rank(counts: list[int], seed: int, special: str) -> None:
    """The threshold selection keeps exactly the units the stable rank keeps: ties at the
    threshold go to the earlier units; per-sample counts of 0 and above the sample's size,
    empty samples, infinite scores and NaN (the rank path then runs) included."""
    g = torch.Generator().manual_seed(seed)
    batch = batch_from_counts(torch.tensor(counts))
    scores = torch.randint(0, 3, (batch.numel(),), generator=g).float()  # many ties
    if special != "none" and batch.numel():
        scores[torch.randint(0, batch.numel(), (2,), generator=g)] = float(special)
    k = torch.randint(0, 14, (len(counts),), generator=g)
    mask = segment_topk_mask(scores, batch, len(counts), k)
    assert torch.equal(mask, segment_rank(scores, batch, len(counts)) < k[batch])


@settings(max_examples=80, deadline=None)
@given(samples=st.integers(1, 6), width=st.integers(1, 12), keep=st.floats(0.01, 1.0), minimum=st.integers(0, 3),
       seed=st.integers(0, 10_000), special=st.sampled_from(["none", "-inf", "nan", "inf"]))
def test_samples_of_one_size_keep_what_the_rank_keeps(samples: int, width: int, keep: float, minimum: int,
                                                      seed: int, special: str) -> None:
    """Samples of one size in order (image patches) take their own path, without the padded table:
    the same units as the stable rank, ties to the earlier units, infinite scores included; with a
    NaN the path steps aside (``None``) and the general one answers."""
    g = torch.Generator().manual_seed(seed)
    batch = batch_from_counts(torch.full((samples,), width))
    scores = torch.randint(0, 3, (batch.numel(),), generator=g).float()  # many ties
    if special != "none":
        scores[torch.randint(0, batch.numel(), (2,), generator=g)] = float(special)
    k = keep_counts(torch.full((samples,), width), keep, minimum)
    own = _top_of_equal_samples(scores, batch, samples, keep, minimum)
    assert (own is None) == (special == "nan")
    expected = segment_rank(scores, batch, samples) < k[batch]
    assert torch.equal(segment_topk_mask(scores, batch, samples, keep, minimum), expected)
    if own is not None:
        assert torch.equal(own, expected)


def test_the_path_for_samples_of_one_size_leaves_ragged_or_unsorted_ones_to_the_general_path() -> None:
    scores = torch.arange(6.0)
    assert _top_of_equal_samples(scores, torch.tensor([0, 0, 0, 1, 1, 1]), 2, 0.5, 1) is not None
    assert _top_of_equal_samples(scores, torch.tensor([0, 0, 1, 1, 1, 1]), 2, 0.5, 1) is None  # ragged
    assert _top_of_equal_samples(scores, torch.tensor([1, 1, 1, 0, 0, 0]), 2, 0.5, 1) is None  # unsorted
    assert _top_of_equal_samples(scores, torch.tensor([0, 0, 0, 0, 1, 1]), 3, 0.5, 1) is None  # a sample empty


@settings(max_examples=40, deadline=None)
@given(counts=ragged, seed=st.integers(0, 10_000))
def test_segment_rank_is_a_permutation_per_sample(counts: list[int], seed: int) -> None:
    scores, batch, num_samples = make(counts, seed)
    rank = segment_rank(scores, batch, num_samples)
    offset = 0
    for n in counts:
        assert sorted(rank[offset:offset + n].tolist()) == list(range(n))
        offset += n


def _loop_rank(scores: torch.Tensor, batch: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Per-sample reference: descending stable sort of each sample's scores (ties by unit order)."""
    rank = torch.empty(scores.numel(), dtype=torch.long)
    for sample in range(num_samples):
        where = (batch == sample).nonzero().view(-1)
        order = torch.sort(scores[where], descending=True, stable=True).indices
        rank[where[order]] = torch.arange(where.numel())
    return rank


# counts of one size class take the padded [B, n_max] sort; one long sample among short ones
# (more than PADDED_RANK_MAX_FILL cells per unit) takes the flat two-sort path
balanced = st.lists(st.integers(5, 8), min_size=1, max_size=6)
skewed = st.lists(st.integers(1, 2), min_size=6, max_size=10).map(lambda counts: [*counts, 60])


@settings(max_examples=60, deadline=None)
@given(counts=st.one_of(balanced, skewed), seed=st.integers(0, 10_000), shuffled=st.booleans(),
       special=st.sampled_from([None, float("inf"), float("-inf")]))
def test_segment_rank_equals_per_sample_stable_sort(counts: list[int], seed: int, shuffled: bool,
                                                    special: float | None) -> None:
    scores, batch, num_samples = make(counts, seed)
    scores = scores.round(decimals=0)  # ties: broken by unit order on both paths
    if special is not None:
        scores[::3] = special  # -inf must still rank before the padding of its row
    if shuffled:  # an unsorted batch vector cannot take the padded path: still the same ranks
        perm = torch.randperm(batch.numel(), generator=torch.Generator().manual_seed(seed))
        scores, batch = scores[perm], batch[perm]
    assert torch.equal(segment_rank(scores, batch, num_samples), _loop_rank(scores, batch, num_samples))


def test_segment_rank_of_integer_scores_and_of_no_units() -> None:
    batch = batch_from_counts(torch.tensor([3, 2]))
    scores = torch.tensor([1, 3, 2, 5, 5])
    assert segment_rank(scores, batch, 2).tolist() == [2, 0, 1, 0, 1]
    assert segment_rank(torch.empty(0), torch.empty(0, dtype=torch.long), 2).numel() == 0


@settings(max_examples=40, deadline=None)
@given(counts=ragged, seed=st.integers(0, 10_000))
def test_compact_remaps_indices(counts: list[int], seed: int) -> None:
    scores, batch, num_samples = make(counts, seed)
    keep = scores > 0
    index, new_batch, remap = compact(keep, batch, num_samples)
    assert torch.equal(new_batch, batch[keep])
    assert torch.equal(remap[index], torch.arange(index.numel()))
    assert (remap[~keep] == -1).all()
    same_index, same_batch, none = compact(keep, batch, num_samples, with_remap=False)
    assert torch.equal(same_index, index) and torch.equal(same_batch, new_batch) and none is None


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(2, 12), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_segment_auroc_equals_pairwise_count(counts: list[int], seed: int) -> None:
    scores, batch, num_samples = make(counts, seed)
    scores = scores.round(decimals=0)  # create ties
    labels = torch.rand(scores.numel(), generator=torch.Generator().manual_seed(seed)) > 0.5
    auroc = segment_auroc(scores, labels, batch, num_samples)
    offset = 0
    for i, n in enumerate(counts):
        s, y = scores[offset:offset + n], labels[offset:offset + n]
        pos, neg = s[y], s[~y]
        if pos.numel() == 0 or neg.numel() == 0:
            assert torch.isnan(auroc[i])
        else:
            diff = pos[:, None] - neg[None, :]
            expected = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
            assert torch.isclose(auroc[i], expected)
        offset += n


def test_auroc_perfect_and_reversed() -> None:
    scores = torch.tensor([0.1, 0.2, 0.8, 0.9])
    labels = torch.tensor([False, False, True, True])
    assert segment_auroc(scores, labels).item() == 1.0
    assert segment_auroc(-scores, labels).item() == 0.0


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), width=st.integers(1, 4),
       seed=st.integers(0, 10_000), shuffled=st.booleans(), equal=st.booleans())
def test_segment_max_and_mean_equal_a_per_sample_loop(counts: list[int], width: int, seed: int,
                                                      shuffled: bool, equal: bool) -> None:
    """Values and gradients, on sorted and shuffled units, ragged and of one size (the reshaped
    reductions of :func:`segment_max_and_mean`); empty samples give 0."""
    from bottleneck.segment import segment_max, segment_max_and_mean, segment_mean

    if equal:
        counts = [counts[0]] * len(counts)
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    values = torch.randn(len(batch), width, generator=g)
    if shuffled:
        order = torch.randperm(len(batch), generator=g)
        batch, values = batch[order], values[order]
    def pooled_max(*args: object) -> Tensor:
        return segment_max_and_mean(*args)[0]

    def pooled_mean(*args: object) -> Tensor:
        return segment_max_and_mean(*args)[1]

    for reduce, fn in (("max", segment_max), ("mean", segment_mean), ("max", pooled_max), ("mean", pooled_mean)):
        got_input = values.clone().requires_grad_()
        got = fn(got_input, batch, len(counts))
        ref_input = values.clone().requires_grad_()
        rows = []
        for sample in range(len(counts)):
            part = ref_input[batch == sample]
            if part.shape[0] == 0:
                rows.append(torch.zeros(width))
            else:
                rows.append(part.amax(0) if reduce == "max" else part.mean(0))
        ref = torch.stack(rows)
        assert torch.allclose(got, ref, atol=1e-6), reduce
        if not len(batch):
            continue
        weights = torch.randn(len(counts), width, generator=g)
        (got * weights).sum().backward()
        (ref * weights).sum().backward()
        assert torch.allclose(got_input.grad, ref_input.grad, atol=1e-6), reduce


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), width=st.integers(0, 4),
       seed=st.integers(0, 10_000), shuffled=st.booleans())
def test_segment_mean_with_given_counts_is_the_scatter_mean_to_the_bit(counts: list[int], width: int, seed: int,
                                                                       shuffled: bool) -> None:
    """Counts the caller already has give the same bits as the scatter mean, for ``[N]`` and ``[N, F]``
    values, empty samples (0) included, and the same gradient."""
    from bottleneck.segment import segment_mean

    g = torch.Generator().manual_seed(seed)
    num_samples = len(counts)
    batch = torch.repeat_interleave(torch.arange(num_samples), torch.tensor(counts, dtype=torch.long))
    if shuffled:
        batch = batch[torch.randperm(len(batch), generator=g)]
    values = torch.randn(len(batch), *([width] if width else []), generator=g) * 1e3
    given = torch.bincount(batch, minlength=num_samples)
    with_counts = values.clone().requires_grad_()
    without = values.clone().requires_grad_()
    got, ref = segment_mean(with_counts, batch, num_samples, given), segment_mean(without, batch, num_samples)
    assert got.shape == ref.shape and torch.equal(got, ref)
    weights = torch.randn(ref.shape, generator=g)
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(with_counts.grad, without.grad)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), width=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_broadcast_gives_each_unit_its_sample_row_and_sums_gradients_back(counts: list[int], width: int,
                                                                            seed: int) -> None:
    """``broadcast`` equals a per-unit loop; each sample's gradient is the sum over its units."""
    from bottleneck.segment import broadcast

    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    batch = batch[torch.randperm(len(batch), generator=g)]
    per_sample = torch.randn(len(counts), width, generator=g, requires_grad=True)
    got = broadcast(per_sample, batch)
    assert got.shape == (len(batch), width)
    for unit, sample in enumerate(batch.tolist()):
        assert torch.equal(got[unit], per_sample[sample])
    weights = torch.randn(len(batch), width, generator=g)
    (got * weights).sum().backward()
    for sample in range(len(counts)):
        assert torch.allclose(per_sample.grad[sample], weights[batch == sample].sum(0), atol=1e-5)


#: Ways of planting ties at a sample's maximum (see :func:`_with_ties`).
TIES = ["none", "relu", "dead channel", "equal values", "negative"]


def _with_ties(values: Tensor, ties: str) -> Tensor:
    """``values`` with ties planted at the maximum: ReLU zeros, a channel zero everywhere, repeated rows."""
    if ties == "relu":
        return values.relu()
    if ties == "dead channel" and len(values):
        values = values.relu()
        values[..., 0] = 0.0
    elif ties == "equal values" and len(values):
        values[::2] = values[0].clone()
    elif ties == "negative":
        return -values.abs() - 0.5
    return values


def _max_and_gradient_match_the_scatter(values: Tensor, batch: Tensor, samples: int,
                                        weights: Tensor) -> tuple[Tensor, Tensor]:
    """Asserts :func:`segment_max`'s value and gradient equal PyG's scatter max bit for bit; returns the scatter's."""
    from torch_geometric.utils import scatter

    from bottleneck.segment import segment_max

    fast_input, ref_input = values.clone().requires_grad_(), values.clone().requires_grad_()
    fast = segment_max(fast_input, batch, samples)
    ref = scatter(ref_input, batch, dim=0, dim_size=samples, reduce="max")
    assert torch.equal(fast, ref)
    (fast * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(fast_input.grad, ref_input.grad)
    return ref, ref_input.grad


@settings(max_examples=80, deadline=None)
@given(samples=st.integers(1, 6), size=st.integers(1, 9), width=st.integers(0, 3), seed=st.integers(0, 10_000),
       ties=st.sampled_from(TIES),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_segment_max_of_equal_samples_matches_the_scatter_to_the_bit(samples: int, size: int, width: int, seed: int,
                                                                     ties: str, dtype: torch.dtype) -> None:
    """Samples of one size, in order, take a reshaped max: the same values and the same gradient as
    PyG's scatter max, bit for bit, ties included (the scatter shares a tied maximum of 0 with the
    zero it starts from: a channel that a ReLU zeroed for every unit gets 1/(n+1) per unit, not 1/n)."""
    from bottleneck.segment import equal_segments, segment_max

    g = torch.Generator().manual_seed(seed)
    batch = torch.arange(samples).repeat_interleave(size)
    shape = (samples * size,) if width == 0 else (samples * size, width)  # 1-D values too
    values = _with_ties(torch.randn(*shape, generator=g, dtype=dtype), ties)
    assert equal_segments(batch, samples) == size
    weights = torch.randn(samples, *shape[1:], generator=g, dtype=dtype)
    ref, ref_grad = _max_and_gradient_match_the_scatter(values, batch, samples, weights)
    with torch.no_grad():
        assert torch.equal(segment_max(values, batch, samples), ref)
    if samples * size > 1:  # a strided view of the values (every other element of a wider tensor)
        strided = torch.stack([values, torch.zeros_like(values)], -1)[..., 0].requires_grad_()
        assert not strided.is_contiguous() and torch.equal(strided, values)
        got = segment_max(strided, batch, samples)
        assert torch.equal(got, ref)
        (got * weights).sum().backward()
        assert torch.equal(strided.grad, ref_grad)


def test_equal_segments_recognises_only_samples_of_one_size_in_order() -> None:
    from bottleneck.segment import equal_segments

    assert equal_segments(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert equal_segments(torch.tensor([0, 1, 2]), 3) == 1
    assert equal_segments(torch.tensor([0, 0, 1, 1, 1, 2]), 3) is None  # ragged
    assert equal_segments(torch.tensor([0, 1, 0, 1]), 2) is None  # same sizes, not in order
    assert equal_segments(torch.tensor([0, 0, 1, 1]), 3) is None  # an empty trailing sample
    assert equal_segments(torch.tensor([0, 0, 0]), 2) is None  # 2 does not divide 3
    assert equal_segments(torch.tensor([], dtype=torch.long), 0) is None
    assert equal_segments(torch.tensor([0, 0, 0]), 1) == 3  # one sample: its own test, the same answers
    assert equal_segments(torch.tensor([0, 0, 1]), 1) is None
    assert equal_segments(torch.tensor([1, 1]), 1) is None


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), width=st.integers(0, 3),
       seed=st.integers(0, 10_000), shuffled=st.booleans(),
       ties=st.sampled_from(TIES),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_segment_max_of_ragged_samples_matches_the_scatter_to_the_bit(counts: list[int], width: int, seed: int,
                                                                      shuffled: bool, ties: str,
                                                                      dtype: torch.dtype) -> None:
    """Samples of any sizes (empty ones too), in order or not: the same values and gradient as PyG's
    scatter max, bit for bit, ties included, from row-wise indexing instead of the scatter's backward."""
    g = torch.Generator().manual_seed(seed)
    samples = len(counts)
    batch = torch.repeat_interleave(torch.arange(samples), torch.tensor(counts, dtype=torch.long))
    shape = (len(batch),) if width == 0 else (len(batch), width)
    values = _with_ties(torch.randn(*shape, generator=g, dtype=dtype), ties)
    if shuffled:
        order = torch.randperm(len(batch), generator=g)
        batch, values = batch[order], values[order]
    weights = torch.randn(samples, *shape[1:], generator=g, dtype=dtype)
    _max_and_gradient_match_the_scatter(values, batch, samples, weights)


@settings(max_examples=40, deadline=None)
@given(samples=st.integers(1, 5), size=st.sampled_from([1, 3, 7, 40, 333]), width=st.integers(1, 8),
       seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_pooled_mean_in_training_is_the_scatter_mean_to_the_bit(samples: int, size: int, width: int,
                                                                seed: int, dtype: torch.dtype) -> None:
    """With autograd the scorer's pooled mean rounds as the scatter mean did (trained figures
    were measured with it), its gradient too; without, samples of one size take the reshaped
    mean (same values up to rounding)."""
    from torch_geometric.utils import scatter

    from bottleneck.segment import segment_max_and_mean

    g = torch.Generator().manual_seed(seed)
    batch = torch.arange(samples).repeat_interleave(size)
    values = torch.randn(samples * size, width, generator=g, dtype=dtype)
    weights = torch.randn(samples, width, generator=g, dtype=dtype)
    leaf = values.clone().requires_grad_()
    reference = scatter(leaf, batch, dim=0, dim_size=samples, reduce="mean")
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), leaf)
    trained = segment_max_and_mean(leaf, batch, samples)[1]
    (trained_grad,) = torch.autograd.grad((trained * weights).sum(), leaf)
    assert torch.equal(trained.detach(), reference.detach())
    assert torch.equal(trained_grad, reference_grad)
    with torch.no_grad():
        assert torch.allclose(segment_max_and_mean(values, batch, samples)[1], reference, atol=1e-6)
