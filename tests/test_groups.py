"""Per-group accuracy and bootstrap intervals, against cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from bottleneck.errors import BottleneckError
from bottleneck.groups import group_accuracy


def exact(correct: int, total: int) -> torch.Tensor:
    return torch.cat([torch.ones(correct), torch.zeros(total - correct)])


def test_perfect_and_hopeless_groups_have_degenerate_intervals() -> None:
    correct = torch.cat([torch.ones(50), torch.zeros(30)])
    groups = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    report = group_accuracy(correct, groups, resamples=500)
    perfect, hopeless = report.groups
    assert (perfect.accuracy, perfect.low, perfect.high, perfect.count) == (1.0, 1.0, 1.0, 50)
    assert (hopeless.accuracy, hopeless.low, hopeless.high, hopeless.count) == (0.0, 0.0, 0.0, 30)
    assert report.worst.group == 1 and report.largest_gap == 1.0
    assert report.gap_interval == (1.0, 1.0)
    assert report.overall == pytest.approx(50 / 80)


def test_interval_of_a_large_group_matches_the_normal_approximation() -> None:
    p, n = 0.7, 4000
    report = group_accuracy(exact(int(p * n), n), torch.zeros(n, dtype=torch.long), resamples=4000)
    half_width = 1.959964 * math.sqrt(p * (1 - p) / n)  # the known answer for a binomial proportion
    group = report.groups[0]
    assert group.accuracy == pytest.approx(p)
    assert group.low == pytest.approx(p - half_width, abs=0.003)
    assert group.high == pytest.approx(p + half_width, abs=0.003)


def test_95_percent_intervals_cover_the_true_accuracy_about_95_percent_of_the_time() -> None:
    generator = torch.Generator().manual_seed(1)
    p, n, trials, covered = 0.8, 200, 300, 0
    for trial in range(trials):
        correct = (torch.rand(n, generator=generator) < p).float()
        group = group_accuracy(correct, torch.zeros(n, dtype=torch.long), resamples=1000, seed=trial).groups[0]
        covered += group.low <= p <= group.high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_worst_group_and_gap_and_reproducibility() -> None:
    correct = torch.cat([exact(90, 100), exact(50, 100), exact(70, 100)])
    groups = torch.arange(3).repeat_interleave(100)
    report = group_accuracy(correct, groups, resamples=800, seed=3)
    assert report.worst.group == 1 and report.worst.accuracy == 0.5
    assert report.largest_gap == pytest.approx(0.4)
    low, high = report.gap_interval
    assert low < 0.4 < high
    assert group_accuracy(correct, groups, resamples=800, seed=3).to_dict() == report.to_dict()
    figures = report.to_dict()
    assert figures["worst_group"] == "1" and figures["worst_group_accuracy"] == 0.5
    assert set(figures["groups"]) == {"0", "1", "2"}


@pytest.mark.parametrize(
    ("correct", "groups", "message"),
    [
        (torch.ones(4), torch.zeros(3, dtype=torch.long), "one label per sample, N=4"),
        (torch.tensor([0.0, 2.0]), torch.zeros(2, dtype=torch.long), "only 0/1"),
        (torch.ones(0), torch.zeros(0, dtype=torch.long), "0 samples"),
        (torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), r"\[N\] tensor"),
    ],
)
def test_bad_input_is_refused(correct, groups, message) -> None:
    with pytest.raises(BottleneckError, match=message):
        group_accuracy(correct, groups)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(BottleneckError, match=r"confidence must be in \(0, 1\)"):
        group_accuracy(torch.ones(3), torch.zeros(3, dtype=torch.long), confidence=95)
    with pytest.raises(BottleneckError, match="resamples must be >= 1"):
        group_accuracy(torch.ones(3), torch.zeros(3, dtype=torch.long), resamples=0)


def test_relevance_share_against_area_share_on_hand_made_samples() -> None:
    from bottleneck.metrics import relevance_share

    relevance = torch.tensor([3.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    flags = torch.tensor([True, False, False, False, True, False, True, False, False])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
    share, area = relevance_share(relevance, flags, batch, 3)
    assert share[:2].tolist() == [0.75, 0.5] and share[2].isnan()  # sample 2 has no relevance
    assert area.tolist() == [0.25, 0.5, 0.0]
    with pytest.raises(BottleneckError, match="non-negative relevance"):
        relevance_share(-relevance, flags, batch, 3)
