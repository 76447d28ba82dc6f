"""Segment (scatter) operations on the flat ragged layout of :class:`~bottleneck.units.Units`.

One implementation for every modality: reductions per sample, broadcasting a
per-sample value back to its units, per-sample top-k and compaction of a kept
subset with index remapping. No Python loops over samples.
"""

from __future__ import annotations

import math
from types import EllipsisType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch_geometric.utils import scatter

from .units import counts_to_ptr


def segment_sum(values: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """Sum of ``values`` over the units of each sample (``[N, ...] -> [B, ...]``)."""
    return scatter(values, batch, dim=0, dim_size=num_samples, reduce="sum")


def segment_mean(values: Tensor, batch: Tensor, num_samples: int, counts: Tensor | None = None, *,
                 width: int | None = None) -> Tensor:
    """Mean of ``values`` over the units of each sample; empty samples give 0.

    ``counts`` (``[B]`` units per sample, as ``torch.bincount(batch)`` gives them) spares
    the count's own scatter when the caller has it already, as a cloud's two per-sample
    means in :meth:`~bottleneck_pointcloud.adapter.PointCloudModality.to_units` do; the
    quotient is the same, to the bit, as the scatter mean's. ``width`` (what
    :func:`equal_segments` found: every sample that many units, in order) spares the
    count altogether, in float32/64, where the sum over the width is that quotient too.
    """
    if width is not None and values.dtype in _EXACT_COUNT_DTYPES:
        return _mean_of_sum(values, batch, num_samples, width)
    if counts is None:
        return scatter(values, batch, dim=0, dim_size=num_samples, reduce="mean")
    return _mean_of_sum(values, batch, num_samples, counts)


def _mean_of_sum(values: Tensor, batch: Tensor, num_samples: int, counts: Tensor | int) -> Tensor:
    """The scatter sum over the counts (``[B]``, or one ``int`` for samples of one size): the
    scatter mean's quotient to the bit, where the counts are exact in ``values``' dtype."""
    total = segment_sum(values, batch, num_samples)
    if isinstance(counts, int):
        return total / counts
    divisor = counts.to(total.dtype).clamp(min=1)
    return total / divisor.view(-1, *([1] * (total.dim() - 1)))


def segment_max(values: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """Max of ``values`` over the units of each sample; empty samples give 0.

    Samples of one size laid out in order (image patches and feature-map cells; what
    :func:`equal_segments` detects) take a reshaped max with the same values and the
    same gradient, to the bit, as the scatter (see :class:`_EqualSegmentMax`).
    """
    return _segment_max(values, batch, num_samples, _equal_width(values, batch, num_samples))


def pooled_width(features: Tensor, batch: Tensor, num_samples: int) -> int | None:
    """:func:`equal_segments` for reductions of what is computed from ``features``, checked once
    for several of them; ``None``, without the check and its host sync, where those will not be
    float32/64 (``features`` of another dtype, or autocast on), as the reductions then take the
    scatter path whatever the width."""
    if torch.is_autocast_enabled(features.device.type):
        return None
    return _equal_width(features, batch, num_samples)


def _equal_width(values: Tensor, batch: Tensor, num_samples: int,
                 width: int | None | EllipsisType = ...) -> int | None:
    """:func:`equal_segments` (or the caller's ``width`` from it) where the reshaped reductions
    apply (float32/64 values), else ``None``."""
    if values.dtype not in _EXACT_COUNT_DTYPES:
        return None
    return equal_segments(batch, num_samples) if width is ... else width


def _segment_max(values: Tensor, batch: Tensor, num_samples: int, width: int | None) -> Tensor:
    """:func:`segment_max` with the check for samples of one size (``width``) made by the caller."""
    exact = values.dtype in _EXACT_COUNT_DTYPES
    needs_grad = torch.is_grad_enabled() and values.requires_grad
    if width is None:
        if exact and needs_grad and not torch.compiler.is_compiling():  # Dynamo fails to trace it
            return _RaggedSegmentMax.apply(values, batch, num_samples)
        return scatter(values, batch, dim=0, dim_size=num_samples, reduce="max")
    if not needs_grad:
        return values.reshape(num_samples, width, *values.shape[1:]).amax(1)
    return _EqualSegmentMax.apply(values, num_samples, width)


def segment_max_and_mean(values: Tensor, batch: Tensor, num_samples: int, *,
                         width: int | None | EllipsisType = ...) -> tuple[Tensor, Tensor]:
    """``(segment_max, segment_mean)`` of ``values``: a sample's pooled context, as the scorer takes it.

    ``width`` is :func:`equal_segments` of ``batch`` when the caller has it (``...``: check here).

    Samples of one size laid out in order (one sample; image patches) are checked for
    once. Without autograd (explanations, sparse inference) the mean of such samples is
    then a reshaped one: the scatter mean builds a count and an expanded index in nine
    tensor operations, the reshaped mean is one. With autograd the mean stays the
    scatter's: the reshaped sum rounds differently, and the trained figures (and recipes
    that flipped on a rounding change before: ``benchmarks/text_bert_recipe.py``) were
    measured with the scatter's. It is the scatter's sum divided by the width, which is
    the scatter mean's quotient to the bit without its count (a second scatter, of ones,
    and its clamp and broadcast: six operations fewer).
    """
    width = _equal_width(values, batch, num_samples, width)
    largest = _segment_max(values, batch, num_samples, width)
    if width is not None and not (torch.is_grad_enabled() and values.requires_grad):
        return largest, values.reshape(num_samples, width, *values.shape[1:]).mean(1)
    return largest, segment_mean(values, batch, num_samples, width=width)  # with a width: the sum over it


#: Dtypes in which a count of tied units (at most 2**24) is exact, as the scatter's backward has it.
_EXACT_COUNT_DTYPES = (torch.float32, torch.float64)


def equal_segments(batch: Tensor, num_samples: int) -> int | None:
    """``n`` when ``batch`` is ``[0]*n + [1]*n + ... + [B-1]*n`` (every sample ``n`` units, in order), else ``None``.

    One comparison and one host sync; ``None`` at once when ``B`` does not divide the
    unit count.
    """
    count = batch.numel()
    if num_samples <= 0 or count == 0 or count % num_samples:
        return None
    width = count // num_samples
    if num_samples == 1:  # the same test, every id 0, without building the ids
        return width if not bool(batch.any()) else None
    return width if bool(_laid_out_in_rows(batch, num_samples, width)) else None


def _laid_out_in_rows(batch: Tensor, num_samples: int, width: int) -> Tensor:
    """0-d bool tensor, without a host sync: ``batch`` is ``[0]*width + ... + [B-1]*width``
    (``batch`` holds ``num_samples * width`` ids)."""
    ids = torch.arange(num_samples, device=batch.device).unsqueeze(1)
    return (batch.reshape(num_samples, width) == ids).all()


class _EqualSegmentMax(torch.autograd.Function):
    """:func:`segment_max` of samples of one size, as a reshaped ``amax`` with the scatter's exact gradient.

    Why: the scatter's max and its backward index every unit through an expanded
    ``[N, H]`` index. On 64 samples of 64 units, forward and backward took 741 against
    342 us with 64 features and 3080 against 633 us with 128 (2 CPU cores); the bench
    ViT's train overhead went from 1.229 and 1.239 to 1.227 and 1.225, side by side.
    The backward is the one ``torch.scatter_reduce`` gives the scatter
    (``reduce="amax"`` into zeros, ``include_self=False``): the gradient is shared evenly
    among the units tied at the maximum, and where the maximum is 0 the zero the scatter
    starts from counts as one more tie. ``amax``'s own backward shares among the units
    only, so a channel that is 0 for every unit after a ReLU would get another gradient,
    and the trained figures here were measured with the scatter's.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, num_samples: int, width: int) -> Tensor:
        result = values.reshape(num_samples, width, *values.shape[1:]).amax(1)
        ctx.save_for_backward(values, result)
        ctx.blocks = (num_samples, width)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        values, result = ctx.saved_tensors
        blocks = values.reshape(*ctx.blocks, *values.shape[1:])
        tied = blocks == result.unsqueeze(1)
        ties = tied.sum(1).to(grad.dtype) + (result == 0).to(grad.dtype)
        return (tied * (grad / ties).unsqueeze(1)).reshape(values.shape), None, None


class _RaggedSegmentMax(torch.autograd.Function):
    """:func:`segment_max` of samples of any sizes: the scatter's values, and its gradient from row-wise indexing.

    The forward is the scatter max. Its backward, as ``torch.scatter_reduce`` gives it,
    gathers and scatters through an expanded ``[N, H]`` index; this one takes the same
    values (the gradient shared evenly among the units tied at the maximum, the zero the
    scatter starts from counting as one more tie where the maximum is 0) with row-wise
    ``index_select`` and ``index_add``. Forward and backward on 2,760 units of 32
    samples x 64 features (the bench BERT's scorer) took 1.24 against 1.76 ms, on 16
    samples of 1,000 units 5.2 against 9.9 ms (2 CPU cores).
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, batch: Tensor, num_samples: int) -> Tensor:
        result = scatter(values, batch, dim=0, dim_size=num_samples, reduce="max")
        ctx.save_for_backward(values, batch, result)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        values, batch, result = ctx.saved_tensors
        tied = values == result.index_select(0, batch)
        ties = torch.zeros_like(result).index_add_(0, batch, tied.to(result.dtype)) + (result == 0).to(result.dtype)
        return tied * (grad / ties).index_select(0, batch), None, None


def broadcast(per_sample: Tensor, batch: Tensor) -> Tensor:
    """Each unit's row of a per-sample tensor (``[B, ...] -> [N, ...]``).

    ``index_select`` rather than ``per_sample[batch]``: its backward is an
    ``index_add``, about twice as fast on CPU as the accumulating ``index_put`` of
    advanced indexing (0.23 against 0.66 ms for 1k units x 128 features), and
    serial where that one adds with parallel atomics in the threads' order, so the
    gradient is the same from call to call (``tests/test_reproducible_gradients.py``).
    """
    return per_sample.index_select(0, batch)


def sample_major_order(scores: Tensor, batch: Tensor, descending: bool = False) -> Tensor:
    """Permutation ordering units sample by sample, by score inside each sample.

    Two stable sorts: by score, then by sample id.
    """
    order = torch.argsort(scores, descending=descending, stable=True)
    return order[torch.argsort(batch[order], stable=True)]


#: :func:`segment_rank` sorts a padded ``[B, n_max]`` table when it holds at most this many
#: cells per unit; beyond that (one long sample among many short ones) the padding would
#: cost more than it saves, and the flat two-sort path runs.
PADDED_RANK_MAX_FILL = 4


def segment_rank(scores: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """Rank of each unit within its sample by descending score (0 = highest); ties by unit order.

    ``batch`` sorted ascending (the :class:`~bottleneck.units.Units` layout) and samples of
    similar sizes: one stable sort along the rows of a ``[B, n_max]`` table padded with
    ``-inf`` (the padding sorts after every real unit, a real ``-inf`` included, since the
    sort is stable and padding sits at the end of each row). Rows sort in parallel: on 32
    clouds of 128-256 points this took 0.28 ms against 0.66 ms for two stable sorts of the
    flat ``[N]`` scores (2 CPU cores). Otherwise the rank is the unit's position in
    :func:`sample_major_order` minus its sample's offset.
    """
    counts = torch.bincount(batch, minlength=num_samples)
    ptr = counts_to_ptr(counts)
    count = scores.numel()
    width = int(counts.max()) if count else 0
    padded = scores.is_floating_point() and num_samples * width > 0
    if padded and _padding_pays(batch, num_samples, width):
        table, position = _padded_table(scores, batch, ptr, num_samples, width)
        order = torch.argsort(table, dim=1, descending=True, stable=True)
        ranks = torch.empty_like(order).scatter_(
            1, order, torch.arange(width, device=scores.device).expand(num_samples, width))
        return ranks[batch, position]
    order = sample_major_order(scores, batch, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=scores.device) - ptr[batch[order]]
    return rank


def _padding_pays(batch: Tensor, num_samples: int, width: int) -> bool:
    """Whether a ``[B, width]`` table is worth padding to: at most :data:`PADDED_RANK_MAX_FILL`
    cells per unit, and ``batch`` sorted (each sample's units are a contiguous run)."""
    return _padding_fits(num_samples, width, batch.numel()) and bool((batch[1:] >= batch[:-1]).all())


def _padding_fits(num_samples: int, width: int, count: int) -> bool:
    """Whether a ``[B, width]`` table holds at most :data:`PADDED_RANK_MAX_FILL` cells per unit."""
    return num_samples * width <= PADDED_RANK_MAX_FILL * count


def _padded_table(scores: Tensor, batch: Tensor, ptr: Tensor, num_samples: int, width: int) -> tuple[Tensor, Tensor]:
    """``(table, position)``: the scores in a ``[B, width]`` table, row = sample, padded with ``-inf``,
    and each unit's column in it (its position within its sample)."""
    position = torch.arange(scores.numel(), device=scores.device) - ptr[batch]
    table = scores.new_full((num_samples, width), float("-inf"))
    table[batch, position] = scores
    return table, position


#: Taken off ``keep * n`` before rounding up, so that a product a float64 rounding puts just
#: above a whole number (``0.07 * 100`` is 7.000000000000001) keeps that number of units. :func:`keep_counts` and the
#: equal-samples top-k both use it, so the two count alike.
_CEIL_SLACK = 1e-9


def keep_counts(counts: Tensor, keep: float, minimum: int = 1) -> Tensor:
    """Units to keep per sample: ``ceil(keep * n_i)``, at least ``minimum`` (at most ``n_i``)."""
    k = torch.ceil(counts.to(torch.float64) * keep - _CEIL_SLACK).long()
    return torch.minimum(k.clamp(min=minimum), counts)


def segment_topk_mask(
    scores: Tensor, batch: Tensor, num_samples: int, keep: float | Tensor, minimum: int = 1
) -> Tensor:
    """Boolean ``[N]`` mask of each sample's top ``ceil(keep * n_i)`` units by score.

    ``keep`` is a fraction in (0, 1] or a ``[B]`` tensor of per-sample counts.
    """
    if not isinstance(keep, Tensor):  # samples of one size (image patches, fixed-length text): no table to build
        kept = _top_of_equal_samples(scores, batch, num_samples, keep, minimum)
        if kept is not None:
            return kept
    counts = torch.bincount(batch, minlength=num_samples)
    if isinstance(keep, Tensor):
        k = torch.minimum(keep, counts)
    else:  # keep_counts caps each count at its sample's size already
        k = keep_counts(counts, keep, minimum)
    kept = _top_by_threshold(scores, batch, counts, k)
    return segment_rank(scores, batch, num_samples) < k[batch] if kept is None else kept


def _top_of_equal_samples(scores: Tensor, batch: Tensor, num_samples: int, keep: float,
                          minimum: int) -> Tensor | None:
    """Each sample's top ``ceil(keep * n)`` units when every sample has ``n`` units in order, or ``None``.

    :func:`_top_by_threshold` on rows that need no table: the scores viewed as ``[B, n]``
    are that table already, and every row keeps the same ``k`` (a Python int, no per-sample
    counts). The same selection, ties by unit order included, in 20 tensor operations
    instead of 48 and one host sync (the layout check and the NaN check together).
    Why: the ViT's sparse call spent 0.50 ms of its 7.1 ms in the top-k on 64 images of 64
    patches (2 CPU cores). ``None`` (the general path then runs) for non-float or non-flat
    scores, ragged or unsorted samples, and NaN scores.
    """
    count = scores.numel()
    if not scores.is_floating_point() or scores.dim() != 1 or num_samples <= 0 or count == 0 \
            or count % num_samples:
        return None
    width = count // num_samples
    in_order, has_nan = torch.stack([_laid_out_in_rows(batch, num_samples, width), scores.isnan().any()]).tolist()
    if not in_order or has_nan:
        return None
    k = min(max(math.ceil(width * keep - _CEIL_SLACK), minimum), width)  # keep_counts' figure, in the same float64
    if k <= 0:
        return torch.zeros(count, dtype=torch.bool, device=scores.device)
    table = scores.view(num_samples, width)
    return _first_k_of_rows(table, torch.topk(table, k, dim=1).values[:, k - 1:], k).view(-1)


def _top_by_threshold(scores: Tensor, batch: Tensor, counts: Tensor, k: Tensor) -> Tensor | None:
    """Each sample's top ``k_i`` units (ties by unit order) from its ``k_i``-th largest score, or ``None``.

    The scores go into a ``[B, n_max]`` table padded with ``-inf`` (as :func:`segment_rank`
    does); a top-k of its rows gives each sample's ``k_i``-th largest score, the threshold.
    A unit is kept when it scores above its threshold, or equals it and is among the first
    of its sample's equal units that the count still needs (a running count along its
    row: a row holds its sample's units in order, and padding only after them). A partial
    selection instead of a full sort of the rows: 0.15 against 0.24 ms on 32 clouds of
    128-256 points (2 CPU cores), on the sparse path of every point-cloud model and in the
    top-k gate. The selection is made in the table and read back once, and one host sync
    takes every decision (the selection on the flat units took 47 tensor operations and
    three syncs): 0.135 against 0.157 ms, warm. A sparse call pays more per operation,
    as it runs right after a forward pass has flushed the caches: the old selection took
    0.51-0.59 ms there, this one 0.45-0.47 ms.
    ``None`` (the rank path then runs) for non-float scores, unsorted or very uneven
    samples, and NaN scores (a NaN is not equal to itself, so it cannot be a threshold;
    a top-k puts it first in its row, so a NaN anywhere would be among the top scores).
    """
    count = scores.numel()
    num_samples = counts.numel()
    if not scores.is_floating_point() or count == 0 or scores.dim() != 1:
        return None
    width, most, unsorted, has_nan = torch.stack(
        [counts.max(), k.max(), (batch[1:] < batch[:-1]).any(), scores.isnan().any()]).tolist()
    if unsorted or has_nan or not _padding_fits(num_samples, width, count):
        return None
    if most <= 0:
        return torch.zeros(count, dtype=torch.bool, device=scores.device)
    start = torch.cumsum(counts, 0) - counts
    cell = torch.arange(count, device=scores.device) - start.index_select(0, batch) + batch * width
    table = scores.new_full((num_samples * width,), float("-inf")).index_put_((cell,), scores)
    table = table.view(num_samples, width)
    top = torch.topk(table, most, dim=1).values
    threshold = top.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).masked_fill_((k == 0).unsqueeze(1), float("inf"))
    return _first_k_of_rows(table, threshold, k.unsqueeze(1)).view(-1).index_select(0, cell)


def _first_k_of_rows(table: Tensor, threshold: Tensor, k: Tensor | int) -> Tensor:
    """``[B, n]`` bool: each row's cells above its ``threshold`` (``[B, 1]``, the row's ``k``-th largest),
    and of the cells equal to it the first ones the row's ``k`` still needs (ties by position)."""
    above = table > threshold
    equal = table == threshold
    still_needed = k - above.sum(1, keepdim=True)
    return above | (equal & (equal.cumsum(1) <= still_needed))


def compact(keep: Tensor, batch: Tensor, num_samples: int, *, with_remap: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Remove the units where ``keep`` is False.

    :returns: ``(index, new_batch, remap)`` — ``index`` are the kept units' old
        positions, ``new_batch`` their sample ids (samples keep their ids), and
        ``remap`` maps an old unit index to its new one (``-1`` if dropped), for
        rewriting edge indices; ``None`` with ``with_remap=False`` (an input without
        edges: three tensor operations fewer on the sparse path).
    """
    index = keep.nonzero(as_tuple=False).view(-1)
    remap = None
    if with_remap:
        remap = torch.full((keep.numel(),), -1, dtype=torch.long, device=keep.device)
        remap[index] = torch.arange(index.numel(), device=keep.device)
    return index, batch.index_select(0, index), remap

