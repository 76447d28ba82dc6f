"""The text issue's figures, end to end on the embedded corpora.

The ``slow`` cases run the README's settings and check what the README claims (about 1 minute
on a fast 2-core machine); the default run trains the BiLSTM briefly and checks its mask.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bottleneck_text.demo import run


def test_a_briefly_trained_bilstm_mask_keeps_its_budget_and_finds_the_planted_words(tmp_path: Path) -> None:
    """The BiLSTM demo with 1000 sentences and 4 epochs (about 6 s on a fast 2-core machine).

    Measured over seeds 0-4 at these settings: keep 0.065-0.154, AUROC against the planted
    words 0.83-0.93, masked accuracy from 0.025 below plain to 0.035 above it. The sparse
    path is held to the masked model in the slow test only: at these settings it fell 0.19
    below it for seed 0 (0.715 against 0.905) and within 0.03 for the others.
    """
    report = run(tmp_path, model="bilstm", data="planted", quick=True, train_size=1000, epochs=4,
                 progress=False)
    assert report["keep_rate"] <= 0.3, report
    assert report["gt_auroc"] >= 0.75, report
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.05, report


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bilstm", "bert"])
def test_joint_mask_keeps_accuracy_and_finds_the_planted_words(tmp_path: Path, model: str) -> None:
    report = run(tmp_path, model=model, data="planted", progress=False)
    assert report["keep_rate"] <= 0.3
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02
    assert report["gt_auroc"] >= 0.9
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02
    assert (tmp_path / "tokens.html").exists()


@pytest.mark.slow
def test_counting_task_mask_keeps_the_two_digits(tmp_path: Path) -> None:
    report = run(tmp_path, model="bert", data="counting", progress=False)
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02
    assert report["gt_auroc"] >= 0.9
