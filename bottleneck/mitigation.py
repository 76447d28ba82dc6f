"""Training a known shortcut away: a gate penalty on cue units, or group reweighting.

* :class:`CueGatePenalty` — "right for the right reasons" (Ross et al., 2017) on the
  mask instead of on input gradients: where the training data marks cue units, the
  penalty is the mean open probability of their gates. The mask learns to shut the
  cue, so the model never sees it and has to learn from the real evidence; at test
  time the trained mask shuts the cue on its own, no annotations needed.
* :func:`group_weights` with :class:`FlaggedBatches` — the alternative that needs no
  mask: samples are drawn with probability inversely proportional to their group's
  size (cue aligned / conflicting), so the rare conflicting samples count as much as
  the common aligned ones.

Training batches for both are ``(inputs, targets, flags)``: :func:`~bottleneck.fit`
trains on the first two and hands the whole batch to its ``penalty``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from .errors import BottleneckError, describe
from .modality import Modality
from .units import Units
from .wrap import MaskedModel, MaskedOutput


class CueGatePenalty:
    """``weight * mean open probability (``output.relevance``) of the gates on flagged (cue) units``.

    :param masked: the masked model being trained (its mask must sit at the input).
    :param unit_flags: ``unit_flags(flags, units, adapter) -> [N] bool``: the batch's cue
        flags carried to the mask's units.
    :param weight: strength of the penalty against the task loss.
    """

    def __init__(
        self, masked: MaskedModel, unit_flags: Callable[[Tensor, Units, Modality], Tensor], weight: float = 5.0
    ) -> None:
        if not isinstance(masked, MaskedModel):
            raise BottleneckError(f"the cue penalty acts on a mask: pass a MaskedModel (got {describe(masked)})")
        if masked.where != "input":
            raise BottleneckError(f"the cue penalty needs the mask at the input (it sits at {masked.where!r})")
        if not weight >= 0:
            raise BottleneckError(f"weight must be >= 0 (got {weight!r})")
        self.masked, self.unit_flags, self.weight = masked, unit_flags, float(weight)

    def __call__(self, output: Any, batch: Any) -> Tensor:
        if not isinstance(output, MaskedOutput):
            raise BottleneckError("the cue penalty needs the masked model's output")
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise BottleneckError("the cue penalty needs (inputs, targets, flags) training batches")
        units = output.units
        flags = self.unit_flags(batch[2].to(units.batch.device), units, self.masked.adapter()).bool()
        if flags.shape != output.relevance.shape:
            raise BottleneckError(f"cue flags per unit must be {list(output.relevance.shape)} (got {list(flags.shape)})")
        if not flags.any():
            return output.relevance.sum() * 0.0
        return self.weight * output.relevance[flags].mean()


def group_weights(groups: Tensor) -> Tensor:
    """``[N]`` sample weights inversely proportional to group size, with mean 1.

    Every group then carries the same total weight, however rare it is.
    """
    if not isinstance(groups, Tensor) or groups.dim() != 1 or groups.numel() == 0:
        raise BottleneckError(f"groups must be a non-empty [N] tensor of group ids (got {describe(groups)})")
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].double()
    return (weights * groups.numel() / weights.sum()).float()


class FlaggedBatches:
    """A re-iterable training loader over a fixed dataset, shuffled or reweighted each epoch.

    :param make_batches: ``make_batches(indices) -> batches`` of the samples ``indices``, in order.
    :param num_samples: size of the dataset.
    :param batch_size: samples per batch (for ``len``).
    :param weights: per-sample weights: each epoch draws ``num_samples`` indices with
        replacement in proportion to them (:func:`group_weights`); ``None`` shuffles.
    :param seed: seeds the order.
    """

    def __init__(
        self, make_batches: Callable[[Tensor], Iterable[Any]], num_samples: int, batch_size: int, *,
        weights: Tensor | None = None, seed: int = 0,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise BottleneckError(f"need samples and a batch size >= 1 (got {num_samples}, {batch_size})")
        if weights is not None and (weights.shape != (num_samples,) or not bool((weights >= 0).all())
                                    or not float(weights.sum()) > 0):
            raise BottleneckError(f"weights must be [{num_samples}] non-negative with a positive sum")
        self.make_batches, self.num_samples, self.batch_size = make_batches, num_samples, batch_size
        self.weights = weights
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=self.generator)
        else:
            order = torch.multinomial(self.weights.double(), self.num_samples, replacement=True,
                                      generator=self.generator)
        return iter(self.make_batches(order))


__all__ = ["CueGatePenalty", "FlaggedBatches", "group_weights"]
