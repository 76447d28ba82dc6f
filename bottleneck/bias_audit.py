"""``bottleneck.audit`` (this module is ``bottleneck.bias_audit``): how much a model leans on a bias cue, measured three ways.

Given a model, clean test data and a :class:`~bottleneck.cues.Cue`, the audit

* plants the cue *decorrelated* from the label (each sample shows a uniformly
  drawn class's variant) and measures the **share of relevance** that falls on
  cue units against their **share of area** — from the mask of a
  :class:`~bottleneck.wrap.MaskedModel`, or from a baseline attribution method
  (:mod:`bottleneck.baselines`) for a plain model;
* measures accuracy on three **counterfactuals** of every test sample: the cue
  *present* (showing the sample's own class, as in biased training data),
  *removed*, and *swapped* to another class's variant;
* reports **per-group accuracy** on the decorrelated data (cue aligned with the
  label or conflicting with it, or any groups the caller gives) with bootstrap
  intervals, the worst group and the largest gap (:mod:`bottleneck.groups`);
* lists the **most cue-reliant examples**: the largest drop in the probability of
  the true class when the cue is swapped.

The result is an :class:`~bottleneck.audit_report.AuditReport`; ``report.save(DIR)``
writes ``report.json``, ``report.md`` and pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import baselines
from .audit_report import AuditReport, Example
from .cues import Cue, CueAssignment, assign_cues
from .errors import BottleneckError, describe
from .explanation import Explanation
from .groups import group_accuracy
from .metrics import relevance_share
from .modality import Modality
from .segment import segment_max
from .train import _to, call_model
from .units import Units
from .wrap import MaskedModel, _logits_of, attach

#: A batch the audit feeds to a model: ``(inputs, targets, cue flags in the data's layout)``.
FlaggedBatch = tuple[Any, Tensor, Tensor]

#: Baseline methods an audit of a plain model can use; ``"mask"`` is a masked model's own relevance.
AUDIT_METHODS: tuple[str, ...] = ("mask", "integrated_gradients", "saliency", "occlusion", "random")

#: Group ids of the default groups, and their names.
GROUP_NAMES: dict[int, str] = {0: "cue aligned", 1: "cue conflicting", 2: "cue absent"}


def _same_layout(flags: Tensor, units: Units, adapter: Modality) -> Tensor:
    return flags


@dataclass
class AuditData:
    """Clean test samples, and how to plant a cue in them and feed them to a model.

    :param modality: the registered modality of the model's inputs.
    :param clean: the samples without any cue, in the layout the cue plants into
        (``[B, C, H, W]`` images, a PyG ``Batch`` of clouds, a ``TextSet``).
    :param labels: ``[B]`` their labels.
    :param num_classes: classes of the task (one cue variant each).
    :param encode: ``encode(planted, labels) -> [(inputs, targets, flags)]``: model batches of a
        :class:`~bottleneck.cues.Planted` set in order, with its flags carried to the model's
        layout (token positions for text).
    :param select: ``select(clean, indices) -> clean``: a subset of the samples (for renders).
    :param unit_flags: ``unit_flags(flags, units, adapter) -> [N] bool`` per unit (default:
        flags are already per unit).
    :param attach_options: :func:`~bottleneck.attach` options for wrapping a plain model
        (``special_ids``, ...), so baseline methods remove units the same way as a mask.
    :param render: ``render(explanation, out_dir, prefix, flags) -> files`` (optional).
    """

    modality: str
    clean: Any
    labels: Tensor
    num_classes: int
    encode: Callable[[Any, Tensor], list[FlaggedBatch]]
    select: Callable[[Any, Tensor], Any]
    unit_flags: Callable[[Tensor, Units, Modality], Tensor] = _same_layout
    attach_options: dict[str, Any] = field(default_factory=dict)
    render: Callable[[Explanation, Path, str, Tensor], list[Path]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Tensor) or self.labels.dim() != 1 or self.labels.numel() == 0:
            raise BottleneckError(f"audit data needs [B] labels with B >= 1 (got {describe(self.labels)})")

    @property
    def num_samples(self) -> int:
        return int(self.labels.numel())

    def flags_of(self, flags: Tensor, units: Units, adapter: Modality) -> Tensor:
        """``[N]`` bool cue flag per unit, checked against ``units``."""
        per_unit = self.unit_flags(flags.to(units.batch.device), units, adapter).bool()
        if per_unit.shape != (units.num_units,):
            raise BottleneckError(f"cue flags per unit must be [{units.num_units}] (got {list(per_unit.shape)})")
        return per_unit


def counterfactuals(labels: Tensor, num_classes: int, decorrelated: CueAssignment) -> dict[str, CueAssignment]:
    """The audit's four cue settings of the same samples."""
    present = CueAssignment(torch.ones_like(labels, dtype=torch.bool), labels.clone(), labels)
    return {"decorrelated": decorrelated, "present": present, "removed": present.removed(),
            "swapped": present.swapped(num_classes)}


def default_groups(assignment: CueAssignment) -> Tensor:
    """``[B]`` group ids: 0 cue aligned with the label, 1 conflicting, 2 absent (:data:`GROUP_NAMES`)."""
    groups = torch.where(assignment.aligned, 0, 1)
    return torch.where(assignment.present, groups, 2)


@torch.no_grad()
def predict(model: nn.Module, batches: Sequence[FlaggedBatch], device: torch.device) -> Tensor:
    """``[B, C]`` class probabilities of ``model`` (a masked model with its deterministic gates)."""
    model.eval()
    probabilities = []
    for inputs, _, _ in batches:
        output = call_model(model, _to(inputs, device))
        logits = _logits_of(output.output if hasattr(output, "ib_loss") else output)
        probabilities.append(logits.float().softmax(-1).cpu())
    return torch.cat(probabilities)


def _relevance_method(masked: MaskedModel, method: str, seed: int) -> Callable[[Any, Tensor], Tensor]:
    if method == "mask":
        return lambda inputs, target: masked.explain(inputs).relevance
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda inputs, target: baselines.random_relevance(masked, inputs, target, generator=generator)
    function = getattr(baselines, method)
    return lambda inputs, target: function(masked, inputs, target).abs()


def _relevance_per_batch(
    masked: MaskedModel, relevance: Callable[[Any, Tensor], Tensor], batches: Sequence[FlaggedBatch],
    targets: Tensor, device: torch.device,
) -> Iterator[tuple[Any, Units, Modality, Tensor, Tensor]]:
    """``(inputs, units, adapter, [N] relevance, flags)`` per batch, each sample explained for its ``targets`` row."""
    start = 0
    for inputs, _, flags in batches:
        inputs = _to(inputs, device)
        adapter = masked.adapter(inputs)
        units = adapter.to_units(inputs, with_graph=False)
        target = targets[start:start + units.num_samples].to(device)
        start += units.num_samples
        yield inputs, units, adapter, relevance(inputs, target).detach().float(), flags


def _wrapper(model: nn.Module, data: AuditData, method: str) -> MaskedModel:
    if isinstance(model, MaskedModel):
        return model
    if method == "mask":
        raise BottleneckError(
            f"a plain model has no mask to audit: pass method= one of {list(AUDIT_METHODS[1:])}, or a MaskedModel"
        )
    # the baselines attribute in gate space: an (untrained) explain-mode wrapper gives them units and removal
    return attach(model, data.modality, mode="explain", **data.attach_options)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def audit(
    model: nn.Module,
    data: AuditData,
    *,
    cue: Cue,
    groups: Tensor | None = None,
    group_names: dict[int, str] | None = None,
    method: str | None = None,
    assignment: CueAssignment | None = None,
    seed: int = 0,
    top_k: int = 8,
    resamples: int = 2000,
    name: str = "model",
) -> AuditReport:
    """Audit ``model``'s reliance on ``cue`` on ``data``.

    :param model: a :class:`MaskedModel` (audited through its own mask by default) or a
        plain classifier (audited through ``method``).
    :param cue: the cue to plant; its modality must be the data's.
    :param groups: ``[B]`` integer group of each sample for the per-group accuracy (default:
        cue aligned / conflicting / absent on the decorrelated data).
    :param group_names: readable names of the group ids.
    :param method: ``"mask"`` or a baseline in :data:`AUDIT_METHODS` (default: ``"mask"``
        for a masked model, ``"integrated_gradients"`` otherwise); signed attributions are
        taken in absolute value.
    :param assignment: the cue per sample for the relevance and group figures (default:
        each sample shows a uniformly drawn class's variant, seeded by ``seed``).
    :param top_k: how many of the most cue-reliant examples to list.
    :param name: the model's name in the report.
    """
    if not isinstance(cue, Cue):
        raise BottleneckError(f"cue must be a registered Cue (got {describe(cue)})")
    if cue.modality != data.modality:
        raise BottleneckError(f"cue {cue.name!r} plants into {cue.modality!r} data, the audit data is {data.modality!r}")
    method = method or ("mask" if isinstance(model, MaskedModel) else "integrated_gradients")
    if method not in AUDIT_METHODS:
        raise BottleneckError(f"unknown audit method {method!r}; choose one of {list(AUDIT_METHODS)}")
    if method == "mask" and isinstance(model, MaskedModel) and model.where != "input":
        raise BottleneckError(f"the audit reads cue units at the input; this mask sits at {model.where!r}")
    labels, num_classes = data.labels, data.num_classes
    if assignment is None:
        generator = torch.Generator().manual_seed(seed)
        assignment = assign_cues(labels, num_classes, 1.0 / num_classes, generator=generator)
    if assignment.present.shape != labels.shape:
        raise BottleneckError(f"the cue assignment covers {assignment.present.numel()} samples, the data {labels.numel()}")
    if groups is None:
        groups, group_names = default_groups(assignment), {**GROUP_NAMES, **(group_names or {})}
    elif not isinstance(groups, Tensor) or groups.shape != labels.shape:
        raise BottleneckError(f"groups must be a [{labels.numel()}] tensor of group ids (got {describe(groups)})")

    masked = _wrapper(model, data, method)
    device = _device(masked)
    settings = counterfactuals(labels, num_classes, assignment)
    batches = {key: data.encode(cue.plant(data.clean, value, num_classes), labels) for key, value in settings.items()}
    # predictions come from the model itself: a plain model's explain-mode wrapper only serves the baselines
    probabilities = {key: predict(model, value, device) for key, value in batches.items()}
    accuracy = {key: float((p.argmax(-1) == labels).float().mean()) for key, p in probabilities.items()}

    relevance = _relevance_method(masked, method, seed)
    predicted = probabilities["decorrelated"].argmax(-1)  # relevance explains what the model decided
    shares, areas = [], []
    for _, units, adapter, values, flags in _relevance_per_batch(masked, relevance, batches["decorrelated"],
                                                                  predicted, device):
        per_unit = data.flags_of(flags, units, adapter)
        share, area = relevance_share(values.clamp(min=0), per_unit, units.batch, units.num_samples)
        shares.append(share.cpu())
        areas.append(area.cpu())
    share, area = torch.cat(shares).float(), torch.cat(areas).float()

    correct = probabilities["decorrelated"].argmax(-1) == labels
    report = group_accuracy(correct, groups.cpu(), resamples=resamples, seed=seed)
    for row in report.groups:
        row.group = (group_names or {}).get(int(row.group), row.group)

    index = torch.arange(labels.numel())
    true_present = probabilities["present"][index, labels]
    drop = true_present - probabilities["swapped"][index, labels]
    order = torch.argsort(drop, descending=True)[: max(top_k, 0)]
    examples = [
        Example(int(i), int(labels[i]), int(probabilities["present"][i].argmax()),
                int(probabilities["swapped"][i].argmax()), float(true_present[i]), float(drop[i]),
                float(share[i]), float(area[i]))
        for i in order.tolist()
    ]

    def render(out_dir: Path) -> list[Path]:
        if data.render is None or not examples:
            return []
        # each example is drawn with its own class's cue, the setting whose swap costs it the most
        chosen = torch.tensor([e.index for e in examples])
        subset = data.select(data.clean, chosen)
        present = settings["present"]
        shown = CueAssignment(present.present[chosen], present.variant[chosen], labels[chosen])
        files = []
        planted = data.encode(cue.plant(subset, shown, num_classes), labels[chosen])
        targets = probabilities["present"].argmax(-1)[chosen]
        for part, (inputs, units, adapter, values, flags) in enumerate(
            _relevance_per_batch(masked, relevance, planted, targets, device)
        ):
            values = values.clamp(min=0)
            peak = segment_max(values, units.batch, units.num_samples).clamp(min=1e-12)
            scaled = values / peak[units.batch]  # each sample's relevance in [0, 1], for the picture
            explanation = Explanation(scaled, scaled, units, inputs, adapter)
            files += data.render(explanation, out_dir, f"cue_reliant{part}", flags)
        return files

    return AuditReport(
        name=name, cue=cue.describe(), method=method, num_samples=labels.numel(),
        relevance_share=share, area_share=area, accuracy=accuracy, groups=report, examples=examples,
        renderer=render,
    )


__all__ = ["AUDIT_METHODS", "AuditData", "FlaggedBatch", "audit", "counterfactuals", "default_groups", "predict"]
