"""Relevance metrics on the flat ragged layout (one value per sample, then averaged).

Ground truth: :func:`segment_auroc`, :func:`mean_auroc`, :func:`precision_at_k`.
Faithfulness (they run the model, so they live in :mod:`bottleneck.faithfulness`
and are re-exported here): ``deletion_insertion`` (deletion and insertion AUC),
``comprehensiveness_sufficiency`` (ERASER AOPC) and their ``Perturber``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import BottleneckError, describe
from .segment import sample_major_order
from .units import counts_to_ptr


def _check_scored(
    scores: Tensor, labels: Tensor, batch: Tensor | None, num_samples: int | None
) -> tuple[Tensor, int]:
    """Check ``[N]`` scores against ``[N]`` labels; default to one sample; return ``(batch, B)``."""
    if scores.shape != labels.shape or scores.dim() != 1:
        raise BottleneckError(
            f"scores and labels must be [N] of the same shape (got {describe(scores)} and {describe(labels)})"
        )
    if batch is None:
        batch = torch.zeros_like(scores, dtype=torch.long)
    if num_samples is None:
        num_samples = int(batch.max()) + 1 if batch.numel() else 0
    return batch, num_samples


def segment_average_ranks(scores: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """1-based ranks of ``scores`` within each sample, ascending, ties given their average rank."""
    order = sample_major_order(scores, batch)
    sorted_scores, sorted_batch = scores[order], batch[order]
    new_group = torch.ones_like(sorted_batch, dtype=torch.bool)
    new_group[1:] = (sorted_scores[1:] != sorted_scores[:-1]) | (sorted_batch[1:] != sorted_batch[:-1])
    group = new_group.cumsum(0) - 1
    position = torch.arange(scores.numel(), device=scores.device, dtype=torch.float64)
    num_groups = int(group[-1]) + 1 if group.numel() else 0
    first = torch.full((num_groups,), float("inf"), dtype=torch.float64, device=scores.device)
    first = first.scatter_reduce(0, group, position, reduce="amin")
    size = torch.bincount(group, minlength=num_groups).to(torch.float64)
    ptr = counts_to_ptr(torch.bincount(batch, minlength=num_samples)).to(torch.float64)
    average = first[group] + (size[group] - 1) / 2 - ptr[sorted_batch] + 1
    ranks = torch.empty_like(average)
    ranks[order] = average
    return ranks


def segment_auroc(scores: Tensor, labels: Tensor, batch: Tensor | None = None, num_samples: int | None = None) -> Tensor:
    """``[B]`` AUROC of ``scores`` against boolean ``labels`` within each sample.

    Mann-Whitney U with average ranks for ties. A sample with no positive or no
    negative unit gets NaN.
    """
    batch, num_samples = _check_scored(scores, labels, batch, num_samples)
    labels = labels.bool()
    ranks = segment_average_ranks(scores.double(), batch, num_samples)
    positives = torch.bincount(batch[labels], minlength=num_samples).double()
    total = torch.bincount(batch, minlength=num_samples).double()
    negatives = total - positives
    rank_sum = torch.zeros(num_samples, dtype=torch.float64, device=scores.device)
    rank_sum = rank_sum.index_add(0, batch[labels], ranks[labels])
    u = rank_sum - positives * (positives + 1) / 2
    auroc = u / (positives * negatives)
    return torch.where((positives > 0) & (negatives > 0), auroc, torch.full_like(auroc, float("nan")))


def nanmean(values: Tensor) -> float:
    """Mean of the per-sample ``values`` that are not NaN (NaN when none is)."""
    values = values.double()
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else float("nan")


def mean_auroc(scores: Tensor, labels: Tensor, batch: Tensor | None = None, num_samples: int | None = None) -> float:
    """Mean of :func:`segment_auroc` over samples that have both classes."""
    return nanmean(segment_auroc(scores, labels, batch, num_samples))


def precision_at_k(scores: Tensor, labels: Tensor, batch: Tensor | None = None, num_samples: int | None = None) -> Tensor:
    """``[B]`` fraction of each sample's top ``k`` units that are positive, ``k`` = its number of positives.

    A sample without positives gets NaN. Ties at the cut are broken by unit order.
    """
    from .segment import segment_rank

    batch, num_samples = _check_scored(scores, labels, batch, num_samples)
    labels = labels.bool()
    positives = torch.bincount(batch[labels], minlength=num_samples)
    top = segment_rank(scores, batch, num_samples) < positives[batch]
    hits = torch.bincount(batch[top & labels], minlength=num_samples).double()
    precision = hits / positives.double()
    return torch.where(positives > 0, precision, torch.full_like(precision, float("nan")))


def relevance_share(
    relevance: Tensor, flags: Tensor, batch: Tensor | None = None, num_samples: int | None = None
) -> tuple[Tensor, Tensor]:
    """``([B] relevance share, [B] area share)`` of the flagged units (a bias cue) per sample.

    The relevance share is the fraction of a sample's total (non-negative)
    relevance that falls on its flagged units; the area share is the fraction of
    its units that are flagged. A model that leans on the cue puts much more
    relevance on it than its area: the ratio of the two is the audit's lean.
    Samples with no relevance at all get NaN.
    """
    batch, num_samples = _check_scored(relevance, flags, batch, num_samples)
    if not torch.isfinite(relevance).all():
        raise BottleneckError("relevance holds NaN or Inf values")
    if (relevance < 0).any():
        raise BottleneckError("relevance share needs non-negative relevance (take .abs() or clamp signed ones)")
    flags = flags.bool()
    weights = relevance.double()
    total = torch.zeros(num_samples, dtype=torch.float64, device=relevance.device).index_add(0, batch, weights)
    on_cue = torch.zeros_like(total).index_add(0, batch[flags], weights[flags])
    counts = torch.bincount(batch, minlength=num_samples).double()
    area = torch.bincount(batch[flags], minlength=num_samples).double() / counts.clamp(min=1)
    share = torch.where(total > 0, on_cue / total.clamp(min=1e-300), torch.full_like(total, float("nan")))
    return share, area


_FAITHFULNESS = ("Perturber", "deletion_insertion", "comprehensiveness_sufficiency", "top_fraction")


def __getattr__(name: str) -> object:
    """The faithfulness metrics, imported on first use (they import the masked model)."""
    if name in _FAITHFULNESS:
        from . import faithfulness

        return getattr(faithfulness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
