"""``Modality``: what a plugin implements to translate one kind of input to units and back."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from .errors import BottleneckError
from .units import Units


class Modality(abc.ABC):
    """An input adapter. Subclass it in a plugin and register an instance.

    The core calls :meth:`to_units` on the model's input, runs the mask layer,
    then :meth:`apply_gates` (soft masking during training) or
    :meth:`drop_units` (hard removal for sparse inference), and finally
    :meth:`call_model`.
    """

    #: Registered name (``"pointcloud"``, ``"image"``, ...).
    name: ClassVar[str] = ""
    #: Baselines :meth:`apply_gates` understands; the first is the default.
    baselines: ClassVar[tuple[str, ...]] = ("zero",)

    @property
    def default_baseline(self) -> str:
        return self.baselines[0]

    def check_baseline(self, baseline: str) -> str:
        """Raise unless ``baseline`` is one this modality supports."""
        if baseline not in self.baselines:
            raise BottleneckError(
                f"baseline for modality {self.name!r} must be one of {list(self.baselines)} "
                f"(got {baseline!r})"
            )
        return baseline

    def accepts(self, inputs: Any) -> bool:
        """Whether ``inputs`` look like this modality (used to detect it)."""
        return False

    @abc.abstractmethod
    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        """Validate ``inputs`` and flatten them to units.

        :param with_graph: also build the unit graph (``units.edge_index``); the
            core skips it when no objective term needs it.
        """

    @abc.abstractmethod
    def apply_gates(self, inputs: Any, units: Units, gates: Tensor, baseline: str) -> Any:
        """Model inputs in which each unit is blended with the baseline by its gate."""

    @abc.abstractmethod
    def drop_units(self, inputs: Any, units: Units, keep: Tensor) -> Any:
        """Smaller model inputs holding only the units where ``keep`` (``[N]`` bool) is True."""

    def call_model(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped model on (masked) inputs."""
        return model(inputs, *args, **kwargs)

    def render(self, inputs: Any, units: Units, relevance: Tensor, out_dir: Path, **options: Any) -> list[Path]:
        """Write pictures of the relevance; returns the files written."""
        raise BottleneckError(f"modality {self.name!r} has no renderer")
