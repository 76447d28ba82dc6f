"""Patch-token operations on Hugging Face ViT-style models.

A ViT turns an image into ``1 + P`` tokens (CLS, then one token per patch in
row-major order, each with its position embedding already added) and runs an
encoder over them; the class logits read the CLS token only. Two ways to make
the model use only some patches follow from that:

* :func:`forward_with_open_patches` keeps all ``1 + P`` tokens but passes an
  attention mask that makes closed patch tokens invisible to every token. It
  costs as much as a dense forward, and is the reference.
* :func:`forward_on_kept_patches` really removes the closed tokens: a forward
  hook on the embeddings module gathers CLS + the kept tokens, so the encoder
  runs on ``1 + K`` tokens and costs about ``(1 + K) / (1 + P)`` of a dense
  forward (less for the attention part).

Both give the same CLS-based logits for the same patches (up to float
rounding), since a token no one attends to cannot change any other token.
This holds for encoders whose layers see token positions only through the
embeddings (ViT, DeiT-style); a model with relative position biases over the
full grid cannot run on gathered tokens.

The model may be wrapped in a user module as long as the wrapper passes
``attention_mask`` (and other keyword arguments) down to the ViT: both
functions call ``model(pixel_values, *args, **kwargs)``, adding ``attention_mask`` where needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bottleneck.errors import BottleneckError, describe
from bottleneck.key_bias_attention import GATE_FLOOR, gate_attention_bias, key_bias_attention_on

__all__ = [
    "GATE_FLOOR",
    "PatchLayout",
    "find_patch_layout",
    "forward_on_kept_patches",
    "forward_with_open_patches",
]


@dataclass
class PatchLayout:
    """Where a ViT's patch tokens come from and how they tile the image.

    Attributes:
        embeddings: the module whose output is ``[B, num_prefix_tokens + P, D]``
            (prefix tokens, then patch tokens in row-major order).
        patch_size: side of a square patch, in pixels.
        image_size: ``(height, width)`` the model expects, in pixels.
        num_channels: image channels the model expects.
        num_prefix_tokens: tokens before the patch tokens (1 for CLS; 2 when the
            model also has a distillation token).
    """

    embeddings: nn.Module
    patch_size: int
    image_size: tuple[int, int]
    num_channels: int
    num_prefix_tokens: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, ``rows * cols``."""
        rows, cols = self.grid
        return rows * cols


def _pair(value: Any) -> tuple[int, int] | None:
    """``(a, b)`` from an int or a length-2 iterable of ints; None otherwise."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = tuple(value)
        if len(items) == 2 and all(isinstance(v, int) for v in items):
            return items[0], items[1]
    return None


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def _is_vit_embeddings(module: nn.Module) -> bool:
    """True for a module holding ``patch_embeddings`` and a ``cls_token`` parameter."""
    return isinstance(getattr(module, "patch_embeddings", None), nn.Module) and isinstance(
        getattr(module, "cls_token", None), nn.Parameter
    )


def find_patch_layout(model: nn.Module) -> PatchLayout | None:
    """The :class:`PatchLayout` of the first ViT embeddings module in ``model``, or None.

    Found generically, so it works on ``ViTForImageClassification``, ``ViTModel``
    or a user's module holding one: the embeddings module is the first
    submodule (in ``model.modules()`` order) with a ``patch_embeddings``
    submodule and a ``cls_token`` parameter. Patch size, image size and channels
    are read from ``patch_embeddings``, then from the embeddings module, then
    from a ``config`` attribute on the way down.

    Raises:
        BottleneckError: when the embeddings are found but their sizes cannot be
            read, or the patches are not square.
    """
    config = None
    for module in model.modules():
        config = _first(getattr(module, "config", None), config)
        if not _is_vit_embeddings(module):
            continue
        patches = module.patch_embeddings
        patch = _pair(
            _first(
                getattr(patches, "patch_size", None),
                getattr(module, "patch_size", None),
                getattr(config, "patch_size", None),
            )
        )
        image = _pair(
            _first(
                getattr(patches, "image_size", None),
                getattr(module, "image_size", None),
                getattr(config, "image_size", None),
            )
        )
        channels = _first(
            getattr(patches, "num_channels", None), getattr(config, "num_channels", None)
        )
        if patch is None or image is None or not isinstance(channels, int):
            raise BottleneckError(
                f"found ViT embeddings {type(module).__name__} but could not read patch size, "
                f"image size and channels: got patch_size={patch}, image_size={image}, "
                f"num_channels={channels!r}"
            )
        if patch[0] != patch[1]:
            raise BottleneckError(f"only square patches are supported, got patch size {patch}")
        prefix = 1 + isinstance(getattr(module, "distillation_token", None), nn.Parameter)
        return PatchLayout(module, patch[0], image, channels, prefix)
    return None


def _layout(model: nn.Module, what: str) -> PatchLayout:
    """The model's patch layout, or a BottleneckError naming ``what`` needed it."""
    layout = find_patch_layout(model)
    if layout is None:
        raise BottleneckError(
            f"{what} needs a ViT-style model (a submodule with `patch_embeddings` and a "
            f"`cls_token` parameter), got {type(model).__name__} without one"
        )
    return layout


def _check_patches(
    name: str, patches: Any, pixel_values: Any, layout: PatchLayout
) -> tuple[int, int]:
    """``(B, P)`` after checking ``patches`` is a bool [B, P] tensor on the images' device."""
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        raise BottleneckError(
            f"expected pixel_values of shape [B, {layout.num_channels}, "
            f"{layout.image_size[0]}, {layout.image_size[1]}], got {describe(pixel_values)}"
        )
    b, p = pixel_values.shape[0], layout.num_patches
    if not isinstance(patches, Tensor) or patches.dtype != torch.bool or patches.shape != (b, p):
        raise BottleneckError(
            f"expected `{name}` as a bool tensor of shape [B, num_patches] = [{b}, {p}] "
            f"(grid {layout.grid[0]}x{layout.grid[1]}), got {describe(patches)}"
        )
    if patches.device != pixel_values.device:
        raise BottleneckError(
            f"`{name}` is on {patches.device} but pixel_values on {pixel_values.device}"
        )
    return b, p


def _check_no_mask(kwargs: dict[str, Any], what: str) -> None:
    """Refuse a caller's ``attention_mask``: the patch selection is the mask."""
    if "attention_mask" in kwargs:
        raise BottleneckError(
            f"{what} sets attention_mask itself; express hidden patches in its bool patch "
            f"argument instead of passing attention_mask={describe(kwargs['attention_mask'])}"
        )


def forward_with_open_patches(
    model: nn.Module, pixel_values: Tensor, open_patches: Tensor, *args: Any, gates: Tensor | None = None,
    gradient_share: float = 1.0, **kwargs: Any,
) -> Any:
    """Run ``model`` with closed patch tokens hidden from attention; returns the model's output.

    Calls ``model(pixel_values, *args, attention_mask=mask, **kwargs)`` with
    ``mask = cat([ones(B, prefix), open_patches])``, so every token (CLS included)
    attends only to the prefix tokens and the open patches. Closed tokens are still computed (dense cost) and their own outputs
    are meaningless, but they cannot influence the CLS token, so CLS-based logits
    equal those of :func:`forward_on_kept_patches` with the same patches. A row
    with no open patch is allowed: its CLS token then sees only itself.

    ``gates`` (float ``[B, P]`` in {0, 1}, carrying gradients) makes the mask
    differentiable for every patch, open or closed: the mask becomes the additive
    attention bias ``log(GATE_FLOOR + (1 - GATE_FLOOR) * gates)``, so a token's
    attention weight is multiplied by its gate; a closed token is left out of the
    attention's value, and only its gradient is that of the attention with it at
    :data:`GATE_FLOOR` (a floor alone can be read: see :mod:`~bottleneck.key_bias_attention`).
    That is DynamicViT's attention masking (Rao et al., 2021): the gradient of the
    loss with respect to a closed token's gate says how the prediction would change
    if that token were attended. With a hard boolean mask it is exactly 0, so a mask
    trained through it could only push open patches out, never pull closed ones in
    (a ViT's top-k mask then kept 65% of the patches that hold the evidence). A model
    with SDPA attention runs the fused kernels with the bias's gradient computed beside
    them (:mod:`~bottleneck.key_bias_attention`), not the slower float-mask path.

    Args:
        model: a ViT-style model (see :func:`find_patch_layout`) or a wrapper that
            forwards ``attention_mask`` to it (a float ``[B, 1, 1, 1 + P]`` one when
            ``gates`` is given, as Hugging Face models take).
        pixel_values: images [B, C, H, W].
        open_patches: bool [B, num_patches], True for patches to use.
        gates: optional differentiable gates [B, num_patches] equal to ``open_patches``.
        gradient_share: with ``gates``, the share of the images whose gates get their
            gradient through each attention layer, unbiased (see
            :func:`~bottleneck.key_bias_attention.key_bias_attention_on`).
        *args, **kwargs: passed on to ``model``.
    """
    what = "forward_with_open_patches"
    _check_no_mask(kwargs, what)
    layout = _layout(model, what)
    b, _ = _check_patches("open_patches", open_patches, pixel_values, layout)
    prefix = open_patches.new_ones(b, layout.num_prefix_tokens)
    if gates is None:
        mask = torch.cat([prefix, open_patches], dim=1).long()
        return model(pixel_values, *args, attention_mask=mask, **kwargs)
    if not isinstance(gates, Tensor) or gates.shape != open_patches.shape or not gates.is_floating_point():
        raise BottleneckError(f"expected float gates of shape {list(open_patches.shape)}, got {describe(gates)}")
    weights = torch.cat([prefix.to(gates.dtype), gates], dim=1)  # gate_attention_bias works in float32
    bias = gate_attention_bias(weights)
    # fused SDPA kernels, the bias's gradient computed beside them
    with key_bias_attention_on(model, gradient_share=gradient_share):
        return model(pixel_values, *args, attention_mask=bias.to(pixel_values.dtype), **kwargs)


def forward_on_kept_patches(
    model: nn.Module, pixel_values: Tensor, kept: Tensor, *args: Any, **kwargs: Any
) -> Any:
    """Run ``model`` on the prefix (CLS) tokens and the kept patch tokens only.

    A forward hook on the embeddings module replaces its output
    ``[B, prefix + P, D]`` by ``[B, prefix + K_max, D]``: the prefix tokens, then
    each row's kept patch tokens in their original order, each with its own
    position embedding (added before the hook). When every row keeps the same
    number ``K`` of patches nothing is padded and no attention mask is passed;
    otherwise rows are padded to ``K_max`` and an attention mask hides the
    padding. The hook is removed afterwards, also when the model raises. Works
    with gradients and under ``torch.no_grad()`` / ``torch.inference_mode()``.

    The model's token outputs are for the gathered sequence (CLS first), so use
    CLS-based outputs such as classification logits.

    Args:
        model: a ViT-style model (see :func:`find_patch_layout`) or a wrapper that
            forwards keyword arguments (``attention_mask`` when rows keep
            different counts) to it.
        pixel_values: images [B, C, H, W].
        kept: bool [B, num_patches], True for patches to keep; every row keeps >= 1.
        *args, **kwargs: passed on to ``model``.

    Raises:
        BottleneckError: no ViT embeddings in ``model``; ``kept`` not a bool
            [B, num_patches] tensor; a row keeping no patch; an embeddings output
            of an unexpected shape (e.g. another image size).
    """
    what = "forward_on_kept_patches"
    _check_no_mask(kwargs, what)
    layout = _layout(model, what)
    b, p = _check_patches("kept", kept, pixel_values, layout)
    counts = kept.sum(dim=1)
    k_min, k_max = (int(v) for v in torch.aminmax(counts))  # the one host sync
    if k_min == 0:
        empty = (counts == 0).nonzero().flatten().tolist()
        raise BottleneckError(
            f"every row of `kept` must keep at least one patch, rows {empty[:10]} keep none"
        )
    # Kept patches first, in their original order: a stable sort of "not kept".
    order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    prefix = layout.num_prefix_tokens
    index = torch.cat(
        [
            torch.arange(prefix, device=kept.device).expand(b, prefix),
            order + prefix,
        ],
        dim=1,
    )
    if k_min != k_max:
        valid = torch.arange(k_max, device=kept.device) < counts.unsqueeze(1)
        kwargs["attention_mask"] = torch.cat([kept.new_ones(b, prefix), valid], dim=1).long()

    def gather(_module: nn.Module, _args: Any, output: Any) -> Tensor:
        if (
            not isinstance(output, Tensor)
            or output.dim() != 3
            or output.shape[:2] != (b, prefix + p)
        ):
            raise BottleneckError(
                f"{what} expected the ViT embeddings to output [B, prefix + num_patches, D] = "
                f"[{b}, {prefix + p}, D], got {describe(output)}"
            )
        return output.gather(1, index.unsqueeze(-1).expand(-1, -1, output.shape[-1]))

    handle = layout.embeddings.register_forward_hook(gather)
    try:
        return model(pixel_values, *args, **kwargs)
    finally:
        handle.remove()
