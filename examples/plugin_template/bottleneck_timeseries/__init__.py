"""A minimal third-party bottleneck plugin: multivariate time series ``[B, T, C]``.

Units are time steps, the unit graph joins neighbouring steps, the baseline is
zero, and sparse inference drops time steps (a model with global pooling runs
on the shorter series). Copy this package to start a plugin for a new modality.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.utils import to_dense_batch

import bottleneck
from bottleneck.errors import BottleneckError, describe
from bottleneck.units import Units, batch_from_counts

__version__ = "0.1.0"


class TimeSeries(bottleneck.Modality):
    """``[B, T, C]`` float tensors; each time step is a unit."""

    name = "timeseries"
    baselines = ("zero",)

    def accepts(self, inputs: Any) -> bool:
        return False  # [B, T, C] is ambiguous with dense point clouds: ask users to name it

    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        if not isinstance(inputs, Tensor) or inputs.dim() != 3 or not inputs.is_floating_point():
            raise BottleneckError(f"time series must be a float [B, T, C] tensor (got {describe(inputs)})")
        b, t, c = inputs.shape
        if b == 0 or t == 0:
            raise BottleneckError(f"empty time series: got {describe(inputs)}")
        if not torch.isfinite(inputs).all():
            raise BottleneckError("time series holds NaN or Inf values")
        batch = batch_from_counts(torch.full((b,), t, device=inputs.device))
        edge_index = None
        if with_graph:  # step i -> i + 1 within each series
            steps = torch.arange(b * t, device=inputs.device).view(b, t)
            edge_index = torch.stack([steps[:, :-1].reshape(-1), steps[:, 1:].reshape(-1)])
        return Units(x=inputs.reshape(b * t, c), batch=batch, num_samples=b, edge_index=edge_index)

    def apply_gates(self, inputs: Tensor, units: Units, gates: Tensor, baseline: str) -> Tensor:
        return inputs * gates.view(inputs.shape[0], inputs.shape[1], 1).to(inputs.dtype)

    def drop_units(self, inputs: Tensor, units: Units, keep: Tensor) -> Tensor:
        # ragged -> padded with zeros; models with max pooling over ReLU features ignore them
        dense, _ = to_dense_batch(units.x[keep], units.batch[keep], batch_size=units.num_samples)
        return dense


@bottleneck.hookimpl
def bottleneck_register_modalities(register) -> None:
    register(TimeSeries())


def make_bumps(num_samples: int, steps: int = 64, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Noise series where the class is the sign of a short bump at a random time.

    Returns ``(series [B, T, 1], labels [B], ground truth [B, T] bool)``.
    """
    g = torch.Generator().manual_seed(seed)
    series = 0.3 * torch.randn(num_samples, steps, 1, generator=g)
    labels = torch.randint(0, 2, (num_samples,), generator=g)
    start = torch.randint(0, steps - 6, (num_samples,), generator=g)
    offsets = torch.arange(steps).unsqueeze(0) - start.unsqueeze(1)
    truth = (offsets >= 0) & (offsets < 6)
    series[..., 0] += truth * (2.0 * labels.unsqueeze(1) - 1.0) * 1.5
    return series, labels, truth
