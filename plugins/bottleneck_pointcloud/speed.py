"""The point-cloud models of ``bottleneck bench speed``: PointNet and DGCNN on the procedural shapes.

Both are timed on one batch of 32 clouds of the demo's size (128-256 points) and
trained (dense, then jointly masked at keep 0.25 from the dense weights) on the
same shapes, so the sparse speed-ups come with the accuracy the kept points give.

PointNet here has the original paper's width (per-point MLP ``3 -> 128 -> 256 -> 512``,
about 165k multiply-adds per point against the original's ~150k); the demo's
PointNet is 4x narrower to train in seconds, and at that size the mask's scorer
(~2.5k multiply-adds per point) and the per-sample top-k are a larger share of the
sparse path. DGCNN has one shared layer per EdgeConv, as the paper's classification network.
"""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from bottleneck.speed import SpeedCase

from .data import NUM_CLASSES, make_shapes
from .demo import LEARNING_RATE, SHAPES
from .models import DGCNN, PointNet

#: (quick, full) sizes. DGCNN trains on the first ``dgcnn_train_size`` clouds (about 0.35 s
#: per training step of 32 clouds on 2 CPU cores). PointNet's mask is fine-tuned for 24
#: epochs: after 6 its sparse accuracy at keep 0.25 was 0.68, after 24 it was 0.855 against
#: 0.793 for the dense model trained on for as long (quick sizes).
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 1200, "dgcnn_train_size": 480, "test_size": 256,
           "pointnet_epochs": 12, "pointnet_joint_epochs": 24, "dgcnn_epochs": 5, "dgcnn_joint_epochs": 4},
    False: {"train_size": 2000, "dgcnn_train_size": 960, "test_size": 512,
            "pointnet_epochs": 16, "pointnet_joint_epochs": 24, "dgcnn_epochs": 8, "dgcnn_joint_epochs": 48},
}
#: Fine-tuning the mask and model together starts from the trained dense model, at a
#: third of its learning rate (the dense run's cosine schedule ends at zero).
JOINT_LR = LEARNING_RATE / 3
BATCH_SIZE = 32
#: PointNet's base width ``h`` (layers ``h, 2h, 4h``): the original paper's size.
POINTNET_WIDTH = 128
#: The masks are fine-tuned onto the trained dense models with the fixed-budget top-k
#: gate: on a trained model every point's task gradient holds its hard-concrete gate
#: open (the keep rate stayed at 0.90 through 4 epochs against a 0.25 target), as on
#: the demo's trained ViT; top-k trains the model on exactly what sparse inference keeps.
JOINT_OPTIONS = {"gate": "topk"}
#: DGCNN's joint run lowers the top-k budget from 0.9 to 0.25 over its first half
#: (``keep_warmup``): the trained DGCNN gets 0.21 on a uniform random quarter of each cloud
#: (its k=16 neighbourhoods span 4x the area), and fine-tuned at keep 0.25 from step 0 it
#: collapsed to chance in three of four seeds. The model must re-fit, not only the mask: it
#: fine-tunes for 48 epochs, the mask at 10x the model's rate. With the one-layer EdgeConvs
#: and 960 clouds (dense model of 0.939 reloaded, 1 thread), at keep 0.25: 16 epochs 0.910,
#: 32 epochs 0.955, 48 epochs 0.965 (0.967 at epochs 32-40 of that run); lowering the
#: budget over the first quarter instead of the first half gave 0.920 after 32 epochs. At 3x
#: the rate (the dense run's own) 16 epochs gave 0.973 and 0.951 on
#: seeds 0 and 1 (dense reference 0.979 on seed 1), but on 2000 clouds it collapsed to chance
#: (task loss stuck at ln 8), with gradient clipping at norm 1 too: the faster rate is not
#: kept. (A full bench at that rate gave 0.145, but PointNet, whose code and settings had
#: not changed, was at chance in the same run, so that figure proves nothing either way.)
DGCNN_JOINT_OPTIONS = {"gate": "topk", "keep_warmup": 0.5}
DGCNN_MASK_LR = 10 * JOINT_LR
#: DGCNN's joint run also fits the dense model's predictions on the full clouds
#: (:class:`~bottleneck.distill.DenseTeacher`, weight 3): the dense model's soft labels
#: carry the re-fit through the budget drop. From the cached dense models (1 thread, 48
#: epochs), without it seeds 0 and 1 gave 0.965 and 0.850; at weight 1, 0.965 and 0.953;
#: at weight 3, 0.963 and 0.959.
DGCNN_DISTILL = 3.0
#: DGCNN's joint run clips the gradient norm at 10, above its usual 3-7 (epoch means): at
#: two threads (the bench's), from the bench's own dense model, the run without a clip
#: diverged as the budget reached 0.25 (task loss 0.28 -> 1.4 -> 1.8, sparse accuracy
#: 0.248; with the top-k gradient uncentred too, 2.7 at epoch 32). With the clip at 10 a
#: spike (epoch mean norm 19.6, task loss 1.55 at epoch 12) passed and the run ended at
#: 0.920; at 1 the clip slowed every step (0.914).
DGCNN_MAX_GRAD_NORM = 10.0
#: DGCNN's runs end at their best epoch on held-out clouds (from the end of the budget drop
#: on; the masked run by sparse accuracy at keep 0.25, the dense run by accuracy): the
#: clouds after the first ``dgcnn_train_size`` of the training set, which DGCNN never
#: trains on. The fine-tune's accuracy at keep 0.25 moves by several points between
#: epochs (0.945-0.969 over the last 16 epochs of two side runs; on the held-out clouds of a
#: full run, 0.953-0.980 over the last 16), so its last epoch is a draw.
DGCNN_VALIDATION_SIZE = 256
#: Masks for sparse inference use a 32-wide scorer (``hidden=32``, ~2.3k multiply-adds per
#: point): with the default 64-wide one the scorer was a fifth of PointNet's dense forward
#: and the keep-0.25 speed-up 2.1x instead of 3.0x (side by side, 32 clouds of 128-256 points).
SPARSE_MASK = {"hidden": 32}
#: The issue's sparse speed-up targets at keep 0.25.
TARGETS = {"PointNet": 2.5, "DGCNN": 5.0}
#: Clouds of the larger timing batch (the first of the test set), timed beside the judged
#: batch of :data:`BATCH_SIZE`, not judged. Part of a sparse call does not grow with the
#: batch: from 32 to 128 clouds DGCNN's sparse time per cloud fell from 0.33 to 0.25 ms and
#: its dense time per cloud from 1.37 to 1.29 ms (one full run).
LARGE_BATCH_SIZE = 4 * BATCH_SIZE


def _batches(clouds: list[Any]) -> list[tuple[Batch, Any]]:
    """``(batch, labels)`` pairs of :data:`BATCH_SIZE` clouds, in order."""
    batches = (Batch.from_data_list(clouds[i:i + BATCH_SIZE]) for i in range(0, len(clouds), BATCH_SIZE))
    return [(batch, batch.y) for batch in batches]


def prepare_speed(*, quick: bool = False, seed: int = 0, **overrides: Any) -> list[SpeedCase]:
    """PointNet and DGCNN speed cases; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    sizes = {**SIZES[quick], **overrides}
    shapes = {"min_points": sizes.get("min_points", SHAPES["min_points"]),
              "max_points": sizes.get("max_points", SHAPES["max_points"])}
    train_set = make_shapes(sizes["train_size"], seed=seed, **shapes)
    test_set = make_shapes(sizes["test_size"], seed=seed + 1, **shapes)
    test = _batches(test_set)
    timing = Batch.from_data_list(test_set[:BATCH_SIZE])
    large = Batch.from_data_list(test_set[:LARGE_BATCH_SIZE]) if len(test_set) >= LARGE_BATCH_SIZE else None
    large_batch = None if large is None else (large, large.y)
    validation = _batches(train_set[sizes["dgcnn_train_size"]:sizes["dgcnn_train_size"] + DGCNN_VALIDATION_SIZE])
    settings = {"batch": BATCH_SIZE, "large_batch": None if large is None else LARGE_BATCH_SIZE, **shapes, **sizes}
    return [
        SpeedCase(
            name="PointNet", modality="pointcloud",
            make_model=lambda: PointNet(NUM_CLASSES, hidden=POINTNET_WIDTH),
            batch=(timing, timing.y), attach_options=SPARSE_MASK, sparse_target=TARGETS["PointNet"],
            train=DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True), test=test,
            epochs=sizes["pointnet_epochs"], lr=LEARNING_RATE, joint_epochs=sizes["pointnet_joint_epochs"],
            joint_lr=JOINT_LR, joint_options=JOINT_OPTIONS, large_batch=large_batch,
            settings={**settings, "model": f"PointNet(hidden={POINTNET_WIDTH})"},
        ),
        SpeedCase(
            name="DGCNN", modality="pointcloud", make_model=lambda: DGCNN(NUM_CLASSES),
            batch=(timing, timing.y), attach_options=SPARSE_MASK, sparse_target=TARGETS["DGCNN"],
            train=DataLoader(train_set[:sizes["dgcnn_train_size"]], batch_size=BATCH_SIZE, shuffle=True),
            test=test, epochs=sizes["dgcnn_epochs"], lr=LEARNING_RATE, joint_epochs=sizes["dgcnn_joint_epochs"],
            joint_lr=JOINT_LR, joint_mask_lr=DGCNN_MASK_LR, joint_options=DGCNN_JOINT_OPTIONS,
            joint_distill=DGCNN_DISTILL, joint_max_grad_norm=DGCNN_MAX_GRAD_NORM,
            validation=validation or None, select_from=DGCNN_JOINT_OPTIONS["keep_warmup"], large_batch=large_batch,
            settings={**settings, "model": "DGCNN(k=16, hidden=64)"},
        ),
    ]
