"""``CueSetting``: a modality's embedded data with a planted bias cue, for ``bottleneck audit``.

A plugin registers ``prepare_audit(cue=..., quick=..., seed=..., correlation=...)``
on its :class:`~bottleneck.demo.Demo` (``Demo(audit=prepare_audit)``). It plants the
cue into the training set at the chosen correlation with the label and returns
this object: how to build the model, the cue-correlated training batches (with
their cue flags, for the mitigation), and the clean test data the audit plants
counterfactuals into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .bias_audit import AuditData, FlaggedBatch, default_groups
from .cues import Cue, CueAssignment
from .errors import BottleneckError
from .mitigation import FlaggedBatches, group_weights


@dataclass
class CueSetting:
    """One modality's audit setting.

    :param modality: registered modality name.
    :param model_name: the reference model's name (for reports).
    :param make_model: builds the model with fresh weights (seeded by the caller).
    :param cue: the cue planted in the training data.
    :param correlation: how often the training cue shows the sample's own class.
    :param train_batches: ``train_batches(indices) -> [(inputs, targets, flags)]`` of the
        cue-planted training samples ``indices``, in that order.
    :param train_assignment: the cue of every training sample.
    :param test: the clean test data (the audit plants its counterfactuals).
    :param epochs: training epochs of every model.
    :param lr: learning rate.
    :param batch_size: training batch size.
    :param keep: keep target of the jointly masked models.
    :param joint_options: extra :func:`~bottleneck.attach` options of the masked models.
    :param penalty_weight: strength of :class:`~bottleneck.mitigation.CueGatePenalty`.
    :param mitigation_options: :func:`~bottleneck.attach` options of the penalised mask, on top of
        ``joint_options``. The default scores each unit on its own (``context=False``), so the
        cue it shuts cannot reach the model through the gates of other units; a modality whose
        unit features mix units (point clouds centre on the centroid) switches that off too.
    :param settings: what rebuilds this setting (``quick``, ``seed``, sizes), for reports.
    """

    modality: str
    model_name: str
    make_model: Callable[[], nn.Module]
    cue: Cue
    correlation: float
    train_batches: Callable[[Tensor], Iterable[FlaggedBatch]]
    train_assignment: CueAssignment
    test: AuditData
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 32
    keep: float = 0.3
    joint_options: dict[str, Any] = field(default_factory=dict)
    penalty_weight: float = 5.0
    mitigation_options: dict[str, Any] = field(default_factory=lambda: {"context": False})
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cue.modality != self.modality:
            raise BottleneckError(f"cue {self.cue.name!r} is for {self.cue.modality!r}, the setting is {self.modality!r}")

    @property
    def num_train(self) -> int:
        return int(self.train_assignment.labels.numel())

    def loader(self, *, reweight: bool = False, seed: int = 0) -> FlaggedBatches:
        """Training batches, shuffled each epoch, or drawn with group-balancing weights."""
        weights = group_weights(default_groups(self.train_assignment)) if reweight else None
        return FlaggedBatches(self.train_batches, self.num_train, self.batch_size, weights=weights, seed=seed)


__all__ = ["CueSetting"]
