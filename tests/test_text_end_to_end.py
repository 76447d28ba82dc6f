"""The text issue's figures, end to end on the embedded corpora (slow: about 2.5 minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bottleneck_text.demo import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["bilstm", "bert"])
def test_joint_mask_keeps_accuracy_and_finds_the_planted_words(tmp_path: Path, model: str) -> None:
    report = run(tmp_path, model=model, data="planted", progress=False)
    assert report["keep_rate"] <= 0.3
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02
    assert report["gt_auroc"] >= 0.9
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02
    assert (tmp_path / "tokens.html").exists()


def test_counting_task_mask_keeps_the_two_digits(tmp_path: Path) -> None:
    report = run(tmp_path, model="bert", data="counting", progress=False)
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02
    assert report["gt_auroc"] >= 0.9
