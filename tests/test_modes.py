"""Eval mode around explanations, sparse inference and evaluation: every module back as it was."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch

import bottleneck
from bottleneck.modes import evaluating
from bottleneck_pointcloud.data import NUM_CLASSES, make_shapes
from bottleneck_pointcloud.models import PointNet


def _modes(module: nn.Module) -> dict[str, bool]:
    return {name: sub.training for name, sub in module.named_modules()}


def test_evaluating_switches_only_training_modules_and_restores_each() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[1].eval()  # a frozen norm inside a model in training mode
    before = _modes(model)
    with evaluating(model):
        assert not any(_modes(model).values())
    assert _modes(model) == before


def test_evaluating_restores_modes_when_the_block_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).train()
    try:
        with evaluating(model):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(_modes(model).values())


def test_explain_sparse_and_evaluate_run_in_eval_and_keep_a_frozen_norm_frozen() -> None:
    torch.manual_seed(0)
    batch = Batch.from_data_list(make_shapes(4, seed=0, min_points=32, max_points=48))
    masked = bottleneck.attach(PointNet(NUM_CLASSES, hidden=8), "pointcloud", keep=0.5).train()
    frozen = masked.model.point_mlp.norms[0]
    frozen.eval()
    seen: list[bool] = []
    handle = masked.model.point_mlp.register_forward_hook(lambda m, a, o: seen.append(m.training))
    before = _modes(masked)
    masked.explain(batch)
    assert _modes(masked) == before
    masked.sparse(batch, keep=0.5)
    assert _modes(masked) == before
    bottleneck.evaluate(masked, [(batch, batch.y)], sparse=True, sparse_keep=0.5)
    assert _modes(masked) == before and not frozen.training
    handle.remove()
    assert seen and not any(seen)  # the model itself ran in eval mode every time
