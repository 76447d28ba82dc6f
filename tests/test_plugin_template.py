"""The third-party plugin template installs, loads through its entry point, and trains."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bottleneck
from bottleneck.metrics import mean_auroc
from bottleneck.plugins import modalities, new_plugin_manager, plugin_info, use_plugin_manager

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "plugin_template"


def count_code_lines(path: Path) -> int:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return sum(1 for line in lines if line and not line.startswith("#"))


def test_template_is_small() -> None:
    files = [TEMPLATE / "pyproject.toml", *sorted((TEMPLATE / "bottleneck_timeseries").glob("*.py"))]
    total = sum(count_code_lines(p) for p in files)
    assert total < 120, total


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` the template into a fresh target folder (no deps, offline)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin_template"
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("bottleneck_timeseries")]:
            del sys.modules[name]


class BumpNet(nn.Module):
    """A user's 1-D CNN with global max pooling over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 5, padding=2), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.transpose(1, 2)).amax(dim=-1))


def test_template_loads_through_its_entry_point_and_trains(installed) -> None:
    with use_plugin_manager(new_plugin_manager()):
        assert "timeseries" in modalities()
        row = next(r for r in plugin_info() if r.name == "timeseries")
        assert (row.distribution, row.version) == ("bottleneck-timeseries", "0.1.0")

        from bottleneck_timeseries import make_bumps

        torch.manual_seed(0)
        series, labels, truth = make_bumps(512, seed=0)
        test_series, test_labels, test_truth = make_bumps(256, seed=1)
        loader = torch.utils.data.DataLoader(list(zip(series, labels, strict=True)), batch_size=32, shuffle=True)
        masked = bottleneck.attach(BumpNet(), "timeseries", keep=0.2)
        bottleneck.fit(masked, loader, epochs=12, lr=3e-3, progress=False)
        accuracy = bottleneck.evaluate(masked, [(test_series, test_labels)])["accuracy"]
        explanation = masked.explain(test_series)
        auroc = mean_auroc(explanation.relevance, test_truth.reshape(-1), explanation.batch, 256)
        sparse = masked.sparse(test_series, keep=0.2)
        assert sparse.inputs.shape == (256, 13, 1)  # ceil(0.2 * 64) steps really kept
        sparse_accuracy = (sparse.output.argmax(-1) == test_labels).float().mean().item()
        assert accuracy >= 0.9, accuracy
        assert sparse_accuracy >= 0.9, sparse_accuracy
        assert auroc >= 0.85, auroc
