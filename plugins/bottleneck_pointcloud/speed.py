"""The point-cloud models of ``bottleneck bench speed``: PointNet and DGCNN on the procedural shapes.

Both are timed on one batch of 32 clouds and trained (dense, then jointly masked at
keep 0.25 from the dense weights) on the same shapes the demo uses, so the sparse
speed-ups come with the accuracy the kept points give.
"""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from bottleneck.speed import SpeedCase

from .data import NUM_CLASSES, make_shapes
from .demo import LEARNING_RATE
from .models import DGCNN, PointNet

#: (quick, full) sizes; clouds of ``min_points``..``max_points`` points.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 800, "test_size": 256, "min_points": 256, "max_points": 384,
           "pointnet_epochs": 10, "dgcnn_epochs": 4, "joint_epochs": 3},
    False: {"train_size": 1500, "test_size": 512, "min_points": 256, "max_points": 384,
            "pointnet_epochs": 16, "dgcnn_epochs": 8, "joint_epochs": 5},
}
BATCH_SIZE = 32
#: The issue's sparse speed-up targets at keep 0.25.
TARGETS = {"PointNet": 2.5, "DGCNN": 5.0}


def prepare_speed(*, quick: bool = False, seed: int = 0, **overrides: Any) -> list[SpeedCase]:
    """PointNet and DGCNN speed cases; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    sizes = {**SIZES[quick], **overrides}
    shapes = {"min_points": sizes["min_points"], "max_points": sizes["max_points"]}
    train_set = make_shapes(sizes["train_size"], seed=seed, **shapes)
    test_set = make_shapes(sizes["test_size"], seed=seed + 1, **shapes)
    test = []
    for start in range(0, len(test_set), BATCH_SIZE):
        batch = Batch.from_data_list(test_set[start:start + BATCH_SIZE])
        test.append((batch, batch.y))
    timing = Batch.from_data_list(test_set[:BATCH_SIZE])
    train = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True)
    settings = {"batch": BATCH_SIZE, **sizes}
    return [
        SpeedCase(
            name="PointNet", modality="pointcloud", make_model=lambda: PointNet(NUM_CLASSES),
            batch=(timing, timing.y), sparse_target=TARGETS["PointNet"], train=train, test=test,
            epochs=sizes["pointnet_epochs"], lr=LEARNING_RATE, joint_epochs=sizes["joint_epochs"],
            joint_lr=LEARNING_RATE, settings=settings,
        ),
        SpeedCase(
            name="DGCNN", modality="pointcloud", make_model=lambda: DGCNN(NUM_CLASSES),
            batch=(timing, timing.y), sparse_target=TARGETS["DGCNN"], train=train, test=test,
            epochs=sizes["dgcnn_epochs"], lr=LEARNING_RATE, joint_epochs=sizes["joint_epochs"],
            joint_lr=LEARNING_RATE, settings=settings,
        ),
    ]
