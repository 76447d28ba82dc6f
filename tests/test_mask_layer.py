"""MaskLayer schedules: the keep-target warm-up used for joint training."""

from __future__ import annotations

import pytest
import torch

from bottleneck.errors import BottleneckError
from bottleneck.layer import MaskLayer
from bottleneck.units import Units


def test_keep_target_warms_up_from_init_open_to_keep() -> None:
    layer = MaskLayer("hard_concrete", keep=0.3, keep_warmup=0.5, init_open=0.9)
    targets = []
    for progress in (0.0, 0.25, 0.5, 0.75, 1.0):
        layer.anneal(progress)
        targets.append(round(layer.constraint.target, 6))
    assert targets == [0.9, 0.6, 0.3, 0.3, 0.3]


def test_without_warm_up_the_target_is_keep_from_the_start() -> None:
    layer = MaskLayer("hard_concrete", keep=0.3)
    layer.anneal(0.0)
    assert layer.constraint.target == 0.3


def test_warm_up_must_be_a_fraction() -> None:
    with pytest.raises(BottleneckError, match=r"keep_warmup must be a fraction in \[0, 1\)"):
        MaskLayer("hard_concrete", keep=0.3, keep_warmup=1.5)


@pytest.mark.parametrize("context", [True, False])
def test_without_context_a_unit_cannot_change_another_units_logit(context: bool) -> None:
    import torch

    from bottleneck.scorer import EquivariantScorer

    torch.manual_seed(0)
    scorer = EquivariantScorer(16, in_features=4, context=context)
    x = torch.randn(6, 4)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    changed = x.clone()
    changed[0] += 5.0  # a cue unit with different content
    before, after = scorer(x, batch, 2), scorer(changed, batch, 2)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[3:], after[3:])  # another sample: never affected
    assert torch.allclose(before[1:3], after[1:3]) is (not context)
    assert ("context=False" in repr(scorer)) is (not context)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("grad", [True, False])
def test_scorer_context_is_the_first_head_layer_on_the_concatenation(grad: bool, activation: str) -> None:
    """With autograd the head runs on [unit, context]; without, the context is projected per
    sample (``_head_with_projected_context``) and the activations run in place: the same
    logits either way, and the scorer's weights are untouched."""
    import torch

    from bottleneck.scorer import EquivariantScorer
    from bottleneck.segment import segment_max, segment_mean

    torch.manual_seed(0)
    scorer = EquivariantScorer(8, in_features=3, activation=activation)
    with torch.no_grad():  # some pre-activations below zero, where relu and leaky_relu differ
        scorer.encode[0].bias.sub_(0.5)
    weights = [p.detach().clone() for p in scorer.parameters()]
    x, batch = torch.randn(7, 3), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    h = scorer.encode(x)
    context = torch.cat([segment_max(h, batch, 3), segment_mean(h, batch, 3)], -1)
    expected = scorer.head(torch.cat([h, context[batch]], dim=-1))
    with torch.set_grad_enabled(grad):
        logits = scorer(x, batch, 3)
    assert logits.requires_grad is grad
    assert torch.allclose(logits, expected, atol=1e-6)
    assert all(torch.equal(before, after) for before, after in zip(weights, scorer.parameters(), strict=True))


@pytest.mark.parametrize("gate", ["hard_concrete", "concrete", "gaussian", "topk"])
def test_inference_pass_matches_the_eval_forward(gate: str) -> None:
    import torch

    from bottleneck.units import Units

    torch.manual_seed(0)
    layer = MaskLayer(gate, keep=0.4, in_features=3).eval()
    units = Units(x=torch.randn(9, 3), batch=torch.tensor([0] * 4 + [1] * 5), num_samples=2)
    full, fast = layer(units), layer.infer(units)
    for name in ("logits", "gates", "p_open", "keep_rate", "relevance"):
        assert torch.allclose(getattr(full, name), getattr(fast, name)), name
    assert float(fast.loss) == 0.0 and fast.terms == {}


@pytest.mark.parametrize("activation, revives", [("relu", False), ("leaky_relu", True)])
def test_scorer_activation_decides_whether_a_dead_scorer_still_learns(activation: str, revives: bool) -> None:
    """With every head unit pushed below zero, only a leaky scorer still passes gradients to its first layer."""
    torch.manual_seed(0)
    layer = MaskLayer("topk", keep=0.3, in_features=4, activation=activation)
    assert layer.scorer.activation == activation
    with torch.no_grad():
        layer.scorer.head[0].bias.fill_(-1e3)
    units = Units(x=torch.randn(50, 4), batch=torch.arange(2).repeat_interleave(25), num_samples=2)
    result = layer(units)
    (result.gates * torch.randn(50)).sum().backward()
    grad = layer.scorer.encode[0].weight.grad
    assert (grad is not None and float(grad.abs().sum()) > 0) == revives


def test_scorer_activation_must_be_known() -> None:
    with pytest.raises(BottleneckError, match=r"activation must be one of \['leaky_relu', 'relu'\] \(got 'tanh'\)"):
        MaskLayer(activation="tanh")


@pytest.mark.parametrize("gate", ["hard_concrete", "concrete", "gaussian", "topk"])
@pytest.mark.parametrize("rate_weight", [0.0, 0.5])
def test_logged_rate_is_the_gates_rate_term_and_the_bound_penalty_its_excess(gate: str, rate_weight: float) -> None:
    """The logged rate is the gate's per-sample mean rate, whether it is a loss term or only logged
    (where the hard-concrete gate's rate, its expected L0, is read off the keep rate); the
    logit-bound penalty is the mean squared excess of the raw scores beyond the bound."""
    from bottleneck.objective import rate_loss

    torch.manual_seed(0)
    layer = MaskLayer(gate, keep=0.4, in_features=3, rate_weight=rate_weight, logit_bound=1e-4)
    counts = torch.tensor([5, 9, 2])
    units = Units(x=torch.randn(int(counts.sum()), 3), batch=torch.repeat_interleave(torch.arange(3), counts),
                  num_samples=3)
    result = layer(units)
    raw = layer.scorer(units.x, units.batch, units.num_samples).detach()
    bounded = raw.clamp(-1e-4, 1e-4).squeeze(-1) if raw.shape[-1] == 1 else raw.clamp(-1e-4, 1e-4)
    expected = rate_loss(layer.gate, bounded, units.batch, units.num_samples)
    assert torch.equal(result.terms["rate"], expected)  # to the bit: the same operations on the same values
    excess = (raw.abs() - 1e-4).clamp(min=0.0).pow(2).mean()
    assert excess > 0 and torch.equal(result.terms["logit_bound"], excess)
    # the penalty's gradient, to the bit, as the abs/clamp/square form gives it
    leaf = raw.clone().requires_grad_()
    got = torch.autograd.grad(layer._bounded(leaf)[1], leaf)[0]
    want = torch.autograd.grad((leaf.abs() - 1e-4).clamp(min=0.0).pow(2).mean(), leaf)[0]
    assert torch.equal(got, want)
    result.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.scorer.parameters())


@pytest.mark.parametrize("counts", [[257], [100, 100, 100], [5, 9, 2]])
@pytest.mark.parametrize("context", [True, False])
def test_keep_rate_and_scores_are_the_scatter_forms_to_the_bit(counts: list[int], context: bool) -> None:
    """The layer checks once for samples of one size and hands the answer to the scorer's pooling and
    to the keep rate: logits, keep rate and their gradients are those of the scorer checking for
    itself and of the scatter mean, bit for bit (one sample, equal samples, ragged ones)."""
    from torch_geometric.utils import scatter

    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.4, in_features=3, context=context)
    sizes = torch.tensor(counts)
    batch = torch.repeat_interleave(torch.arange(len(counts)), sizes)
    units = Units(x=torch.randn(int(sizes.sum()), 3), batch=batch, num_samples=len(counts))
    params = list(layer.scorer.parameters())
    result = layer(units)
    got = torch.autograd.grad((result.keep_rate * torch.arange(1.0, len(counts) + 1)).sum(), params)
    logits = layer._bounded(layer.scorer(units.x, batch, len(counts)))[0]
    keep_rate = scatter(layer.gate.expected_open(logits), batch, dim=0, dim_size=len(counts), reduce="mean")
    want = torch.autograd.grad((keep_rate * torch.arange(1.0, len(counts) + 1)).sum(), params)
    assert torch.equal(result.logits.detach(), logits.detach())
    assert torch.equal(result.keep_rate.detach(), keep_rate.detach())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _units_with(x: torch.Tensor) -> Units:
    return Units(x=x, batch=torch.tensor([0] * 6 + [1] * 4), num_samples=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_never_make_a_silent_mask(bad: float) -> None:
    """A NaN score is a silently closed gate (NaN > 0 is false) and a NaN relevance: every pass
    of the layer refuses it, and says the features are the cause."""
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3)
    x = torch.randn(10, 3)
    x[7, 1] = bad
    message = r"scores are NaN or Inf for \d+ of 10 units: 1 of the units' features are NaN or Inf"
    for call in (layer, layer.infer, layer.relevance, layer.scores):
        layer.train(call is layer)
        with pytest.raises(BottleneckError, match=message):
            call(_units_with(x))


def test_a_diverged_scorer_is_named_as_the_cause() -> None:
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3)
    with torch.no_grad():
        layer.scorer.head[-1].weight.fill_(float("nan"))
    with pytest.raises(BottleneckError, match="features are finite, so the scorer's own weights are not"):
        layer(_units_with(torch.randn(10, 3)))


def test_finite_scores_whose_sum_overflows_are_not_refused() -> None:
    """The check sums the scores first (one read); a sum past float32's range is checked exactly."""
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, logit_bound=1e39)
    with torch.no_grad():
        layer.scorer.head[-1].weight.zero_()
        layer.scorer.head[-1].bias.fill_(3e38)
    assert layer.relevance(_units_with(torch.randn(10, 3))).isfinite().all()


def test_a_training_step_warns_nothing() -> None:
    """The finite-score check reads the scores detached: reading a tensor that requires grad
    warned on every step (and added a node to the graph), a cost a step of 1k units showed."""
    import warnings

    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3)
    units = _units_with(torch.randn(10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(units).loss.backward()
        layer.eval()
        layer.infer(units)
