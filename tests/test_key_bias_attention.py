"""The per-key attention bias folded into q/k: same attention, same gradients, fused kernels."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import profile
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import bottleneck.key_bias_attention as key_bias
from bottleneck.key_bias_attention import KEY_BIAS_SDPA, head_padding, key_bias_attention_on
from bottleneck_image.models import make_vit
from bottleneck_image.vit import GATE_FLOOR, forward_with_open_patches


def small_vit(attn: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    model = make_vit(5, image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4,
                     intermediate_size=64)
    model.config._attn_implementation = attn
    return model.train()


def gate_bias(seed: int = 0, batch: int = 3) -> Tensor:
    """A float ``[B, 1, 1, 1 + 16]`` bias ``log(floor + gates)`` of random 0/1 and soft gates."""
    gen = torch.Generator().manual_seed(seed)
    gates = (torch.rand(batch, 17, generator=gen) < 0.5).float()
    gates[:, 0] = 1.0  # CLS
    gates[:, 1] = torch.rand(batch, generator=gen)  # a soft gate
    return torch.log(GATE_FLOOR + gates)[:, None, None, :]


def run(model: nn.Module, bias: Tensor, fast: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Logits, the bias's gradient and the parameters' gradients of one weighted-logit loss."""
    model.zero_grad(set_to_none=True)
    bias = bias.clone().requires_grad_()
    x = torch.randn(bias.shape[0], 3, 16, 16, generator=torch.Generator().manual_seed(1))
    if fast:
        with key_bias_attention_on(model) as switched:
            assert switched
            logits = model(x, attention_mask=bias).logits
    else:
        logits = model(x, attention_mask=bias).logits
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), bias.grad, grads


def test_same_attention_and_gradients_as_the_float_mask() -> None:
    model = small_vit()
    bias = gate_bias()
    fast_logits, fast_bias, fast_params = run(model, bias, fast=True)
    ref_logits, ref_bias, ref_params = run(model, bias, fast=False)
    torch.testing.assert_close(fast_logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_bias, ref_bias, atol=1e-6, rtol=1e-4)
    assert fast_bias.abs().sum() > 0
    assert fast_params.keys() == ref_params.keys()
    for name, grad in ref_params.items():
        torch.testing.assert_close(fast_params[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def _ops(model: nn.Module, bias: Tensor, fast: bool) -> set[str]:
    with profile() as prof:
        run(model, bias, fast)
    return {event.key for event in prof.key_averages()}


def test_runs_the_fused_kernel_not_the_math_path() -> None:
    model, bias = small_vit(), gate_bias()
    fast, ref = _ops(model, bias, fast=True), _ops(model, bias, fast=False)
    assert any("softmax" in op for op in ref)  # the float mask with a gradient: unfused math
    assert not any("softmax" in op for op in fast)
    assert any(op.startswith("aten::_scaled_dot_product_flash_attention") for op in fast)


def test_restores_the_config_also_on_errors_and_leaves_eager_alone() -> None:
    model = small_vit()
    with pytest.raises(RuntimeError, match="boom"), key_bias_attention_on(model):
        assert model.config._attn_implementation == KEY_BIAS_SDPA
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    eager = small_vit("eager")
    with key_bias_attention_on(eager) as switched:
        assert not switched and eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("kind", ["bool", "no_grad", "non_finite"])
def test_other_masks_take_the_plain_sdpa_path(kind: str) -> None:
    model = small_vit()
    bias = gate_bias()
    if kind == "bool":
        mask = bias > -1.0
    elif kind == "non_finite":
        mask = bias.masked_fill(bias < -1.0, float("-inf")).requires_grad_()
    else:
        mask = bias
    x = torch.randn(3, 3, 16, 16)
    expected = model(x, attention_mask=mask).logits
    with key_bias_attention_on(model):
        got = model(x, attention_mask=mask).logits
    torch.testing.assert_close(got, expected)
    if kind == "non_finite":  # -inf keys: the folded form would give 0 * inf = NaN gradients
        got.sum().backward()
        assert torch.isfinite(mask.grad).all()


def test_open_patch_gates_under_bf16_autocast() -> None:
    model = small_vit()
    x = torch.randn(2, 3, 16, 16)
    kept = torch.zeros(2, 16, dtype=torch.bool)
    kept[:, :6] = True
    gates = kept.float().requires_grad_()
    reference = forward_with_open_patches(model, x, kept, gates=gates.detach()).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = forward_with_open_patches(model, x, kept, gates=gates).logits
    logits.float().square().sum().backward()
    assert torch.isfinite(gates.grad).all() and (gates.grad[~kept] != 0).all()
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)


class _SubnormalWatch(TorchDispatchMode):
    """Records each operation that takes or makes a subnormal float32 (slow on Intel CPUs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in pytree.tree_leaves((args, kwargs, out))
                   if isinstance(t, Tensor) and t.dtype == torch.float32]
        tiny = torch.finfo(torch.float32).tiny
        if any(((t != 0) & (t.abs() < tiny)).any() for t in tensors):
            self.seen.append(str(func))
        return out


@pytest.mark.parametrize("upstream", [1.0, 1e-8])
def test_closed_keys_make_no_subnormal_floats_in_the_backward_pass(upstream: float) -> None:
    """A closed key's attention weight times the gradients it meets stays a normal float.

    With a floor of 1e-30 a fresh BERT's key and value gradients were a third subnormal,
    and its masked step 20 times slower than the plain one on an Intel CPU. ``upstream``
    scales the loss, as a trained model's small gradients do.
    """
    model = small_vit()
    bias = gate_bias().requires_grad_()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    watch = _SubnormalWatch()
    with watch, key_bias_attention_on(model):
        logits = model(x, attention_mask=bias).logits
        (logits.square().sum() * upstream).backward()
    assert watch.seen == []
    assert (bias.grad[..., 2:] != 0).any()  # closed keys still get their gradient


def test_heads_padded_for_cuda_give_the_same_attention_and_gradients(monkeypatch) -> None:
    """On CUDA the folded heads get zero columns up to a multiple of 8 (CUDA's fused-kernel widths).

    Forced here on the CPU: the zero columns change no logit and no gradient.
    """
    assert [head_padding(w, torch.device("cuda")) for w in (32, 16, 7, 8)] == [7, 7, 0, 7]
    assert head_padding(32, torch.device("cpu")) == 0
    model = small_vit()  # heads of 8: 9 with the bias column, 16 padded
    bias = gate_bias()
    logits, bias_grad, grads = run(model, bias, fast=True)
    widths = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):  # type: ignore[no-untyped-def]
        widths.append(query.shape[-1])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(key_bias, "head_padding", lambda width, device: head_padding(width, torch.device("cuda")))
    padded_logits, padded_bias_grad, padded_grads = run(model, bias, fast=True)
    assert widths and set(widths) == {16}
    torch.testing.assert_close(padded_logits, logits)
    torch.testing.assert_close(padded_bias_grad, bias_grad)
    for name, grad in grads.items():
        torch.testing.assert_close(padded_grads[name], grad, msg=name)


class _AttentionModule(nn.Module):
    """The ``module`` argument of an attention function: only its ``training`` flag is read."""


def test_closed_keys_stay_out_of_the_output_however_large_their_logits() -> None:
    """A key at the floor is removed from the attention's value, not scaled down.

    A jointly trained BERT learned logits large enough to read keys at the floor
    (1e-20, and 1e-38 too). Here one closed key is made to score far above the others
    (by about 80 on average over the queries): at the floor alone it would take much of
    the attention; removed, the output is that of the open keys, and the closed key still
    gets its gradient (what opening it would do).
    """
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8, generator=gen) for _ in range(3))
    key[:, :, 2] = 400.0 * query.sum(2) / query.sum(2).square().sum(-1, keepdim=True) * 8**0.5
    gates = torch.ones(2, 5)
    gates[:, 2] = 0.0
    gates[1, 4] = 0.0
    bias = torch.log(GATE_FLOOR + gates)[:, None, None, :].requires_grad_()
    module = _AttentionModule().eval()
    out, _ = key_bias.key_bias_attention(module, query, key, value, bias)
    exact = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=gates[:, None, None, :] > 0)
    at_floor = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias.detach())
    assert (at_floor - exact).abs().max() > 0.5  # the floor alone would let the closed key through
    torch.testing.assert_close(out, exact.transpose(1, 2), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert torch.isfinite(bias.grad).all() and (bias.grad[:, 0, 0, 2] != 0).all()
