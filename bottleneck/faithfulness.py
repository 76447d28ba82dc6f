"""Perturbation metrics: does removing the most relevant units change the prediction?

Modality-agnostic and batched: units are removed (or replaced by the masked
model's baseline) through the modality adapter's ``apply_gates`` with hard
gates, so the same functions score point clouds, images and text, and any
relevance — the mask's or a baseline method's — given per unit in the flat
ragged layout.

* deletion curve: the target-class probability as the top ``f`` of units
  (by relevance) are removed, for ``f`` from 0 to 1; a faithful relevance makes
  it fall fast (low area).
* insertion curve: the probability with only the top ``f`` kept; a faithful
  relevance makes it rise fast (high area).
* ERASER comprehensiveness (drop with the top k% removed) and sufficiency
  (drop with only the top k% kept), each averaged over k in {1, 5, 10, 20, 50}%
  (AOPC). Higher comprehensiveness and lower sufficiency are better.

Per sample, ``k = round(f * n_i)`` units, so ragged samples are handled exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import BottleneckError, describe
from .segment import segment_rank
from .units import Units
from .wrap import MaskedModel, _logits_of

CURVE_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))
AOPC_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)


def top_fraction(relevance: Tensor, batch: Tensor, num_samples: int, fraction: float) -> Tensor:
    """``[N]`` bool: each sample's ``round(fraction * n_i)`` most relevant units (0 allowed)."""
    if not 0.0 <= fraction <= 1.0:
        raise BottleneckError(f"fraction must be in [0, 1] (got {fraction!r})")
    counts = torch.bincount(batch, minlength=num_samples)
    k = torch.round(counts.double() * fraction).long()
    return segment_rank(relevance, batch, num_samples) < k[batch]


class Perturber:
    """Runs ``masked``'s model on inputs with chosen units kept, through its modality adapter.

    :param masked: gives the adapter, the baseline (what a removed unit becomes) and the model.
    :param inputs: the inputs to perturb.
    :param target: ``[B]`` class per sample; default the model's prediction on ``inputs``.
    """

    def __init__(self, masked: MaskedModel, inputs: Any, target: Tensor | None = None) -> None:
        self.masked, self.inputs = masked, inputs
        self.adapter = masked.adapter(inputs)
        self.units: Units = self.adapter.to_units(inputs, with_graph=False)
        with torch.no_grad():
            full = torch.softmax(_logits_of(self.adapter.call_model(masked.model, inputs)).float(), -1)
        if target is None:
            target = full.argmax(-1)
        if not isinstance(target, Tensor) or target.shape != (self.units.num_samples,):
            raise BottleneckError(f"target must be [B] = [{self.units.num_samples}] class ids (got {describe(target)})")
        self.target = target.to(full.device)
        self.full = full.gather(1, self.target[:, None])[:, 0]

    def check(self, relevance: Tensor) -> Tensor:
        if not isinstance(relevance, Tensor) or relevance.shape != (self.units.num_units,):
            raise BottleneckError(
                f"relevance must be [N] = [{self.units.num_units}], one value per unit (got {describe(relevance)})"
            )
        if not torch.isfinite(relevance).all():
            raise BottleneckError("relevance holds NaN or Inf values")
        return relevance.to(self.units.batch.device)

    @torch.no_grad()
    def probability(self, kept: Tensor) -> Tensor:
        """``[B]`` target-class probability with only the ``kept`` units (``[N]`` bool)."""
        gates = kept.to(torch.float32)
        state = {} if self.masked.baseline_state is None else {"state": self.masked.baseline_state}
        perturbed = self.adapter.apply_gates(self.inputs, self.units, gates, self.masked.baseline, **state)
        logits = _logits_of(self.adapter.call_model(self.masked.model, perturbed)).float()
        return torch.softmax(logits, -1).gather(1, self.target[:, None])[:, 0]

    def top(self, relevance: Tensor, fraction: float) -> Tensor:
        return top_fraction(relevance, self.units.batch, self.units.num_samples, fraction)


def area(curve: Tensor, fractions: tuple[float, ...]) -> Tensor:
    """``[B]`` trapezoid area under ``[B, F]`` curves sampled at ``fractions`` (0..1)."""
    x = torch.tensor(fractions, dtype=curve.dtype, device=curve.device)
    return torch.trapezoid(curve, x, dim=-1)


def deletion_insertion(
    perturber: Perturber, relevance: Tensor, fractions: tuple[float, ...] = CURVE_FRACTIONS
) -> dict[str, Tensor]:
    """Deletion and insertion curves ``[B, F]`` and their areas ``[B]``."""
    relevance = perturber.check(relevance)
    deletion, insertion = [], []
    for fraction in fractions:
        top = perturber.top(relevance, fraction)
        deletion.append(perturber.probability(~top))
        insertion.append(perturber.probability(top))
    deletion_curve, insertion_curve = torch.stack(deletion, -1), torch.stack(insertion, -1)
    return {
        "deletion_curve": deletion_curve, "insertion_curve": insertion_curve,
        "deletion_auc": area(deletion_curve, fractions), "insertion_auc": area(insertion_curve, fractions),
    }


def comprehensiveness_sufficiency(
    perturber: Perturber, relevance: Tensor, fractions: tuple[float, ...] = AOPC_FRACTIONS
) -> dict[str, Tensor]:
    """ERASER comprehensiveness and sufficiency ``[B]``, each the mean over ``fractions`` (AOPC)."""
    relevance = perturber.check(relevance)
    comprehensive, sufficient = [], []
    for fraction in fractions:
        top = perturber.top(relevance, fraction)
        comprehensive.append(perturber.full - perturber.probability(~top))
        sufficient.append(perturber.full - perturber.probability(top))
    return {
        "comprehensiveness": torch.stack(comprehensive, -1).mean(-1),
        "sufficiency": torch.stack(sufficient, -1).mean(-1),
    }
