"""End to end on the embedded shapes: the jointly masked PointNet keeps its accuracy on
30% of the points, its relevance finds the planted part, and sparse inference agrees.

Two tiers. The default run trains the mask once at reduced settings (1500 clouds, 10 epochs,
no plain model: about 15 s on a fast 2-core machine) and checks what those settings reach;
the ``slow`` test runs the README's demo at its full settings and checks the README's figures.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.loader import DataLoader

from bottleneck_pointcloud.data import NUM_CLASSES, make_shapes
from bottleneck_pointcloud.demo import SHAPES, run, train_and_measure
from bottleneck_pointcloud.models import PointNet


def test_a_briefly_trained_joint_mask_keeps_its_budget_finds_the_part_and_drops_points_safely() -> None:
    """The demo's mask training and measurement at reduced settings (its own functions, seed 0).

    Measured over seeds 0-4 at these settings (``train_and_measure`` with the seed's data):
    keep 0.227-0.265, sparse keep 0.302-0.303, AUROC against the planted part 0.992-0.999,
    masked accuracy 0.49-0.75 and sparse 0.42-0.72 (chance 0.125). Ten epochs are too few for
    the joint model to catch the plain one or for sparse to track masked closely (it fell
    0.005-0.10 below): the slow test holds both to 2 points at the README's 30 epochs. A mask
    blind to the part scores an AUROC near 0.5.
    """
    torch.manual_seed(0)
    train = DataLoader(make_shapes(1500, seed=0, **SHAPES), batch_size=32, shuffle=True)
    test = DataLoader(make_shapes(200, seed=1, **SHAPES), batch_size=100)
    masked, figures = train_and_measure(PointNet(NUM_CLASSES), "hard_concrete", 0.3, train, test,
                                        epochs=10, device=torch.device("cpu"), progress=False)
    assert figures["keep_rate"] <= 0.31, figures
    assert figures["sparse_keep_rate"] <= 0.31, figures
    assert figures["gt_auroc"] >= 0.95, figures
    assert figures["accuracy_masked"] >= 0.3, figures
    assert figures["accuracy_sparse"] >= 0.3, figures


@pytest.mark.slow
def test_joint_mask_keeps_accuracy_and_finds_the_part(tmp_path) -> None:
    report = run(tmp_path, progress=False)
    # the multiplier holds the *expected* keep rate at 0.3; the deterministic rate the
    # model sees scatters around it (0.276 against an expected 0.292 on an AMD EPYC, the same in
    # two processes; 0.287 and 0.304 in earlier runs, before the training was bit-reproducible)
    assert report["keep_rate"] <= 0.31, report
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02, report
    assert report["gt_auroc"] >= 0.85, report
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02, report
    assert report["details"]["hard_concrete"]["sparse_keep_rate"] <= 0.31
