"""The point-cloud testbed for ``bottleneck bench explain``: PointNet on the procedural shapes.

Each class is a base shape with a discriminative part (20-30% of the points);
the ground truth per point is membership of that part (``data.gt``).
"""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Batch

from bottleneck.testbed import Testbed

from .data import NUM_CLASSES, make_shapes
from .demo import LEARNING_RATE, SHAPES
from .models import PointNet

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 1000, "test_size": 128, "epochs": 12, "joint_epochs": 4, "explain_epochs": 6},
    False: {"train_size": 1500, "test_size": 512, "epochs": 20, "joint_epochs": 8, "explain_epochs": 12},
}
BATCH_SIZE = 64


def prepare(*, quick: bool = False, seed: int = 0, **overrides: Any) -> Testbed:
    """The PointNet testbed; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    from torch_geometric.loader import DataLoader

    sizes = {**SIZES[quick], **overrides}
    train_set = make_shapes(sizes["train_size"], seed=seed, **SHAPES)
    test_set = make_shapes(sizes["test_size"], seed=seed + 1, **SHAPES)
    test = []
    for start in range(0, len(test_set), BATCH_SIZE):
        batch = Batch.from_data_list(test_set[start:start + BATCH_SIZE])
        test.append((batch, batch.y, batch.gt))
    return Testbed(
        modality="pointcloud",
        model_name="PointNet",
        make_model=lambda: PointNet(NUM_CLASSES),
        train=DataLoader(train_set, batch_size=32, shuffle=True),
        test=test,
        feature_layer="point_mlp",
        epochs=sizes["epochs"],
        joint_epochs=sizes["joint_epochs"],
        lr=LEARNING_RATE,
        joint_keep=0.3,
        explain_epochs=sizes["explain_epochs"],
        explain_lr=1e-2,
        settings={"quick": quick, "seed": seed, **sizes},
    )
