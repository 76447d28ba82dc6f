"""Examples run as a user would run them, and the demo writes its report and renders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bottleneck.cli import main
from bottleneck.demo import REPORT_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_wrap_pyg_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wrap_pyg_model.py"), "--fast", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy sparse" in result.stdout and "AUROC" in result.stdout
    assert (tmp_path / "mask.safetensors").stat().st_size > 0
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_demo_writes_the_shared_report(tmp_path: Path, capsys) -> None:
    code = main(["demo", "pointcloud", "--out", str(tmp_path), "--quick", "--epochs", "1", "--train-size", "96"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report
    for key in ("accuracy_plain", "accuracy_masked", "accuracy_sparse", "keep_rate", "gt_auroc"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0
    assert report["modality"] == "pointcloud" and report["model"] == "PointNet"
    assert "hard_concrete" in report["details"]
    assert len(list(tmp_path.glob("*.png"))) >= 1
    assert (tmp_path / "mask.safetensors").exists()
    assert '"accuracy_sparse"' in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pointcloud", "image", "text"])
@pytest.mark.parametrize(("option", "value"), [("--epochs", "0"), ("--train-size", "0"), ("--epochs", "-2")])
def test_demo_refuses_a_count_below_one_before_any_work(tmp_path: Path, capsys, name: str, option: str,
                                                         value: str) -> None:
    """``--epochs 0`` ran the default number of epochs (``epochs or default``), silently."""
    assert main(["demo", name, "--out", str(tmp_path / "out"), "--quick", option, value]) == 2
    assert f"{option} must be an int >= 1 (got {value})" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_unknown_name_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "pointclouds", "--out", "x"])


@pytest.mark.parametrize("where", ["input", "features"])
def test_wrap_cnn_example_runs(tmp_path: Path, where: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wrap_cnn.py"), "--fast", "--where", where, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pixel AUROC" in result.stdout
    assert (tmp_path / "mask.safetensors").stat().st_size > 0
    assert (tmp_path / "image_grid.png").exists() and len(list(tmp_path.glob("image_0*.png"))) == 6


@pytest.mark.parametrize(("model", "data"), [("cnn", "planted"), ("vit", "digits")])
def test_image_demo_writes_the_shared_report(tmp_path: Path, model: str, data: str) -> None:
    code = main(["demo", "image", "--out", str(tmp_path), "--quick", "--model", model, "--data", data,
                 "--epochs", "1", "--train-size", "128"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["modality"] == "image" and report["data"] == data
    assert report["sparse_removes_units"] is (model == "vit")
    if data == "digits":
        assert report["gt_auroc"] is None
    else:
        assert 0.0 <= report["gt_auroc"] <= 1.0
    assert (tmp_path / "relevance_grid.png").exists() and (tmp_path / "mask.safetensors").exists()


def test_wrap_hf_text_classifier_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wrap_hf_text_classifier.py"), "--fast", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "re-packed sequences" in result.stdout and "\x1b[48;2;" in result.stdout  # ANSI highlights
    assert (tmp_path / "tokens.html").read_text().count("<span") > 10


@pytest.mark.parametrize("model", ["bilstm", "bert"])
def test_text_demo_writes_the_shared_report(tmp_path: Path, model: str) -> None:
    code = main(["demo", "text", "--out", str(tmp_path), "--quick", "--model", model, "--epochs", "1",
                 "--train-size", "128"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["modality"] == "text" and 0.0 <= report["gt_auroc"] <= 1.0
    html = (tmp_path / "tokens.html").read_text()
    assert "line-through" in html or "border-bottom" in html
