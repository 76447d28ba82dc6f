"""Fill-value state a masked model owns: a running dataset mean and a learned value.

A dropped unit is replaced by a baseline. Some baselines need state that must
train with the mask, move with it to the device and be saved with it: the
dataset mean (accumulated over the training inputs, then frozen) and a learned
vector (DiffMask's placeholder). Plugins create these through
:meth:`~bottleneck.modality.Modality.make_baseline`; both work on any tensor
whose channel dimension is ``dim`` (1 for ``[B, C, H, W]`` images and feature
maps) and size themselves on the first call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from .errors import BottleneckError, describe


def _broadcast(values: Tensor, like: Tensor, dim: int) -> Tensor:
    """``[C]`` values shaped to broadcast against ``like`` along its channel ``dim``."""
    shape = [1] * like.dim()
    shape[dim] = values.numel()
    return values.to(like.dtype).view(shape)


def _channels(x: Tensor, dim: int, what: str) -> int:
    if not isinstance(x, Tensor) or x.dim() <= dim:
        raise BottleneckError(f"{what} needs a tensor with a channel dimension {dim} (got {describe(x)})")
    return int(x.shape[dim])


class RunningChannelMean(LazyModuleMixin, nn.Module):
    """Per-channel mean of every input seen in training mode; the ``mean`` baseline.

    In training mode each call adds the batch to the running sums (exact mean over
    all training inputs, not an exponential average) and returns the mean so far;
    in eval mode it returns the stored mean (the batch's own mean if it never saw
    training data).
    """

    cls_to_become = None

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.total: Tensor = UninitializedBuffer()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        if not self.has_uninitialized_params():  # loaded from a saved mask
            return
        channels = _channels(x, self.dim, "the mean baseline")
        self.total.materialize((channels,), dtype=torch.float64, device=x.device)
        self.total.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if _channels(x, self.dim, "the mean baseline") != self.total.numel():
            raise BottleneckError(
                f"the mean baseline was sized for {self.total.numel()} channels; got {describe(x)}"
            )
        reduce = [d for d in range(x.dim()) if d != self.dim]
        if self.training:
            with torch.no_grad():
                self.total += x.detach().to(torch.float64).sum(reduce)
                self.count += x.numel() // x.shape[self.dim]
        if self.count == 0:
            return x.detach().mean(reduce, keepdim=True)
        return _broadcast(self.total / self.count, x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LearnedChannelValue(LazyModuleMixin, nn.Module):
    """A learned per-channel value (DiffMask's placeholder); the ``learned`` baseline."""

    cls_to_become = None

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.value: Tensor = UninitializedParameter()

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        if not self.has_uninitialized_params():  # loaded from a saved mask
            return
        channels = _channels(x, self.dim, "the learned baseline")
        self.value.materialize((channels,), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            reduce = [d for d in range(x.dim()) if d != self.dim]
            self.value.copy_(x.detach().mean(reduce))  # start at the first batch's mean

    def forward(self, x: Tensor) -> Tensor:
        if _channels(x, self.dim, "the learned baseline") != self.value.numel():
            raise BottleneckError(
                f"the learned baseline was sized for {self.value.numel()} channels; got {describe(x)}"
            )
        return _broadcast(self.value, x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
