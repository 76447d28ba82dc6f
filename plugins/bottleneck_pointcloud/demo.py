"""``bottleneck demo pointcloud``: PointNet plain vs jointly masked on the embedded shapes.

Trains the same PointNet (same initial weights) on the procedural shapes plain
and with the default hard-concrete mask (and, with ``--gates``, other gates such
as PointMask's gaussian one through the same pipeline), then measures test accuracy (plain,
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
from bottleneck.demo import Demo, count_or_default, write_report
from bottleneck.metrics import mean_auroc

from .data import NUM_CLASSES, make_shapes
from .models import PointNet

#: Clouds of 128-256 points keep the CPU run to minutes (under 3 on the 2-core machines it was built on).
SHAPES = {"min_points": 128, "max_points": 256}
LEARNING_RATE = 3e-3


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
    bottleneck.fit(masked, train, epochs=epochs, lr=LEARNING_RATE, device=device, progress=progress, description=gate)
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


#: Epochs of a full run, plain and masked alike. At 20, on an Intel Xeon, the plain PointNet
#: reached 0.980 and the jointly masked one 0.910 (seed 0; on an earlier machine 0.892 and
#: 0.954); at 30, 0.990 and 0.984. Seed 1 at 30 still fell to 0.464 (sparse 0.818, plain
#: 0.990): joint training from scratch with hard-concrete gates is seed-sensitive.
FULL_EPOCHS = 30


def run(
    out_dir: Path, *, device: str = "cpu", quick: bool = False, epochs: int | None = None,
    keep: float = 0.3, train_size: int | None = None, gates: str = "hard_concrete", progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo and write ``out_dir/report.json``, renders and the mask; returns the report."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    dev = torch.device(device)
    train_size = count_or_default(train_size, 300 if quick else 1500, "train_size")
    epochs = count_or_default(epochs, 4 if quick else FULL_EPOCHS, "epochs")
    gate_names = [g.strip() for g in gates.split(",") if g.strip()] or ["hard_concrete"]
    train_set = make_shapes(train_size, seed=seed, **SHAPES)
    test_set = make_shapes(100 if quick else 500, seed=seed + 1, **SHAPES)
    train = DataLoader(train_set, batch_size=32, shuffle=True)
    test = DataLoader(test_set, batch_size=100)

    initial = PointNet(NUM_CLASSES)
    plain = copy.deepcopy(initial).to(dev)
    start = time.perf_counter()
    bottleneck.fit(plain, train, epochs=epochs, lr=LEARNING_RATE, device=dev, progress=progress, description="plain")
    plain_seconds = time.perf_counter() - start
    accuracy_plain = bottleneck.evaluate(plain, test)["accuracy"]

    details: dict[str, Any] = {"plain": {"accuracy": accuracy_plain, "train_seconds": plain_seconds}}
    trained = {}
    for gate in gate_names:
        trained[gate], details[gate] = train_and_measure(
            copy.deepcopy(initial), gate, keep, train, test, epochs, dev, progress
        )
    main = gate_names[0]
    masked, ours = trained[main], details[main]
    report: dict[str, Any] = {
        "modality": "pointcloud",
        "model": "PointNet",
        "accuracy_plain": accuracy_plain,
        "accuracy_masked": ours["accuracy_masked"],
        "accuracy_sparse": ours["accuracy_sparse"],
        "keep_rate": ours["keep_rate"],
        "gt_auroc": ours["gt_auroc"],
        "seconds": 0.0,
        "gate": main,
        "keep_target": keep,
        "details": details,
        "settings": {"epochs": epochs, "train_size": train_size, "test_size": len(test_set),
                     "points": [SHAPES["min_points"], SHAPES["max_points"]], "lr": LEARNING_RATE,
                     "device": str(dev), "quick": quick, "seed": seed},
    }
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
    help="PointNet on embedded procedural shapes: plain vs jointly masked",
    options={
        "epochs": (int, None, "training epochs per model (default 30, or 4 with --quick)"),
        "keep": (float, 0.3, "target fraction of points kept"),
        "train_size": (int, None, "training clouds (default 1500, or 300 with --quick)"),
        "gates": (str, "hard_concrete", "comma-separated gates to train, the first is reported "
                  "(e.g. hard_concrete,gaussian to put PointMask's gate beside ours)"),
    },
)
