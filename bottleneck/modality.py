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

    Optional extensions (each has a default, so a minimal plugin implements
    only the three abstract methods):

    * :meth:`configure` — per-model options (``attach(model, "image", patch_size=8)``)
      and a look at the wrapped model; returns the adapter to use for it.
    * :meth:`make_baseline` — a module holding baseline state (a running dataset
      mean, a learned vector). The masked model owns it (so it trains, moves to the
      device and is saved) and passes it back as ``state=`` to :meth:`apply_gates`.
    * :meth:`make_encoder` — a trainable module that computes the features the
      scorer reads from the units (a small CNN over the image grid), owned and
      trained by the masked model like the scorer itself.
    * :meth:`can_drop` — ``False`` when the model cannot take a reduced input (a
      CNN on a dense grid); sparse inference then applies hard gates instead.
    * :meth:`hidden_to_units`, :meth:`apply_hidden_gates`, :meth:`relevance_to_input`
      — IBA-style insertion at a hidden layer (``attach(model, where="layer2")``).
    """

    #: Registered name (``"pointcloud"``, ``"image"``, ...).
    name: ClassVar[str] = ""
    #: Baselines :meth:`apply_gates` understands; the first is the default.
    baselines: ClassVar[tuple[str, ...]] = ("zero",)
    #: Mask-layer options this modality trains best with (``attach`` arguments override
    #: them). Applied when the modality is named in ``attach``, not when detected.
    layer_defaults: ClassVar[dict[str, Any]] = {}

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

    def configure(self, model: nn.Module, **options: Any) -> Modality:
        """The adapter to use for ``model`` with per-model ``options``.

        The default takes no options and returns ``self``. Plugins with options
        return a new, configured instance (the registered one stays untouched).
        """
        if options:
            raise BottleneckError(
                f"modality {self.name!r} takes no options (got {sorted(options)}); "
                "check the spelling of attach() keyword arguments"
            )
        return self

    def make_baseline(self, baseline: str) -> nn.Module | None:
        """A module with the state ``baseline`` needs (``None`` when it is stateless)."""
        return None

    def make_encoder(self) -> nn.Module | None:
        """A module mapping :class:`Units` to ``[N, F]`` scorer features (``None``: use ``units.x``).

        Plain per-unit features suit points and tokens; where a unit's relevance
        depends on a pattern that spans neighbouring units (pixels), an encoder
        with a receptive field over the unit grid lets the scorer see it.
        """
        return None

    def can_drop(self) -> bool:
        """Whether :meth:`drop_units` really removes units for this model."""
        return True

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

    # -- hidden-layer insertion (optional) -------------------------------------
    def hidden_to_units(self, features: Any, *, with_graph: bool = True, inputs: Units | None = None) -> Units:
        """Units of a hidden layer's output (for ``attach(..., where=LAYER)``).

        :param inputs: the units of the model's input in the same forward pass (which
            tokens are padding, which sample each point belongs to), for adapters whose
            hidden features do not carry that themselves.
        """
        raise BottleneckError(f"modality {self.name!r} does not support hidden-layer insertion")

    def apply_hidden_gates(self, features: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        """The hidden layer's output with each unit blended with the baseline by its gate."""
        raise BottleneckError(f"modality {self.name!r} does not support hidden-layer insertion")

    def relevance_to_input(self, values: Tensor, hidden: Units, inputs: Units) -> Tensor:
        """Map per-hidden-unit ``values`` (``[N_hidden]``) onto the input units (``[N_input]``)."""
        raise BottleneckError(f"modality {self.name!r} does not support hidden-layer insertion")

    def call_model(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped model on (masked) inputs."""
        return model(inputs, *args, **kwargs)

    def render(self, inputs: Any, units: Units, relevance: Tensor, out_dir: Path, **options: Any) -> list[Path]:
        """Write pictures of the relevance; returns the files written."""
        raise BottleneckError(f"modality {self.name!r} has no renderer")
