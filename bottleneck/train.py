"""``fit`` and ``evaluate``: a small training loop for plain and masked models.

``fit`` trains a :class:`~bottleneck.wrap.MaskedModel` (task loss + bottleneck
loss, or the bottleneck loss alone in explain mode) or any plain classifier,
with a progress bar that shows the task loss, each bottleneck term and the
current keep rate, and returns the per-epoch history.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .devices import torch_device
from .errors import BottleneckError, CollapsedMaskWarning, FaithfulnessWarning, describe
from .modes import evaluating
from .segment import segment_max
from .wrap import MaskedModel, MaskedOutput, _logits_of

Batch = Any


def split_batch(batch: Batch) -> tuple[Any, Tensor | None]:
    """``(inputs, targets)`` from a loader batch: a ``(inputs, targets)`` pair or an object with ``.y``.

    A third item (``(inputs, targets, extra)``, e.g. cue flags for a penalty) is left to ``fit``'s ``penalty``.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (2, 3):
            raise BottleneckError(f"a batch tuple must be (inputs, targets[, extra]) (got {len(batch)} items)")
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"]
    return batch, getattr(batch, "y", None)


def _to(value: Any, device: torch.device) -> Any:
    if hasattr(value, "to"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; a plain model given a dict of tensors (a tokenizer's output) gets ``model(**inputs)``."""
    if isinstance(inputs, Mapping) and not isinstance(model, MaskedModel):
        return model(**inputs)
    return model(inputs)


@dataclass
class History:
    """Per-epoch means of every logged quantity (``loss``, ``task``, ``keep_rate``, ...)."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def fit(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    mask_lr: float | None = None,
    weight_decay: float = 0.0,
    schedule: str | None = "cosine",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    penalty: Callable[[Any, Any], Tensor] | None = None,
    max_grad_norm: float | None = None,
) -> History:
    """Train ``model`` on ``data`` (a re-iterable loader of batches).

    :param model: a :class:`MaskedModel` or a plain classifier returning logits.
    :param data: batches as ``(inputs, targets)`` pairs, or PyG batches with ``.y``.
    :param mask_lr: learning rate of the mask's own parameters (scorer, encoder, learned
        baseline) when ``model`` is a :class:`MaskedModel`; ``None``: ``lr``. Fine-tuning a
        mask onto a trained model wants a small ``lr`` for the model and a larger one for
        the mask, which starts from scratch.
    :param schedule: ``"cosine"`` anneals the learning rate to 0 over training; ``None`` keeps it.
    :param loss_fn: task loss on ``(logits, targets)``; unused in explain mode.
    :param device: move the model and each batch there (default: the model's device).
    :param on_epoch: called with ``(epoch, means)`` after each epoch.
    :param penalty: ``penalty(output, batch) -> scalar`` added to the loss each step (e.g.
        :class:`~bottleneck.mitigation.CueGatePenalty`); logged as ``penalty``.
    :param max_grad_norm: clip the gradient norm of all trained parameters to this each step
        (``None``: no clipping); logged as ``grad_norm`` (before clipping). It bounds how far
        one outlier batch moves the weights and Adam's moment estimates; it did not stop the
        speed benchmark's DGCNN fine-tune from collapsing at a high rate
        (``bottleneck_pointcloud.speed``, at ``DGCNN_JOINT_OPTIONS``).
    """
    if epochs < 1:
        raise BottleneckError(f"epochs must be >= 1 (got {epochs})")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not math.isfinite(lr) or lr < 0:  # NumPy floats are Real
        raise BottleneckError(f"lr must be a finite number >= 0 (got {lr!r})")
    if mask_lr is not None and not mask_lr > 0:
        raise BottleneckError(f"mask_lr must be > 0 (got {mask_lr!r})")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise BottleneckError(f"max_grad_norm must be > 0 (got {max_grad_norm!r})")
    if schedule not in (None, "cosine"):
        raise BottleneckError(f"schedule must be 'cosine' or None (got {schedule!r})")
    if device is None:
        device = next(model.parameters()).device
    device = torch_device(device)
    model.to(device)
    masked = model if isinstance(model, MaskedModel) else None
    num_batches = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    history = History()
    model.train()
    total_steps = epochs * (num_batches or 1)
    step = 0
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(data, total=num_batches, desc=f"{description} {epoch + 1}/{epochs}",
                   disable=None if progress else True, leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = _to(batch, device)
            inputs, targets = split_batch(batch)
            if masked is not None:
                masked.mask.anneal(min(step / max(total_steps - 1, 1), 1.0))
            result = call_model(model, inputs)
            logged: dict[str, Tensor] = {}
            if isinstance(result, MaskedOutput):
                loss = result.ib_loss
                if masked is None or masked.mode == "joint":
                    task = _task_loss(loss_fn, _logits_of(result.output), _target(targets))
                    loss = loss + task
                    logged["task"] = task.detach()
                logged.update(result.terms)
            else:
                task = _task_loss(loss_fn, _logits_of(result), _target(targets))
                loss = task
                logged["task"] = task.detach()
            if penalty is not None:
                extra = penalty(result, batch)
                loss = loss + extra
                logged["penalty"] = extra.detach()
            if not torch.isfinite(loss):
                raise BottleneckError(f"training loss became {float(loss)} at epoch {epoch + 1}, step {step}")
            if optimizer is None:  # after the first call, so lazily sized layers exist
                optimizer = torch.optim.Adam(_param_groups(model, masked, lr, mask_lr), lr=lr,
                                             weight_decay=weight_decay)
                if schedule == "cosine":
                    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                    [p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            logged["loss"] = loss.detach()
            count += 1
            for key, value in logged.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            bar.set_postfix({k: f"{sums[k] / count:.3g}" for k in ("loss", "task", "penalty", "keep_rate", "multiplier", "faithfulness", "kl_multiplier") if k in sums})
        if count == 0:
            raise BottleneckError(
                f"data gave no batches in epoch {epoch + 1}: fit needs a loader it can iterate once per epoch "
                f"(a list or DataLoader; a generator is used up after the first epoch)"
            )
        means = {k: v / count for k, v in sums.items()}
        history.epochs.append(means)
        if progress:
            tqdm.write(f"{description} epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in means.items()))
        if on_epoch is not None:
            on_epoch(epoch, means)
    model.eval()
    if masked is not None:
        _check_faithful(masked, history)
        if count:
            _check_scorer_varies(masked, inputs)
    return history


def _param_groups(model: nn.Module, masked: MaskedModel | None, lr: float,
                  mask_lr: float | None) -> list[dict[str, Any]]:
    """Optimizer groups: the wrapped model's trainable parameters at ``lr``, the mask's at ``mask_lr``."""
    if masked is None or mask_lr is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    wrapped = [p for p in masked.model.parameters() if p.requires_grad]
    inner = {id(p) for p in wrapped}
    own = [p for p in masked.parameters() if p.requires_grad and id(p) not in inner]
    return [group for group in ({"params": wrapped, "lr": lr}, {"params": own, "lr": mask_lr}) if group["params"]]


#: Relevance spread (max - min within a sample) below which a sample's units count as scored alike.
COLLAPSE_SPREAD = 1e-6


def _check_scorer_varies(masked: MaskedModel, inputs: Any) -> None:
    """Warn when the trained mask gives every unit of every sample the same relevance.

    A scorer whose ReLUs have all died (too high a ``mask_lr`` can do it) outputs its final
    bias for every unit. Training still converges, since a top-k gate keeps its budget
    whatever the scores, but it keeps the first units of each sample by index: the
    explanation is flat and sparse inference keeps units by position, not by evidence.
    Checked on the last training batch, in eval mode, without gradients.
    """
    with torch.no_grad():
        explanation = masked.explain(inputs)
    units, relevance = explanation.units, explanation.relevance.float()
    several = units.counts() > 1  # a one-unit sample has no spread to judge
    if not bool(several.any()):
        return
    spread = segment_max(relevance, units.batch, units.num_samples) + segment_max(-relevance, units.batch, units.num_samples)
    if bool((spread[several] > COLLAPSE_SPREAD).any()):
        return
    warnings.warn(
        f"the trained mask scores every unit of a sample alike (relevance {float(relevance[0]):.4g} for all "
        f"{relevance.numel()} units of the last training batch): its scorer has collapsed to a constant, "
        "usually ReLUs killed by too high a mask learning rate. A top-k or sparse pass then keeps the first "
        "units of each sample by position, and the explanation is flat. Lower mask_lr (or lr) and retrain, "
        "or attach the mask with activation='leaky_relu', whose hidden units cannot die.",
        CollapsedMaskWarning,
        stacklevel=3,
    )


#: An explain-mode mask whose last-epoch KL exceeds this multiple of epsilon gets a warning.
UNFAITHFUL_FACTOR = 2.0


def _check_faithful(masked: MaskedModel, history: History) -> None:
    """Warn when an explain-mode mask ends training far outside its KL budget."""
    kl = history.last().get("faithfulness")
    if masked.mode != "explain" or kl is None or kl <= UNFAITHFUL_FACTOR * masked.epsilon:
        return
    warnings.warn(
        f"the explain-mode mask ended training with KL {kl:.3g} nats, above {UNFAITHFUL_FACTOR:g} x epsilon "
        f"({masked.epsilon:g}) and keep rate {history.last().get('keep_rate', float('nan')):.3g}: its "
        "explanations drop units the model needs. Train longer, or lower sparsity_weight "
        f"(now {masked.sparsity_weight:g}) so gates are not shut before the scorer learns which units matter.",
        FaithfulnessWarning, stacklevel=2,
    )


def _task_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn(logits, targets)``; for the default cross-entropy, targets it cannot take are refused first.

    torch's cross-entropy reports a wrong batch size, float class ids or an id out of range
    from deep in ``nll_loss`` (an out-of-range id on CUDA as a device-side assert that
    poisons the process); a custom ``loss_fn`` decides its own targets.
    """
    if loss_fn is F.cross_entropy:
        _check_class_targets(logits, targets)
    return loss_fn(logits, targets)


def _check_class_targets(logits: Tensor, targets: Tensor) -> None:
    """Targets cross-entropy takes: one class id in ``[0, C)`` per sample, or ``[B, C]`` class probabilities."""
    if logits.dim() != 2:
        return  # per-token or per-pixel logits: cross-entropy's own shape rules apply
    samples, classes = logits.shape
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise BottleneckError(
                f"targets must be {samples} integer class ids or [{samples}, {classes}] class probabilities "
                f"(got {describe(targets)}); integer labels stored as floats: targets.long()"
            )
        return
    if targets.dtype == torch.bool or targets.is_complex():
        raise BottleneckError(f"targets must be integer class ids (got {describe(targets)})")
    if targets.shape != (samples,):
        raise BottleneckError(f"the model gave logits for {samples} samples but the batch has targets of shape "
                              f"{tuple(targets.shape)}; expected one class id per sample")
    low, high = (int(v) for v in torch.aminmax(targets))
    if low < 0 or high >= classes:
        raise BottleneckError(f"targets hold class ids {low}..{high} but the model gives {classes} logits per "
                              f"sample (ids 0..{classes - 1})")


def _target(targets: Tensor | None) -> Tensor:
    if targets is None:
        raise BottleneckError("joint training needs targets: batches as (inputs, targets) or with .y")
    return targets.view(-1) if targets.dim() > 1 and targets.shape[-1] == 1 else targets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    *,
    sparse_keep: float | None = None,
    sparse: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``data``; for a masked model also the keep rate.

    :param sparse: evaluate :meth:`MaskedModel.sparse` (kept units only).
    :param sparse_keep: the fraction of units each sample keeps in sparse mode
        (``None``: the units whose deterministic gate is open).
    :returns: ``accuracy``; for masked models ``keep_rate`` (fraction of units the
        model received, averaged over samples) and ``expected_keep_rate``.
    """
    if device is None:
        device = next(model.parameters()).device
    correct = total = 0
    kept_fraction: list[Tensor] = []
    expected: list[Tensor] = []
    with evaluating(model):
        for batch in data:
            inputs, targets = split_batch(_to(batch, device))
            targets = _target(targets)
            if isinstance(model, MaskedModel) and sparse:
                out = model.sparse(inputs, keep=sparse_keep)
                logits = _logits_of(out.output)
                kept_fraction.append(out.kept_counts / out.units.counts())
            elif isinstance(model, MaskedModel):
                out = model(inputs)
                logits = _logits_of(out.output)
                open_counts = torch.bincount(out.units.batch[out.gates > 0], minlength=out.units.num_samples)
                kept_fraction.append(open_counts / out.units.counts())
                expected.append(out.keep_rate)
            else:
                logits = _logits_of(call_model(model, inputs))
            if logits.shape[0] != targets.shape[0]:
                raise BottleneckError(f"model returned {describe(logits)} for {targets.shape[0]} targets")
            finite = torch.isfinite(logits).all(dim=-1)
            if not bool(finite.all()):
                raise BottleneckError(
                    f"model returned non-finite logits (NaN or Inf) for {int((~finite).sum())} of "
                    f"{logits.shape[0]} samples: an accuracy would count them as class 0; check the "
                    "model's weights and normalisation statistics after training"
                )
            correct += int((logits.argmax(-1) == targets).sum())
            total += int(targets.shape[0])
    if total == 0:
        raise BottleneckError("data gave no batches to evaluate: an accuracy of nothing is not 0")
    result = {"accuracy": correct / total}
    if kept_fraction:
        result["keep_rate"] = float(torch.cat(kept_fraction).float().mean())
    if expected:
        result["expected_keep_rate"] = float(torch.cat(expected).float().mean())
    return {k: (v if not math.isnan(v) else 0.0) for k, v in result.items()}
