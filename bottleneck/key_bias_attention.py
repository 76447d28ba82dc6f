"""Attention with a differentiable per-key bias that still runs PyTorch's fast SDPA kernels.

Differentiable token gates on a transformer -- the ViT's patch gates
(:func:`~bottleneck_image.vit.forward_with_open_patches`) and, with
``attention_gates=True``, a Hugging Face text model's token gates -- multiply each
key's attention weight by its gate: an additive bias ``b_j = log(floor + g_j)``
(:func:`gate_attention_bias`) on the attention logits of key ``j``, the same for every
query. Passed as a float ``attn_mask`` that requires grad, it sends
``scaled_dot_product_attention`` to its unfused "math" path, because the fused kernels
do not return a mask gradient: on the bench ViT (batch 64, 65 tokens, 4 layers) one
training step took 58 ms against 45 ms with a boolean mask.

A bias that depends on the key only is a dot product with a constant query
component, so it folds into one extra head dimension::

    scale * (q . k_j) + b_j  =  scale * ([q, 1] . [k_j, b_j / scale])

and the value gets a zero column (the fused kernels want equal q/k/v widths; the
extra output column is dropped). On CUDA all three get more zero columns, up to a
width CUDA's fused kernels take (:data:`CUDA_HEAD_MULTIPLE`). The fused kernels then
compute the exact same attention and give ``b`` its gradient through ``k``'s extra column. On CPU, one
attention call of the bench's shape (forward and backward) took 5.2 ms this way
against 12.0 ms for the float mask and 4.0 ms for a boolean mask.

**Closed keys are removed from the forward pass, not scaled by the floor.** A key at
the floor (weight 0, :data:`CLOSED_BIAS`) is still attended with weight ``floor * e^s``,
and a jointly trained model can make ``s`` large enough to read it: the speed bench's
BERT, fine-tuned with its mask (distilling from the dense model; one seed), reached task
loss 0.014 in training and 0.5 accuracy (chance) with the same keys removed; its logits
with the floor at 1e-20, 1e-30 and 1e-38 gave 1.000 on a test batch, with the keys
removed 0.406. So the value of the
attention is computed with the closed keys masked out (the same fused kernel, with a
boolean mask beside the folded bias), and a second folded call on the detached ``q``,
``k``, ``v`` with the floor in place supplies only the closed keys' bias gradient, what
opening each would do: the closed keys keep their gradient and no value depends on
them. It costs one more attention forward and backward per layer in training.

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
from typing import Any

import torch
from torch import Tensor, nn

#: The name the function is registered under in Hugging Face's attention registries.
KEY_BIAS_SDPA = "bottleneck_key_bias_sdpa"

#: Attention weight factor of a closed token under differentiable gates
#: (:func:`gate_attention_bias`), in the pass that gives closed keys their gradient
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

__all__ = ["CLOSED_BIAS", "CUDA_HEAD_MULTIPLE", "GATE_FLOOR", "KEY_BIAS_SDPA", "gate_attention_bias", "head_padding",
           "key_bias_attention", "key_bias_attention_on"]


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


#: On CUDA the folded heads are padded with zero columns to a multiple of this width
#: (``None``: never): the bias column makes a head of 32 one of 33, and CUDA's fused
#: attention kernels take only widths that are multiples of 8. On an H200 the unpadded
#: BERT heads ran the math path (separate softmax kernels) and the padded ones, in
#: float32, the memory-efficient fused kernel: its masked training step on 8,192
#: sentences took 115.4 against 120.6 ms (``benchmarks/cuda_head_padding.py``). The
#: zero columns add nothing to any dot product: the same attention, the same gradients.
#: The CPU's kernels take any width, and there padding would only add work.
CUDA_HEAD_MULTIPLE: int | None = 8


def head_padding(width: int, device: torch.device) -> int:
    """Zero columns after a folded head of ``width`` (+1 for the bias) on ``device`` (see :data:`CUDA_HEAD_MULTIPLE`)."""
    if device.type != "cuda" or not CUDA_HEAD_MULTIPLE:
        return 0
    return -(width + 1) % CUDA_HEAD_MULTIPLE


def _key_bias_closed(mask: Tensor | None, query: Tensor, key: Tensor) -> tuple[Tensor, bool, bool] | None:
    """``(closed, any closed, every query keeps an open key)`` of a per-key bias, or ``None`` for another mask.

    A per-key bias is a finite float ``[B, 1 | H, 1, T]`` mask that needs a gradient, on
    heads without key sharing; ``closed`` marks its keys below :data:`CLOSED_BIAS`. The
    finiteness and both flags come from one host sync.
    """
    if not (
        mask is not None
        and mask.is_floating_point()
        and mask.requires_grad
        and mask.dim() == 4
        and mask.shape[2] == 1
        and mask.shape[-1] == key.shape[2]
        and key.shape[1] == query.shape[1]
    ):
        return None
    closed = mask < CLOSED_BIAS
    finite, any_closed, every_query_sees_a_key = torch.stack(
        [torch.isfinite(mask).all(), closed.any(), (~closed).any(-1).all()]).tolist()
    return (closed, any_closed, every_query_sees_a_key) if finite else None


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
    """Hugging Face attention function: SDPA with a per-key bias folded into ``q``/``k``.

    Same signature and output (``[B, T, H, D]``, no weights) as Hugging Face's
    ``sdpa_attention_forward``, which handles every mask that is not a finite float
    per-key bias needing a gradient.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    found = None if kwargs.get("position_bias") is not None else _key_bias_closed(attention_mask, query, key)
    if found is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    assert attention_mask is not None
    closed, any_closed, every_query_sees_a_key = found
    scale = key.shape[-1] ** -0.5 if scaling is None else scaling
    dropout_p = dropout if module.training else 0.0
    if not (any_closed and every_query_sees_a_key):  # nothing to remove, or a row would attend to nothing
        return _folded_attention(query, key, value, attention_mask, scale, dropout_p), None
    out = _folded_attention(query, key, value, attention_mask, scale, dropout_p, visible=~closed)
    # the closed keys' gradient: the same attention with them at the floor, on detached inputs
    closed_only = torch.where(closed, attention_mask, attention_mask.detach())
    floor = _folded_attention(query.detach(), key.detach(), value.detach(), closed_only, scale, dropout_p)
    return out + (floor - floor.detach()), None


def _folded_attention(query: Tensor, key: Tensor, value: Tensor, key_bias: Tensor, scale: float,
                      dropout_p: float, visible: Tensor | None = None) -> Tensor:
    """SDPA of ``[B, H, T, D]`` heads with the ``[B, 1 | H, 1, T]`` per-key bias folded into ``q``/``k``.

    ``visible`` (bool, the bias's shape) hides the keys where it is False, exactly.
    Returns ``[B, T, H, D]``, as Hugging Face's attention functions do.
    """
    batch, heads, tokens, width = key.shape
    bias = (key_bias.to(key.dtype) / scale).transpose(2, 3).expand(batch, heads, tokens, 1)
    pad = head_padding(width, query.device)
    query = torch.cat([query, query.new_ones(*query.shape[:-1], 1), query.new_zeros(*query.shape[:-1], pad)],
                      dim=-1)
    key = torch.cat([key, bias, key.new_zeros(*key.shape[:-1], pad)], dim=-1)
    value = torch.cat([value, value.new_zeros(*value.shape[:-1], 1 + pad)], dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, dropout_p=dropout_p, scale=scale
    )
    return out[..., :width].transpose(1, 2).contiguous()


@functools.cache
def _register() -> None:
    """Register :func:`key_bias_attention` (and SDPA's mask builder) under :data:`KEY_BIAS_SDPA`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(KEY_BIAS_SDPA, key_bias_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(KEY_BIAS_SDPA, sdpa_mask)


@contextmanager
def key_bias_attention_on(model: nn.Module) -> Iterator[bool]:
    """For the ``with`` block, run ``model``'s SDPA attention through :func:`key_bias_attention`.

    Switches every Hugging Face config in ``model`` whose attention is ``"sdpa"`` and
    restores it on exit, also when the block raises. Yields whether any was switched
    (False for eager or other attention, which keeps its own path). Not thread-safe
    for a model shared by threads running at once.
    """
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) == "sdpa"}
    if configs:
        _register()
    for config in configs.values():
        config._attn_implementation = KEY_BIAS_SDPA
    try:
        yield bool(configs)
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"
