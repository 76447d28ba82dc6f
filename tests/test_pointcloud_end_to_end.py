"""End to end on the embedded shapes: the jointly masked PointNet keeps its accuracy on
30% of the points, its relevance finds the planted part, and sparse inference agrees."""

from __future__ import annotations

import pytest

from bottleneck_pointcloud.demo import run


@pytest.mark.slow
def test_joint_mask_keeps_accuracy_and_finds_the_part(tmp_path) -> None:
    report = run(tmp_path, progress=False)
    # the multiplier holds the *expected* keep rate at 0.3; the deterministic rate the
    # model sees scatters around it (0.287 and 0.304 in two runs of the same settings)
    assert report["keep_rate"] <= 0.31, report
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02, report
    assert report["gt_auroc"] >= 0.85, report
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02, report
    assert report["details"]["hard_concrete"]["sparse_keep_rate"] <= 0.31
