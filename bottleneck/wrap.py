"""``attach(model)`` -> :class:`MaskedModel`: the mask layer inserted in front of a model.

The wrapped model is untouched: the masked model calls the plugin to turn the
first positional input into units, gates them, hands the model the masked
input, and returns the model's output with the gates and the bottleneck loss.

With ``where="<layer name>"`` the mask sits at a hidden layer instead (IBA):
a forward hook turns that layer's output into units, gates them and hands the
gated output on; explanations are mapped back onto the input units.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .explanation import Explanation
from .layer import MaskLayer, MaskResult
from .modality import Modality
from .modes import evaluating
from .objective import FaithfulnessConstraint, faithfulness_loss
from .plugins import detect_modality, get_modality
from .segment import segment_topk_mask
from .units import Units

MODES = ("joint", "explain")
#: Open probability of every gate when explain-mode training starts.
EXPLAIN_INIT_OPEN = 0.5


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
    :param removed: ``True`` when dropped units were removed from the input; ``False``
        when the model cannot take a reduced input (a CNN on a dense grid) and the
        dropped units were replaced by the baseline instead (hard gates, same compute).
    """

    output: Any
    kept: Tensor
    inputs: Any
    units: Units
    removed: bool = True

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
    together and the mask holds the keep target. In ``explain`` mode the model is
    frozen and the mask minimises the expected number of open gates subject to
    ``KL(p(x) || p(masked x)) <= epsilon`` (a Lagrange multiplier holds it);
    ``keep`` is then an upper bound on the keep rate (default: none).
    """

    def __init__(
        self,
        model: nn.Module,
        modality: str | None = None,
        *,
        mode: str = "joint",
        gate: str = "hard_concrete",
        keep: float | None = None,
        where: str = "input",
        baseline: str | None = None,
        epsilon: float = 0.1,
        sparsity_weight: float = 5.0,
        modality_options: dict[str, Any] | None = None,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise BottleneckError(f"attach() needs a torch.nn.Module (got {describe(model)})")
        if mode not in MODES:
            raise BottleneckError(f"mode must be one of {list(MODES)} (got {mode!r})")
        self.model = model
        self.mode, self.where = mode, where
        self.target_layer = None if where == "input" else _find_layer(model, where)
        self.modality_name = modality
        self.modality_options = dict(modality_options or {})
        self.baseline = baseline
        self.baseline_state: nn.Module | None = None
        self.unit_encoder: nn.Module | None = None
        self._adapter: Modality | None = None
        self.epsilon, self.sparsity_weight = float(epsilon), float(sparsity_weight)
        self.faithfulness: FaithfulnessConstraint | None = None
        if modality is not None:
            layer_options = {**get_modality(modality).layer_defaults, **layer_options}
        if mode == "explain":
            self.faithfulness = FaithfulnessConstraint(epsilon)
            if sparsity_weight < 0:
                raise BottleneckError(f"sparsity_weight must be >= 0 (got {sparsity_weight!r})")
            if keep is None:  # the KL budget decides how many units stay open
                keep = 1.0
            layer_options.setdefault("constraint", "at_most")
            # start undecided: half open, so the KL term sees both outcomes from step 0
            layer_options.setdefault("init_open", EXPLAIN_INIT_OPEN)
        self.mask = MaskLayer(gate, 0.3 if keep is None else keep, **layer_options)
        self.gate_name = gate
        self.layer_options = dict(layer_options)
        if modality is not None:
            self._resolve_adapter()
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

    def _resolve_adapter(self) -> Modality:
        """Configure the named modality for this model, check the baseline, build its state."""
        adapter = get_modality(self.modality_name).configure(self.model, **self.modality_options)
        if self.baseline is None:
            self.baseline = adapter.default_baseline
        adapter.check_baseline(self.baseline)
        if self.baseline_state is None:
            self.baseline_state = adapter.make_baseline(self.baseline)
        if self.unit_encoder is None and self.target_layer is None:
            # encoders read input units (an image's pixels around each patch); a hidden layer's
            # features already see their neighbourhood (a CNN's layer2 has a receptive field of
            # many pixels), and convolving them again cost an explanation at layer2 a third of
            # a forward pass, so hidden units are scored as they come
            self.unit_encoder = adapter.make_encoder()
        self._adapter = adapter
        return adapter

    def adapter(self, inputs: Any = None) -> Modality:
        """The modality adapter, detected from ``inputs`` on first use when not given."""
        if self._adapter is not None:
            return self._adapter
        if self.modality_name is None:
            if inputs is None:
                raise BottleneckError("modality is unknown until the model is called on inputs")
            self.modality_name = detect_modality(inputs)
        adapter = self._resolve_adapter()
        for module in (self.baseline_state, self.unit_encoder):  # created after .to(device)
            if module is not None:
                module.to(_device_of(self.mask, inputs))
        return adapter

    def encode(self, units: Units) -> Units:
        """``units`` with the scorer features the adapter's encoder computes (if it has one).

        Before an encoder runs, the units' dtype is checked, so a mismatch is reported as such,
        not from inside the encoder's convolutions; without one the scorer checks them itself.
        """
        if self.unit_encoder is None:
            return units
        self.mask.scorer.check_dtype(units.x)
        return units.with_(x=self.unit_encoder(units))

    def _state(self) -> dict[str, Any]:
        """``state=`` for the adapter's gate application when the baseline has state."""
        return {} if self.baseline_state is None else {"state": self.baseline_state}

    def mask_units(self, inputs: Any, *, inference: bool = False) -> tuple[Modality, Units, MaskResult]:
        """Run only the mask on ``inputs``: ``(adapter, units, mask result)``.

        ``inference=True`` runs :meth:`~bottleneck.layer.MaskLayer.infer` (deterministic
        gates and relevance, no loss terms), as explanations and sparse inference do.
        """
        if self.target_layer is not None:
            raise BottleneckError(
                f"the mask sits at layer {self.where!r}: its units exist only inside a forward "
                "pass of the model; call the masked model or explain()"
            )
        adapter = self.adapter(inputs)
        units = adapter.to_units(inputs, with_graph=self._needs_graph())
        encoded = self.encode(units)
        return adapter, units, self.mask.infer(encoded) if inference else self.mask(encoded)

    def _needs_graph(self) -> bool:
        return self.training and self.mask.smooth_weight > 0

    # -- forward passes ------------------------------------------------------
    def forward(self, inputs: Any, *args: Any, **kwargs: Any) -> MaskedOutput:
        if self.target_layer is not None:
            adapter = self.adapter(inputs)
            output, units, result = self._run_with_hidden_mask(adapter, inputs, *args, **kwargs)
        else:
            adapter, units, result = self.mask_units(inputs)
            masked = adapter.apply_gates(inputs, units, result.gates, self.baseline, **self._state())
            output = adapter.call_model(self.model, masked, *args, **kwargs)
        loss, terms = result.loss, dict(result.terms)
        if self.faithfulness is not None and self.training:
            with torch.no_grad():
                reference = adapter.call_model(self.model, inputs, *args, **kwargs)
            kl = faithfulness_loss(_logits_of(reference), _logits_of(output))
            loss = loss + self.sparsity_weight * result.keep_rate.mean() + self.faithfulness(kl)
            terms["faithfulness"] = kl.detach()
            terms["kl_multiplier"] = self.faithfulness.multiplier.detach().clone()
        return MaskedOutput(output, loss, result.gates, result.p_open, result.keep_rate, terms, units)

    def _run_with_hidden_mask(
        self, adapter: Modality, inputs: Any, *args: Any, explain_only: bool = False,
        input_units: Units | None = None, **kwargs: Any
    ) -> tuple[Any, Units, MaskResult]:
        """Call the model with the mask applied to ``target_layer``'s output by a forward hook.

        ``explain_only`` runs the mask's inference pass and stops the model right after
        the masked layer (the output is then ``None``): an explanation needs the layers
        up to the mask, not the rest of the network.
        """
        if input_units is None:  # validates before the model runs
            input_units = adapter.to_units(inputs, with_graph=False)
        captured: list[tuple[Units, MaskResult]] = []

        def gate_hidden(module: nn.Module, args_: Any, output: Any) -> Any:
            if captured:
                raise BottleneckError(
                    f"layer {self.where!r} ran more than once in one forward pass; insert the "
                    "mask at a layer that runs once"
                )
            units = adapter.hidden_to_units(output, with_graph=self._needs_graph(), inputs=input_units)
            encoded = self.encode(units)
            result = self.mask.infer(encoded) if explain_only else self.mask(encoded)
            captured.append((units, result))
            if explain_only:
                raise _MaskedLayerReached
            return adapter.apply_hidden_gates(output, units, result.gates, self.baseline, **self._state())

        handle = self.target_layer.register_forward_hook(gate_hidden)
        output = None
        try:
            output = adapter.call_model(self.model, inputs, *args, **kwargs)
        except _MaskedLayerReached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise BottleneckError(f"layer {self.where!r} did not run in the model's forward pass")
        units, result = captured[0]
        return output, units, result

    @torch.no_grad()
    def explain(self, inputs: Any) -> Explanation:
        """Per-unit relevance of ``inputs`` in one forward pass (eval mode).

        With the mask at a hidden layer, the model runs once to reach it and the
        relevance is mapped back onto the input units.
        """
        with evaluating(self):
            if self.target_layer is None:
                adapter, units, result = self.mask_units(inputs, inference=True)
                return Explanation(_relevance(result), result.gates, units, inputs, adapter)
            adapter = self.adapter(inputs)
            units = adapter.to_units(inputs, with_graph=False)
            _, hidden, result = self._run_with_hidden_mask(adapter, inputs, explain_only=True, input_units=units)
            relevance = adapter.relevance_to_input(_relevance(result), hidden, units)
            gates = adapter.relevance_to_input(result.gates, hidden, units)
            return Explanation(relevance, gates, units, inputs, adapter)

    def kept_units(self, units: Units, result: MaskResult, keep: float | None = None) -> Tensor:
        """``[N]`` bool: units kept for sparse inference.

        With ``keep``, each sample keeps its top ``ceil(keep * n_i)`` units by
        relevance; without, the units whose deterministic gate is open (and at
        least each sample's most relevant unit).
        """
        scores = _relevance(result)
        if keep is not None:
            return self._top_units(scores, units, keep)
        top1 = segment_topk_mask(scores, units.batch, units.num_samples, torch.ones(
            units.num_samples, dtype=torch.long, device=scores.device))
        return (result.gates > 0) | top1

    @staticmethod
    def _top_units(scores: Tensor, units: Units, keep: float) -> Tensor:
        """``[N]`` bool: each sample's top ``ceil(keep * n_i)`` units by ``scores``."""
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
            raise BottleneckError(f"keep must be a fraction in (0, 1] (got {keep!r})")
        return segment_topk_mask(scores, units.batch, units.num_samples, float(keep))

    @torch.no_grad()
    def sparse(self, inputs: Any, *args: Any, keep: float | None = None, **kwargs: Any) -> SparseOutput:
        """Run the model on the kept units only: dropped units are removed, not zeroed.

        When the adapter says the model cannot take a reduced input
        (:meth:`~bottleneck.modality.Modality.can_drop`), the dropped units are
        replaced by the baseline instead and ``removed`` is ``False``.
        """
        with evaluating(self):
            if keep is not None and self.target_layer is None:  # the top-k needs the relevance only
                adapter = self.adapter(inputs)
                units = adapter.to_units(inputs, with_graph=False)
                kept = self._top_units(self.mask.relevance(self.encode(units)), units, keep)
            else:
                adapter, units, result = self.mask_units(inputs, inference=True)
                kept = self.kept_units(units, result, keep)
            removed = adapter.can_drop()
            if removed:
                reduced = adapter.drop_units(inputs, units, kept)
            else:
                hard = kept.to(units.x.dtype)
                reduced = adapter.apply_gates(inputs, units, hard, self.baseline, **self._state())
            output = adapter.call_model(self.model, reduced, *args, **kwargs)
        return SparseOutput(output, kept, reduced, units, removed)

    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this masked model's mask (saved with it)."""
        return {
            "modality": self.modality_name,
            "mode": self.mode,
            "gate": self.gate_name,
            "keep": self.keep,
            "where": self.where,
            "baseline": self.baseline,
            "epsilon": self.epsilon,
            "sparsity_weight": self.sparsity_weight,
            "modality_options": self.modality_options,
            "layer_options": self.layer_options,
        }

    def extra_repr(self) -> str:
        return (
            f"modality={self.modality_name!r}, mode={self.mode!r}, gate={self.gate_name!r}, "
            f"keep={self.keep}, where={self.where!r}, baseline={self.baseline!r}"
        )


class _MaskedLayerReached(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the hidden-layer hook to stop the model once an explanation has what it needs."""


def _relevance(result: MaskResult) -> Tensor:
    """The open probability, ranked beyond the logit bound when the layer provides it."""
    return result.p_open if result.relevance is None else result.relevance


def _find_layer(model: nn.Module, where: str) -> nn.Module:
    """The submodule named ``where`` (dotted path), or a clear error listing real names."""
    if not isinstance(where, str) or not where:
        raise BottleneckError(f"where must be 'input' or a layer name (got {where!r})")
    try:
        return model.get_submodule(where)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(repr(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
        raise BottleneckError(
            f"where={where!r} names no layer of {type(model).__name__}; its layers are: {shown}"
        ) from None


def _device_of(module: nn.Module, inputs: Any) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return inputs.device if isinstance(inputs, Tensor) else torch.device("cpu")


#: ``attach`` keyword arguments that configure the mask layer; the rest go to the modality.
LAYER_OPTIONS = frozenset(
    name for name in inspect.signature(MaskLayer.__init__).parameters if name not in ("self", "gate", "keep")
)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(mask layer options, modality options)`` from ``attach``'s keyword arguments."""
    layer = {k: v for k, v in options.items() if k in LAYER_OPTIONS}
    return layer, {k: v for k, v in options.items() if k not in LAYER_OPTIONS}


def attach(
    model: nn.Module,
    modality: str | None = None,
    *,
    mode: str = "joint",
    gate: str = "hard_concrete",
    keep: float | None = None,
    where: str = "input",
    **options: Any,
) -> MaskedModel:
    """Wrap ``model`` with a bottleneck mask over its input units.

    :param model: any ``nn.Module``; it is called as ``model(inputs, *args, **kwargs)``
        with ``inputs`` masked.
    :param modality: a registered modality name; ``None`` detects it from the first inputs.
    :param mode: ``"joint"`` (train mask and model) or ``"explain"`` (freeze the model;
        the mask keeps as few units as ``KL(p(x) || p(masked x)) <= epsilon`` allows).
    :param gate: ``hard_concrete`` (default), ``concrete``, ``gaussian`` (PointMask) or ``topk``.
    :param keep: fraction of units kept per sample, in (0, 1]: the target in joint mode
        (default 0.3), an upper bound in explain mode (default: none; the ``topk`` gate
        keeps exactly this fraction in both).
    :param where: ``"input"``, or the name of a layer (``"layer2"``, ``"encoder.3"``)
        whose output is masked instead (IBA-style hidden insertion).
    :param options: ``baseline=``, ``epsilon=`` (explain mode's KL budget in nats,
        default 0.1), ``sparsity_weight=`` (weight of the expected open fraction in
        explain mode, default 5; larger closes units faster),
        :class:`~bottleneck.layer.MaskLayer` options (``smooth_weight``, ``hidden``, ...)
        and the modality's own options (images: ``patch_size``, ``pad``, ``blur_sigma``).
    """
    baseline = options.pop("baseline", None)
    epsilon = options.pop("epsilon", 0.1)
    sparsity_weight = options.pop("sparsity_weight", 5.0)
    layer_options, modality_options = split_options(options)
    return MaskedModel(
        model, modality, mode=mode, gate=gate, keep=keep, where=where, baseline=baseline,
        epsilon=epsilon, sparsity_weight=sparsity_weight, modality_options=modality_options, **layer_options,
    )
