"""Sparse inference for text: drop tokens and re-pack each sequence shorter.

A text classifier runs on ``input_ids`` [B, L] with an ``attention_mask`` that
marks the real tokens. Two ways to make it use only some tokens:

* hide the others with ``attention_mask=0`` (dense cost; what training does,
  since it keeps shapes fixed and lets gradients reach every mask entry);
* :func:`pack_kept` + :func:`forward_packed`: remove them. Each row's kept
  tokens are moved to the front in their original order and the batch is cut
  to the longest kept row, ``L' = max kept per row``, so the model runs on
  ``[B, L']`` and costs about ``L' / L`` of a dense forward (less for attention).

For an encoder with absolute position embeddings (BERT) the two agree: the
packed tokens keep their original ``position_ids``, and a key hidden by the
attention mask cannot change any other token, so every kept token, the first
(CLS) token included, gets the same output both ways, and so do CLS-based
logits (up to float rounding). This needs the pooled token (CLS, position 0)
to be kept. A model that sees positions only through the token order (an LSTM)
agrees when it treats masked tokens as absent, as
:class:`bottleneck_text.models.BiLSTMClassifier` does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bottleneck.errors import BottleneckError, describe

__all__ = ["Packed", "accepts_position_ids", "forward_packed", "pack_kept"]

#: Token id written into the padding of packed rows.
PAD_ID = 0


@dataclass
class Packed:
    """A batch of token sequences cut down to their kept tokens, left-aligned.

    All tensors are [B, L'] with ``L'`` the largest number of tokens a row keeps.
    Row ``i`` holds its kept tokens in positions ``0 .. n_i - 1`` and padding after.

    Attributes:
        input_ids: the kept token ids; padding is ``PAD_ID`` (0).
        attention_mask: 1 (True for a bool input mask) on kept tokens, 0 on padding;
            same dtype as the input attention mask.
        position_ids: each kept token's position in the original sequence (long),
            so absolute position embeddings are those of the full sequence; 0 on padding.
        index: long, where each packed token came from in the original sequence
            (``input_ids.gather(1, index)`` gives the packed ids); 0 on padding.
            Use it to gather other per-token inputs (``token_type_ids``) or to
            scatter per-token outputs back.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    index: Tensor

    @property
    def lengths(self) -> Tensor:
        """Tokens kept per row, long [B]."""
        return (self.attention_mask != 0).sum(dim=1)


def _is_integer(x: Tensor) -> bool:
    """True for an integer (not bool, not float, not complex) tensor."""
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def pack_kept(input_ids: Tensor, attention_mask: Tensor | None, kept: Tensor) -> Packed:
    """Keep the tokens where ``kept & attention_mask``, left-aligned, in their original order.

    Vectorised over rows (a stable sort of "not kept" per row, then a gather)
    with one host synchronisation, to read ``L'`` and check that no row is empty.

    Args:
        input_ids: integer token ids [B, L].
        attention_mask: [B, L], nonzero (or True) on real tokens, 0 on padding; None
            means every token is real.
        kept: bool [B, L], True for tokens to keep. Padding is never kept, even
            where ``kept`` is True.

    Returns:
        A :class:`Packed` batch of shape [B, L'], ``L'`` = the most tokens any row keeps.

    Raises:
        BottleneckError: ``input_ids`` not an integer [B, L] tensor with ``B, L >= 1``;
            ``attention_mask`` or ``kept`` of another shape, device or dtype;
            a row that keeps no real token.
    """
    if (
        not isinstance(input_ids, Tensor)
        or input_ids.dim() != 2
        or not _is_integer(input_ids)
        or 0 in input_ids.shape
    ):
        raise BottleneckError(
            f"expected input_ids as an integer tensor of shape [B, L] with B, L >= 1, "
            f"got {describe(input_ids)}"
        )
    b, length = input_ids.shape
    device = input_ids.device
    if attention_mask is not None and (
        not isinstance(attention_mask, Tensor)
        or attention_mask.shape != (b, length)
        or not (_is_integer(attention_mask) or attention_mask.dtype == torch.bool)
    ):
        raise BottleneckError(
            f"expected attention_mask as an integer or bool tensor of shape [B, L] = "
            f"[{b}, {length}], got {describe(attention_mask)}"
        )
    if not isinstance(kept, Tensor) or kept.dtype != torch.bool or kept.shape != (b, length):
        raise BottleneckError(
            f"expected `kept` as a bool tensor of shape [B, L] = [{b}, {length}], "
            f"got {describe(kept)}"
        )
    for name, tensor in (("attention_mask", attention_mask), ("kept", kept)):
        if tensor is not None and tensor.device != device:
            raise BottleneckError(f"`{name}` is on {tensor.device} but input_ids on {device}")

    keep = kept if attention_mask is None else kept & (attention_mask != 0)
    counts = keep.sum(dim=1)
    k_min, k_max = (int(v) for v in torch.aminmax(counts))  # the one host sync
    if k_min == 0:
        empty = (counts == 0).nonzero().flatten().tolist()
        raise BottleneckError(
            f"every row must keep at least one real token (kept & attention_mask), "
            f"rows {empty[:10]} keep none"
        )
    # Kept tokens first, in their original order: a stable sort of "not kept".
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    valid = torch.arange(k_max, device=device) < counts.unsqueeze(1)
    index = order.masked_fill(~valid, 0)
    ids = input_ids.gather(1, index).masked_fill(~valid, PAD_ID)
    mask_dtype = torch.long if attention_mask is None else attention_mask.dtype
    return Packed(
        input_ids=ids,
        attention_mask=valid.to(mask_dtype),
        position_ids=index.clone(),
        index=index,
    )


def accepts_position_ids(model: nn.Module) -> bool:
    """True when ``model.forward`` has a ``position_ids`` parameter or takes ``**kwargs``.

    A forward with ``**kwargs`` counts: a wrapper that passes keyword arguments
    down to a BERT would otherwise silently give it positions ``0 .. L'-1``.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins, odd wrappers)
        return False
    return "position_ids" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def forward_packed(
    model: nn.Module, packed: Packed, *, use_position_ids: bool | None = None, **kwargs: Any
) -> Any:
    """Run ``model`` on a :class:`Packed` batch; returns the model's output.

    Calls ``model(input_ids=..., attention_mask=..., position_ids=..., **kwargs)``
    with the packed tensors. ``position_ids`` (the original positions) is passed
    when the model's forward accepts it (:func:`accepts_position_ids`): Hugging
    Face BERT does, and then each kept token gets the position embedding it had
    in the full sequence. For a model without it (the BiLSTM) positions simply
    follow the new, shorter order.

    With BERT and the first token (CLS) kept in every row, the logits equal
    those of the full input with the dropped tokens hidden by
    ``attention_mask=0``. Other per-token inputs (``token_type_ids``) must be
    gathered by the caller with ``packed.index`` before they are passed in ``kwargs``.

    Args:
        model: a text model taking ``input_ids`` and ``attention_mask`` keywords.
        packed: the output of :func:`pack_kept`.
        use_position_ids: force passing (True) or not passing (False)
            ``position_ids``; None decides from the signature.
        **kwargs: passed on to ``model``.

    Raises:
        BottleneckError: ``packed`` is not a :class:`Packed`, or ``kwargs`` sets
            one of the inputs that come from ``packed``.
    """
    if not isinstance(packed, Packed):
        raise BottleneckError(
            f"forward_packed expected a Packed batch from pack_kept, got {describe(packed)}"
        )
    taken = sorted({"input_ids", "attention_mask", "position_ids", "inputs_embeds"} & set(kwargs))
    if taken:
        raise BottleneckError(
            f"forward_packed sets input_ids, attention_mask and position_ids from `packed`; "
            f"got {taken} in kwargs as well"
        )
    if use_position_ids is None:
        use_position_ids = accepts_position_ids(model)
    if use_position_ids:
        kwargs["position_ids"] = packed.position_ids
    return model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, **kwargs)
