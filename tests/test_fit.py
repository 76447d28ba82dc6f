"""``fit``'s separate learning rate for the mask: it reaches the mask's parameters, and only them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch_geometric.loader import DataLoader

from bottleneck import attach
from bottleneck.errors import BottleneckError
from bottleneck.train import fit
from bottleneck_pointcloud.data import make_shapes
from bottleneck_pointcloud.models import PointNet


def _masked_and_data():
    torch.manual_seed(0)
    clouds = make_shapes(32, min_points=20, max_points=40, seed=0)
    masked = attach(PointNet(8, hidden=8), "pointcloud", keep=0.5, gate="topk")
    loader = DataLoader(clouds, batch_size=16)
    fit(masked, loader, epochs=1, lr=1e-12, progress=False)  # build lazily sized layers
    return masked, loader


def _moved(before: torch.nn.Module, after: torch.nn.Module) -> float:
    return sum(float((a - b).abs().sum()) for a, b in zip(before.parameters(), after.parameters(), strict=True))


def test_mask_lr_trains_the_mask_at_its_own_rate() -> None:
    masked, loader = _masked_and_data()
    start = copy.deepcopy(masked)
    fit(masked, loader, epochs=2, lr=1e-12, mask_lr=1e-2, schedule=None, progress=False)
    assert _moved(start.model, masked.model) < 1e-6  # the model's rate is ~0: it stayed put
    assert _moved(start.mask, masked.mask) > 1e-2  # the mask's own rate moved the scorer

    masked, loader = _masked_and_data()
    start = copy.deepcopy(masked)
    fit(masked, loader, epochs=2, lr=1e-2, mask_lr=1e-12, schedule=None, progress=False)
    assert _moved(start.model, masked.model) > 1e-2
    assert _moved(start.mask, masked.mask) < 1e-6


@pytest.mark.parametrize("bad", [0.0, -1e-3, math.nan])
def test_mask_lr_must_be_positive(bad: float) -> None:
    masked, loader = _masked_and_data()
    with pytest.raises(BottleneckError, match="mask_lr must be > 0"):
        fit(masked, loader, epochs=1, mask_lr=bad, progress=False)


def test_a_collapsed_scorer_is_reported_after_training() -> None:
    """A scorer whose hidden ReLUs are all dead scores every unit alike: fit says so, a live one does not."""
    import warnings

    from bottleneck.errors import CollapsedMaskWarning

    masked, loader = _masked_and_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedMaskWarning)
        fit(masked, loader, epochs=1, lr=1e-3, progress=False)  # a live scorer: no warning

    masked, loader = _masked_and_data()
    with torch.no_grad():
        masked.mask.scorer.head[0].bias.fill_(-1e6)  # every hidden unit of the head dead: no gradient revives it
    with pytest.warns(CollapsedMaskWarning, match=r"scores every unit of a sample alike .* Lower mask_lr"):
        fit(masked, loader, epochs=1, lr=1e-3, progress=False)
    relevance = masked.explain(next(iter(loader))).relevance
    assert float(relevance.max() - relevance.min()) == 0.0  # the warning tells the truth


def test_max_grad_norm_bounds_every_step_the_optimiser_takes() -> None:
    """With clipping, the gradient the optimiser sees never exceeds the bound; without, it does."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def norms_seen(max_grad_norm: float | None) -> list[float]:
        masked, loader = _masked_and_data()
        seen: list[float] = []

        def record(optimizer, args, kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        handle = register_optimizer_step_pre_hook(record)
        try:
            history = fit(masked, loader, epochs=2, lr=1e-3, max_grad_norm=max_grad_norm, progress=False)
        finally:
            handle.remove()
        assert ("grad_norm" in history.epochs[-1]) == (max_grad_norm is not None)
        return seen

    free = norms_seen(None)
    bound = min(free) / 2
    clipped = norms_seen(bound)
    assert max(free) > bound and len(clipped) == len(free)
    assert max(clipped) <= bound * (1 + 1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_max_grad_norm_must_be_positive(bad: float) -> None:
    masked, loader = _masked_and_data()
    with pytest.raises(BottleneckError, match="max_grad_norm must be > 0"):
        fit(masked, loader, epochs=1, max_grad_norm=bad, progress=False)


def test_evaluate_refuses_non_finite_logits() -> None:
    """NaN logits would silently count as class 0 (argmax): evaluate says what happened instead."""
    from bottleneck.train import evaluate

    torch.manual_seed(0)
    model = PointNet(8, hidden=8).eval()
    loader = DataLoader(make_shapes(8, min_points=20, max_points=40, seed=0), batch_size=8)
    assert 0.0 <= evaluate(model, loader)["accuracy"] <= 1.0
    with torch.no_grad():
        model.classifier.lins[-1].bias[3] = float("nan")
    with pytest.raises(BottleneckError, match=r"non-finite logits \(NaN or Inf\) for 8 of 8 samples"):
        evaluate(model, loader)


def _cnn_batch():
    from bottleneck_image.models import SmallResNet

    torch.manual_seed(0)
    return attach(SmallResNet(4, width=8), "image"), torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize(("targets", "message"), [
    (torch.tensor([0, 1]), r"logits for 6 samples but the batch has targets of shape \(2,\)"),
    (torch.tensor([0.0, 1, 2, 3, 0, 1]), r"6 integer class ids or \[6, 4\] class probabilities .*targets.long\(\)"),
    (torch.tensor([0, 1, 2, 3, 4, 9]), r"class ids 0..9 but the model gives 4 logits per sample \(ids 0..3\)"),
    (torch.tensor([0, -1, 2, 3, 0, 1]), r"class ids -1..3"),
    (torch.ones(6, dtype=torch.bool), "integer class ids"),
])
def test_fit_refuses_targets_cross_entropy_cannot_take(targets, message) -> None:
    masked, images, _ = _cnn_batch()
    with pytest.raises(BottleneckError, match=message):
        fit(masked, [(images, targets)], epochs=1, progress=False)


def test_fit_takes_class_probabilities_and_a_custom_loss_its_own_targets() -> None:
    masked, images, labels = _cnn_batch()
    soft = torch.nn.functional.one_hot(labels, 4).float()
    assert fit(masked, [(images, soft)], epochs=1, progress=False).last()["task"] > 0
    squared = lambda logits, targets: (logits - targets).square().mean()  # noqa: E731 - a loss of another kind
    assert fit(masked, [(images, soft)], epochs=1, progress=False, loss_fn=squared).last()["task"] > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-3, "0.1", True])
def test_fit_refuses_a_learning_rate_it_cannot_use(bad) -> None:
    masked, images, labels = _cnn_batch()
    with pytest.raises(BottleneckError, match="lr must be a finite number >= 0"):
        fit(masked, [(images, labels)], epochs=1, lr=bad, progress=False)


def test_fit_takes_a_numpy_learning_rate() -> None:
    import numpy as np

    masked, images, labels = _cnn_batch()
    assert fit(masked, [(images, labels)], epochs=1, lr=np.float32(1e-3), progress=False).last()["task"] > 0


def test_no_batches_is_an_error_not_an_empty_history_or_a_zero_accuracy() -> None:
    """An empty loader, or a generator used up by the first epoch, trained nothing: fit says so,
    and evaluate does not report an accuracy of 0 for no data."""
    from bottleneck.train import evaluate

    masked, images, labels = _cnn_batch()
    with pytest.raises(BottleneckError, match="data gave no batches in epoch 1"):
        fit(masked, [], epochs=1, progress=False)
    once = ((images, labels) for _ in range(1))
    with pytest.raises(BottleneckError, match="no batches in epoch 2: .*a generator is used up"):
        fit(masked, once, epochs=2, progress=False)
    with pytest.raises(BottleneckError, match="no batches to evaluate"):
        evaluate(masked, [])
    assert 0.0 <= evaluate(masked, [(images, labels)])["accuracy"] <= 1.0
