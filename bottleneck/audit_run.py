"""``bottleneck audit``: train three models on cue-correlated data, audit each, compare.

On one modality's :class:`~bottleneck.cue_setting.CueSetting` this trains, from the
same seed and for the same epochs,

* ``plain`` — the model alone (audited with Integrated Gradients);
* ``masked`` — the model jointly with a mask (PointMask's setting; audited with its mask);
* ``mitigated`` — the same with a mitigation: ``"mask"`` adds
  :class:`~bottleneck.mitigation.CueGatePenalty` on the annotated cue units and
  scores each unit without the pooled context (``context=False``, the setting's
  ``mitigation_options``: otherwise the model learns to read the shut cue from the
  gates of the other units),
  ``"reweight"`` draws training samples with group-balancing weights;

then audits all three on decorrelated test data and writes ``DIR/report.json``
(keys ``plain``, ``masked``, ``mitigated``, ``claims``, ``settings``),
``DIR/report.md`` (the comparison table) and each model's full report in
``DIR/<model>/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .audit_report import LEAN_THRESHOLD, SWAP_DROP_THRESHOLD, AuditReport
from .bias_audit import audit
from .cue_setting import CueSetting
from .errors import BottleneckError
from .mitigation import CueGatePenalty
from .train import fit
from .wrap import attach

MITIGATIONS: tuple[str, ...] = ("mask", "reweight")
#: The issue's bar: mitigation must lift the worst group by this much over plain training.
MITIGATION_GAIN = 0.10
KEYS: tuple[str, ...] = (
    "cue_relevance_share", "cue_area_share", "accuracy_cue_present", "accuracy_cue_removed",
    "accuracy_cue_swapped", "worst_group_accuracy",
)


def train_models(setting: CueSetting, *, mitigation: str = "mask", device: str = "cpu", seed: int = 0,
                 progress: bool = True) -> tuple[dict[str, torch.nn.Module], dict[str, float]]:
    """The plain, masked and mitigated models, and each one's training time in seconds."""
    if mitigation not in MITIGATIONS:
        raise BottleneckError(f"mitigation must be one of {list(MITIGATIONS)} (got {mitigation!r})")
    models: dict[str, torch.nn.Module] = {}
    seconds: dict[str, float] = {}
    for name in ("plain", "masked", "mitigated"):
        torch.manual_seed(seed)  # the same initial weights for all three
        model = setting.make_model()
        penalty = None
        penalise = name == "mitigated" and mitigation == "mask"
        if name != "plain":
            # the penalised mask scores each unit on its own, so the cue it shuts cannot leak
            # to the model through the gates of other units (see CueSetting.mitigation_options)
            options = {**setting.joint_options, **(setting.mitigation_options if penalise else {})}
            model = attach(model, setting.modality, keep=setting.keep, **options)
        if penalise:
            penalty = CueGatePenalty(model, setting.test.unit_flags, setting.penalty_weight)
        loader = setting.loader(reweight=name == "mitigated" and mitigation == "reweight", seed=seed)
        start = time.perf_counter()
        fit(model, loader, epochs=setting.epochs, lr=setting.lr, device=device, progress=progress,
            description=name, penalty=penalty)
        seconds[name] = time.perf_counter() - start
        models[name] = model
    return models, seconds


def claims(reports: dict[str, AuditReport]) -> dict[str, Any]:
    """The issue's tests, computed from the measured figures."""
    plain, mitigated = reports["plain"], reports["mitigated"]
    gain = mitigated.groups.worst.accuracy - plain.groups.worst.accuracy
    return {
        "plain_relevance_over_area": plain.lean,
        "plain_flagged_by_relevance": plain.lean >= LEAN_THRESHOLD,
        "plain_swap_drop": plain.swap_drop,
        "plain_flagged_by_counterfactual": plain.swap_drop >= SWAP_DROP_THRESHOLD,
        "worst_group_gain_mitigated_over_plain": gain,
        "mitigation_gains_10_points": gain >= MITIGATION_GAIN,
        "worst_group_gain_masked_over_plain": reports["masked"].groups.worst.accuracy - plain.groups.worst.accuracy,
    }


def markdown(report: dict[str, Any], command: str) -> str:
    """The comparison table of the three models."""
    names = ("plain", "masked", "mitigated")
    rows = [
        ("relevance method", lambda r: r["method"]),
        ("cue relevance share", lambda r: f"{r['cue_relevance_share']:.3f}"),
        ("cue area share", lambda r: f"{r['cue_area_share']:.3f}"),
        ("relevance / area", lambda r: f"{r['relevance_over_area']:.2f}"),
        ("accuracy, cue present", lambda r: f"{r['accuracy_cue_present']:.3f}"),
        ("accuracy, cue removed", lambda r: f"{r['accuracy_cue_removed']:.3f}"),
        ("accuracy, cue swapped", lambda r: f"{r['accuracy_cue_swapped']:.3f}"),
        ("accuracy, cue decorrelated", lambda r: f"{r['accuracy_decorrelated']:.3f}"),
        ("worst group", lambda r: f"{r['worst_group']} {r['worst_group_accuracy']:.3f}"),
    ]
    s = report["settings"]
    c = report["claims"]
    lines = [
        f"# Bias audit: {report['model']} ({report['modality']}), cue `{s['cue']}`",
        "",
        f"Trained on {s['train_size']} samples whose cue matches the label {s['correlation']:.0%} of the time; "
        f"audited on {s['test_size']} test samples with the cue decorrelated from the label. "
        f"Mitigation: `{report['mitigation']}`. Command: `{command}` ({report['seconds']:.0f} s).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {label} | " + " | ".join(cell(report[n]) for n in names) + " |" for label, cell in rows),
        "",
        f"- Plain model flagged by relevance (share ≥ {LEAN_THRESHOLD:g}× area): "
        f"{'yes' if c['plain_flagged_by_relevance'] else 'no'} ({c['plain_relevance_over_area']:.1f}×).",
        f"- Plain model flagged by the counterfactual (swap drop ≥ {SWAP_DROP_THRESHOLD:.0%}): "
        f"{'yes' if c['plain_flagged_by_counterfactual'] else 'no'} ({c['plain_swap_drop']:.1%}).",
        f"- Worst-group accuracy, mitigated minus plain: {c['worst_group_gain_mitigated_over_plain']:+.3f} "
        f"({'meets' if c['mitigation_gains_10_points'] else 'misses'} the +{MITIGATION_GAIN:.0%} bar); "
        f"masked minus plain: {c['worst_group_gain_masked_over_plain']:+.3f}.",
    ]
    return "\n".join(lines) + "\n"


def run_audit(setting: CueSetting, out_dir: Path, *, mitigation: str = "mask", device: str = "cpu", seed: int = 0,
              progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train, audit and write the three models' reports; returns ``report.json``'s content."""
    started = time.perf_counter()
    models, seconds = train_models(setting, mitigation=mitigation, device=device, seed=seed, progress=progress)
    reports: dict[str, AuditReport] = {}
    for name, model in models.items():
        if progress:
            print(f"auditing {name} ...", flush=True)
        method = "integrated_gradients" if name == "plain" else "mask"
        reports[name] = audit(model, setting.test, cue=setting.cue, method=method, seed=seed, name=name)
        reports[name].save(out_dir / name)
    report: dict[str, Any] = {
        "modality": setting.modality,
        "model": setting.model_name,
        "mitigation": mitigation,
        **{name: {**r.to_dict(), "train_seconds": seconds[name]} for name, r in reports.items()},
        "claims": claims(reports),
        "settings": {**setting.settings, "device": device, "keep": setting.keep,
                     "penalty_weight": setting.penalty_weight},
        "command": command,
    }
    report["seconds"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report, command))
    return report


__all__ = ["KEYS", "MITIGATIONS", "claims", "markdown", "run_audit", "train_models"]
