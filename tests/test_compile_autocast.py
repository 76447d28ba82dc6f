"""``MaskLayer`` under bf16 autocast and under ``torch.compile``, on ragged units."""

from __future__ import annotations

import pytest
import torch

from bottleneck.errors import BottleneckError
from bottleneck.layer import MaskLayer
from bottleneck.units import Units


def ragged_units(counts: list[int], features: int = 3, seed: int = 0, device: str = "cpu") -> Units:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), features, generator=generator).to(device)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)
    return Units(x=x, batch=batch, num_samples=len(counts))


def test_bf16_autocast_gives_finite_gates_and_gradients(device) -> None:
    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0).to(device)
    units = ragged_units([40, 7, 113], device=device.type)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        result = layer(units)
    assert torch.isfinite(result.loss) and torch.isfinite(result.gates.float()).all()
    assert ((result.gates >= 0) & (result.gates <= 1)).all()
    result.loss.backward()
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    layer.eval()  # deterministic gates: bf16 agrees with fp32 except where a logit sits at the threshold
    with torch.no_grad():
        full = layer(units).gates
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = layer(units).gates.float()
    assert ((full > 0) == (half > 0)).float().mean() > 0.95


def test_autocast_lets_lower_precision_units_through_but_never_float64(device) -> None:
    """Under autocast a hidden layer's bf16 features meet the float32 scorer (autocast casts the
    linear layers' operands); float64 it does not cast, and outside autocast dtypes must match:
    both are refused with the library's error, not torch's."""
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0).to(device)
    units = ragged_units([40, 7], device=device.type)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        assert torch.isfinite(layer(units.with_(x=units.x.bfloat16())).loss)
        with pytest.raises(BottleneckError, match="torch.float32 but the inputs give unit features of torch.float64"):
            layer(units.with_(x=units.x.double()))
    with pytest.raises(BottleneckError, match="torch.float32 but the inputs give unit features of torch.bfloat16"):
        layer(units.with_(x=units.x.bfloat16()))
    with pytest.raises(BottleneckError, match=r"takes 3 features per unit .* these inputs give 4"):
        layer(units.with_(x=torch.cat([units.x, units.x[:, :1]], 1)))


def test_torch_compile_matches_eager_and_trains_on_ragged_batches() -> None:
    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0)
    compiled = torch.compile(layer, dynamic=True)
    layer.eval()
    for counts in ([40, 7, 113], [5, 60]):  # a new batch size and unit count: no recompile per shape
        units = ragged_units(counts)
        with torch.no_grad():
            eager, fast = layer(units), compiled(units)
        assert torch.allclose(fast.gates, eager.gates, atol=1e-5)
        assert torch.allclose(fast.keep_rate, eager.keep_rate, atol=1e-5)
    layer.train()
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for step in range(3):
        result = compiled(ragged_units([30, 50], seed=step))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, layer.parameters(), strict=True))
