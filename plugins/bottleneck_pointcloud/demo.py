"""``bottleneck demo pointcloud``: PointNet plain vs jointly masked on the embedded shapes.

Trains the same PointNet (same initial weights) three times on the procedural
shapes — plain, with the default hard-concrete mask, and with PointMask's
gaussian gate through the same pipeline — then measures test accuracy (plain,
masked, sparse at the keep target), the keep rate, and how well the relevance
finds the ground-truth part (AUROC), writes ``report.json``, relevance renders
and the trained mask.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch_geometric.loader import DataLoader

import bottleneck
from bottleneck.demo import Demo, write_report
from bottleneck.metrics import mean_auroc

from .data import NUM_CLASSES, make_shapes
from .models import PointNet


def relevance_auroc(masked: bottleneck.MaskedModel, loader: DataLoader, device: torch.device) -> float:
    """Mean per-cloud AUROC of the mask's relevance against the ground-truth part."""
    scores, labels, batches, offset = [], [], [], 0
    for batch in loader:
        batch = batch.to(device)
        explanation = masked.explain(batch)
        scores.append(explanation.relevance.cpu())
        labels.append(batch.gt.cpu())
        batches.append(explanation.batch.cpu() + offset)
        offset += explanation.num_samples
    return mean_auroc(torch.cat(scores), torch.cat(labels), torch.cat(batches), offset)


def train_and_measure(
    model: torch.nn.Module, gate: str, keep: float, train: DataLoader, test: DataLoader,
    epochs: int, device: torch.device, progress: bool,
) -> tuple[bottleneck.MaskedModel, dict[str, float]]:
    """Train ``model`` jointly with a ``gate`` mask and measure it on ``test``."""
    masked = bottleneck.attach(model, "pointcloud", gate=gate, keep=keep).to(device)
    start = time.perf_counter()
    bottleneck.fit(masked, train, epochs=epochs, device=device, progress=progress, description=gate)
    seconds = time.perf_counter() - start
    dense = bottleneck.evaluate(masked, test)
    sparse = bottleneck.evaluate(masked, test, sparse=True, sparse_keep=keep)
    figures = {
        "accuracy_masked": dense["accuracy"],
        "accuracy_sparse": sparse["accuracy"],
        "keep_rate": dense["keep_rate"],
        "expected_keep_rate": dense["expected_keep_rate"],
        "sparse_keep_rate": sparse["keep_rate"],
        "gt_auroc": relevance_auroc(masked, test, device),
        "train_seconds": seconds,
    }
    return masked, figures


def run(
    out_dir: Path, *, device: str = "cpu", quick: bool = False, epochs: int | None = None,
    keep: float = 0.3, train_size: int | None = None, gaussian: bool = True, progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo and write ``out_dir/report.json``, renders and the mask; returns the report."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    dev = torch.device(device)
    train_size = train_size or (600 if quick else 2400)
    epochs = epochs or (4 if quick else 14)
    train_set = make_shapes(train_size, seed=seed)
    test_set = make_shapes(train_size // 3, seed=seed + 1)
    train = DataLoader(train_set, batch_size=32, shuffle=True)
    test = DataLoader(test_set, batch_size=64)

    initial = PointNet(NUM_CLASSES)
    plain = copy.deepcopy(initial).to(dev)
    start = time.perf_counter()
    bottleneck.fit(plain, train, epochs=epochs, device=dev, progress=progress, description="plain")
    plain_seconds = time.perf_counter() - start
    accuracy_plain = bottleneck.evaluate(plain, test)["accuracy"]

    masked, ours = train_and_measure(copy.deepcopy(initial), "hard_concrete", keep, train, test, epochs, dev, progress)
    report: dict[str, Any] = {
        "modality": "pointcloud",
        "model": "PointNet",
        "accuracy_plain": accuracy_plain,
        "accuracy_masked": ours["accuracy_masked"],
        "accuracy_sparse": ours["accuracy_sparse"],
        "keep_rate": ours["keep_rate"],
        "gt_auroc": ours["gt_auroc"],
        "seconds": 0.0,
        "gate": "hard_concrete",
        "keep_target": keep,
        "details": {"hard_concrete": ours, "plain": {"accuracy": accuracy_plain, "train_seconds": plain_seconds}},
        "settings": {"epochs": epochs, "train_size": train_size, "test_size": len(test_set),
                     "device": str(dev), "quick": quick, "seed": seed},
    }
    if gaussian:
        _, pointmask = train_and_measure(copy.deepcopy(initial), "gaussian", keep, train, test, epochs, dev, progress)
        report["details"]["gaussian"] = pointmask

    out_dir.mkdir(parents=True, exist_ok=True)
    sample = next(iter(DataLoader(test_set[:8], batch_size=8))).to(dev)
    report["renders"] = [p.name for p in masked.explain(sample).render(out_dir, prefix="relevance")]
    bottleneck.save_mask(masked, out_dir / "mask.safetensors", include_model=True)
    report["seconds"] = time.perf_counter() - started
    write_report(out_dir, report)
    return report


DEMO = Demo(
    name="pointcloud",
    run=run,
    help="PointNet on embedded procedural shapes: plain vs jointly masked (hard-concrete and PointMask's gaussian gate)",
    options={
        "epochs": (int, None, "training epochs per model (default 14, or 4 with --quick)"),
        "keep": (float, 0.3, "target fraction of points kept"),
        "train_size": (int, None, "training clouds (default 2400, or 600 with --quick)"),
    },
)
