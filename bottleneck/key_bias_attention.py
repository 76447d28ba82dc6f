"""Attention with a differentiable per-key bias that still runs PyTorch's fast SDPA kernels.

Differentiable token gates on a transformer -- the ViT's patch gates
(:func:`~bottleneck_image.vit.forward_with_open_patches`) and, with
``attention_gates=True``, a Hugging Face text model's token gates -- multiply each
key's attention weight by its gate: an additive bias ``b_j = log(floor + g_j)``
(:func:`gate_attention_bias`) on the attention logits of key ``j``, the same for every
query. Passed as a float ``attn_mask`` that requires grad, it sends
``scaled_dot_product_attention`` to its unfused "math" path, because the fused kernels
do not return a mask gradient.

:func:`key_bias_attention` splits the two jobs:

* **The value** comes from the fused kernel with the bias detached and the closed keys
  (bias under :data:`CLOSED_BIAS`) at ``-inf``: they are removed, not scaled by the
  floor. A key at the floor is still attended with weight ``floor * e^s``, and a jointly
  trained model can make ``s`` large enough to read it: the speed bench's BERT,
  fine-tuned with its mask (distilling from the dense model; one seed), reached task
  loss 0.014 in training and 0.5 accuracy (chance) with the same keys removed; its
  logits with the floor at 1e-20, 1e-30 and 1e-38 gave 1.000 on a test batch, with the
  keys removed 0.406.
* **The bias's gradient**, for every key, open or closed, is that of the attention with
  the closed keys at the floor -- what opening each would do, DynamicViT's gradient --
  computed in the backward pass from ``q``, ``k``, ``v``, the output and its gradient
  (:class:`_KeyBiasGradient`): ``dL/db_j = sum_i p_ij (dout_i . v_j - dout_i . out_i)``,
  two matrix products per head and only over the queries whose output has a gradient
  (a classifier's last layer reads one token; a closed token's output reaches only keys
  that are removed).

History, for the figures measured with earlier versions: the bias was first folded
into an extra head dimension (``scale q . k_j + b_j = scale [q, 1] . [k_j, b_j / scale]``)
so the fused kernels gave its gradient through ``k``; that kept closed keys at the
floor, hence the leak above. Removing them then took a second folded call per layer
for the closed keys' gradient: the speed bench's BERT step cost 1.62 times the plain
one. This split costs 1.21-1.29 (three runs of ``bottleneck bench speed --models BERT``),
and the ViT's step 1.35 against 1.81.

**A share of the samples** (``key_bias_attention_on(model, gradient_share=s)``): each
attention call splits its ``B`` samples into ``G = ceil(B / round(s * B))`` runs of
consecutive samples, draws one run at random (a fresh draw per call, so per layer),
and computes the bias gradient of that run's samples only, times ``G``; the others'
is zero. Every sample is in the drawn run with probability ``1 / G``, so the gradient
is unbiased: its expectation is the exact gradient, and only its variance grows (as
minibatch SGD's is of the full-data gradient). A run of consecutive samples is a view
of the batch, so nothing is copied. The gradient's cost, about two thirds of what the
gates add to a ViT's step, falls with ``s``: side by side on the speed bench's ViT
(``benchmarks/attention_gradient_share.py``, 2 CPU threads), the masked step was 1.33
times the plain one exact, 1.25 at ``s = 0.5``, 1.22 at ``s = 0.25`` and 1.15 with the
gradient replaced by zeros; on its BERT 1.29, 1.27, 1.24 and 1.19.

It is used through Hugging Face's ``AttentionInterface``: :func:`key_bias_attention_on`
switches a model's configs to :data:`KEY_BIAS_SDPA` for one call and restores them,
and the registered function falls back to Hugging Face's own SDPA for any mask it
does not recognise (boolean, per-query, non-finite, or no gradient needed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe

#: The name the function is registered under in Hugging Face's attention registries.
KEY_BIAS_SDPA = "bottleneck_key_bias_sdpa"

#: Attention weight factor of a closed token under differentiable gates
#: (:func:`gate_attention_bias`), in the gradient of closed keys
#: (:func:`key_bias_attention` removes them from the forward value: a jointly trained
#: BERT learned attention logits large enough to read keys at 1e-20, 1e-30 and 1e-38,
#: as a ViT had at 1e-6). Large enough that the backward pass makes no subnormal floats:
#: a closed key's attention weight (``floor / tokens`` or so) times the gradients it meets stays above float32's
#: smallest normal (1.2e-38) for gradients down to about 1e-16. At 1e-30 it did not:
#: a third of the key and value gradients of a fresh BERT were subnormal, and on an
#: Intel Xeon, whose CPUs take a slow path for each subnormal operand, its masked
#: training step took 1.33 s against 64 ms for the plain one (the ViT's 116 ms against
#: 54 ms); at 1e-20, 91 ms and 87 ms. A closed gate's gradient does not depend on the floor
#: (``dL/dw = dL/db / (floor + w)``, and ``dL/db`` scales with the floor), and float32
#: and bf16 carry it either way.
GATE_FLOOR = 1e-20

#: A key whose bias is below this is closed (weight under about 1e-10, at :data:`GATE_FLOOR`
#: 1e-20): :func:`key_bias_attention` leaves it out of the forward value.
CLOSED_BIAS = 0.5 * math.log(GATE_FLOOR)

__all__ = ["CLOSED_BIAS", "GATE_FLOOR", "KEY_BIAS_SDPA", "check_gradient_share", "gate_attention_bias",
           "key_bias_attention", "key_bias_attention_on"]

#: The share of each call's samples whose bias gradient is computed (set by :func:`key_bias_attention_on`).
_GRADIENT_SHARE: ContextVar[float] = ContextVar("bottleneck_key_bias_gradient_share", default=1.0)


def check_gradient_share(share: Any, what: str = "gradient_share") -> float:
    """``share`` as a float in (0, 1], or a :class:`~bottleneck.errors.BottleneckError` naming ``what``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
        raise BottleneckError(f"{what} must be a fraction in (0, 1] of the samples (got {describe(share)})")
    return float(share)


def _drawn_run(batch: int, share: float) -> tuple[int, int, int] | None:
    """``(start, stop, runs)``: one of ``runs`` runs of ``round(share * batch)`` consecutive samples, or ``None`` for all.

    Drawn from PyTorch's default generator (so ``torch.manual_seed`` repeats it) on the
    host: no device sync.
    """
    size = max(1, round(share * batch))
    if size >= batch:
        return None
    runs = -(-batch // size)
    start = int(torch.randint(runs, ())) * size
    return start, min(start + size, batch), runs


class _BoundedGradient(torch.autograd.Function):
    """Identity forward; the backward clamps each element of the gradient to ``[-bound, bound]``."""

    @staticmethod
    def forward(ctx, values: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        ctx.bound = bound
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.clamp(-ctx.bound, ctx.bound), None


def gate_attention_bias(weights: Tensor, *, grad_bound: float | None = None) -> Tensor:
    """The ``[B, 1, 1, T]`` additive attention bias ``log(floor + (1 - floor) w)`` of per-key weights ``[B, T]``.

    A key's attention weight is multiplied by ``w`` (by :data:`GATE_FLOOR` at ``w = 0``),
    as in DynamicViT's attention masking, so the loss's gradient reaches closed keys too.
    At ``w = 0`` that gradient is ``1 / floor`` times the bias's: the first-order effect of
    opening a key the model would attend to strongly is unbounded. ``grad_bound`` clamps
    each weight's gradient to ``[-grad_bound, grad_bound]`` (sign kept, what a top-k
    ranking acts on); ``None`` leaves it exact. Why: a trained small BERT's closed
    evidence tokens got gradients of 1e10-1e12 on average, and in training the epoch
    means of the gradient norm reached 75 and, at a 10x mask rate, 1e11. Unbounded, the
    speed benchmark's BERT ended at chance on seed 0, with or without its gradient norm
    clipped at 1 (such a step scales every other gradient to nothing); bounded at 1,
    at 1.000 (dense 1.000). Returned in float32 (``log(1e-20)``'s exponential is out of
    float16's range), cast to the attention's dtype by the caller.
    """
    weights = weights.float()
    if grad_bound is not None and weights.requires_grad:
        weights = _BoundedGradient.apply(weights, float(grad_bound))
    return torch.log(GATE_FLOOR + (1.0 - GATE_FLOOR) * weights)[:, None, None, :]


#: Within a :func:`key_bias_attention_on` block, each per-key bias's mask for the fused kernel, by
#: ``(id(bias), dtype)``: every layer of a model gets the same bias tensor, so its checks and their
#: host sync run once per forward pass instead of once per layer.
_VISIBLE: ContextVar[dict[tuple[int, torch.dtype], tuple[Tensor, int, Tensor | None]] | None] = ContextVar(
    "bottleneck_key_bias_visible", default=None)


def _is_per_key_bias(mask: Tensor | None, query: Tensor, key: Tensor) -> bool:
    """A float ``[B, 1 | H, 1, T]`` mask that needs a gradient, on heads without key sharing."""
    return (
        mask is not None
        and mask.is_floating_point()
        and mask.requires_grad
        and mask.dim() == 4
        and mask.shape[2] == 1
        and mask.shape[-1] == key.shape[2]
        and key.shape[1] == query.shape[1]
    )


def _visible_keys(mask: Tensor | None, query: Tensor, key: Tensor) -> Tensor | None:
    """The detached mask the fused kernel takes, closed keys at ``-inf``; ``None`` for another mask.

    Only a finite per-key bias (:func:`_is_per_key_bias`) qualifies; its keys below
    :data:`CLOSED_BIAS` are closed. A row whose every key is closed keeps them at the
    floor (removing them would leave it nothing to attend). The finiteness and both
    flags come from one host sync, once per bias within a :func:`key_bias_attention_on`
    block (:data:`_VISIBLE`).
    """
    if not _is_per_key_bias(mask, query, key):
        return None
    assert mask is not None
    cache = _VISIBLE.get()
    slot = (id(mask), query.dtype)
    if cache is not None and slot in cache and cache[slot][0] is mask and cache[slot][1] == mask._version:
        return cache[slot][2]
    closed = mask < CLOSED_BIAS
    finite, any_closed, every_query_sees_a_key = torch.stack(
        [torch.isfinite(mask).all(), closed.any(), (~closed).any(-1).all()]).tolist()
    visible = None
    if finite:
        visible = mask.detach()
        if any_closed and every_query_sees_a_key:  # else a row would attend to nothing: the floor stays
            visible = visible.masked_fill(closed, float("-inf"))
        visible = visible.to(query.dtype)
    if cache is not None:
        cache[slot] = (mask, mask._version, visible)
    return visible


def key_bias_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Hugging Face attention function: fused SDPA without the closed keys, the bias's gradient computed beside it.

    Same signature and output (``[B, T, H, D]``, no weights) as Hugging Face's
    ``sdpa_attention_forward``, which handles every mask that is not a finite float
    per-key bias needing a gradient. A row whose every key is closed keeps them at the
    floor (removing them would leave it nothing to attend). ``dropout`` applies to the
    value; the bias's gradient takes the attention weights without it (an estimate
    where dropout is on; the bench's models have none).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    visible = None if kwargs.get("position_bias") is not None else _visible_keys(attention_mask, query, key)
    if visible is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    assert attention_mask is not None
    scale = key.shape[-1] ** -0.5 if scaling is None else scaling
    dropout_p = dropout if module.training else 0.0
    out, log_sum_exp = _attention(query, key, value, visible, dropout_p, scale)
    out = out.transpose(1, 2).contiguous()
    if not torch.is_grad_enabled():
        return out, None
    run = None
    if attention_mask.shape[0] == query.shape[0]:  # a bias shared by the batch's rows takes every row's gradient
        run = _drawn_run(query.shape[0], _GRADIENT_SHARE.get())
    return _KeyBiasGradient.apply(out, attention_mask, query.detach(), key.detach(), value.detach(), scale,
                                  log_sum_exp, run), None


def _attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, dropout_p: float,
               scale: float) -> tuple[Tensor, Tensor | None]:
    """Fused SDPA's ``[B, H, T, D]`` output and, on CPU, each query's log-sum-exp of its logits (else ``None``).

    The log-sum-exp lets the backward rebuild the attention weights with one ``exp``
    instead of a softmax (on the bench ViT's shapes 0.24 against 0.97 ms). It comes from
    the CPU flash kernel that SDPA itself dispatches to there; where that kernel is
    missing (older PyTorch) or on other devices, plain SDPA.
    """
    flash = _cpu_flash_attention() if query.device.type == "cpu" else None
    if flash is not None:
        out, log_sum_exp = flash(query, key, value, dropout_p, False, attn_mask=mask, scale=scale)
        return out, log_sum_exp
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                            dropout_p=dropout_p, scale=scale), None


@functools.cache
def _cpu_flash_attention() -> Any:
    """PyTorch's CPU flash attention op if it takes an additive mask and returns the log-sum-exp, else ``None``."""
    try:
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        probe = torch.zeros(1, 1, 2, 4)
        out, log_sum_exp = op(probe, probe, probe, 0.0, False, attn_mask=torch.zeros(1, 1, 1, 2), scale=0.5)
    except (AttributeError, RuntimeError, TypeError):
        return None
    return op if log_sum_exp.shape == (1, 1, 2) else None


class _KeyBiasGradient(torch.autograd.Function):
    """Identity on the attention's output; the backward gives the per-key bias its gradient.

    The output comes from the fused kernel with the bias detached (:func:`key_bias_attention`),
    whose backward gives ``q``, ``k`` and ``v`` theirs. This gives every key's bias the
    gradient of the attention with the closed keys at the floor: ``dL/db_j = sum_i p_ij
    (dout_i . v_j - dout_i . out_i)``, the softmax backward of ``p = softmax(scale * q k^T
    + b)`` restricted to the bias (:func:`_floor_bias_gradient`). ``out`` is the output
    without the closed keys; with them at the floor it differs by about the floor.

    ``run`` (``(start, stop, runs)``, or ``None`` for all): only the bias gradient of the
    samples ``start:stop`` is computed, times ``runs``; the others' is zero (see the
    module's "a share of the samples").
    """

    @staticmethod
    def forward(ctx, out: Tensor, key_bias: Tensor, query: Tensor, key: Tensor,  # type: ignore[override]
                value: Tensor, scale: float, log_sum_exp: Tensor | None,
                run: tuple[int, int, int] | None) -> Tensor:
        ctx.save_for_backward(key_bias, query, key, value, out, log_sum_exp)
        ctx.scale, ctx.run = scale, run
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        key_bias, query, key, value, out, log_sum_exp = ctx.saved_tensors
        grad_bias = None
        if ctx.needs_input_grad[1]:
            batch = grad_out.shape[0]
            start, stop, runs = ctx.run or (0, batch, 1)
            run = slice(start, stop)  # views: the drawn run of samples, or all of them
            per_key = _floor_bias_gradient(grad_out[run], out[run], key_bias[run], query[run], key[run], value[run],
                                           ctx.scale, None if log_sum_exp is None else log_sum_exp[run])
            if runs > 1:  # the drawn run stands for the whole batch: unbiased
                drawn = per_key.mul_(runs)
                per_key = drawn.new_zeros(batch, *drawn.shape[1:])
                per_key[run] = drawn
            if key_bias.shape[1] == 1:
                per_key = per_key.sum(1, keepdim=True)
            grad_bias = per_key[:, :, None, :].to(key_bias.dtype)
        return grad_out, grad_bias, None, None, None, None, None, None


#: Elements of one ``[rows, heads, queries, keys]`` block of attention weights in
#: :func:`_floor_bias_gradient` (two float32 blocks of 64 MiB at a time): bounds its
#: memory for long sequences and large batches.
_GRADIENT_BLOCK = 1 << 24


def _floor_bias_gradient(grad_out: Tensor, out: Tensor, key_bias: Tensor, query: Tensor, key: Tensor,
                         value: Tensor, scale: float, log_sum_exp: Tensor | None = None) -> Tensor:
    """``[B, H, T]``: each key's bias gradient in ``softmax(scale * q k^T + b) v``.

    ``grad_out`` and ``out`` are ``[B, T, H, D]``, the heads ``[B, H, T, D]``. With
    ``p = softmax(scale * q k^T + b)``: ``dL/db_j = v_j . (p^T dout)_j - (p^T delta)_j``
    where ``delta_i = dout_i . out_i``, so besides ``q k^T`` one product ``p^T [dout,
    delta]`` does it. ``log_sum_exp`` (``[B, H, T]``, the forward's, over the open keys)
    gives ``p`` with one ``exp`` (if a closed key scores so far above the open ones that
    it overflows, the call is redone with a softmax); without it, a softmax. In float32
    whatever the heads' dtype, a block of batch rows at a time.

    Only queries whose output has a gradient take part (:func:`_queries_with_gradient`):
    a classifier's last layer feeds on one token, and a closed token's output reaches
    only keys that are removed, so its gradient is exactly zero.
    """
    heads, width, keys = query.shape[1], query.shape[-1], key.shape[2]
    grad_out, out, query, log_sum_exp = _queries_with_gradient(grad_out, out, query, log_sum_exp)
    tokens = query.shape[2]
    delta = (grad_out.float() * out.float()).sum(-1, keepdim=True)  # [B, T, H, 1]
    upstream = torch.cat([grad_out.float(), delta], dim=-1).transpose(1, 2)  # [B, H, T, D + 1]
    rows = max(1, _GRADIENT_BLOCK // (heads * max(tokens, 1) * keys))
    parts = []
    for start in range(0, query.shape[0], rows):
        block = slice(start, start + rows)
        rows_here = query[block].shape[0]
        # the bias (and the log-sum-exp) folded into one product:
        # scale * q_i . k_j + b_j - lse_i = [scale * q_i, 1, -lse_i] . [k_j, b_j, 1]
        query_side = [query[block].float() * scale, query.new_ones(rows_here, heads, tokens, 1, dtype=torch.float32)]
        key_side = [key[block].float(), key_bias[block].float().transpose(2, 3).expand(rows_here, heads, keys, 1)]
        if log_sum_exp is not None:
            query_side.append(-log_sum_exp[block].float()[..., None])
            key_side.append(key.new_ones(rows_here, heads, keys, 1, dtype=torch.float32))
        logits = torch.matmul(torch.cat(query_side, dim=-1), torch.cat(key_side, dim=-1).transpose(-1, -2))
        weights = torch.softmax(logits, dim=-1) if log_sum_exp is None else logits.exp_()
        back = torch.matmul(weights.transpose(-1, -2), upstream[block])  # [b, H, keys, D + 1]
        parts.append((back[..., :width] * value[block].float()).sum(-1) - back[..., width])
    per_key = torch.cat(parts) if len(parts) > 1 else parts[0]
    if log_sum_exp is not None and not bool(torch.isfinite(per_key).all()):
        # a closed key scoring about 135 above the open ones overflowed exp: rebuild the weights with a softmax
        return _floor_bias_gradient(grad_out, out, key_bias, query, key, value, scale)
    return per_key


#: :func:`_queries_with_gradient` leaves the queries as they are when the most any sample
#: has with a gradient is above this share of them: gathering costs more than it saves.
_COMPACT_BELOW = 0.75


def _queries_with_gradient(grad_out: Tensor, out: Tensor, query: Tensor, log_sum_exp: Tensor | None
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``grad_out``, ``out`` (``[B, T, H, D]``), ``query`` (``[B, H, T, D]``), ``log_sum_exp`` (``[B, H, T]``) on fewer tokens.

    Each sample keeps its tokens whose output gradient is nonzero, padded with others to
    the most any sample has (a padding token's zero gradient adds nothing): the same
    bias gradient. Unchanged when that is most tokens (:data:`_COMPACT_BELOW`). One host sync.
    """
    live = grad_out.flatten(2).abs().amax(-1) != 0  # [B, T]; NaN counts as live
    most = int(live.sum(1).max())
    if most > _COMPACT_BELOW * live.shape[1]:
        return grad_out, out, query, log_sum_exp
    picked = live.to(torch.uint8).topk(most, dim=1, sorted=False).indices  # [B, n]
    samples = torch.arange(picked.shape[0], device=picked.device)[:, None]
    query = query.transpose(1, 2)[samples, picked].transpose(1, 2)
    if log_sum_exp is not None:
        log_sum_exp = log_sum_exp.transpose(1, 2)[samples, picked].transpose(1, 2)
    return grad_out[samples, picked], out[samples, picked], query, log_sum_exp


@functools.cache
def _register() -> None:
    """Register :func:`key_bias_attention` (and SDPA's mask builder) under :data:`KEY_BIAS_SDPA`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(KEY_BIAS_SDPA, key_bias_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(KEY_BIAS_SDPA, sdpa_mask)


@contextmanager
def key_bias_attention_on(model: nn.Module, *, gradient_share: float = 1.0) -> Iterator[bool]:
    """For the ``with`` block, run ``model``'s SDPA attention through :func:`key_bias_attention`.

    Switches every Hugging Face config in ``model`` whose attention is ``"sdpa"`` and
    restores it on exit, also when the block raises. Yields whether any was switched
    (False for eager or other attention, which keeps its own path). Not thread-safe
    for a model shared by threads running at once. ``gradient_share`` below 1 computes
    each call's bias gradient on that share of its samples, scaled to stay unbiased
    (see the module's "a share of the samples"); the draw is made in the forward pass.
    """
    share = check_gradient_share(gradient_share)
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) == "sdpa"}
    if configs:
        _register()
    for config in configs.values():
        config._attn_implementation = KEY_BIAS_SDPA
    share_token, visible_token = _GRADIENT_SHARE.set(share), _VISIBLE.set({})
    try:
        yield bool(configs)
    finally:
        _VISIBLE.reset(visible_token)
        _GRADIENT_SHARE.reset(share_token)
        for config in configs.values():
            config._attn_implementation = "sdpa"
