"""Every gate: values in range, expected-open matches Monte Carlo, finite gradients at
extreme logits, deterministic mode is deterministic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bottleneck.errors import BottleneckError
from bottleneck.gates import BUILTIN_GATES, Gate
from bottleneck.layer import MaskLayer
from bottleneck.plugins import make_gate

GATE_NAMES = [g.name for g in BUILTIN_GATES]
SETTINGS = settings(max_examples=25, deadline=None)


def logits_for(gate: Gate, values: list[float]) -> torch.Tensor:
    base = torch.tensor(values, dtype=torch.float32)
    if gate.params_per_unit == 2:  # gaussian: (mu, log sigma)
        return torch.stack([base, base.flip(0).clamp(-3, 2)], dim=-1)
    return base


finite_logits = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=1, max_size=40)


@pytest.mark.parametrize("name", GATE_NAMES)
@SETTINGS
@given(values=finite_logits, keep=st.floats(0.05, 1.0))
def test_values_stay_in_range(name: str, values: list[float], keep: float) -> None:
    gate = make_gate(name, keep=keep)
    logits = logits_for(gate, values)
    for sample in (gate.rsample(logits), gate.deterministic(logits), gate.expected_open(logits)):
        assert sample.shape == (len(values),)
        assert torch.isfinite(sample).all()
        assert (sample >= 0).all() and (sample <= 1).all()


@pytest.mark.parametrize("name", GATE_NAMES)
@SETTINGS
@given(values=st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=8))
def test_expected_open_matches_monte_carlo(name: str, values: list[float]) -> None:
    torch.manual_seed(0)
    gate = make_gate(name, keep=0.5)
    logits = logits_for(gate, values)
    draws = 4000
    repeated = logits.repeat(draws, *([1] * (logits.dim() - 1)))
    batch = torch.arange(draws).repeat_interleave(len(values))
    samples = gate.rsample(repeated, batch, draws).view(draws, len(values))
    empirical = (samples > 0.5 if name == "concrete" else samples > 0).float().mean(0)
    expected = gate.expected_open(logits, torch.zeros(len(values), dtype=torch.long), 1)
    # 4000 Bernoulli draws: 4 standard errors is at most 0.032
    assert torch.allclose(empirical, expected.detach(), atol=0.035), (empirical, expected)


@pytest.mark.parametrize("name", GATE_NAMES)
@pytest.mark.parametrize("extreme", [1e4, -1e4])
def test_gradients_finite_at_extreme_logits(name: str, extreme: float) -> None:
    gate = make_gate(name, keep=0.3)
    logits = logits_for(gate, [extreme, -extreme, 0.0, extreme]).requires_grad_(True)
    total = gate.rsample(logits).sum() + gate.expected_open(logits).sum() + gate.rate(logits).sum()
    total = total + gate.deterministic(logits).sum()
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", GATE_NAMES)
@SETTINGS
@given(values=finite_logits)
def test_deterministic_mode_is_deterministic(name: str, values: list[float]) -> None:
    gate = make_gate(name, keep=0.3)
    logits = logits_for(gate, values)
    torch.manual_seed(1)
    first = gate.deterministic(logits)
    torch.manual_seed(2)
    second = gate.deterministic(logits)
    assert torch.equal(first, second)
    # and it agrees with the most likely outcome: open where P(open) is clearly > 1/2
    p = gate.expected_open(logits)
    clearly_open = p > 0.9
    if name != "concrete":
        assert (first[clearly_open] > 0).all()


def test_hard_concrete_has_exact_zeros_and_ones() -> None:
    gate = make_gate("hard_concrete")
    samples = gate.rsample(torch.zeros(10000))
    assert (samples == 0).any() and (samples == 1).any()


def test_topk_keeps_the_budget_per_sample() -> None:
    gate = make_gate("topk", keep=0.25)
    batch = torch.tensor([0] * 8 + [1] * 4 + [2] * 3)
    gates = gate.rsample(torch.randn(15), batch, 3)
    counts = torch.zeros(3).index_add(0, batch, gates)
    assert counts.tolist() == [2.0, 1.0, 1.0]


def test_topk_gradient_moves_ranks_only() -> None:
    """A fixed budget: the gate gradient is centred per sample, so a push on every unit alike is no push."""
    gate = make_gate("topk", keep=0.25)
    batch = torch.tensor([0] * 8 + [1] * 4 + [2] * 3)
    logits = torch.randn(15, generator=torch.Generator().manual_seed(0)).requires_grad_()
    uniform = torch.tensor([2.0, -1.0, 0.5])[batch]  # "open more" (or less) for every unit of a sample
    (gate.rsample(logits, batch, 3) * uniform).sum().backward()
    assert torch.equal(logits.grad, torch.zeros(15))
    logits.grad = None
    upstream = torch.rand(15, generator=torch.Generator().manual_seed(1))
    (gate.rsample(logits, batch, 3) * upstream).sum().backward()
    centred = upstream - torch.zeros(3).index_add(0, batch, upstream)[batch] / torch.bincount(batch)[batch]
    slope = torch.sigmoid(logits.detach()) * (1 - torch.sigmoid(logits.detach()))
    assert torch.allclose(logits.grad, slope * centred, atol=1e-6)
    single = torch.randn(6).requires_grad_()  # no batch vector: one sample
    gate.rsample(single).sum().backward()
    assert torch.equal(single.grad, torch.zeros(6))


def test_concrete_temperature_anneals() -> None:
    gate = make_gate("concrete")
    gate.anneal(0.0)
    start = gate.temperature
    gate.anneal(1.0)
    assert gate.temperature < start


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_bad_keep_is_rejected(keep: float) -> None:
    with pytest.raises(BottleneckError, match=r"keep must be a fraction in \(0, 1\]"):
        make_gate("hard_concrete", keep=keep)


def test_unknown_gate_names_the_choices() -> None:
    with pytest.raises(BottleneckError, match="gate must be one of .*hard_concrete.*got 'hardconcrete'"):
        make_gate("hardconcrete")


def test_gate_options_reach_the_named_gate() -> None:
    layer = MaskLayer("hard_concrete", keep=0.3, gate_options={"temperature": 0.5})
    assert layer.gate.temperature == 0.5
    with pytest.raises(BottleneckError, match=r"gate 'topk' does not take the options \['temperature'\]"):
        MaskLayer("topk", keep=0.3, gate_options={"temperature": 0.5})
    with pytest.raises(BottleneckError, match="gate_options apply to a gate given by name"):
        MaskLayer(make_gate("topk", keep=0.3), keep=0.3, gate_options={"temperature": 0.5})


@pytest.mark.parametrize("gate_name", [g.name for g in BUILTIN_GATES])
@pytest.mark.parametrize("sample", [True, False])
def test_gates_and_open_gives_the_separate_calls_values_and_gradients(gate_name: str, sample: bool) -> None:
    counts = torch.tensor([7, 12, 3])
    batch = torch.repeat_interleave(torch.arange(3), counts)
    gate = make_gate(gate_name, keep=0.4)
    shape = (22,) if gate.params_per_unit == 1 else (22, gate.params_per_unit)
    base = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    weights = torch.randn(22, generator=torch.Generator().manual_seed(4))
    results = []
    for together in (False, True):
        logits = base.clone().requires_grad_()
        torch.manual_seed(0)  # the stochastic gates draw the same noise both ways
        if together:
            gates, p_open = gate.gates_and_open(logits, batch, 3, sample=sample)
        else:
            gates = (gate.rsample if sample else gate.deterministic)(logits, batch, 3)
            p_open = gate.expected_open(logits, batch, 3)
        ((gates * weights).sum() + (p_open * weights.flip(0)).sum()).backward()
        results.append((gates.detach(), p_open.detach(), logits.grad))
    for separate, together in zip(*results, strict=True):
        assert torch.equal(separate, together)


def test_the_top_k_gate_selects_once_per_mask_pass(monkeypatch) -> None:
    """Its gates and its open probability are the same selection: a training step and an
    inference pass each make it once (it was made twice, about 40 tensor operations each)."""
    from bottleneck import gates as gates_module
    from bottleneck.units import Units

    calls: list[int] = []
    real = gates_module.segment_topk_mask
    monkeypatch.setattr(gates_module, "segment_topk_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    counts = torch.tensor([7, 12, 3])
    units = Units(x=torch.randn(22, 3), batch=torch.repeat_interleave(torch.arange(3), counts), num_samples=3)
    layer = MaskLayer("topk", keep=0.4, in_features=3)
    result = layer(units)
    assert len(calls) == 1 and torch.equal(result.gates.detach(), result.p_open.detach())
    assert torch.equal(torch.bincount(units.batch[result.gates.bool()], minlength=3), torch.tensor([3, 5, 2]))
    layer.infer(units)
    assert len(calls) == 2
