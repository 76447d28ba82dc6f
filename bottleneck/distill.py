"""Distillation from the dense model while a joint mask is fine-tuned onto it.

A mask fine-tuned onto a trained model changes what the model sees: at keep 0.25 it
sees a quarter of each input, and the model must re-fit to it. With the task loss
alone that re-fit can go wrong as the keep budget falls (the speed benchmark's DGCNN
lost 4-12 points at some seeds). DynamicViT (Rao et al., 2021), which also prunes
input tokens of a trained model, adds the KL divergence from the original model's
prediction on the full input to the pruned model's: the dense model's soft labels
say, for each training input, what the full evidence implies, including the classes
it finds close.

:class:`DenseTeacher` is that term, as a ``penalty`` for :func:`bottleneck.train.fit`::

    masked = attach(model, "pointcloud", keep=0.25, gate="topk")
    fit(masked, loader, epochs=16, penalty=DenseTeacher(model, weight=1.0))
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .objective import faithfulness_loss
from .train import call_model, split_batch
from .wrap import MaskedModel, MaskedOutput, _logits_of


class DenseTeacher:
    """``weight * T^2 * KL(p_teacher(x) / T || p_masked(x) / T)`` for ``fit``'s ``penalty``.

    :param teacher: the trained dense model (a plain model, or a :class:`MaskedModel`,
        whose wrapped model is taken). It is copied and frozen in eval mode, so the
        fine-tune that follows cannot move it.
    :param weight: strength of the term against the task loss.
    :param temperature: softens both distributions (``T``); the ``T^2`` factor keeps the
        gradient's scale independent of it (Hinton et al., 2015).
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 1.0) -> None:
        if isinstance(teacher, MaskedModel):
            teacher = teacher.model
        if not isinstance(teacher, nn.Module):
            raise BottleneckError(f"the teacher must be a torch.nn.Module (got {describe(teacher)})")
        for name, value in (("weight", weight), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BottleneckError(f"{name} must be a finite number (got {value!r})")
        if weight < 0:
            raise BottleneckError(f"weight must be >= 0 (got {weight!r})")
        if temperature <= 0:
            raise BottleneckError(f"temperature must be > 0 (got {temperature!r})")
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)
        self._device: torch.device | None = None

    def __call__(self, output: Any, batch: Any) -> Tensor:
        if not isinstance(output, MaskedOutput):
            raise BottleneckError(f"the dense teacher distils into a masked model's output (got {describe(output)})")
        inputs, _ = split_batch(batch)
        student = _logits_of(output.output)
        if self._device != student.device:  # once, not every step
            self.teacher.to(student.device)
            self._device = student.device
        with torch.no_grad():
            reference = _logits_of(call_model(self.teacher, inputs))
        if reference.shape != student.shape:
            raise BottleneckError(
                f"the teacher's logits are {list(reference.shape)}, the masked model's {list(student.shape)}: "
                "distil from the model the mask was attached to"
            )
        scale = self.temperature
        return self.weight * scale**2 * faithfulness_loss(reference / scale, student / scale)
