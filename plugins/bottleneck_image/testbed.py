"""The image testbed for ``bottleneck bench explain``: the small ResNet on the planted glyphs.

Each 32x32 image holds a class glyph at a random place among distractor glyphs;
a unit (4x4 patch) is ground truth when it holds a pixel of the class glyph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from bottleneck.explanation import Explanation
from bottleneck.modality import Modality
from bottleneck.testbed import Testbed
from bottleneck.units import Units

from .data import make_planted
from .demo import SETTINGS, build_model

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 1500, "test_size": 128, "epochs": 10, "joint_epochs": 4, "explain_epochs": 6},
    False: {"train_size": 2000, "test_size": 512, "epochs": 20, "joint_epochs": 8, "explain_epochs": 10},
}
BATCH_SIZE = 64


def patch_truth(truth: Tensor, units: Units, adapter: Modality) -> Tensor:
    """Per-patch ground truth from the ``[B, H, W]`` pixel ground truth."""
    return adapter.unit_truth(truth.to(units.batch.device), units)  # type: ignore[attr-defined]


def prepare(*, quick: bool = False, seed: int = 0, **overrides: Any) -> Testbed:
    """The SmallResNet testbed; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    sizes = {**SIZES[quick], **overrides}
    train_set = make_planted(sizes["train_size"], seed=seed)
    test_set = make_planted(sizes["test_size"], seed=seed + 1)
    test = []
    for start in range(0, len(test_set), BATCH_SIZE):
        part = test_set[slice(start, start + BATCH_SIZE)]
        test.append((part.images, part.labels, part.gt))

    def render(explanation: Explanation, out_dir: Path, index: int) -> list[Path]:
        return explanation.render(out_dir, prefix=f"image_batch{index}", gt=test[index][2])

    return Testbed(
        modality="image",
        model_name="SmallResNet",
        make_model=lambda: build_model("cnn", train_set),
        train=train_set.loader(64, shuffle=True, seed=seed),
        test=test,
        feature_layer="layer3",
        epochs=sizes["epochs"],
        joint_epochs=sizes["joint_epochs"],
        lr=SETTINGS[("cnn", "planted")]["lr"],
        joint_keep=0.25,
        # IBA-style: zero-filled input patches are out of distribution for a CNN, so the
        # mask explains at layer2's 8x8 feature map (the input-level mask is reported too)
        explain_options={"where": "layer2"},
        explain_epochs=sizes["explain_epochs"],
        explain_lr=1e-2,
        settings={"quick": quick, "seed": seed, **sizes},
        unit_truth=patch_truth,
        render=render,
    )
