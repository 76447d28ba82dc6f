"""Point-cloud bias cue: a small cluster of extra points at a class-specific place.

Variant ``c`` is a tight ball of ``size`` points at ``distance`` cloud radii from
the cloud's centroid, in direction ``c`` of evenly spread directions (a Fibonacci
sphere), so a model can learn "a blob up-left means class 2" as a shortcut.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from bottleneck.cues import Cue, CueAssignment, Planted
from bottleneck.errors import BottleneckError, describe


def class_directions(num_classes: int) -> Tensor:
    """``[num_classes, 3]`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = torch.arange(num_classes, dtype=torch.float32) + 0.5
    z = 1.0 - 2.0 * i / num_classes
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = (1.0 - z * z).clamp(min=0).sqrt()
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


class PointCluster(Cue):
    """``size`` extra points in a ball of radius ``spread`` (in cloud radii), placed per class.

    :param size: points added to each cloud that carries the cue.
    :param distance: distance of the ball's centre from the centroid, in cloud radii.
    :param spread: standard deviation of the ball, in cloud radii.
    :param seed: seeds the points' jitter, so planting is reproducible.
    """

    name = "cluster"
    modality = "pointcloud"

    def __init__(self, size: int = 8, distance: float = 1.5, spread: float = 0.05, seed: int = 0) -> None:
        if not isinstance(size, int) or size < 1:
            raise BottleneckError(f"size must be a positive number of points (got {size!r})")
        if distance < 0 or spread <= 0:
            raise BottleneckError(f"distance must be >= 0 and spread > 0 (got {distance!r}, {spread!r})")
        self.size, self.distance, self.spread, self.seed = size, float(distance), float(spread), seed

    def plant(self, inputs: Any, assignment: CueAssignment, num_classes: int) -> Planted:
        if not isinstance(inputs, Batch) or getattr(inputs, "pos", None) is None:
            raise BottleneckError(f"the cluster cue needs a PyG Batch of clouds with .pos (got {describe(inputs)})")
        clouds = inputs.to_data_list()
        if assignment.present.shape != (len(clouds),):
            raise BottleneckError(
                f"cue assignment is for {assignment.present.numel()} samples, the batch has {len(clouds)}"
            )
        directions = class_directions(num_classes)
        generator = torch.Generator().manual_seed(self.seed)
        planted, flags = [], []
        for cloud, present, variant in zip(clouds, assignment.present.tolist(), assignment.variant.tolist(),
                                           strict=True):
            if not present:
                planted.append(cloud)
                flags.append(torch.zeros(cloud.num_nodes, dtype=torch.bool))
                continue
            planted.append(self._with_cluster(cloud, directions[variant], generator))
            flags.append(torch.cat([torch.zeros(cloud.num_nodes, dtype=torch.bool),
                                    torch.ones(self.size, dtype=torch.bool)]))
        batch = Batch.from_data_list(planted)
        return Planted(batch, torch.cat(flags).to(batch.pos.device))

    def _with_cluster(self, cloud: Data, direction: Tensor, generator: torch.Generator) -> Data:
        pos = cloud.pos
        centroid = pos.mean(0)
        radius = (pos - centroid).norm(dim=-1).mean().clamp(min=1e-6)
        jitter = torch.randn(self.size, 3, generator=generator).to(pos)
        extra = centroid + radius * (self.distance * direction.to(pos) + self.spread * jitter)
        out = cloud.clone()
        out.pos = torch.cat([pos, extra])
        for key in list(cloud.keys()):
            value = cloud[key]
            if key == "pos" or not isinstance(value, Tensor) or value.dim() == 0:
                continue
            if value.shape[0] == cloud.num_nodes and cloud.is_node_attr(key):
                filler = torch.zeros((self.size, *value.shape[1:]), dtype=value.dtype, device=value.device)
                out[key] = torch.cat([value, filler])  # extra points: no features, not ground truth
        return out
