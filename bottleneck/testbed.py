"""``Testbed``: a modality's reference model and planted-evidence data, for benchmarks.

A plugin registers a function ``prepare(quick=..., seed=...) -> Testbed`` on its
:class:`~bottleneck.demo.Demo` (``Demo(testbed=prepare)``). The testbed holds what
every method needs to be scored the same way: the data (training batches, test
batches with per-unit ground truth), how to build the model, how to attach a mask
to it, the layer just before the model's global pooling (for FBI), and the
training settings. Building one is cheap (no training): ``bottleneck bench
explain`` trains the models, and ``bottleneck explain`` rebuilds the same
testbed from the settings stored in a saved mask to explain its test data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import BottleneckError
from .explanation import Explanation
from .modality import Modality
from .units import Units


def _same_layout(truth: Tensor, units: Units, adapter: Modality) -> Tensor:
    return truth


def _default_render(explanation: Explanation, out_dir: Path, index: int) -> list[Path]:
    return explanation.render(out_dir, prefix=f"batch{index}")


@dataclass
class Testbed:
    """One modality's benchmark setting.

    :param modality: registered modality name.
    :param model_name: the reference model's name (for reports).
    :param make_model: builds the reference model with fresh weights (seeded by the caller).
    :param train: re-iterable loader of ``(inputs, targets)`` batches.
    :param test: ``(inputs, targets, truth)`` batches; ``truth`` marks the planted evidence
        in whatever layout the data has (per point, per pixel, per token position).
    :param unit_truth: ``unit_truth(truth, units, adapter) -> [N] bool`` per unit; by
        default ``truth`` is already per unit.
    :param attach_options: keyword arguments for :func:`bottleneck.attach` besides mode,
        gate and keep (``special_ids``, ``placeholder_id``, ...).
    :param feature_layer: the layer whose output feeds the model's global pooling (FBI).
    :param epochs: training epochs of the plain model.
    :param lr: learning rate of that training.
    :param joint_epochs: epochs of joint (mask + model) training, continuing from the plain model.
    :param joint_keep: keep target of the jointly masked models (the demo's).
    :param joint_options: extra :func:`~bottleneck.attach` options for the jointly masked models.
    :param explain_options: :func:`~bottleneck.attach` options of the explain-mode mask
        (``{"where": "layer2"}`` puts it at a hidden layer, IBA-style); when they move the
        mask off the input, the benchmark also reports a mask at the input.
    :param explain_epochs: epochs of explain-mode mask training on the frozen model.
    :param explain_lr: learning rate of that training.
    :param settings: what rebuilds this testbed (``quick``, ``seed``, sizes), stored with saved masks.
    :param render: ``render(explanation, out_dir, batch_index) -> files``.
    """

    __test__ = False  # not a pytest test class, though its name starts with "Test"

    modality: str
    model_name: str
    make_model: Callable[[], nn.Module]
    train: Iterable[Any]
    test: list[tuple[Any, Tensor, Tensor]]
    attach_options: dict[str, Any] = field(default_factory=dict)
    feature_layer: str | None = None
    epochs: int = 5
    lr: float = 3e-3
    joint_epochs: int = 4
    joint_keep: float = 0.3
    joint_options: dict[str, Any] = field(default_factory=dict)
    explain_options: dict[str, Any] = field(default_factory=dict)
    explain_epochs: int = 5
    explain_lr: float = 1e-2
    settings: dict[str, Any] = field(default_factory=dict)
    unit_truth: Callable[[Tensor, Units, Modality], Tensor] = _same_layout
    render: Callable[[Explanation, Path, int], list[Path]] = _default_render

    def __post_init__(self) -> None:
        if not self.test:
            raise BottleneckError(f"testbed {self.modality!r} has no test batches")

    def truth_of(self, truth: Tensor, units: Units, adapter: Modality) -> Tensor:
        """``[N]`` bool planted evidence per unit, checked against ``units``."""
        per_unit = self.unit_truth(truth, units, adapter).to(units.batch.device).bool()
        if per_unit.shape != (units.num_units,):
            raise BottleneckError(
                f"testbed {self.modality!r}: truth per unit must be [{units.num_units}] (got {list(per_unit.shape)})"
            )
        return per_unit

    @property
    def num_test_samples(self) -> int:
        return sum(int(targets.shape[0]) for _, targets, _ in self.test)
