"""The bench's four sparse models on every device: same kept units and logits as on the CPU, and training works.

Each test runs on the CPU and, where CUDA is available, again on the GPU (the
``device`` fixture). On the CPU the reference is a second copy of the same
model, so the test checks determinism and the behaviour assertions; on CUDA
it checks that the GPU path (segment ops, blocked kNN, re-packing, attention
gates) picks the same units as the CPU and computes the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from token_batches import VOCAB, token_batch
from torch import nn
from torch_geometric.data import Batch, Data

import bottleneck
from bottleneck.layer import MaskLayer
from bottleneck.neighbors import knn_graph, knn_neighbours
from bottleneck.segment import segment_max, segment_sum, segment_topk_mask
from bottleneck.train import _to, call_model
from bottleneck.wrap import _logits_of
from bottleneck_image.models import make_vit
from bottleneck_pointcloud.models import DGCNN, PointNet
from bottleneck_text.models import make_bert

KEEP = 0.25


def clouds(sizes: tuple[int, ...] = (70, 33, 120, 52), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g), y=torch.tensor([i % 4]))
                                 for i, n in enumerate(sizes)])


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _pointnet() -> tuple[nn.Module, dict[str, Any], Any, torch.Tensor]:
    data = clouds()
    return PointNet(4, hidden=16), {"hidden": 32}, data, data.y


def _dgcnn() -> tuple[nn.Module, dict[str, Any], Any, torch.Tensor]:
    data = clouds()  # every cloud keeps more than k=4 points at keep 0.25: the neighbour tables run
    return DGCNN(4, k=4, hidden=16), {"hidden": 32}, data, data.y


def _vit() -> tuple[nn.Module, dict[str, Any], Any, torch.Tensor]:
    model = make_vit(4, image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_layers=2,
                     num_heads=2, intermediate_size=64)
    return model, {"encoder": False, "hidden": 32}, images(), torch.tensor([0, 1, 2, 3])


def _bert() -> tuple[nn.Module, dict[str, Any], Any, torch.Tensor]:
    model = make_bert(VOCAB, 2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16)
    options = {"special_ids": [2, 3], "attention_gates": True, "gate": "topk"}
    return model, options, token_batch((8, 5, 3, 7)), torch.tensor([0, 1, 0, 1])


MODELS: dict[str, Callable[[], tuple[nn.Module, dict[str, Any], Any, torch.Tensor]]] = {
    "PointNet": _pointnet, "DGCNN": _dgcnn, "ViT": _vit, "BERT": _bert}


def _masked(name: str) -> tuple[bottleneck.MaskedModel, Any, torch.Tensor]:
    torch.manual_seed(0)
    model, options, inputs, labels = MODELS[name]()
    masked = bottleneck.attach(model, keep=KEEP, **options)
    with torch.no_grad():
        masked.explain(inputs)  # the mask builds its layers at its first call: copies share them after
    return masked, inputs, labels


@pytest.mark.parametrize("name", list(MODELS))
def test_sparse_path_on_the_device_keeps_the_cpu_units_and_logits(name: str, device: torch.device) -> None:
    masked, inputs, _ = _masked(name)
    reference = copy.deepcopy(masked).eval()
    masked = masked.to(device).eval()
    with torch.no_grad():
        expected = reference.sparse(inputs, keep=KEEP)
        got = masked.sparse(_to(inputs, device), keep=KEEP)
    assert got.removed and _logits_of(got.output).device.type == device.type
    assert torch.equal(got.kept.cpu(), expected.kept)
    counts = torch.bincount(expected.units.batch[expected.kept], minlength=expected.units.num_samples)
    assert torch.equal(counts, torch.ceil(KEEP * expected.units.counts().float()).long())
    assert torch.isfinite(_logits_of(got.output)).all()
    assert torch.allclose(_logits_of(got.output).cpu(), _logits_of(expected.output), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_explanation_on_the_device_matches_the_cpu(name: str, device: torch.device) -> None:
    masked, inputs, _ = _masked(name)
    reference = copy.deepcopy(masked)
    expected = reference.explain(inputs)
    got = masked.to(device).explain(_to(inputs, device))
    assert got.relevance.device.type == device.type
    assert torch.allclose(got.relevance.cpu(), expected.relevance, atol=1e-5)
    assert ((got.relevance >= 0) & (got.relevance <= 1)).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_a_joint_training_step_on_the_device_reaches_mask_and_model(name: str, device: torch.device) -> None:
    masked, inputs, labels = _masked(name)
    masked = masked.to(device).train()
    out = masked(_to(inputs, device))
    loss = nn.functional.cross_entropy(_logits_of(out.output), labels.to(device)) + out.ib_loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in masked.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(n.startswith("mask.") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("model.") and g.abs().sum() > 0 for n, g in grads.items())


def test_segment_ops_on_the_device_match_the_cpu(device: torch.device) -> None:
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([1, 17, 300, 2, 64])
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    values = torch.randn(int(counts.sum()), 5, generator=g)
    scores = torch.randn(int(counts.sum()), generator=g)
    k = torch.tensor([1, 4, 75, 2, 16])
    on = lambda t: t.to(device)  # noqa: E731
    assert torch.allclose(segment_sum(on(values), on(batch), 5).cpu(), segment_sum(values, batch, 5), atol=1e-5)
    assert torch.equal(segment_max(on(values), on(batch), 5).cpu(), segment_max(values, batch, 5))
    top = segment_topk_mask(on(scores), on(batch), 5, on(k))
    assert torch.equal(top.cpu(), segment_topk_mask(scores, batch, 5, k))
    assert torch.equal(torch.bincount(batch[top.cpu()], minlength=5), k)


def test_knn_on_the_device_matches_the_cpu(device: torch.device) -> None:
    g = torch.Generator().manual_seed(2)
    counts = torch.tensor([40, 300, 17, 129])
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    pos = torch.randn(int(counts.sum()), 3, generator=g)
    table = knn_neighbours(pos.to(device), 8, batch.to(device))
    assert table.device.type == device.type
    assert torch.equal(table.cpu(), knn_neighbours(pos, 8, batch))
    edges = knn_graph(pos.to(device), 8, batch.to(device), use_cluster=False)
    assert torch.equal(edges.cpu(), knn_graph(pos, 8, batch, use_cluster=False))


def test_mask_layer_under_torch_compile_on_the_device(device: torch.device) -> None:
    """The compiled layer gives the eager gates on the device and trains there."""
    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0).to(device).eval()
    compiled = torch.compile(layer, dynamic=True)
    counts = torch.tensor([40, 7, 113])
    units = bottleneck.Units(x=torch.randn(int(counts.sum()), 3).to(device),
                             batch=torch.repeat_interleave(torch.arange(3), counts).to(device), num_samples=3)
    with torch.no_grad():
        assert torch.allclose(compiled(units).gates, layer(units).gates, atol=1e-5)
    layer.train()
    compiled(units).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_call_model_runs_the_dense_models_on_the_device(device: torch.device) -> None:
    for name in MODELS:
        masked, inputs, labels = _masked(name)
        model = masked.model.to(device).eval()
        with torch.no_grad():
            out = _logits_of(call_model(model, _to(inputs, device)))
        assert out.shape == (labels.numel(), out.shape[1]) and torch.isfinite(out).all(), name
