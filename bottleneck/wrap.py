"""``attach(model)`` -> :class:`MaskedModel`: the mask layer inserted in front of a model.

The wrapped model is untouched: the masked model calls the plugin to turn the
first positional input into units, gates them, hands the model the masked
input, and returns the model's output with the gates and the bottleneck loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .explanation import Explanation
from .layer import MaskLayer, MaskResult
from .modality import Modality
from .objective import faithfulness_loss
from .plugins import detect_modality, get_modality
from .segment import segment_topk_mask
from .units import Units

MODES = ("joint", "explain")


@dataclass
class MaskedOutput:
    """What calling a :class:`MaskedModel` returns.

    :param output: the wrapped model's output on the masked input.
    :param ib_loss: the bottleneck loss; add it to the task loss.
    :param gates: ``[N]`` the gates applied to each unit.
    :param relevance: ``[N]`` the probability that each unit's gate is open.
    :param keep_rate: ``[B]`` expected fraction of units kept per sample.
    :param terms: each term of ``ib_loss``, detached, for logging.
    :param units: the units (``units.batch`` maps gates to samples).
    """

    output: Any
    ib_loss: Tensor
    gates: Tensor
    relevance: Tensor
    keep_rate: Tensor
    terms: dict[str, Tensor]
    units: Units


@dataclass
class SparseOutput:
    """What :meth:`MaskedModel.sparse` returns: the output computed on kept units only.

    :param output: the wrapped model's output on the reduced input.
    :param kept: ``[N]`` bool, which of the original units were kept.
    :param inputs: the reduced input the model received.
    :param units: the original units.
    """

    output: Any
    kept: Tensor
    inputs: Any
    units: Units

    @property
    def kept_counts(self) -> Tensor:
        """``[B]`` units kept per sample."""
        return torch.bincount(self.units.batch[self.kept], minlength=self.units.num_samples)


def _logits_of(output: Any) -> Tensor:
    """The logits tensor inside a model output (a tensor, a tuple, or an object with ``.logits``)."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise BottleneckError(f"cannot find logits in the model output ({describe(output)})")


class MaskedModel(nn.Module):
    """A model with an information-bottleneck mask over its input units.

    Build it with :func:`attach`. In ``joint`` mode mask and model train
    together; in ``explain`` mode the model is frozen and the mask learns to keep
    the model's own prediction (KL to the unmasked output) with as few units as
    the keep target allows.
    """

    def __init__(
        self,
        model: nn.Module,
        modality: str | None = None,
        *,
        mode: str = "joint",
        gate: str = "hard_concrete",
        keep: float = 0.3,
        where: str = "input",
        baseline: str | None = None,
        faithfulness_weight: float = 1.0,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise BottleneckError(f"attach() needs a torch.nn.Module (got {describe(model)})")
        if mode not in MODES:
            raise BottleneckError(f"mode must be one of {list(MODES)} (got {mode!r})")
        if where != "input":
            raise BottleneckError(
                f"where must be 'input' for now (got {where!r}); hidden-layer insertion is not "
                "implemented in this version"
            )
        self.model = model
        self.mode, self.where = mode, where
        self.modality_name = modality
        self.baseline = baseline
        if modality is not None:
            adapter = get_modality(modality)
            if baseline is not None:
                adapter.check_baseline(baseline)
        self.faithfulness_weight = float(faithfulness_weight)
        self.mask = MaskLayer(gate, keep, **layer_options)
        self.gate_name = gate
        self.layer_options = dict(layer_options)
        if mode == "explain":
            self.model.requires_grad_(False)
            self.model.eval()

    # -- configuration -------------------------------------------------------
    @property
    def keep(self) -> float:
        return self.mask.keep

    def train(self, mode: bool = True) -> MaskedModel:
        """Like ``nn.Module.train``, but a frozen model (explain mode) stays in eval mode."""
        super().train(mode)
        if self.mode == "explain":
            self.model.eval()
        return self

    def adapter(self, inputs: Any = None) -> Modality:
        """The modality adapter, detected from ``inputs`` on first use when not given."""
        if self.modality_name is None:
            if inputs is None:
                raise BottleneckError("modality is unknown until the model is called on inputs")
            self.modality_name = detect_modality(inputs)
        adapter = get_modality(self.modality_name)
        if self.baseline is None:
            self.baseline = adapter.default_baseline
        adapter.check_baseline(self.baseline)
        return adapter

    def mask_units(self, inputs: Any) -> tuple[Modality, Units, MaskResult]:
        """Run only the mask on ``inputs``: ``(adapter, units, mask result)``."""
        adapter = self.adapter(inputs)
        units = adapter.to_units(inputs, with_graph=self.training and self.mask.smooth_weight > 0)
        return adapter, units, self.mask(units)

    # -- forward passes ------------------------------------------------------
    def forward(self, inputs: Any, *args: Any, **kwargs: Any) -> MaskedOutput:
        adapter, units, result = self.mask_units(inputs)
        masked = adapter.apply_gates(inputs, units, result.gates, self.baseline)
        output = adapter.call_model(self.model, masked, *args, **kwargs)
        loss, terms = result.loss, dict(result.terms)
        if self.mode == "explain" and self.training:
            with torch.no_grad():
                reference = adapter.call_model(self.model, inputs, *args, **kwargs)
            faith = faithfulness_loss(_logits_of(reference), _logits_of(output))
            loss = loss + self.faithfulness_weight * faith
            terms["faithfulness"] = faith.detach()
        return MaskedOutput(output, loss, result.gates, result.p_open, result.keep_rate, terms, units)

    @torch.no_grad()
    def explain(self, inputs: Any) -> Explanation:
        """Per-unit relevance of ``inputs`` in one forward pass of the mask (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            adapter, units, result = self.mask_units(inputs)
        finally:
            self.train(was_training)
        return Explanation(result.p_open, result.gates, units, inputs, adapter)

    def kept_units(self, units: Units, result: MaskResult, keep: float | None = None) -> Tensor:
        """``[N]`` bool: units kept for sparse inference.

        With ``keep``, each sample keeps its top ``ceil(keep * n_i)`` units by
        relevance; without, the units whose deterministic gate is open (and at
        least each sample's most relevant unit).
        """
        scores = result.p_open
        if keep is not None:
            if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
                raise BottleneckError(f"keep must be a fraction in (0, 1] (got {keep!r})")
            return segment_topk_mask(scores, units.batch, units.num_samples, float(keep))
        top1 = segment_topk_mask(scores, units.batch, units.num_samples, torch.ones(
            units.num_samples, dtype=torch.long, device=scores.device))
        return (result.gates > 0) | top1

    @torch.no_grad()
    def sparse(self, inputs: Any, *args: Any, keep: float | None = None, **kwargs: Any) -> SparseOutput:
        """Run the model on the kept units only: dropped units are removed, not zeroed."""
        was_training = self.training
        self.eval()
        try:
            adapter, units, result = self.mask_units(inputs)
            kept = self.kept_units(units, result, keep)
            reduced = adapter.drop_units(inputs, units, kept)
            output = adapter.call_model(self.model, reduced, *args, **kwargs)
        finally:
            self.train(was_training)
        return SparseOutput(output, kept, reduced, units)

    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this masked model's mask (saved with it)."""
        return {
            "modality": self.modality_name,
            "mode": self.mode,
            "gate": self.gate_name,
            "keep": self.keep,
            "where": self.where,
            "baseline": self.baseline,
            "faithfulness_weight": self.faithfulness_weight,
            "layer_options": self.layer_options,
        }

    def extra_repr(self) -> str:
        return (
            f"modality={self.modality_name!r}, mode={self.mode!r}, gate={self.gate_name!r}, "
            f"keep={self.keep}, where={self.where!r}, baseline={self.baseline!r}"
        )


def attach(
    model: nn.Module,
    modality: str | None = None,
    *,
    mode: str = "joint",
    gate: str = "hard_concrete",
    keep: float = 0.3,
    where: str = "input",
    **options: Any,
) -> MaskedModel:
    """Wrap ``model`` with a bottleneck mask over its input units.

    :param model: any ``nn.Module``; it is called as ``model(inputs, *args, **kwargs)``
        with ``inputs`` masked.
    :param modality: a registered modality name; ``None`` detects it from the first inputs.
    :param mode: ``"joint"`` (train mask and model) or ``"explain"`` (freeze the model).
    :param gate: ``hard_concrete`` (default), ``concrete``, ``gaussian`` (PointMask) or ``topk``.
    :param keep: target fraction of units kept per sample, in (0, 1].
    :param where: ``"input"``.
    :param options: ``baseline=`` and :class:`~bottleneck.layer.MaskLayer` options.
    """
    return MaskedModel(model, modality, mode=mode, gate=gate, keep=keep, where=where, **options)
