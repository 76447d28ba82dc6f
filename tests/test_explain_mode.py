"""Explain mode: the model is frozen; the mask keeps as few units as KL <= epsilon allows."""

from __future__ import annotations

import copy

import pytest
import torch
from test_image_mask import BlobNet, blobs

import bottleneck
from bottleneck.errors import BottleneckError, FaithfulnessWarning
from bottleneck.evidence import explain_fidelity
from bottleneck.metrics import mean_auroc
from bottleneck.objective import Constraint, FaithfulnessConstraint, KeepRateConstraint
from bottleneck.testbed import Testbed as BenchTestbed


# -- the constraint ------------------------------------------------------------------
def test_faithfulness_multiplier_grows_above_epsilon_and_decays_to_zero_below() -> None:
    constraint = FaithfulnessConstraint(epsilon=0.1, step=0.5, damping=0.0)
    constraint.train()
    for _ in range(4):
        constraint(torch.tensor(0.5))
    assert constraint.multiplier.item() == pytest.approx(4 * 0.5 * 0.4)
    for _ in range(100):
        term = constraint(torch.tensor(0.0))
    assert constraint.multiplier.item() == 0.0  # clipped: KL below budget costs nothing
    assert term.item() == 0.0


def test_constraint_term_pushes_the_value_down_only_while_it_is_violated() -> None:
    constraint = FaithfulnessConstraint(epsilon=0.1, step=0.0, damping=2.0)
    value = torch.tensor(0.3, requires_grad=True)
    constraint(value).backward()
    assert value.grad.item() == pytest.approx(2.0 * 0.2)
    slack = torch.tensor(0.05, requires_grad=True)
    constraint(slack).backward()
    assert slack.grad.item() == 0.0


@pytest.mark.parametrize("kind", ["equal", "at_most"])
def test_unit_damping_gives_the_damped_term_and_gradient_to_the_bit(kind: str) -> None:
    """The default damping of 1 skips its multiplication: the term and its gradient are those of
    ``(multiplier + 1.0 * violation) * value``, bit for bit."""
    constraint = KeepRateConstraint(0.3, step=0.05, kind=kind, damping=1.0)
    constraint.train()
    for number in (0.1234567, 0.7654321, 0.3, 0.2999999):
        value = torch.tensor(number, requires_grad=True)
        term = constraint(value)  # updates the multiplier first, then uses it
        (grad,) = torch.autograd.grad(term, value)
        reference_value = torch.tensor(number, requires_grad=True)
        effective = constraint.multiplier + 1.0 * (reference_value.detach().float() - 0.3)
        if kind == "at_most":
            effective = effective.clamp(min=0.0)
        reference = effective.to(reference_value.dtype) * reference_value
        (reference_grad,) = torch.autograd.grad(reference, reference_value)
        assert torch.equal(term.detach(), reference.detach()) and torch.equal(grad, reference_grad)


def test_constraints_validate_their_targets() -> None:
    with pytest.raises(BottleneckError, match=r"epsilon \(KL budget in nats\) target must be a number > 0"):
        FaithfulnessConstraint(epsilon=0.0)
    with pytest.raises(BottleneckError, match=r"keep must be a fraction in \(0, 1\]"):
        KeepRateConstraint(1.5)
    with pytest.raises(BottleneckError, match="constraint must be one of"):
        Constraint(0.5, kind="below")


# -- explain mode on a trained model -------------------------------------------------
@pytest.fixture(scope="module")
def trained_blobnet() -> BlobNet:
    torch.manual_seed(0)
    x, y, _ = blobs(512, seed=0)
    model = BlobNet()
    bottleneck.fit(model, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)], epochs=6, lr=3e-3,
                   progress=False)
    return model


def blob_testbed(model: BlobNet) -> BenchTestbed:
    x, y, gt = blobs(128, seed=1)
    return BenchTestbed(modality="image", model_name="BlobNet", make_model=BlobNet, train=[], test=[(x, y, gt)],
                   unit_truth=lambda truth, units, adapter: adapter.unit_truth(truth, units))


@pytest.mark.parametrize("where", ["input", "features"])
def test_explain_mode_finds_the_evidence_of_a_frozen_model_within_the_kl_budget(trained_blobnet, where) -> None:
    torch.manual_seed(0)
    model = copy.deepcopy(trained_blobnet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = bottleneck.attach(model, "image", mode="explain", where=where, epsilon=0.1)
    x, y, _ = blobs(512, seed=2)
    history = bottleneck.fit(masked, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)], epochs=10,
                             lr=1e-2, progress=False)
    assert "kl_multiplier" in history.last() and "task" not in history.last()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # frozen, BatchNorm too
    testbed = blob_testbed(model)
    fidelity = explain_fidelity(masked, testbed, torch.device("cpu"))
    assert fidelity["kl"] < 0.2, fidelity  # the budget (0.1), with deterministic gates at test time
    assert fidelity["keep_rate"] < 0.6, fidelity  # and it did close units to get there
    x_test, _, gt_test = testbed.test[0]
    explanation = masked.explain(x_test)
    assert explanation.relevance.shape == (explanation.units.num_units,)
    truth = explanation.modality.unit_truth(gt_test, explanation.units)
    # the blob is evidence the model *needs* only where a blank image gets another class:
    # BlobNet reads a blank image as class 1, so for most class-1 images nothing is needed
    with torch.no_grad():
        needed = model(x_test).argmax(-1) != model(torch.zeros_like(x_test)).argmax(-1)
    assert needed.sum() > 30
    rows = needed[explanation.batch]
    batch = torch.cumsum(needed.long(), 0)[explanation.batch][rows] - 1
    auroc = mean_auroc(explanation.relevance[rows], truth[rows], batch, int(needed.sum()))
    assert auroc > 0.9, auroc


def test_explain_mode_keep_is_an_upper_bound() -> None:
    masked = bottleneck.attach(BlobNet(), "image", mode="explain", keep=0.2)
    assert masked.mask.constraint.kind == "at_most" and masked.mask.constraint.target == 0.2
    unbounded = bottleneck.attach(BlobNet(), "image", mode="explain")
    assert unbounded.mask.keep == 1.0 and unbounded.faithfulness.target == 0.1
    joint = bottleneck.attach(BlobNet(), "image")
    assert joint.mask.keep == 0.3 and joint.faithfulness is None


def test_explain_mode_options_round_trip_through_a_saved_mask(tmp_path) -> None:
    masked = bottleneck.attach(BlobNet(), "image", mode="explain", epsilon=0.05, sparsity_weight=2.0)
    masked.train()
    masked(torch.randn(4, 1, 16, 16)).ib_loss.backward()  # moves the KL multiplier
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors")
    loaded = bottleneck.load(path, BlobNet())
    assert loaded.mode == "explain" and loaded.epsilon == 0.05 and loaded.sparsity_weight == 2.0
    assert torch.equal(loaded.faithfulness.multiplier, masked.faithfulness.multiplier)


def test_bad_explain_options_raise_the_library_error() -> None:
    with pytest.raises(BottleneckError, match="sparsity_weight must be >= 0"):
        bottleneck.attach(BlobNet(), "image", mode="explain", sparsity_weight=-1.0)
    with pytest.raises(BottleneckError, match="epsilon"):
        bottleneck.attach(BlobNet(), "image", mode="explain", epsilon=-0.1)


def test_a_mask_that_ends_outside_its_kl_budget_is_reported(trained_blobnet) -> None:
    masked = bottleneck.attach(copy.deepcopy(trained_blobnet), "image", mode="explain", epsilon=0.001,
                               sparsity_weight=50.0, init_open=0.05)
    x, y, _ = blobs(64, seed=3)
    with pytest.warns(FaithfulnessWarning, match=r"ended training with KL .* above 2 x epsilon \(0.001\)"):
        bottleneck.fit(masked, [(x, y)], epochs=1, lr=1e-3, progress=False)


@pytest.mark.parametrize("modality", ["pointcloud", "text"])
def test_explain_mode_at_a_hidden_layer_of_points_and_text(modality: str) -> None:
    from bottleneck.plugins import demos

    testbed = demos()[modality].testbed(quick=True, train_size=16, test_size=8)
    torch.manual_seed(0)
    model = testbed.make_model()
    masked = bottleneck.attach(model, modality, mode="explain", where=testbed.feature_layer,
                               **testbed.attach_options)
    inputs = testbed.test[0][0]
    masked.train()
    out = masked(inputs)
    assert "faithfulness" in out.terms and "kl_multiplier" in out.terms
    out.ib_loss.backward()
    assert all(p.grad is None for p in model.parameters())  # frozen
    assert any(p.grad is not None for p in masked.mask.parameters())
    explanation = masked.explain(inputs)
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    assert explanation.relevance.shape == (units.num_units,)
    assert torch.isfinite(explanation.relevance).all()


def test_an_explain_mode_mask_trains_on_a_frozen_dgcnn() -> None:
    """The frozen DGCNN runs its eval path (norm folded into the EdgeConvs, the neighbour max
    gathered in cache-sized chunks); the mask's gradient must come back through it. On 32
    clouds of 128-256 points the chunks are several, and the chunked max once wrote into one
    preallocated output, which has no backward: this step raised torch's own ``out=`` error."""
    from torch_geometric.data import Batch

    from bottleneck_pointcloud.data import NUM_CLASSES, make_shapes
    from bottleneck_pointcloud.models import DGCNN

    clouds = make_shapes(32, seed=0, min_points=128, max_points=256)
    batch = Batch.from_data_list(clouds)
    torch.manual_seed(0)
    model = DGCNN(NUM_CLASSES)
    masked = bottleneck.attach(model, "pointcloud", mode="explain")
    masked.train()
    out = masked(batch)
    out.ib_loss.backward()
    assert all(p.grad is None for p in model.parameters())  # frozen
    grads = [p.grad for p in masked.mask.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
