"""The image setting of ``bottleneck audit``: the small ResNet on planted glyphs with a corner-patch cue.

Each class's glyph decides the label; the cue (a corner square of the class's
colour by default, or a colour tint) agrees with the label in ``correlation`` of
the training images. A unit (4x4 patch) is a cue unit when it holds a cue pixel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottleneck.bias_audit import AuditData, FlaggedBatch
from bottleneck.cue_setting import CueSetting
from bottleneck.cues import Cue, Planted, assign_cues
from bottleneck.explanation import Explanation
from bottleneck.plugins import get_cue

from .data import make_planted
from .demo import SETTINGS, build_model
from .testbed import patch_truth

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 2000, "test_size": 256, "epochs": 15},
    False: {"train_size": 3000, "test_size": 1000, "epochs": 15},
}
BATCH_SIZE = 64


def _chunks(images: Tensor, labels: Tensor, flags: Tensor, order: Tensor, size: int) -> Iterator[FlaggedBatch]:
    for start in range(0, order.numel(), size):
        rows = order[start:start + size]
        yield images[rows], labels[rows], flags[rows]


def _render(explanation: Explanation, out_dir: Path, prefix: str, flags: Tensor) -> list[Path]:
    return explanation.render(out_dir, prefix=prefix, gt=flags)


def prepare_audit(*, cue: str | Cue = "corner_patch", quick: bool = False, seed: int = 0,
                  correlation: float = 0.95, **overrides: Any) -> CueSetting:
    """The SmallResNet audit setting; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    cue = get_cue(cue, "image") if isinstance(cue, str) else cue
    sizes = {**SIZES[quick], **overrides}
    train_set = make_planted(sizes["train_size"], seed=seed)
    test_set = make_planted(sizes["test_size"], seed=seed + 1)
    num_classes = train_set.num_classes
    generator = torch.Generator().manual_seed(seed)
    assignment = assign_cues(train_set.labels, num_classes, correlation, generator=generator)
    planted = cue.plant(train_set.images, assignment, num_classes)

    def train_batches(order: Tensor) -> Iterator[FlaggedBatch]:
        return _chunks(planted.inputs, train_set.labels, planted.flags, order, BATCH_SIZE)

    def encode(test_planted: Planted, labels: Tensor) -> list[FlaggedBatch]:
        order = torch.arange(labels.numel())
        return list(_chunks(test_planted.inputs, labels, test_planted.flags, order, 128))

    test = AuditData(
        modality="image", clean=test_set.images, labels=test_set.labels, num_classes=num_classes, encode=encode,
        select=lambda images, rows: images[rows], unit_flags=patch_truth, render=_render,
    )
    return CueSetting(
        modality="image", model_name="SmallResNet", make_model=lambda: build_model("cnn", train_set), cue=cue,
        correlation=correlation, train_batches=train_batches, train_assignment=assignment, test=test,
        epochs=sizes["epochs"], lr=SETTINGS[("cnn", "planted")]["lr"], batch_size=BATCH_SIZE, keep=0.25,
        settings={"quick": quick, "seed": seed, "cue": cue.name, "correlation": correlation, **sizes},
    )
