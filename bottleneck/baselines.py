"""Attribution baselines that score the same units as the mask: random, saliency, IG, occlusion.

Every method explains the model wrapped by a :class:`~bottleneck.wrap.MaskedModel`
(``masked.model``, frozen or not) on ``inputs`` and returns a float tensor ``[N]``:
one relevance per unit, aligned with ``masked.adapter(inputs).to_units(inputs)``
(the flat ragged layout; ``units.batch`` maps units to samples). That is the form
of the mask's own relevance, so every metric (:mod:`bottleneck.faithfulness`,
:mod:`bottleneck.metrics`) applies to every method.

**Gate space.** The methods attribute with respect to the per-unit gate vector
``g`` in ``[0, 1]^N``, through the modality adapter, so one implementation serves
points, images and tokens::

    f(g) = model(adapter.apply_gates(inputs, units, g, masked.baseline))

``g = 1`` is the real input; ``g = 0`` replaces every unit by the masked model's
baseline — the same baseline the deletion/insertion metrics remove units with.

For a linear-blend baseline (images ``zero``/``mean``/``blur``/``learned``, text
``zero``/``learned`` at the embedding output, point clouds ``centroid``/``zero``)
the gated input is ``b + G(g) * (x - b)``, where ``G`` copies each unit's gate onto
its features. By the chain rule ``df/dg_i = sum_{j in i} dF/dx_j * (x_j - b_j)``,
and along the path ``g = alpha * 1`` the gated input is exactly the input-space
path ``b + alpha * (x - b)``. Hence:

* :func:`saliency` at ``g = 1`` is ``|sum_{j in i} grad_j * (x_j - b_j)|``:
  gradient times (input − baseline) summed over the unit's features, in absolute
  value (not the raw input gradient);
* :func:`integrated_gradients` on ``g_i`` equals input-space Integrated Gradients
  (reference = the baseline input) summed over unit ``i``'s features, for the
  same quadrature (``steps`` and ``method``);
* :func:`occlusion` is the drop in the target output when unit ``i`` alone is
  replaced by the baseline (gate exactly 0).

**Baselines that remove units.** Point clouds ``remove``, text ``remove`` and a
ViT's ``remove`` take units whose gate is *exactly* 0 out of the input (or hide
them from attention); gates in ``(0, 1)`` blend towards the centroid or towards
zero. Gradients with respect to the gates exist for every built-in adapter and
default baseline, and occlusion removes the unit exactly as the deletion metric
does. Integrated Gradients, though, integrates over ``alpha`` in ``(0, 1]``: its
path starts at the *blended* input ``g -> 0+`` (points at the centroid, token
embeddings at zero but still attended), not at the removed one, so completeness
holds for ``f(1) - f(0+)``, which can differ from ``f(1) - f(0)``. For a PointNet
(max pooling) the two coincide; for attention models they need not.

Runs under ``torch.enable_grad()`` (also when called inside ``torch.no_grad()``),
with the masked model — wrapped model and baseline state included — in eval
mode; every module's training flag is restored afterwards. Samples must not
interact in eval mode (no batch statistics), which holds for ordinary models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from .errors import BottleneckError, describe
from .fbi import feature_norm
from .modality import Modality
from .modes import evaluating
from .units import Units
from .wrap import MaskedModel, _logits_of

__all__ = [
    "METHODS",
    "OUTPUTS",
    "GateFunction",
    "attribution_mode",
    "feature_norm",
    "check_target",
    "integrated_gradients",
    "occlusion",
    "random_relevance",
    "saliency",
]

#: What the gradient and occlusion methods attribute: the target logit or its softmax probability.
OUTPUTS = ("logit", "probability")

_CAPTUM_HINT = 'this method needs Captum: pip install "bottleneck-mask[explain]" (or pip install captum)'


def _captum() -> Any:
    """The ``captum.attr`` module, or a :class:`BottleneckError` saying how to install it."""
    try:
        import captum.attr as attr
    except ImportError as error:
        raise BottleneckError(_CAPTUM_HINT) from error
    return attr


@contextlib.contextmanager
def attribution_mode(masked: MaskedModel) -> Iterator[None]:
    """Eval mode and gradients on for the duration; every module's training flag restored after.

    The baseline state (a running mean) must not update on perturbed inputs, and
    batch-statistics layers must not couple the samples of a batch, so every
    module of ``masked`` is put in eval mode. A recurrent model on CUDA runs with
    cuDNN off: cuDNN's RNN backward refuses to run in eval mode.
    """
    if torch.is_inference_mode_enabled():
        raise BottleneckError(
            "attribution needs gradients, but torch.inference_mode() is on; call it outside "
            "inference_mode (torch.no_grad() is fine)"
        )
    recurrent = any(isinstance(m, nn.RNNBase) for m in masked.model.modules())
    cudnn = torch.backends.cudnn.enabled
    try:
        if recurrent:  # only the on/off switch: the user's other cuDNN settings stay as they are
            torch.backends.cudnn.enabled = False
        with evaluating(masked), torch.enable_grad():
            yield
    finally:
        torch.backends.cudnn.enabled = cudnn


class GateFunction:
    """``f(g)``: the wrapped model's output with each unit blended with the baseline by its gate.

    Build it inside :func:`attribution_mode`. Captum attributes with respect to
    a dense ``[B, N_max]`` gate tensor (``to_dense_batch`` layout, one row per
    sample, padded); :meth:`__call__` takes that tensor, keeps its valid entries
    as the flat ``[N]`` gates, and returns ``[B, C]`` outputs. Padded positions do
    not reach the model, so their attribution is 0 and :meth:`flatten` drops them.

    :param masked: gives the adapter, the baseline and the model to explain.
    :param inputs: the inputs to explain.
    :param target: ``[B]`` class ids; default the model's prediction on ``inputs``.
    :param output: ``"logit"`` (default) or ``"probability"`` (softmax), what is attributed.
    """

    def __init__(
        self, masked: MaskedModel, inputs: Any, target: Tensor | None = None, output: str = "logit"
    ) -> None:
        if output not in OUTPUTS:
            raise BottleneckError(f"output must be one of {list(OUTPUTS)} (got {output!r})")
        if not isinstance(masked, MaskedModel):
            raise BottleneckError(f"expected a MaskedModel from bottleneck.attach (got {describe(masked)})")
        self.masked, self.inputs, self.output = masked, inputs, output
        self.adapter: Modality = masked.adapter(inputs)
        self.units: Units = self.adapter.to_units(inputs, with_graph=False)
        self.state: dict[str, Any] = (
            {} if masked.baseline_state is None else {"state": masked.baseline_state}
        )
        ones = torch.ones(self.units.num_units, device=self.units.batch.device)
        _, self.valid = to_dense_batch(ones, self.units.batch, batch_size=self.units.num_samples)
        dtype = self.units.x.dtype if self.units.x.is_floating_point() else torch.float32
        self.dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        with torch.no_grad():
            logits = self._checked(self.adapter.call_model(masked.model, inputs), "the input")
        self.num_classes = int(logits.shape[1])
        self.target = check_target(target, self.units.num_samples, self.num_classes, logits.argmax(-1))
        self.target = self.target.to(logits.device)

    @property
    def num_samples(self) -> int:
        return self.units.num_samples

    def ones(self) -> Tensor:
        """``[B, N_max]`` dense gates of the real input (``g = 1``)."""
        return torch.ones(self.valid.shape, dtype=self.dtype, device=self.valid.device)

    def flatten(self, dense: Tensor) -> Tensor:
        """``[B, N_max]`` -> ``[N]``: the valid entries, in unit order."""
        return dense[self.valid]

    def dense(self, values: Tensor) -> Tensor:
        """``[N]`` -> ``[B, N_max]`` (padding 0)."""
        return to_dense_batch(values, self.units.batch, batch_size=self.num_samples)[0]

    def _checked(self, output: Any, what: str) -> Tensor:
        logits = _logits_of(output)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != self.num_samples:
            raise BottleneckError(
                f"attribution needs [B, C] = [{self.num_samples}, C] logits from the model on {what} "
                f"(got {describe(logits)})"
            )
        if not torch.isfinite(logits).all():
            raise BottleneckError(f"the model's logits on {what} hold NaN or Inf values")
        return logits.float()

    def outputs(self, gates: Tensor) -> Tensor:
        """``[B, C]`` logits (or probabilities) with flat ``[N]`` gates."""
        if gates.shape != (self.units.num_units,):
            raise BottleneckError(
                f"gates must be [N] = [{self.units.num_units}] (got {describe(gates)})"
            )
        gated = self.adapter.apply_gates(self.inputs, self.units, gates, self.masked.baseline, **self.state)
        logits = self._checked(self.adapter.call_model(self.masked.model, gated), "gated inputs")
        return logits if self.output == "logit" else torch.softmax(logits, -1)

    def score(self, gates: Tensor) -> Tensor:
        """``[B]`` target output with flat ``[N]`` gates."""
        return self.outputs(gates).gather(1, self.target[:, None])[:, 0]

    def __call__(self, dense_gates: Tensor) -> Tensor:
        """``[B, C]`` outputs for dense ``[B, N_max]`` gates (the forward function Captum calls)."""
        if dense_gates.shape != self.valid.shape:
            raise BottleneckError(
                f"the gate function takes one [B, N_max] = {list(self.valid.shape)} gate tensor per "
                f"call (got {describe(dense_gates)}); Captum must be called with "
                "internal_batch_size=B (IG) or perturbations_per_eval=1 (occlusion)"
            )
        return self.outputs(self.flatten(dense_gates))

    def require_gradient(self) -> None:
        """Raise a clear error when the adapter's gate application passes no gradient to the gates."""
        gates = torch.ones(self.units.num_units, dtype=self.dtype, device=self.valid.device, requires_grad=True)
        score = self.score(gates).sum()
        grad = None
        if score.requires_grad:
            (grad,) = torch.autograd.grad(score, gates, allow_unused=True)
        if grad is None:
            raise BottleneckError(
                f"modality {self.adapter.name!r} with baseline {self.masked.baseline!r} passes no "
                "gradient to the unit gates, so gradient methods cannot explain it; use "
                "occlusion or another baseline"
            )


def check_target(target: Any, num_samples: int, num_classes: int | None, default: Tensor | None) -> Tensor:
    """``target`` checked as ``[B]`` integer class ids in ``[0, C)``, or ``default`` when ``None``."""
    if target is None:
        if default is None:
            raise BottleneckError("no target given and no prediction to default to")
        return default
    if (
        not isinstance(target, Tensor)
        or target.shape != (num_samples,)
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        raise BottleneckError(
            f"target must be a [B] = [{num_samples}] integer tensor of class ids (got {describe(target)})"
        )
    if num_classes is not None and target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise BottleneckError(
            f"target class ids must lie in [0, {num_classes}) (got {int(target.min())} to {int(target.max())})"
        )
    return target.long()


def _with_gradient(function: GateFunction, run: Callable[[], Tensor]) -> Tensor:
    """``run()``; when it fails, a clear error if the failure is a missing gate gradient."""
    try:
        return run()
    except RuntimeError:
        function.require_gradient()  # raises BottleneckError when no gradient reaches the gates
        raise


def random_relevance(
    masked: MaskedModel, inputs: Any, target: Tensor | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    """``[N]`` uniform random relevance in ``[0, 1)``: the floor every method must beat.

    The model is not run. ``target`` is only checked (shape), so the call has the
    same form as the other methods. Reproducible with ``generator``.
    """
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    if target is not None:
        check_target(target, units.num_samples, None, None)
    device = generator.device if generator is not None else units.batch.device
    return torch.rand(units.num_units, generator=generator, device=device).to(units.batch.device)


def saliency(masked: MaskedModel, inputs: Any, target: Tensor | None = None, *, output: str = "logit") -> Tensor:
    """``[N]`` ``|d f_target / d g_i|`` at ``g = 1`` (Captum ``Saliency``, ``abs=True``).

    For a linear-blend baseline this is the absolute value of the input gradient
    times (input − baseline), summed over the unit's features: a first-order
    estimate of what removing the unit changes. One forward and backward pass.
    """
    attr = _captum()
    with attribution_mode(masked):
        function = GateFunction(masked, inputs, target, output)

        def run() -> Tensor:
            gates = function.ones().requires_grad_()
            return attr.Saliency(function).attribute(gates, target=function.target, abs=True)

        return function.flatten(_with_gradient(function, run)).detach()


def integrated_gradients(
    masked: MaskedModel,
    inputs: Any,
    target: Tensor | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    output: str = "logit",
) -> Tensor:
    """``[N]`` Integrated Gradients of the target output on the gates, from ``g = 0`` to ``g = 1``.

    ``IG_i = integral_0^1 df/dg_i(alpha * 1) d alpha`` (times ``1 - 0``), by Captum
    with ``steps`` points of ``method``. Per sample the values sum to about
    ``f(1) - f(0)`` (completeness); for a linear-blend baseline they equal
    input-space IG with the baseline input as reference, summed per unit.
    Captum is called with ``internal_batch_size=B``, so each forward pass sees
    one ``alpha`` for the whole ``[B, N_max]`` batch: ``steps`` forward and
    backward passes in all.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BottleneckError(f"steps must be a positive int (got {steps!r})")
    attr = _captum()
    with attribution_mode(masked):
        function = GateFunction(masked, inputs, target, output)
        ones = function.ones()

        def run() -> Tensor:
            return attr.IntegratedGradients(function).attribute(
                ones, baselines=torch.zeros_like(ones), target=function.target, n_steps=steps,
                method=method, internal_batch_size=function.num_samples,
            )

        return function.flatten(_with_gradient(function, run)).detach()


def occlusion(masked: MaskedModel, inputs: Any, target: Tensor | None = None, *, output: str = "logit") -> Tensor:
    """``[N]`` drop in the target **logit** (``output="probability"``: its softmax probability)
    when unit ``i`` alone is replaced by the baseline (gate exactly 0, all others 1).

    Positive: the unit supports the target; negative: it speaks against it.
    With a ``remove`` baseline the unit is removed, exactly as the deletion
    metric removes it. Captum ``Occlusion`` with windows of one unit, one
    perturbation per forward pass: ``N_max + 1`` forward passes on the batch.
    """
    attr = _captum()
    with attribution_mode(masked), torch.no_grad():
        function = GateFunction(masked, inputs, target, output)
        result = attr.Occlusion(function).attribute(
            function.ones(), sliding_window_shapes=(1,), baselines=0, target=function.target,
            perturbations_per_eval=1,
        )
        return function.flatten(result).detach()


#: The attribution baselines by name; each is ``method(masked, inputs, target=None) -> [N]``.
#: :func:`~bottleneck.fbi.feature_norm` (FBI, re-exported here) also needs ``layer=``.
METHODS: dict[str, Callable[..., Tensor]] = {
    "random": random_relevance,
    "saliency": saliency,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
}
