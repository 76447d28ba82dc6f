"""``bottleneck explain MASK --out DIR``: explain a testbed's test data with a saved model and mask.

The mask file (saved by ``bottleneck bench explain --out DIR``, with the model's
weights) names the testbed that built its model and the settings that rebuild
it. This rebuilds the model, loads both, explains every test batch in one
forward pass each, scores the relevance against the planted evidence, writes the
modality's renders for the first batches and ``report.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .devices import torch_device
from .errors import BottleneckError
from .io import load, read_config
from .metrics import nanmean, precision_at_k, segment_auroc
from .plugins import demos
from .train import _to


def explain_saved(mask_path: Path, out_dir: Path, *, device: str = "cpu", batches: int = 1) -> dict[str, Any]:
    """Explain the saved mask's testbed data; write renders and ``report.json``; return the report."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise BottleneckError(f"batches to render must be an int >= 0 (got {batches!r}; 0 scores without rendering)")
    config = read_config(mask_path)  # refuses a missing or foreign file
    extra = config.get("extra") or {}
    name = extra.get("testbed")
    if name is None:
        raise BottleneckError(
            f"{mask_path} does not say which testbed built its model; save it with "
            "`bottleneck bench explain --out DIR` (or save_mask(..., extra={'testbed': ..., 'testbed_settings': ...}))"
        )
    provider = demos().get(name)
    if provider is None or provider.testbed is None:
        raise BottleneckError(f"{mask_path} needs the {name!r} testbed, which no installed plugin provides")
    settings = dict(extra.get("testbed_settings") or {})
    quick, seed = bool(settings.pop("quick", False)), int(settings.pop("seed", 0))
    testbed = provider.testbed(quick=quick, seed=seed, **settings)
    dev = torch_device(device)
    masked = load(mask_path, testbed.make_model()).to(dev)
    masked.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    aurocs, precisions, renders, seconds, samples, kept, units_total = [], [], [], 0.0, 0, 0, 0
    for index, (inputs, _, truth) in enumerate(testbed.test):
        inputs = _to(inputs, dev)
        start = time.perf_counter()
        explanation = masked.explain(inputs)
        seconds += time.perf_counter() - start
        units = explanation.units
        samples += units.num_samples
        kept += int((explanation.gates > 0).sum())
        units_total += units.num_units
        per_unit = testbed.truth_of(truth, units, explanation.modality)
        aurocs.append(segment_auroc(explanation.relevance.float(), per_unit, units.batch, units.num_samples))
        precisions.append(precision_at_k(explanation.relevance.float(), per_unit, units.batch, units.num_samples))
        if index < batches:
            renders += [str(p.relative_to(out_dir)) for p in testbed.render(explanation, out_dir, index)]
    auroc, precision = torch.cat(aurocs), torch.cat(precisions)
    report = {
        "mask": str(mask_path),
        "modality": testbed.modality,
        "model": testbed.model_name,
        "samples": samples,
        "gt_auroc": nanmean(auroc),
        "precision_at_k": nanmean(precision),
        "keep_rate": kept / max(units_total, 1),
        "seconds_per_explanation": seconds / max(samples, 1),
        "renders": renders,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
