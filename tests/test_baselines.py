"""Attribution baselines: per-unit relevance on all three modalities, known answers, IG checks."""

from __future__ import annotations

import sys

import pytest
import torch
from token_batches import VOCAB, token_batch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import global_mean_pool

import bottleneck
from bottleneck.baselines import (
    METHODS,
    GateFunction,
    attribution_mode,
    integrated_gradients,
    occlusion,
    random_relevance,
    saliency,
)
from bottleneck.errors import BottleneckError
from bottleneck_image.adapter import gaussian_blur
from bottleneck_image.models import SmallResNet
from bottleneck_pointcloud.data import NUM_CLASSES, make_shapes
from bottleneck_pointcloud.models import PointNet
from bottleneck_text.models import BiLSTMClassifier

captum = pytest.importorskip("captum.attr")

PATCH = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core machine: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pointcloud_case(baseline: str | None = None):
    torch.manual_seed(0)
    options = {} if baseline is None else {"baseline": baseline}
    clouds = Batch.from_data_list(make_shapes(3, min_points=20, max_points=40, seed=1))
    model = PointNet(NUM_CLASSES, hidden=16)
    for module in model.modules():  # BatchNorm statistics of the data: an untrained net then reacts to its input
        if isinstance(module, nn.BatchNorm1d):
            module.momentum = None
    with torch.no_grad():
        model.train()(clouds)
    masked = bottleneck.attach(model, "pointcloud", mode="explain", **options)
    return masked, clouds


def image_case(baseline: str | None = None):
    torch.manual_seed(0)
    options = {} if baseline is None else {"baseline": baseline}
    model = SmallResNet(3, in_channels=1, width=8)
    masked = bottleneck.attach(
        model, "image", mode="explain", patch_size=PATCH, encoder=False, blur_sigma=2.0, **options
    )
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return masked, images


def text_case(baseline: str | None = None):
    torch.manual_seed(0)
    options = {} if baseline is None else {"baseline": baseline}
    model = BiLSTMClassifier(VOCAB, 3, embed_dim=16, hidden=16)
    masked = bottleneck.attach(model, "text", mode="explain", special_ids=[2, 3], **options)
    return masked, token_batch()


class SmoothPointNet(nn.Module):
    """A smooth PyG classifier (tanh features, mean pooling): IG converges in few steps on it."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, classes)

    def forward(self, data) -> torch.Tensor:
        return self.head(global_mean_pool(self.features(4 * data.pos), data.batch, size=data.num_graphs))


def smooth_pointcloud_case(baseline: str | None = None):
    torch.manual_seed(0)
    options = {} if baseline is None else {"baseline": baseline}
    masked = bottleneck.attach(SmoothPointNet(), "pointcloud", mode="explain", **options)
    return masked, Batch.from_data_list(make_shapes(3, min_points=20, max_points=40, seed=1))


CASES = {"pointcloud": pointcloud_case, "image": image_case, "text": text_case}


def test_registry_names_the_four_methods() -> None:
    expected = {
        "random": random_relevance, "saliency": saliency,
        "integrated_gradients": integrated_gradients, "occlusion": occlusion,
    }
    assert list(METHODS) == list(expected)
    assert all(METHODS[name] is method for name, method in expected.items())


@pytest.mark.parametrize("case", list(CASES))
def test_every_method_gives_one_finite_value_per_unit(case: str) -> None:
    masked, inputs = CASES[case]()
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    if case != "image":
        assert len(set(units.counts().tolist())) > 1  # a ragged batch
    for name, method in METHODS.items():
        kwargs = {"steps": 8} if name == "integrated_gradients" else {}
        relevance = method(masked, inputs, **kwargs)
        assert relevance.shape == (units.num_units,), name
        assert relevance.is_floating_point() and torch.isfinite(relevance).all(), name
        assert relevance.abs().sum() > 0, name  # the default baseline passes gradients to the gates
    assert torch.backends.cudnn.enabled  # switched off only while a recurrent model is explained


@pytest.mark.parametrize("case", list(CASES))
def test_occlusion_and_saliency_line_up_with_the_units(case: str) -> None:
    masked, inputs = CASES[case]()
    occluded, salient = occlusion(masked, inputs), saliency(masked, inputs)
    with attribution_mode(masked):
        function = GateFunction(masked, inputs)
        ones = torch.ones(function.units.num_units)
        full = function.score(ones)
        ptr = function.units.ptr().tolist()
        for sample in range(function.num_samples):
            for unit in {ptr[sample], (ptr[sample] + ptr[sample + 1]) // 2, ptr[sample + 1] - 1}:
                gates = ones.clone()
                gates[unit] = 0.0
                with torch.no_grad():
                    drop = full[sample] - function.score(gates)[sample]
                assert occluded[unit].item() == pytest.approx(drop.item(), abs=1e-5)
        gates = ones.clone().requires_grad_()
        (grad,) = torch.autograd.grad(function.score(gates).sum(), gates)
    torch.testing.assert_close(salient, grad.abs())


@pytest.mark.parametrize(
    ("case", "baseline", "steps"),
    # a PointNet's integrand along the path (max pooling, points collapsing onto the centroid)
    # is too rough for 50 steps; a smooth point model checks the point-cloud path instead
    [("image", "zero", 50), ("smooth_pointcloud", "centroid", 50), ("smooth_pointcloud", "remove", 50),
     ("text", "zero", 50)],
)
def test_integrated_gradients_are_complete(case: str, baseline: str, steps: int) -> None:
    masked, inputs = {**CASES, "smooth_pointcloud": smooth_pointcloud_case}[case](baseline)
    attributions = integrated_gradients(masked, inputs, steps=steps)
    with attribution_mode(masked):
        function = GateFunction(masked, inputs)
        ones = function.ones()
        with torch.no_grad():
            change = function.score(function.flatten(ones)) - function.score(function.flatten(0 * ones))
        _, delta = captum.IntegratedGradients(function).attribute(
            ones, baselines=0 * ones, target=function.target, n_steps=steps,
            internal_batch_size=function.num_samples, return_convergence_delta=True,
        )
    total = torch.zeros(function.num_samples).index_add(0, function.units.batch, attributions)
    assert change.abs().min() > 1e-3  # a non-trivial check
    torch.testing.assert_close(total, change, rtol=0.02, atol=1e-3)
    assert (delta.abs() <= 0.02 * change.abs() + 1e-3).all()


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_ig_on_the_gates_is_pixel_ig_summed_per_patch(baseline: str) -> None:
    masked, images = image_case(baseline)
    ours = integrated_gradients(masked, images, steps=20)
    model = masked.model.eval()
    reference = {
        "zero": torch.zeros_like(images),
        "mean": images.mean((0, 2, 3), keepdim=True).expand_as(images),  # no training data seen yet
        "blur": gaussian_blur(images, 2.0),
    }[baseline]
    target = model(images).argmax(-1)
    pixels = captum.IntegratedGradients(model).attribute(
        images, baselines=reference.contiguous(), target=target, n_steps=20, internal_batch_size=2
    )
    per_patch = pixels.sum(1).unflatten(1, (4, PATCH)).unflatten(3, (4, PATCH)).sum((2, 4)).reshape(-1)
    torch.testing.assert_close(ours, per_patch, rtol=1e-3, atol=1e-5)


class WeightedPixels(nn.Module):
    """Logits ``[0, sum_j w_j x_j]`` on ``[B, 1, 1, P]`` images: unit ``j`` contributes ``w_j x_j``."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = (x.flatten(1) * self.weights).sum(1)
        return torch.stack([torch.zeros_like(total), total], -1)


class TokenScores(nn.Module):
    """Logits ``[0, sum of a score per attended token]``: token ``t`` contributes ``score[id_t]``."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(scores.view(-1, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        total = (self.embed(input_ids)[..., 0] * attention_mask).sum(1)
        return torch.stack([torch.zeros_like(total), total], -1)


def check_known_answer(masked: bottleneck.MaskedModel, inputs, contribution: torch.Tensor, batch) -> None:
    target = torch.ones(int(batch.max()) + 1, dtype=torch.long)
    torch.testing.assert_close(occlusion(masked, inputs, target), contribution)
    torch.testing.assert_close(integrated_gradients(masked, inputs, target, steps=5), contribution)
    torch.testing.assert_close(saliency(masked, inputs, target), contribution.abs())
    by_probability = occlusion(masked, inputs, target, output="probability")
    for sample in batch.unique():
        rows = batch == sample
        assert torch.equal(by_probability[rows].argsort(), contribution[rows].argsort())


def test_hand_made_pixel_model_recovers_the_weights_exactly() -> None:
    weights = torch.tensor([0.5, -2.0, 3.0, 1.0, -0.25, 2.0])
    images = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 0.5, 1.0, 3.0, 1.0, 0.1]]).view(2, 1, 1, 6)
    masked = bottleneck.attach(WeightedPixels(weights), "image", baseline="zero", patch_size=1, encoder=False)
    contribution = (images.view(2, 6) * weights).reshape(-1)
    check_known_answer(masked, images, contribution, torch.arange(2).repeat_interleave(6))


@pytest.mark.parametrize("baseline", ["zero", "remove"])
def test_hand_made_token_model_recovers_the_scores_exactly_on_ragged_rows(baseline: str) -> None:
    scores = torch.linspace(-2.0, 3.0, VOCAB)[torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))]
    masked = bottleneck.attach(TokenScores(scores), "text", baseline=baseline, special_ids=[2, 3])
    inputs = token_batch()
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    contribution = scores[inputs["input_ids"][units.meta["rows"], units.meta["cols"]]]
    check_known_answer(masked, inputs, contribution, units.batch)


def test_random_relevance_is_reproducible_with_a_generator_and_runs_no_model() -> None:
    masked, clouds = pointcloud_case()
    masked.model.forward = None  # calling the model would fail
    first = random_relevance(masked, clouds, generator=torch.Generator().manual_seed(3))
    again = random_relevance(masked, clouds, generator=torch.Generator().manual_seed(3))
    other = random_relevance(masked, clouds, generator=torch.Generator().manual_seed(4))
    assert first.shape == (clouds.num_nodes,) and ((first >= 0) & (first < 1)).all()
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_training_flags_are_restored_and_nothing_else_changes() -> None:
    torch.manual_seed(0)
    model = SmallResNet(3, in_channels=1, width=8)
    masked = bottleneck.attach(model, "image", mode="joint", patch_size=PATCH, encoder=False, baseline="mean")
    masked.train()
    images = torch.rand(2, 1, 16, 16)
    running = model.stem[1].running_mean.clone()
    with torch.no_grad():  # gradient methods still work inside no_grad
        first = integrated_gradients(masked, images, steps=4)
        sal = saliency(masked, images)
    assert masked.training and model.training and masked.baseline_state.training
    assert torch.equal(model.stem[1].running_mean, running)  # no batch statistics were updated
    assert masked.baseline_state.count.item() == 0  # the running mean saw no perturbed input
    assert all(p.grad is None for p in masked.parameters())
    masked.eval()
    torch.testing.assert_close(integrated_gradients(masked, images, steps=4), first)
    torch.testing.assert_close(saliency(masked, images), sal)


def test_bad_target_and_inputs_are_refused() -> None:
    masked, images = image_case()
    for method in (saliency, occlusion, integrated_gradients, random_relevance):
        with pytest.raises(BottleneckError, match=r"target must be a \[B\] = \[2\] integer tensor"):
            method(masked, images, torch.tensor([1]))
        with pytest.raises(BottleneckError, match=r"target must be a \[B\] = \[2\] integer tensor"):
            method(masked, images, torch.tensor([1.0, 0.0]))
    with pytest.raises(BottleneckError, match=r"must lie in \[0, 3\)"):
        saliency(masked, images, torch.tensor([0, 3]))
    broken = images.clone()
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(BottleneckError, match="NaN or Inf"):
        integrated_gradients(masked, broken)
    with pytest.raises(BottleneckError, match="steps must be a positive int"):
        integrated_gradients(masked, images, steps=0)
    with pytest.raises(BottleneckError, match="output must be one of"):
        occlusion(masked, images, output="prob")
    with torch.inference_mode(), pytest.raises(BottleneckError, match="inference_mode"):
        saliency(masked, images)


def test_missing_captum_and_missing_gradients_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    masked, images = image_case()
    adapter = masked.adapter(images)
    apply_gates = adapter.apply_gates
    monkeypatch.setattr(
        adapter, "apply_gates", lambda inputs, units, gates, baseline, **state:
        apply_gates(inputs, units, (gates > 0.5).to(gates.dtype), baseline, **state),
    )
    for method in (saliency, integrated_gradients):
        with pytest.raises(BottleneckError, match="passes no gradient to the unit gates"):
            method(masked, images)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    for method in (saliency, integrated_gradients, occlusion):
        with pytest.raises(BottleneckError, match=r'pip install "bottleneck-mask\[explain\]"'):
            method(masked, images)


def test_vit_remove_baseline_passes_gradients() -> None:
    from bottleneck_image.models import make_vit

    torch.manual_seed(0)
    vit = make_vit(3, image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    masked = bottleneck.attach(vit, "image", mode="explain")
    assert masked.baseline == "remove"
    images = torch.rand(2, 3, 16, 16)
    for name, method in METHODS.items():
        relevance = method(masked, images)
        assert relevance.shape == (32,) and torch.isfinite(relevance).all(), name
        assert relevance.abs().sum() > 0, name
