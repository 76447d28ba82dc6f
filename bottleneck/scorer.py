"""The permutation-equivariant scorer: one logit per unit, for any number of units.

Each unit's features go through a shared MLP; a pooled per-sample context
(segment max and mean of those features) is concatenated back onto every unit;
a second MLP maps that to the gate logits. Permuting the units of a sample
permutes the logits and nothing else, and samples of any size work — unlike
predicting one logit per array index from a global vector.
"""

from __future__ import annotations

import math
from itertools import islice
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BottleneckError
from .segment import broadcast, segment_max_and_mean

#: The scorer's hidden activations by name. ``leaky_relu`` (slope 0.01) cannot die: a ReLU
#: scorer trained at a high mask learning rate can lose every hidden unit and then outputs
#: its final bias for every unit (see :class:`~bottleneck.errors.CollapsedMaskWarning`).
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01)}


class EquivariantScorer(nn.Module):
    """Per-unit MLP + pooled context -> ``[N, out_features]`` logits.

    :param hidden: width of both MLPs.
    :param out_features: logits per unit (1, or 2 for gates that predict a scale).
    :param in_features: unit feature size, or ``None`` to infer it on the first call.
    :param context: concatenate the pooled per-sample context. Without it each unit's
        logit depends on that unit alone, so a unit the mask shuts cannot change any
        other unit's gate: the gate pattern carries no information about what was shut
        (a jointly trained model can otherwise read a hidden cue from which *other*
        units stay open; this is how a bias mitigation keeps the cue out of sight).
    :param activation: ``"relu"`` (default) or ``"leaky_relu"``, which keeps every hidden
        unit trainable (see :data:`ACTIVATIONS`).
    """

    def __init__(
        self, hidden: int = 64, out_features: int = 1, in_features: int | None = None, *, context: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise BottleneckError(f"activation must be one of {sorted(ACTIVATIONS)} (got {activation!r})")
        act = ACTIVATIONS[activation]
        self.activation = activation
        first = nn.Linear(in_features, hidden) if in_features else nn.LazyLinear(hidden)
        self.hidden, self.out_features, self.in_features = hidden, out_features, in_features
        self.context = bool(context)
        self.encode = nn.Sequential(first, act(), nn.Linear(hidden, hidden), act())
        width = 3 * hidden if self.context else hidden
        self.head = nn.Sequential(nn.Linear(width, hidden), act(), nn.Linear(hidden, out_features))

    def set_output_bias(self, bias: list[float]) -> None:
        """Initialise the final bias (so gates start at a chosen open probability)."""
        with torch.no_grad():
            self.head[-1].bias.copy_(torch.tensor(bias, dtype=self.head[-1].bias.dtype))
            self.head[-1].weight.mul_(0.1)

    def forward(self, x: Tensor, batch: Tensor, num_samples: int, *, width: int | None | EllipsisType = ...) -> Tensor:
        """``[N, out_features]`` logits; ``width`` is :func:`~bottleneck.segment.equal_segments` of
        ``batch`` when the caller has it (``...``: the pooling checks)."""
        self.check_features(x)
        h = self.encode(x) if torch.is_grad_enabled() else self._encode_inference(x)
        if not self.context:
            logits = self.head(h)
        else:
            context = torch.cat(segment_max_and_mean(h, batch, num_samples, width=width), -1)
            if torch.is_grad_enabled():
                logits = self.head(torch.cat([h, broadcast(context, batch)], dim=-1))
            else:
                logits = self._head_with_projected_context(h, context, batch)
        _check_finite_scores(logits, x)
        return logits

    def check_dtype(self, x: Tensor) -> None:
        """Raise a :class:`BottleneckError` when ``x``'s dtype cannot meet the scorer's weights.

        Autocast lets lower-precision floats through (it casts the linear layers' operands);
        float64 it never casts, and outside autocast the dtypes must match. Without this
        check a float64 input (a point cloud from NumPy) fails deep in torch's ``linear``.
        """
        expected = self.encode[0].weight.dtype
        if x.dtype == expected:
            return
        if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
            return
        raise BottleneckError(
            f"the mask's weights are {expected} but the inputs give unit features of {x.dtype}: cast the "
            f"inputs to {expected}, or the masked model to the inputs' dtype (masked.to({x.dtype}))"
        )

    def check_features(self, x: Tensor) -> None:
        """Raise a :class:`BottleneckError` unless ``x`` is ``[N, F]`` with the scorer's ``F`` and dtype.

        ``F`` is fixed by the first call when the scorer infers it: units of another kind or
        size (images whose automatic patch size differs, a hidden layer of another width)
        would otherwise fail in torch's matrix product with no word of why.
        """
        if x.dim() != 2:
            raise BottleneckError(f"the mask's scorer takes unit features [N, F] (got shape {tuple(x.shape)})")
        self.check_dtype(x)
        expected = self.encode[0].in_features  # 0 until a lazy first layer has seen its first input
        if expected and x.shape[1] != expected:
            raise BottleneckError(
                f"the mask's scorer takes {expected} features per unit (fixed by the inputs it was built on) "
                f"but these inputs give {x.shape[1]}: units of another kind or size than the mask was built "
                f"for (for images with the automatic patch size, a different image size gives different "
                f"patches: attach with patch_size=N to keep them the same)"
            )

    def _head_with_projected_context(self, h: Tensor, context: Tensor, batch: Tensor) -> Tensor:
        """``head(cat([h, context[batch]]))`` with the context's share of the first layer per sample.

        Splitting the first weight ``W = [W_h | W_c]``, ``W [h_i, c_b] + w = W_h h_i + (W_c c_b + w)``:
        the context goes through its columns once per sample instead of once per unit, and
        no ``[N, 3H]`` concatenation is built. Same function up to float rounding; used without
        autograd (explanations, sparse inference), where it took the scorer from 1.4 to 0.5 ms
        on 32 clouds of 128-256 points (``hidden=32``, 2 CPU cores). Training keeps the
        concatenated form, whose rounding the demos' trained figures were measured with.
        """
        first = self.head[0]
        width = h.shape[-1]
        per_sample = F.linear(context, first.weight[:, width:], first.bias)
        z = torch.addmm(broadcast(per_sample, batch), h, first.weight[:, :width].t())
        return self._rest_inference(self.head, z)

    def _encode_inference(self, x: Tensor) -> Tensor:
        """:attr:`encode` without autograd, its activations in place (same values, two ``[N, H]`` buffers fewer)."""
        return self._rest_inference(self.encode, self.encode[0](x))

    @staticmethod
    def _rest_inference(layers: nn.Sequential, z: Tensor) -> Tensor:
        """``layers[1:](z)``, each activation applied in place on the previous layer's fresh output."""
        for layer in islice(layers, 1, None):
            if isinstance(layer, nn.LeakyReLU):
                z = F.leaky_relu_(z, layer.negative_slope)
            elif isinstance(layer, nn.ReLU):
                z = z.relu_()
            else:
                z = layer(z)
        return z

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, out_features={self.out_features}, "
                f"context={self.context}, activation={self.activation}")


def _check_finite_scores(logits: Tensor, x: Tensor) -> None:
    """Raise a :class:`BottleneckError` when any unit's score is NaN or Inf, saying where it came from.

    A NaN score makes a silently closed gate (``NaN > 0`` is false) and a NaN relevance.
    Inputs are checked by the adapters, but a hidden layer's features (a model whose
    weights or norm statistics went NaN) or a diverged scorer reach the scores unchecked.
    The check reads the ``[N]`` scores, not the ``[N, F]`` features; the features are
    looked at only to say which of the two it was. The common case costs one sum and one
    read (4 us on 1k units, against 14 for ``isfinite(...).all()``); a sum that overflows
    while every score is finite falls through to the exact check.
    """
    scores = logits.detach()  # a read, not a node of the autograd graph (and no warning for one)
    if math.isfinite(float(scores.sum())) or bool(torch.isfinite(scores).all()):
        return
    bad_units = int((~torch.isfinite(logits)).reshape(logits.shape[0], -1).any(-1).sum())
    bad_features = int((~torch.isfinite(x)).any(-1).sum())
    cause = (f"{bad_features} of the units' features are NaN or Inf (a hidden layer's features: check the model's "
             f"weights and normalisation statistics)" if bad_features else
             "the units' features are finite, so the scorer's own weights are not (lower mask_lr, or max_grad_norm)")
    raise BottleneckError(f"the mask's scores are NaN or Inf for {bad_units} of {logits.shape[0]} units: {cause}")
