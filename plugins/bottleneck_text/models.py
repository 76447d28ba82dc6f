"""Reference text classifiers: a small bidirectional LSTM in plain torch and a small random BERT.

Both take token ids ``input_ids`` [B, L] with an ``attention_mask`` [B, L]
(1 for real tokens, 0 for padding) and give logits [B, num_classes]; both can
also take ``inputs_embeds`` [B, L, D] instead of ids, which is how a mask acting
on token embeddings feeds them. Their input embedding module is
``get_input_embeddings()``, where a token mask can be attached.

:class:`BiLSTMClassifier` trains in seconds on a CPU. :func:`make_bert` builds a
Hugging Face ``BertForSequenceClassification`` with random weights, the model on
which :mod:`bottleneck_text.shorten` drops tokens for real sparse inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bottleneck.errors import BottleneckError, describe

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification

__all__ = ["BiLSTMClassifier", "make_bert"]


def _is_integer(x: Tensor) -> bool:
    """True for an integer (not bool, not float, not complex) tensor."""
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


class BiLSTMClassifier(nn.Module):
    """Bidirectional LSTM over token embeddings, masked mean + max pooling, linear head.

    ``embed`` (``nn.Embedding`` with ``padding_idx=pad_id``) -> ``lstm`` (one
    bidirectional layer of width ``hidden`` per direction, run on a packed
    sequence so padding never enters the recurrence) -> mean and max of the
    outputs over the real tokens, concatenated (``4 * hidden``) -> ``head``.
    Between the LSTM and the pooling, ``token_features`` (an ``nn.Identity``)
    sees the LSTM outputs ``[B, L, 2 * hidden]`` at their tokens' input
    positions (zero on padding): the per-token layer to name for hidden
    insertion (``attach(model, "text", where="token_features")``) or for
    :func:`bottleneck.fbi.feature_norm`.

    The real tokens of a row are the positions where ``attention_mask`` is
    nonzero; they need not be contiguous. Before packing, each row's real tokens
    are moved to the front in their original order, so a token hidden by the
    mask is exactly as if it had been removed from the sequence. That makes
    "hide tokens with the attention mask" (training) and "drop them and
    re-pack" (:func:`bottleneck_text.shorten.pack_kept`, sparse inference) give
    the same logits, and makes the logits independent of the amount of padding.

    Args:
        vocab_size: number of token ids.
        num_classes: number of output logits.
        embed_dim: token embedding width.
        hidden: LSTM width per direction.
        pad_id: the padding token id (its embedding is zero and not trained).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 64,
        hidden: int = 64,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_classes", num_classes),
            ("embed_dim", embed_dim),
            ("hidden", hidden),
        ):
            if not isinstance(value, int) or value < 1:
                raise BottleneckError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
            raise BottleneckError(f"pad_id must be an int in [0, {vocab_size}), got {pad_id!r}")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.token_features = nn.Identity()
        self.head = nn.Linear(4 * hidden, num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding module ``embed`` (the Hugging Face accessor name)."""
        return self.embed

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Logits [B, num_classes].

        Args:
            input_ids: integer token ids [B, L]; ignored when ``inputs_embeds`` is given.
            attention_mask: [B, L], nonzero (or True) for real tokens; None means
                every token is real. Every row needs at least one real token.
            inputs_embeds: float [B, L, embed_dim] used instead of ``embed(input_ids)``.
        """
        if inputs_embeds is not None:
            if (
                not isinstance(inputs_embeds, Tensor)
                or inputs_embeds.dim() != 3
                or inputs_embeds.shape[-1] != self.embed_dim
                or not inputs_embeds.is_floating_point()
            ):
                raise BottleneckError(
                    f"expected inputs_embeds as a float tensor of shape [B, L, {self.embed_dim}], "
                    f"got {describe(inputs_embeds)}"
                )
            x = inputs_embeds
        elif input_ids is not None:
            if (
                not isinstance(input_ids, Tensor)
                or input_ids.dim() != 2
                or not _is_integer(input_ids)
            ):
                raise BottleneckError(
                    f"expected input_ids as an integer tensor of shape [B, L], "
                    f"got {describe(input_ids)}"
                )
            x = self.embed(input_ids)
        else:
            raise BottleneckError("BiLSTMClassifier needs input_ids or inputs_embeds, got neither")
        b, length = x.shape[:2]
        if b == 0 or length == 0:
            raise BottleneckError(
                f"expected at least one row and one token, got inputs of shape {tuple(x.shape)}"
            )
        if attention_mask is None:
            real = torch.ones(b, length, dtype=torch.bool, device=x.device)
        elif not isinstance(attention_mask, Tensor) or attention_mask.shape != (b, length):
            raise BottleneckError(
                f"expected attention_mask of shape [B, L] = [{b}, {length}], "
                f"got {describe(attention_mask)}"
            )
        else:
            real = attention_mask.to(device=x.device) != 0
        lengths = real.sum(dim=1)
        lengths_cpu = lengths.cpu()  # pack_padded_sequence wants them on the CPU anyway
        if int(lengths_cpu.min()) == 0:
            empty = (lengths_cpu == 0).nonzero().flatten().tolist()
            raise BottleneckError(
                f"every row needs at least one real token in attention_mask, rows {empty[:10]} "
                f"have none"
            )
        # Real tokens first, in their original order (a stable sort of "not real").
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices
        x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)  # [B, max length, 2 * hidden]
        # Each output back at its token's input position ([B, L, 2 * hidden], zero on padding),
        # through ``token_features``, a named layer a mask can be attached to, then back to
        # real-tokens-first for pooling (gathers are exact: the logits are unchanged).
        width = out.shape[-1]
        inverse = order.argsort(dim=1)
        padded = nn.functional.pad(out, (0, 0, 0, length - out.shape[1]))
        tokens = self.token_features(padded.gather(1, inverse.unsqueeze(-1).expand(-1, -1, width)))
        out = tokens.gather(1, order[:, : out.shape[1]].unsqueeze(-1).expand(-1, -1, width))
        valid = torch.arange(out.shape[1], device=out.device) < lengths.unsqueeze(1)
        valid = valid.unsqueeze(-1)
        mean = (out * valid).sum(dim=1) / lengths.unsqueeze(1).to(out.dtype)
        peak = out.masked_fill(~valid, float("-inf")).amax(dim=1)
        return self.head(torch.cat([mean, peak], dim=-1))


def make_bert(
    vocab_size: int,
    num_classes: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position: int = 256,
    pad_id: int = 0,
) -> BertForSequenceClassification:
    """A small ``BertForSequenceClassification`` with random weights (nothing is downloaded).

    Dropout is 0 so that a forward is deterministic and dropping tokens
    (:func:`bottleneck_text.shorten.forward_packed`) is exactly comparable with
    hiding them through ``attention_mask``. Attention uses PyTorch's
    ``scaled_dot_product_attention`` ("sdpa"). Sequences can be at most
    ``max_position`` tokens long (the learned absolute position embeddings).
    The logits read the first token (CLS) through the pooler. The model
    returns a ``SequenceClassifierOutput``; read ``.logits``.
    """
    from transformers import BertConfig, BertForSequenceClassification

    for name, value in (
        ("vocab_size", vocab_size),
        ("num_classes", num_classes),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("intermediate_size", intermediate_size),
        ("max_position", max_position),
    ):
        if not isinstance(value, int) or value < 1:
            raise BottleneckError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise BottleneckError(
            f"hidden_size must be a multiple of num_heads, got {hidden_size} and {num_heads}"
        )
    if not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
        raise BottleneckError(f"pad_id must be an int in [0, {vocab_size}), got {pad_id!r}")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        pad_token_id=pad_id,
        num_labels=num_classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        attn_implementation="sdpa",
    )
    return BertForSequenceClassification(config)
