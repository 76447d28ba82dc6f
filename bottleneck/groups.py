"""Per-group accuracy with bootstrap confidence intervals (the shape of fairlearn's MetricFrame).

A bias audit asks how accurate a model is on each group of samples (cue present
and label A, cue absent and label B, ...), how sure we are of each figure, which
group is worst, and how far apart the groups are. :func:`group_accuracy` answers
all four from a per-sample correctness vector and a group label per sample.

Intervals are percentile bootstrap intervals: samples are resampled with
replacement *within each group* (a stratified bootstrap, so every resample keeps
each group's size) ``resamples`` times, vectorised as one ``[resamples, n]`` index
draw per group. The gap between the best and the worst group gets its interval
from the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import BottleneckError, describe


@dataclass
class GroupAccuracy:
    """Accuracy of one group, with its bootstrap interval.

    :param group: the group's label.
    :param count: samples in the group.
    :param accuracy: fraction of them predicted correctly.
    :param low: lower end of the interval.
    :param high: upper end of the interval.
    """

    group: Any
    count: int
    accuracy: float
    low: float
    high: float


@dataclass
class GroupReport:
    """Per-group accuracy, the worst group and the largest gap between groups.

    :param groups: one :class:`GroupAccuracy` per group, in the order the labels sort.
    :param overall: accuracy over every sample.
    :param confidence: the intervals' coverage (0.95 for 95% intervals).
    :param resamples: bootstrap resamples behind each interval.
    """

    groups: list[GroupAccuracy]
    overall: float
    confidence: float
    resamples: int
    gap_interval: tuple[float, float] = field(default=(float("nan"), float("nan")))

    @property
    def worst(self) -> GroupAccuracy:
        """The group with the lowest accuracy."""
        return min(self.groups, key=lambda g: g.accuracy)

    @property
    def best(self) -> GroupAccuracy:
        return max(self.groups, key=lambda g: g.accuracy)

    @property
    def largest_gap(self) -> float:
        """Best minus worst group accuracy (fairlearn's ``difference()``)."""
        return self.best.accuracy - self.worst.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "overall": self.overall,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "groups": {str(g.group): {"count": g.count, "accuracy": g.accuracy, "low": g.low, "high": g.high}
                       for g in self.groups},
            "worst_group": str(self.worst.group),
            "worst_group_accuracy": self.worst.accuracy,
            "largest_gap": self.largest_gap,
            "largest_gap_interval": list(self.gap_interval),
        }


def _check(correct: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(correct, Tensor) or correct.dim() != 1:
        raise BottleneckError(f"correct must be a [N] tensor of 0/1 or bools (got {describe(correct)})")
    if not isinstance(groups, Tensor) or groups.shape != correct.shape:
        raise BottleneckError(
            f"groups must be a [N] tensor with one label per sample, N={correct.numel()} (got {describe(groups)})"
        )
    if correct.numel() == 0:
        raise BottleneckError("cannot compute group accuracy on 0 samples")
    values = correct.double()
    if not bool(((values == 0) | (values == 1)).all()):
        raise BottleneckError("correct must hold only 0/1 (or True/False) per sample")
    return values, groups


def group_accuracy(
    correct: Tensor, groups: Tensor, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> GroupReport:
    """Per-group accuracy with stratified percentile-bootstrap intervals.

    :param correct: ``[N]`` bool or 0/1, whether each sample was predicted correctly.
    :param groups: ``[N]`` integer group label of each sample.
    :param resamples: bootstrap resamples per group.
    :param confidence: coverage of each interval, in (0, 1).
    :param seed: seeds the resampling, so reports are reproducible.
    """
    values, groups = _check(correct, groups)
    if not 0.0 < confidence < 1.0:
        raise BottleneckError(f"confidence must be in (0, 1) (got {confidence!r})")
    if resamples < 1:
        raise BottleneckError(f"resamples must be >= 1 (got {resamples!r})")
    generator = torch.Generator().manual_seed(seed)
    alpha = (1.0 - confidence) / 2.0
    labels = torch.unique(groups.cpu())
    values, groups = values.cpu(), groups.cpu()
    rows, boots = [], []
    for label in labels.tolist():
        member = values[groups == label]
        n = member.numel()
        # each resample draws n of the group's samples with replacement
        picks = torch.randint(0, n, (resamples, n), generator=generator)
        boot = member[picks].mean(dim=1)
        low, high = torch.quantile(boot, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
        rows.append(GroupAccuracy(label, n, float(member.mean()), float(low), float(high)))
        boots.append(boot)
    report = GroupReport(rows, float(values.mean()), confidence, resamples)
    if len(rows) > 1:
        stacked = torch.stack(boots)  # [G, R]: the gap's interval from the same resamples
        gaps = stacked.max(0).values - stacked.min(0).values
        low, high = torch.quantile(gaps, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
        report.gap_interval = (float(low), float(high))
    return report
