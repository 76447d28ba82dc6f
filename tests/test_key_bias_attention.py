"""The per-key attention bias: fused kernels for the value, closed keys removed, the float mask's gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import profile
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import bottleneck.key_bias_attention as key_bias
from bottleneck.key_bias_attention import KEY_BIAS_SDPA, key_bias_attention_on
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
    assert any("softmax_backward" in op for op in ref)  # the float mask with a gradient: unfused math
    # the attention and its backward are fused; a softmax appears only in the closed keys'
    # bias gradient (forward-only, no softmax backward)
    assert not any("softmax_backward" in op for op in fast)
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
    if kind == "non_finite":  # -inf keys: the floor's gradient would be 0 * inf = NaN
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


class _AttentionModule(nn.Module):
    """The ``module`` argument of an attention function: only its ``training`` flag is read."""


@pytest.mark.parametrize("reach", [100.0, 400.0])
def test_closed_keys_stay_out_of_the_output_however_large_their_logits(reach: float) -> None:
    """A key at the floor is removed from the attention's value, not scaled down.

    A jointly trained BERT learned logits large enough to read keys at the floor
    (1e-20, and 1e-38 too). Here one closed key is made to score far above the others:
    by 18 on average over the queries and up to 54 at ``reach`` 100; by 78 and up to 219
    at 400, where ``exp`` of its logit less the open keys' log-sum-exp overflows float32
    (more than 88 + 46). At the floor alone it would take much of the attention; removed,
    the output is that of the open keys, and the closed key still gets a finite gradient
    (what opening it would do).
    """
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8, generator=gen) for _ in range(3))
    key[:, :, 2] = reach * query.sum(2) / query.sum(2).square().sum(-1, keepdim=True) * 8**0.5
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


@pytest.mark.parametrize("bias_heads", [1, 3])
@pytest.mark.parametrize("block", [None, 1])
@pytest.mark.parametrize("live", ["every", "some", "none"])
def test_closed_keys_get_the_gradient_they_would_get_at_the_floor(monkeypatch, bias_heads: int,
                                                                  block: int | None, live: str) -> None:
    """Every key's bias gradient is that of the attention with the closed keys at the floor, to float precision.

    Compared relatively: a closed key's gradient is about the floor (1e-20) times an open
    key's, so an absolute tolerance would pass anything. ``block`` 1 computes it one batch
    row at a time, as long sequences do. ``live``: which queries' outputs get a gradient
    (with "some", a different number per sample; the others are left out of the work).
    """
    if block is not None:
        monkeypatch.setattr(key_bias, "_GRADIENT_BLOCK", block)
    gen = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(4, 3, 6, 8, generator=gen, dtype=torch.float64).float() for _ in range(3))
    gates = (torch.rand(4, bias_heads, 1, 6, generator=gen) < 0.5).float()
    gates[..., 0] = 1.0
    gates[0, ..., 1] = 0.3  # a soft gate
    bias = torch.log(GATE_FLOOR + gates)
    upstream = torch.randn(4, 6, 3, 8, generator=gen)
    if live == "some":
        upstream[0, 1:] = 0.0  # one query
        upstream[1, [0, 2, 5]] = 0.0
        upstream[3, :, 1] = 0.0  # one head only: the query still counts
    elif live == "none":
        upstream.zero_()
    got_bias = bias.clone().requires_grad_()
    out, _ = key_bias.key_bias_attention(_AttentionModule().eval(), query, key, value, got_bias)
    (out * upstream).sum().backward()
    ref_bias = bias.clone().requires_grad_()
    at_floor = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=ref_bias)
    (at_floor.transpose(1, 2) * upstream).sum().backward()
    closed = gates == 0
    if live == "none":
        assert (got_bias.grad == 0).all()
        return
    assert closed.any() and (ref_bias.grad[closed] != 0).any()
    assert torch.equal(got_bias.grad[closed] != 0, ref_bias.grad[closed] != 0)
    torch.testing.assert_close(got_bias.grad[closed], ref_bias.grad[closed], atol=0, rtol=1e-4)
    torch.testing.assert_close(got_bias.grad[~closed], ref_bias.grad[~closed], atol=1e-6, rtol=1e-4)


def _bias_gradient(share: float, seed: int = 0, batch: int = 6, device: str | torch.device = "cpu") -> Tensor:
    """``[B, H, T]`` bias gradient of one attention call over ``batch`` samples, ``share`` of them drawn."""
    gen = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(batch, 3, 5, 8, generator=gen).to(device) for _ in range(3))
    gates = (torch.rand(batch, 3, 1, 5, generator=gen) < 0.6).float()
    gates[..., 0] = 1.0
    bias = torch.log(GATE_FLOOR + gates).to(device).requires_grad_()
    upstream = torch.randn(batch, 5, 3, 8, generator=gen).to(device)
    torch.manual_seed(seed)
    with key_bias_attention_on(_AttentionModule(), gradient_share=share):
        out, _ = key_bias.key_bias_attention(_AttentionModule().eval(), query, key, value, bias)
    (out * upstream).sum().backward()
    return bias.grad[:, :, 0, :]


@pytest.mark.parametrize(("batch", "share", "runs"), [(6, 1 / 3, [[0, 1], [2, 3], [4, 5]]),
                                                      (7, 0.25, [[0, 1], [2, 3], [4, 5], [6]])])
def test_a_share_of_the_samples_gets_the_whole_batchs_gradient_unbiased(batch: int, share: float,
                                                                        runs: list[list[int]], device) -> None:
    """A run of ``round(share * B)`` consecutive samples drawn per call, with ``G`` times its exact gradient.

    The batch splits into ``G`` runs (the last one shorter when they do not divide it); each is
    as likely to be drawn, so every sample's expected gradient is its exact one: averaged over
    many draws the gradient comes close to it, and every run is drawn now and then.
    """
    exact = _bias_gradient(1.0, batch=batch, device=device)
    assert (exact.flatten(1) != 0).all(1).all()
    draws = [_bias_gradient(share, seed, batch, device) for seed in range(300)]
    seen = []
    for got in draws:
        rows = (got.flatten(1) != 0).any(1)
        assert rows.nonzero().view(-1).tolist() in runs
        torch.testing.assert_close(got[rows], len(runs) * exact[rows], atol=1e-6, rtol=1e-4)
        seen.append(rows)
    share_drawn = torch.stack(seen).float().mean(0)
    assert ((share_drawn - 1 / len(runs)).abs() < 0.1).all()
    mean = torch.stack(draws).mean(0)
    assert ((mean - exact).norm() / exact.norm()) < 0.2


def test_a_share_of_one_is_the_exact_gradient_and_draws_nothing() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    exact = _bias_gradient(1.0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(_bias_gradient(1.0), exact)


@pytest.mark.parametrize("share", [0, 1.5, -0.1, True, "0.5", None])
def test_a_gradient_share_outside_0_1_is_a_clear_error(share: object) -> None:
    from bottleneck.errors import BottleneckError

    model = small_vit()
    with (pytest.raises(BottleneckError, match=r"gradient_share must be a fraction in \(0, 1\]"),
          key_bias_attention_on(model, gradient_share=share)):  # type: ignore[arg-type]
        pass


def test_open_patch_gates_get_their_gradient_from_the_drawn_images_of_each_layer() -> None:
    """A one-layer ViT, 4 images, share 0.5: exactly two images' patch gates get a gradient, twice theirs."""
    torch.manual_seed(0)
    model = make_vit(5, image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=4,
                     intermediate_size=64)
    model.config._attn_implementation = "sdpa"
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kept = torch.rand(4, 16, generator=torch.Generator().manual_seed(2)) < 0.5

    def gate_gradient(share: float) -> Tensor:
        gates = kept.float().requires_grad_()
        logits = forward_with_open_patches(model, x, kept, gates=gates, gradient_share=share).logits
        logits.square().sum().backward()
        return gates.grad

    exact = gate_gradient(1.0)
    got = gate_gradient(0.5)
    rows = (got != 0).any(1)
    assert int(rows.sum()) == 2 and (exact != 0).any(1).all()
    torch.testing.assert_close(got[rows], 2 * exact[rows], atol=1e-6, rtol=1e-4)


class _OpCount(TorchDispatchMode):
    """Counts the ATen operations run inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layers", [1, 3])
def test_the_bias_is_checked_once_per_forward_pass_not_once_per_layer(layers: int) -> None:
    """Every layer gets the same bias: its checks (one host sync) and its kernel mask are made once."""
    model = make_vit(5, image_size=16, patch_size=4, hidden_size=32, num_layers=layers, num_heads=4,
                     intermediate_size=64).train()
    model.config._attn_implementation = "sdpa"
    bias = gate_bias().requires_grad_()
    x = torch.randn(3, 3, 16, 16)
    with key_bias_attention_on(model), _OpCount() as ops:
        model(x, attention_mask=bias)
    # the closed keys (lt), the three flags read back together (stack) and the kernel's mask (masked_fill)
    assert (ops.counts.get("lt"), ops.counts.get("stack"), ops.counts.get("masked_fill")) == (1, 1, 1)


def test_a_bias_changed_in_place_is_checked_again() -> None:
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8, generator=gen) for _ in range(3))
    gates = torch.ones(2, 5)
    bias = torch.log(GATE_FLOOR + gates)[:, None, None, :].requires_grad_()
    module = _AttentionModule().eval()
    with key_bias_attention_on(module):
        before, _ = key_bias.key_bias_attention(module, query, key, value, bias)
        with torch.no_grad():
            bias[:, :, :, 3] = torch.log(torch.tensor(GATE_FLOOR))  # key 3 closed
        after, _ = key_bias.key_bias_attention(module, query, key, value, bias)
    gates[:, 3] = 0.0
    exact = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=gates[:, None, None, :] > 0)
    torch.testing.assert_close(after, exact.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert (after - before).abs().max() > 1e-3
