"""Random point dropout: a training augmentation that shows a model sparse clouds.

PointNet++ (Qi et al., 2017) trains with "random input dropout" so that the model
copes with clouds of varying density. Here it serves sparse inference: a model that
will run on the quarter of each cloud a mask keeps has to have seen clouds that thin.
A DGCNN trained on full clouds got 0.21 on a uniform random quarter of each test
cloud (its k-neighbourhoods then span 4x the area); the mask can only choose points
well once the model works on what is left.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from bottleneck.errors import BottleneckError

__all__ = ["PointDropout"]


class PointDropout(Dataset):
    """A view of ``clouds`` that keeps a random subset of each cloud's points on every access.

    The kept fraction is uniform in ``[min_keep, 1]`` per access (at least one point), and
    every per-point attribute (``pos``, ``x``, ``gt``, ...) is subset alike; per-sample
    attributes (``y``) are copied. Fresh randomness comes from torch's global generator,
    so a seeded run is reproducible.

    Args:
        clouds: PyG ``Data`` samples with ``pos`` [n, 3].
        min_keep: smallest fraction of points kept, in (0, 1].
    """

    def __init__(self, clouds: Sequence[Data], min_keep: float = 0.25) -> None:
        if not 0.0 < min_keep <= 1.0:
            raise BottleneckError(f"min_keep must be in (0, 1], got {min_keep!r}")
        self.clouds = clouds
        self.min_keep = float(min_keep)

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, index: int) -> Data:
        cloud = self.clouds[index]
        n = cloud.num_nodes
        fraction = self.min_keep + (1.0 - self.min_keep) * float(torch.rand(()))
        keep = torch.randperm(n)[: max(1, round(fraction * n))].sort().values
        out = Data()
        for key, value in cloud.items():
            per_point = (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and value.shape[0] == n
                and key != "y"
            )
            out[key] = value[keep] if per_point else value
        return out
