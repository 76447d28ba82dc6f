"""The point-cloud setting of ``bottleneck audit``: PointNet on the procedural shapes with a cluster cue.

The discriminative part of each shape decides the label; the cue (a small ball of
extra points at a class-specific place) agrees with the label in ``correlation``
of the training clouds. Units are points; the cue's points are the cue units.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from bottleneck.bias_audit import AuditData, FlaggedBatch
from bottleneck.cue_setting import CueSetting
from bottleneck.cues import Cue, Planted, assign_cues
from bottleneck.explanation import Explanation
from bottleneck.plugins import get_cue

from .data import NUM_CLASSES, make_shapes
from .demo import LEARNING_RATE, SHAPES
from .models import PointNet

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 1000, "test_size": 256, "epochs": 20},
    False: {"train_size": 2000, "test_size": 1000, "epochs": 16},
}
BATCH_SIZE = 32


def split_planted(planted: Planted) -> tuple[list[Data], list[Tensor]]:
    """The planted clouds one by one, with each cloud's per-point cue flags."""
    batch: Batch = planted.inputs
    clouds = batch.to_data_list()
    counts = torch.bincount(batch.batch, minlength=len(clouds)).tolist()
    return clouds, list(planted.flags.cpu().split(counts))


def _chunks(clouds: list[Data], flags: list[Tensor], order: Tensor, size: int) -> Iterator[FlaggedBatch]:
    for start in range(0, order.numel(), size):
        rows = order[start:start + size].tolist()
        batch = Batch.from_data_list([clouds[i] for i in rows])
        yield batch, batch.y, torch.cat([flags[i] for i in rows])


def _render(explanation: Explanation, out_dir: Path, prefix: str, flags: Tensor) -> list[Path]:
    return explanation.render(out_dir, prefix=prefix, gt=flags)


def prepare_audit(*, cue: str | Cue = "cluster", quick: bool = False, seed: int = 0,
                  correlation: float = 0.95, **overrides: Any) -> CueSetting:
    """The PointNet audit setting; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    cue = get_cue(cue, "pointcloud") if isinstance(cue, str) else cue
    sizes = {**SIZES[quick], **overrides}
    train_set = make_shapes(sizes["train_size"], seed=seed, **SHAPES)
    test_set = make_shapes(sizes["test_size"], seed=seed + 1, **SHAPES)
    train_labels = torch.cat([cloud.y for cloud in train_set])
    generator = torch.Generator().manual_seed(seed)
    assignment = assign_cues(train_labels, NUM_CLASSES, correlation, generator=generator)
    clouds, flags = split_planted(cue.plant(Batch.from_data_list(train_set), assignment, NUM_CLASSES))

    def train_batches(order: Tensor) -> Iterator[FlaggedBatch]:
        return _chunks(clouds, flags, order, BATCH_SIZE)

    def encode(planted: Planted, labels: Tensor) -> list[FlaggedBatch]:
        test_clouds, test_flags = split_planted(planted)
        return list(_chunks(test_clouds, test_flags, torch.arange(len(test_clouds)), 128))

    clean = Batch.from_data_list(test_set)
    test = AuditData(
        modality="pointcloud", clean=clean, labels=clean.y.clone(), num_classes=NUM_CLASSES, encode=encode,
        select=lambda batch, rows: Batch.from_data_list(batch.index_select(rows)), render=_render,
    )
    return CueSetting(
        modality="pointcloud", model_name="PointNet", make_model=lambda: PointNet(NUM_CLASSES), cue=cue,
        correlation=correlation, train_batches=train_batches, train_assignment=assignment, test=test,
        epochs=sizes["epochs"], lr=LEARNING_RATE, batch_size=BATCH_SIZE, keep=0.3,
        # nothing of the shut cue may reach the model through other points: the scorer reads raw
        # coordinates (centred ones move with the cue's points), and closed points go to the
        # origin ("zero"), not to the centroid, which the cue's points pull towards their class
        mitigation_options={"context": False, "normalise": False, "baseline": "zero"},
        settings={"quick": quick, "seed": seed, "cue": cue.name, "correlation": correlation, **sizes},
    )
