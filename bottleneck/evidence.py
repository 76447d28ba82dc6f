"""``bottleneck bench explain``: every explanation method on the same model and inputs.

For one modality's :class:`~bottleneck.testbed.Testbed` this trains the plain
reference model, an explain-mode mask on it (the model frozen), and two jointly
masked models that continue from the trained plain weights (ours with
hard-concrete gates, and PointMask's gaussian gate), then scores each method on
the same test inputs:

* ``bottleneck`` — the explain-mode mask: one forward pass of the mask per input
  (at the testbed's insertion point; ``bottleneck_input`` is the same at the input
  when that point is a hidden layer);
* ``bottleneck_joint``, ``pointmask_gaussian`` — the relevance of a mask trained
  jointly with its model; it explains *that* model, so its perturbation metrics
  are measured on that model (ground-truth AUROC is model-independent);
* ``integrated_gradients`` (50 steps), ``saliency``, ``occlusion`` (Captum, in
  gate space, see :mod:`bottleneck.baselines`), ``feature_norm`` (FBI) and
  ``random`` — on the plain model.

Metrics per method (means over test samples): ``gt_auroc`` and ``precision_at_k``
against the planted evidence, ``deletion_auc`` (lower is better),
``insertion_auc``, ERASER ``comprehensiveness`` and ``sufficiency`` (lower is
better), and ``seconds_per_explanation`` — all measured in the same run, with
dropped units replaced by the same baseline for every method on a model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import baselines
from .devices import torch_device
from .errors import BottleneckError
from .faithfulness import Perturber, comprehensiveness_sufficiency, deletion_insertion
from .fbi import feature_norm
from .metrics import nanmean, precision_at_k, segment_auroc
from .objective import faithfulness_loss
from .testbed import Testbed
from .timing import time_call
from .train import _to, evaluate, fit
from .wrap import MaskedModel, _logits_of, attach

METHODS: tuple[str, ...] = (
    "bottleneck", "bottleneck_input", "bottleneck_joint", "pointmask_gaussian", "integrated_gradients",
    "saliency", "occlusion", "feature_norm", "random",
)
METRICS: tuple[str, ...] = (
    "gt_auroc", "precision_at_k", "deletion_auc", "insertion_auc",
    "comprehensiveness", "sufficiency", "seconds_per_explanation",
)
LOWER_IS_BETTER = frozenset({"deletion_auc", "sufficiency", "seconds_per_explanation"})
IG_STEPS = 50


@dataclass
class Method:
    """A relevance method bound to the masked model whose model it explains.

    :param masked: gives the explained model, its adapter and the removal baseline.
    :param relevance: ``relevance(inputs, target) -> [N]``.
    :param explains: which model the perturbation metrics run on (for the report).
    """

    masked: MaskedModel
    relevance: Callable[[Any, Tensor], Tensor]
    explains: str
    warm_up: bool = True


@dataclass
class TrainedModels:
    """The models a benchmark run trains, and what was measured about them."""

    plain: torch.nn.Module
    explainer: MaskedModel
    input_explainer: MaskedModel | None
    joint: MaskedModel
    gaussian: MaskedModel
    figures: dict[str, Any]


def _timed_fit(model: torch.nn.Module, testbed: Testbed, *, epochs: int, lr: float, device: torch.device,
               progress: bool, description: str) -> float:
    start = time.perf_counter()
    fit(model, testbed.train, epochs=epochs, lr=lr, device=device, progress=progress, description=description)
    return time.perf_counter() - start


@torch.no_grad()
def explain_fidelity(masked: MaskedModel, testbed: Testbed, device: torch.device) -> dict[str, float]:
    """Mean KL(p(x) || p(masked x)) with deterministic gates, and the fraction of units kept."""
    masked.eval()
    kls, kept, total = [], 0, 0
    for inputs, _, _ in testbed.test:
        inputs = _to(inputs, device)
        out = masked(inputs)
        reference = masked.adapter(inputs).call_model(masked.model, inputs)
        kls.append(float(faithfulness_loss(_logits_of(reference), _logits_of(out.output))))
        kept += int((out.gates > 0).sum())
        total += out.gates.numel()
    return {"kl": sum(kls) / len(kls), "keep_rate": kept / max(total, 1)}


def train_models(testbed: Testbed, device: torch.device, *, progress: bool = True, seed: int = 0) -> TrainedModels:
    """Train the plain model, the explain-mode mask on it, and the two jointly masked models."""
    torch.manual_seed(seed)
    plain = testbed.make_model().to(device)
    figures: dict[str, Any] = {}
    figures["plain_train_seconds"] = _timed_fit(plain, testbed, epochs=testbed.epochs, lr=testbed.lr,
                                                device=device, progress=progress, description="plain")
    test_batches = [(inputs, targets) for inputs, targets, _ in testbed.test]
    figures["accuracy_plain"] = evaluate(plain, test_batches)["accuracy"]

    explainers: dict[str, MaskedModel] = {}
    variants = {"explain": testbed.explain_options}
    if testbed.explain_options.get("where", "input") != "input":
        variants["explain_input"] = {**testbed.explain_options, "where": "input"}
    for name, options in variants.items():
        explainer = attach(plain, testbed.modality, mode="explain", **testbed.attach_options, **options).to(device)
        seconds = _timed_fit(explainer, testbed, epochs=testbed.explain_epochs, lr=testbed.explain_lr,
                             device=device, progress=progress, description=name.replace("_", " "))
        figures[name] = {"where": explainer.where, **explain_fidelity(explainer, testbed, device),
                         "train_seconds": seconds}
        explainers[name] = explainer

    joint_models = {}
    for name, gate in (("joint", "hard_concrete"), ("gaussian", "gaussian")):
        # joint training continues from the trained plain weights: mask and model then
        # train together (PointMask), in a fraction of the epochs from scratch
        joint = attach(copy.deepcopy(plain), testbed.modality, gate=gate, keep=testbed.joint_keep,
                       **testbed.attach_options, **testbed.joint_options).to(device)
        seconds = _timed_fit(joint, testbed, epochs=testbed.joint_epochs, lr=testbed.lr, device=device,
                             progress=progress, description=f"joint {gate}")
        dense = evaluate(joint, test_batches)
        figures[name] = {"gate": gate, "accuracy_masked": dense["accuracy"], "keep_rate": dense["keep_rate"],
                         "train_seconds": seconds}
        joint_models[name] = joint
    return TrainedModels(plain, explainers["explain"], explainers.get("explain_input"), joint_models["joint"],
                         joint_models["gaussian"], figures)


def methods(models: TrainedModels, testbed: Testbed, *, seed: int = 0) -> dict[str, Method]:
    """Every method of the benchmark, bound to the model it explains."""
    reference = models.explainer  # wraps the frozen plain model; gives the adapter and baseline
    generator = torch.Generator().manual_seed(seed)

    def mask_relevance(masked: MaskedModel) -> Callable[[Any, Tensor], Tensor]:
        return lambda inputs, target: masked.explain(inputs).relevance

    def on_plain(method: Callable[..., Tensor], **options: Any) -> Callable[[Any, Tensor], Tensor]:
        return lambda inputs, target: method(reference, inputs, target, **options)

    plain = "plain model"
    table = {
        "bottleneck": Method(reference, mask_relevance(reference), plain),
        "bottleneck_input": None if models.input_explainer is None else Method(
            models.input_explainer, mask_relevance(models.input_explainer), plain),
        "bottleneck_joint": Method(models.joint, mask_relevance(models.joint), "its jointly trained model"),
        "pointmask_gaussian": Method(models.gaussian, mask_relevance(models.gaussian), "its jointly trained model"),
        # IG and occlusion run 50 and N + 1 passes per call: a warm-up call would only double their cost
        "integrated_gradients": Method(reference, on_plain(baselines.integrated_gradients, steps=IG_STEPS), plain,
                                       warm_up=False),
        "saliency": Method(reference, on_plain(baselines.saliency), plain),
        "occlusion": Method(reference, on_plain(baselines.occlusion), plain, warm_up=False),
        "random": Method(reference, on_plain(baselines.random_relevance, generator=generator), plain),
    }
    if testbed.feature_layer is not None:
        table["feature_norm"] = Method(reference, on_plain(feature_norm, layer=testbed.feature_layer), plain)
    return {name: table[name] for name in METHODS if table.get(name) is not None}


def score_method(method: Method, testbed: Testbed, device: torch.device) -> dict[str, float]:
    """Every metric of ``method`` over the testbed's test batches (means over samples)."""
    values: dict[str, list[Tensor]] = {name: [] for name in METRICS if name != "seconds_per_explanation"}
    seconds, samples = 0.0, 0
    for index, (inputs, _, truth) in enumerate(testbed.test):
        inputs = _to(inputs, device)
        perturber = Perturber(method.masked, inputs)
        truth = testbed.truth_of(truth, perturber.units, perturber.adapter)
        if index == 0 and method.warm_up:  # lazy initialisation, allocator, caches
            method.relevance(inputs, perturber.target)
        computed: list[Tensor] = []
        run = partial(method.relevance, inputs, perturber.target)
        seconds += time_call(partial(_append_result, computed, run), device)
        relevance = computed[0]
        samples += perturber.units.num_samples
        relevance = relevance.detach().float().to(perturber.units.batch.device)
        units = perturber.units
        if truth.shape != relevance.shape:
            raise BottleneckError(f"testbed truth has {truth.numel()} units, the relevance {relevance.numel()}")
        values["gt_auroc"].append(segment_auroc(relevance, truth, units.batch, units.num_samples))
        values["precision_at_k"].append(precision_at_k(relevance, truth, units.batch, units.num_samples))
        curves = deletion_insertion(perturber, relevance)
        values["deletion_auc"].append(curves["deletion_auc"])
        values["insertion_auc"].append(curves["insertion_auc"])
        eraser = comprehensiveness_sufficiency(perturber, relevance)
        values["comprehensiveness"].append(eraser["comprehensiveness"])
        values["sufficiency"].append(eraser["sufficiency"])
    result = {name: nanmean(torch.cat(parts)) for name, parts in values.items()}
    result["seconds_per_explanation"] = seconds / max(samples, 1)
    result["explains"] = method.explains  # type: ignore[assignment]
    return result


def _append_result(results: list[Tensor], run: Callable[[], Tensor]) -> None:
    results.append(run())


def claims(results: dict[str, dict[str, Any]], modality: str) -> dict[str, Any]:
    """The issue's claims, checked on the measured figures (never asserted by hand)."""
    ours = results["bottleneck"]
    rivals = ["integrated_gradients", "saliency", "random"] + (["feature_norm"] if modality == "pointcloud" else [])
    out: dict[str, Any] = {}
    for rival in rivals:
        if rival not in results:
            continue
        theirs = results[rival]
        out[f"beats_{rival}_gt_auroc"] = ours["gt_auroc"] > theirs["gt_auroc"]
        out[f"beats_{rival}_deletion_auc"] = ours["deletion_auc"] < theirs["deletion_auc"]
    ig = results.get("integrated_gradients")
    if ig is not None and ours["seconds_per_explanation"] > 0:
        speedup = ig["seconds_per_explanation"] / ours["seconds_per_explanation"]
        out["speedup_over_integrated_gradients"] = speedup
        out["at_least_50x_faster_than_integrated_gradients"] = speedup >= 50
    return out


def run_benchmark(
    testbed: Testbed, *, device: str = "cpu", progress: bool = True, seed: int = 0, out_dir: Path | None = None,
) -> dict[str, Any]:
    """Train, explain and score every method; returns the JSON-ready report."""
    started = time.perf_counter()
    dev = torch_device(device)
    models = train_models(testbed, dev, progress=progress, seed=seed)
    results: dict[str, dict[str, Any]] = {}
    for name, method in methods(models, testbed, seed=seed).items():
        if progress:
            print(f"scoring {name} ...", flush=True)
        results[name] = score_method(method, testbed, dev)
    report = {
        "modality": testbed.modality,
        "model": testbed.model_name,
        "methods": results,
        "claims": claims(results, testbed.modality),
        "models": models.figures,
        "settings": {**testbed.settings, "device": str(dev), "seed": seed, "ig_steps": IG_STEPS,
                     "test_samples": testbed.num_test_samples},
        "seconds": 0.0,
    }
    if out_dir is not None:
        report["saved"] = save_outputs(models, testbed, out_dir, dev)
    report["seconds"] = time.perf_counter() - started
    return report


def save_outputs(models: TrainedModels, testbed: Testbed, out_dir: Path, device: torch.device) -> dict[str, Any]:
    """Save the explain-mode mask (with the model) and renders of the first test batch."""
    from .io import save_mask

    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"testbed": testbed.modality, "testbed_settings": testbed.settings}
    path = save_mask(models.explainer, out_dir / f"{testbed.modality}_explain.safetensors",
                     include_model=True, extra=extra)
    inputs = _to(testbed.test[0][0], device)
    renders = testbed.render(models.explainer.explain(inputs), out_dir / "renders", 0)
    return {"mask": path.name, "renders": [str(Path("renders") / p.name) for p in renders]}


def _format(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric == "seconds_per_explanation":
        return f"{value * 1000:.3g} ms"
    return f"{value:.3f}"


def markdown_table(report: dict[str, Any], command: str = "") -> str:
    """The report's methods as a Markdown table, the best value of each column in bold."""
    results = report["methods"]
    best: dict[str, float] = {}
    for metric in METRICS:
        column = [r[metric] for r in results.values() if not math.isnan(r[metric])]
        if column:
            best[metric] = min(column) if metric in LOWER_IS_BETTER else max(column)
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in METRICS}
    lines = [
        f"### {report['modality']} — {report['model']}",
        "",
        "| method | " + " | ".join(f"{m} {arrows[m]}" for m in METRICS) + " | explains |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for name, row in results.items():
        cells = []
        for metric in METRICS:
            text = _format(row[metric], metric)
            cells.append(f"**{text}**" if metric in best and row[metric] == best[metric] else text)
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {row['explains']} |")
    lines.append("")
    claim_text = ", ".join(f"{k}: {_format(v, '') if isinstance(v, float) else v}"
                           for k, v in report["claims"].items())
    lines.append(f"Claims: {claim_text}.")
    explain = report["models"].get("explain", {})
    lines.append(
        f"Plain accuracy {report['models']['accuracy_plain']:.3f}; explain-mode mask (at "
        f"{explain.get('where', 'input')}): KL {explain.get('kl', float('nan')):.3f} nats at "
        f"{explain.get('keep_rate', float('nan')):.1%} units kept; "
        f"{report['settings']['test_samples']} test samples; {report['seconds']:.0f} s in all."
    )
    if command:
        lines += ["", f"Reproduce: `{command}`"]
    return "\n".join(lines) + "\n"


__all__ = ["METHODS", "METRICS", "Method", "TrainedModels", "claims", "markdown_table", "methods",
           "run_benchmark", "score_method", "train_models", "explain_fidelity"]
