"""Perturbation metrics and precision@k on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck.faithfulness import (
    Perturber,
    area,
    comprehensiveness_sufficiency,
    deletion_insertion,
    top_fraction,
)
from bottleneck.metrics import precision_at_k


class SumModel(nn.Module):
    """Logits [0, sum of pixels]: P(class 1) = sigmoid(sum of what is kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(total), total], -1)


def setup():
    images = torch.tensor([[[[4.0, 3.0, 2.0, 1.0]]], [[[1.0, 1.0, 1.0, 1.0]]]])  # [2, 1, 1, 4]: 4 pixel units each
    masked = bottleneck.attach(SumModel(), "image", baseline="zero", patch_size=1, encoder=False)
    return Perturber(masked, images, target=torch.tensor([1, 1])), images


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_top_fraction_rounds_per_sample_and_allows_zero() -> None:
    relevance = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    batch = torch.tensor([0, 0, 0, 0, 1, 1])
    assert top_fraction(relevance, batch, 2, 0.0).tolist() == [False] * 6
    assert top_fraction(relevance, batch, 2, 0.5).tolist() == [False, True, True, False, False, True]
    assert top_fraction(relevance, batch, 2, 1.0).all()


def test_deletion_and_insertion_curves_have_the_known_values() -> None:
    perturber, _ = setup()
    perfect = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    fractions = (0.0, 0.25, 0.5, 0.75, 1.0)
    result = deletion_insertion(perturber, perfect, fractions)
    expected_deletion = [sigmoid(v) for v in (10, 6, 3, 1, 0)]  # remove 4, then 3, then 2, then 1
    expected_insertion = [sigmoid(v) for v in (0, 4, 7, 9, 10)]
    assert result["deletion_curve"][0].tolist() == pytest.approx(expected_deletion, abs=1e-6)
    assert result["insertion_curve"][0].tolist() == pytest.approx(expected_insertion, abs=1e-6)
    reversed_order = deletion_insertion(perturber, -perfect, fractions)
    assert (reversed_order["deletion_auc"][0] > result["deletion_auc"][0]).item()  # worse ranking, slower fall
    assert (reversed_order["insertion_auc"][0] < result["insertion_auc"][0]).item()


def test_area_is_the_trapezoid_rule() -> None:
    curve = torch.tensor([[1.0, 0.5, 0.0]])
    assert area(curve, (0.0, 0.5, 1.0)).item() == pytest.approx(0.5)


def test_comprehensiveness_and_sufficiency_are_mean_probability_drops() -> None:
    perturber, _ = setup()
    perfect = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    result = comprehensiveness_sufficiency(perturber, perfect, (0.25, 0.5))
    full = sigmoid(10)
    assert result["comprehensiveness"][0].item() == pytest.approx(((full - sigmoid(6)) + (full - sigmoid(3))) / 2, abs=1e-6)
    assert result["sufficiency"][0].item() == pytest.approx(((full - sigmoid(4)) + (full - sigmoid(7))) / 2, abs=1e-6)


def test_bad_relevance_is_refused() -> None:
    perturber, _ = setup()
    with pytest.raises(BottleneckError, match=r"relevance must be \[N\] = \[8\]"):
        deletion_insertion(perturber, torch.ones(5))
    with pytest.raises(BottleneckError, match="NaN or Inf"):
        deletion_insertion(perturber, torch.full((8,), float("nan")))
    with pytest.raises(BottleneckError, match=r"target must be \[B\] = \[2\]"):
        Perturber(perturber.masked, perturber.inputs, target=torch.tensor([1]))


def test_precision_at_k_perfect_reversed_and_ragged() -> None:
    labels = torch.tensor([True, True, False, False, False, True, False])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    perfect = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3, 0.7, 0.1])
    assert precision_at_k(perfect, labels, batch, 2).tolist() == [1.0, 1.0]
    assert precision_at_k(-perfect, labels, batch, 2).tolist() == [0.0, 0.0]
    assert math.isnan(precision_at_k(perfect, torch.zeros(7, dtype=torch.bool), batch, 2)[0].item())
