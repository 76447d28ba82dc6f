"""Bias cues: spurious signals a plugin can plant in its data at a chosen correlation with the label.

A bias audit needs data where a shortcut is available: a cue (a corner patch, a
colour tint, a planted token, a small cluster of points) that agrees with the
label for most training samples and not in test. Each cue has one *variant* per
class — variant ``c`` is the version of the cue that "means" class ``c`` — so the
same cue can be aligned with the label, swapped to another class's variant (a
counterfactual), or removed.

* :func:`assign_cues` decides, per sample, whether the cue is present and which
  variant it shows, at a chosen correlation with the labels;
* :class:`Cue` (a plugin registers instances through
  ``bottleneck_register_cues``) plants the chosen variants into a batch of model
  inputs and says which input elements belong to the cue, in the data's own
  layout (pixels, token positions, points), so the audit can flag cue units.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .errors import BottleneckError, describe


@dataclass
class CueAssignment:
    """Which samples show the cue, and which class's variant.

    :param present: ``[B]`` bool, the cue is planted in the sample.
    :param variant: ``[B]`` long, the class whose variant is planted (meaningful where present).
    :param labels: ``[B]`` long, the samples' labels.
    """

    present: Tensor
    variant: Tensor
    labels: Tensor

    @property
    def aligned(self) -> Tensor:
        """``[B]`` bool: the cue is present and shows the sample's own class."""
        return self.present & (self.variant == self.labels)

    def swapped(self, num_classes: int, shift: int = 1) -> CueAssignment:
        """The counterfactual: every present cue shows the variant of class ``(variant + shift) % C``."""
        if not 0 < shift < num_classes:
            raise BottleneckError(f"shift must be in 1..{num_classes - 1} (got {shift!r})")
        return CueAssignment(self.present, (self.variant + shift) % num_classes, self.labels)

    def removed(self) -> CueAssignment:
        """The counterfactual with no cue anywhere."""
        return CueAssignment(torch.zeros_like(self.present), self.variant, self.labels)


def assign_cues(
    labels: Tensor, num_classes: int, correlation: float, *, presence: float = 1.0,
    generator: torch.Generator | None = None,
) -> CueAssignment:
    """Pick each sample's cue variant so that it equals its label with probability ``correlation``.

    Otherwise the variant is drawn uniformly from the *other* classes, so
    ``correlation=1`` is a perfect shortcut, ``correlation=1/C`` leaves the cue
    independent of the label (decorrelated test data) and ``correlation=0``
    always shows another class's variant (reversed).

    :param labels: ``[B]`` class ids in ``[0, num_classes)``.
    :param presence: probability that a sample carries the cue at all.
    :param generator: seeds the draws.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.long:
        raise BottleneckError(f"labels must be a [B] long tensor (got {describe(labels)})")
    if num_classes < 2:
        raise BottleneckError(f"a cue needs at least 2 classes (got {num_classes!r})")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise BottleneckError(f"labels must be in [0, {num_classes}) (got {int(labels.min())}..{int(labels.max())})")
    for name, value in (("correlation", correlation), ("presence", presence)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise BottleneckError(f"{name} must be a probability in [0, 1] (got {value!r})")
    cpu = labels.cpu()
    n = cpu.numel()
    keep_label = torch.rand(n, generator=generator) < correlation
    other = (cpu + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    variant = torch.where(keep_label, cpu, other)
    present = torch.rand(n, generator=generator) < presence
    device = labels.device
    return CueAssignment(present.to(device), variant.to(device), labels)


@dataclass
class Planted:
    """Inputs with a cue planted, and where it is.

    :param inputs: the model inputs with the cue.
    :param flags: which input elements belong to the cue, in the data's layout
        (``[B, H, W]`` pixels, ``[B, L]`` token positions, ``[N]`` points).
    """

    inputs: Any
    flags: Tensor


class Cue(abc.ABC):
    """A spurious signal of one modality, with one variant per class.

    Subclass it in a plugin and register an instance through
    ``bottleneck_register_cues``.
    """

    #: Registered name (``"corner_patch"``, ``"tint"``, ...); unique across plugins.
    name: ClassVar[str] = ""
    #: The modality whose inputs it plants into.
    modality: ClassVar[str] = ""

    @abc.abstractmethod
    def plant(self, inputs: Any, assignment: CueAssignment, num_classes: int) -> Planted:
        """Inputs with ``assignment.variant[i]`` of the cue planted in sample ``i`` where present.

        Must not modify ``inputs`` in place.
        """

    def describe(self) -> str:
        """One line for reports."""
        return f"{self.name} ({self.modality})"

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"
