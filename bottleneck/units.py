"""``Units``: every modality's input as one ragged, flat set of units.

Points, pixels/patches and tokens all become rows of ``x`` with a ``batch``
vector saying which sample each row belongs to (the PyG convention), so the
mask layer, the objective, top-k and the metrics have one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .errors import BottleneckError, describe


@dataclass
class Units:
    """A batch of samples flattened into units.

    :param x: ``[N, F]`` features of each unit, used by the scorer.
    :param batch: ``[N]`` long, the sample each unit belongs to, sorted ascending.
    :param num_samples: ``B``, the number of samples (a sample may not be empty).
    :param pos: ``[N, D]`` coordinates for neighbourhoods, or ``None``.
    :param edge_index: ``[2, E]`` unit graph (within samples), or ``None``.
    :param meta: anything the plugin needs to map gates back to model inputs.
    """

    x: Tensor
    batch: Tensor
    num_samples: int
    pos: Tensor | None = None
    edge_index: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dim() != 2:
            raise BottleneckError(f"Units.x must be [N, F]; got {describe(self.x)}")
        if self.batch.dim() != 1 or self.batch.numel() != self.x.shape[0]:
            raise BottleneckError(
                f"Units.batch must be [N] with N={self.x.shape[0]}; got {describe(self.batch)}"
            )
        if self.batch.dtype != torch.long:
            raise BottleneckError(f"Units.batch must be torch.long; got {self.batch.dtype}")

    @property
    def num_units(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def counts(self) -> Tensor:
        """``[B]`` number of units in each sample."""
        return torch.bincount(self.batch, minlength=self.num_samples)

    def ptr(self) -> Tensor:
        """``[B + 1]`` offsets of each sample's first unit (CSR style)."""
        return counts_to_ptr(self.counts())

    def with_(self, **changes: Any) -> Units:
        """A copy with some fields replaced."""
        return replace(self, **changes)


def counts_to_ptr(counts: Tensor) -> Tensor:
    """``[B] counts -> [B + 1]`` offsets."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def batch_from_counts(counts: Tensor) -> Tensor:
    """``[B] counts -> [N]`` batch vector."""
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
