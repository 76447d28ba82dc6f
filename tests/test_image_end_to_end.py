"""The image issue's figures, end to end on the embedded data.

Each case runs the full ``bottleneck demo image`` pipeline — plain and masked
training, dense and sparse evaluation, localisation against the planted
pattern. The ``slow`` cases run the README's settings and check what the README
claims (about 4 minutes on a fast 2-core machine); the default run checks the
ViT's sparse path at reduced settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bottleneck_image.demo import run


def test_a_briefly_trained_vit_drops_three_quarters_of_its_patches_without_changing_its_answers(
    tmp_path: Path,
) -> None:
    """The ViT demo at ``--quick`` with 10 epochs (500 digits; about 12 s on a fast 2-core machine).

    Measured over seeds 0-4 at these settings: masked accuracy 0.53-0.82 (chance 0.1; the
    plain ViT, trained as briefly, 0.10-0.26), the sparse path within 0.002 of it each time.
    """
    report = run(tmp_path, model="vit", data="digits", keep=0.25, quick=True, epochs=10, progress=False)
    assert report["sparse_removes_units"]
    assert report["details"]["sparse_keep_rate"] == pytest.approx(0.25)
    assert report["accuracy_masked"] >= 0.4, report
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02, report


@pytest.mark.slow
def test_cnn_on_planted_patterns_keeps_its_accuracy_and_finds_the_pattern(tmp_path: Path) -> None:
    report = run(tmp_path, model="cnn", data="planted", progress=False)
    assert report["keep_rate"] <= 0.3
    # One draw of a mask trained from scratch beside the model: of 11 draws measured at the
    # demo's settings (README, Images) 9 ended within 2 points of plain and the worst 3.5
    # below, so this one run is held to 5; a mask that hides the class pattern ends far
    # lower (0.125, chance, after one epoch).
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.05
    # The mask keeps every glyph, the class pattern and its 2-4 distractors alike (README,
    # Images), so its AUROC against the class pattern alone sits near 0.9: 0.89-0.96 over
    # the draws measured (mask seeds, machines). 0.85 clears that spread and stays far
    # above a mask blind to the pattern (0.5).
    assert report["gt_auroc"] >= 0.85
    assert not report["sparse_removes_units"]


@pytest.mark.slow
def test_cnn_on_digits_keeps_its_accuracy(tmp_path: Path) -> None:
    report = run(tmp_path, model="cnn", data="digits", progress=False)
    assert report["keep_rate"] <= 0.3
    assert report["accuracy_masked"] >= report["accuracy_plain"] - 0.02
    assert report["gt_auroc"] is None


@pytest.mark.slow
def test_vit_sparse_path_removes_tokens_without_losing_accuracy(tmp_path: Path) -> None:
    report = run(tmp_path, model="vit", data="digits", keep=0.25, progress=False)
    assert report["sparse_removes_units"]
    assert report["details"]["sparse_keep_rate"] == pytest.approx(0.25)
    assert abs(report["accuracy_sparse"] - report["accuracy_masked"]) <= 0.02


@pytest.mark.slow
def test_mask_seed_benchmark_writes_one_row_per_draw_and_its_summary(tmp_path: Path) -> None:
    """``benchmarks/image_cnn_mask_seeds.py`` (one epoch each: the file's shape, not the figures)."""
    out = tmp_path / "seeds.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "image_cnn_mask_seeds.py"), "--epochs", "1",
                           "--mask-seeds", "1,2", "--keep-warmups", "0.7", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["keep_warmup"], r["mask_seed"]) for r in rows] == [(0.7, 1), (0.7, 2)]
    for r in rows:
        assert 0.0 <= r["accuracy_masked"] <= 1.0 and 0.0 <= r["gt_auroc"] <= 1.0
        assert r["within_2_points"] == (r["accuracy_masked"] >= result["accuracy_plain"] - 0.02)
    summary = result["summary"]["0.7"]
    assert summary["runs"] == 2 and summary["accuracy_min"] == min(r["accuracy_masked"] for r in rows)
    assert "keep_warmup 0.7: " in done.stdout
