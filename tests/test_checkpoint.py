"""``BestOnValidation`` selects the epoch that did best on held-out data and restores its weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from bottleneck import attach
from bottleneck.checkpoint import BestOnValidation
from bottleneck.errors import BottleneckError
from bottleneck.train import evaluate, fit
from bottleneck_pointcloud.data import make_shapes
from bottleneck_pointcloud.models import PointNet


def _data(flip: bool, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    return [(x[i:i + 32], (1 - y if flip else y)[i:i + 32]) for i in range(0, 256, 32)]


def _snapshots(model: nn.Module, into: list[dict[str, torch.Tensor]]):
    def record(epoch: int, means: dict[str, float]) -> None:
        into.append(copy.deepcopy(model.state_dict()))
    return record


def test_restores_the_best_epoch_not_the_last() -> None:
    """Validation labels are flipped: training makes it worse, so an early epoch is the best."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    validation = _data(flip=True, seed=1)
    best = BestOnValidation(model, validation)
    states: list[dict[str, torch.Tensor]] = []
    record = _snapshots(model, states)

    def both(epoch: int, means: dict[str, float]) -> None:
        best(epoch, means)
        record(epoch, means)

    fit(model, _data(flip=False, seed=0), epochs=6, lr=1e-2, progress=False, on_epoch=both)
    last = evaluate(model, validation)["accuracy"]
    assert [epoch for epoch, _ in best.scores] == list(range(6))
    assert best.best_accuracy == max(acc for _, acc in best.scores) > last
    best.restore()
    assert evaluate(model, validation)["accuracy"] == best.best_accuracy
    for key, value in states[best.best_epoch].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert best.summary()["best_epoch"] == best.best_epoch + 1


def test_start_epoch_skips_early_epochs_and_scores_the_sparse_path() -> None:
    torch.manual_seed(0)
    clouds = make_shapes(32, min_points=20, max_points=40, seed=0)
    loader = DataLoader(clouds, batch_size=16)
    masked = attach(PointNet(8, hidden=8), "pointcloud", keep=0.5, gate="topk")
    best = BestOnValidation(masked, loader, sparse_keep=0.5, start_epoch=2)
    fit(masked, loader, epochs=3, lr=1e-3, progress=False, on_epoch=best)
    assert [epoch for epoch, _ in best.scores] == [2] and best.best_epoch == 2
    assert best.best_accuracy == evaluate(masked, loader, sparse=True, sparse_keep=0.5)["accuracy"]
    assert masked.training is False  # evaluating between epochs left fit's final mode alone


def test_errors_say_what_is_wrong() -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(BottleneckError, match="start_epoch must be an integer >= 0"):
        BestOnValidation(model, _data(False, 0), start_epoch=-1)
    best = BestOnValidation(model, _data(False, 0), start_epoch=5)
    fit(model, _data(False, 0), epochs=2, progress=False, on_epoch=best)
    with pytest.raises(BottleneckError, match="no epoch was evaluated"):
        best.restore()
