"""Fixed-size samples (``Units.size``): the reshaped reductions equal the scattered ones, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bottleneck.errors import BottleneckError
from bottleneck.layer import MaskLayer
from bottleneck.scorer import EquivariantScorer
from bottleneck.segment import broadcast, segment_max, segment_mean, segment_sum
from bottleneck.units import Units
from bottleneck_image.adapter import ImageModality


def _both(op, values: torch.Tensor, batch: torch.Tensor, samples: int, size: int):
    """``op`` with and without ``size``: outputs and the gradients of one weighted sum."""
    results = []
    for hint in (None, size):
        leaf = values.clone().requires_grad_()
        out = op(leaf, batch, samples, hint)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        (out * weights).sum().backward()
        results.append((out.detach(), leaf.grad))
    return results


@settings(max_examples=40, deadline=None)
@given(samples=st.integers(1, 6), size=st.integers(1, 9), width=st.integers(1, 5), seed=st.integers(0, 10_000),
       ties=st.booleans())
def test_reshaped_reductions_equal_scattered_ones(samples: int, size: int, width: int, seed: int, ties: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(samples * size, width, generator=gen)
    if ties:  # rounded values: many equal maxima (and zeros)
        values = values.round()
    batch = torch.arange(samples).repeat_interleave(size)
    for op in (segment_sum, segment_mean):
        (out, grad), (fast, fast_grad) = _both(op, values, batch, samples, size)
        torch.testing.assert_close(fast, out)
        torch.testing.assert_close(fast_grad, grad)
    (out, grad), (fast, fast_grad) = _both(segment_max, values, batch, samples, size)
    torch.testing.assert_close(fast, out)
    if not ties:
        torch.testing.assert_close(fast_grad, grad)
    else:
        # Tied maxima share the sample's gradient, and only they get any. (The scatter
        # path also counts its zero-initialised buffer as a tie when the maximum is 0
        # and passes on half: the reshaped path does not.)
        weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(fast_grad.view(samples, size, width).sum(1), weights)
        assert ((fast_grad != 0) <= (values == fast.repeat_interleave(size, 0))).all()
    per_sample = torch.randn(samples, width, generator=gen)
    torch.testing.assert_close(broadcast(per_sample, batch, size), broadcast(per_sample, batch))


def test_scorer_and_mask_layer_give_the_same_logits_and_gradients_with_size() -> None:
    torch.manual_seed(0)
    samples, size = 5, 7
    x = torch.randn(samples * size, 4)
    batch = torch.arange(samples).repeat_interleave(size)
    scorer = EquivariantScorer(16, 1, 4)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(scorer(x, batch, samples, size), scorer(x, batch, samples))
    start = MaskLayer("hard_concrete", keep=0.3, in_features=4, smooth_weight=0.0)
    grads = []
    for hint in (None, size):
        layer = copy.deepcopy(start)  # a forward pass also steps the keep-rate multiplier
        torch.manual_seed(1)  # the same gate noise
        result = layer(Units(x=x, batch=batch, num_samples=samples, size=hint))
        (result.loss + result.gates.sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters() if p.grad is not None])
    for with_size, without in zip(*grads, strict=True):
        torch.testing.assert_close(with_size, without)


def test_image_units_declare_their_size_and_bad_sizes_are_refused() -> None:
    units = ImageModality().to_units(torch.rand(3, 1, 16, 16))
    rows, cols = units.meta["grid"]
    assert units.size == rows * cols and units.num_units == 3 * rows * cols
    x, batch = torch.zeros(6, 2), torch.tensor([0, 0, 0, 1, 1, 1])
    for bad in (4, 0, True, 2.5):
        with pytest.raises(BottleneckError, match="Units.size must be None or the units per sample"):
            Units(x=x, batch=batch, num_samples=2, size=bad)
