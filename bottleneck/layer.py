"""``MaskLayer``: scorer + gate + objective terms, on :class:`~bottleneck.units.Units`.

The layer is modality-agnostic: it sees flat units with a batch vector and a
unit graph and returns gates plus the bottleneck loss. Plugins translate
model inputs to units and gates back to model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .gates import Gate, straight_through
from .objective import KeepRateConstraint, per_sample_mean, rate_loss, smoothness_loss
from .scorer import EquivariantScorer
from .segment import pooled_width
from .units import Units


@dataclass
class MaskResult:
    """What the mask layer computed for one batch of units.

    :param logits: scorer output (``[N]``, or ``[N, 2]`` for the gaussian gate).
    :param gates: sampled gates in training, deterministic ones in eval, ``[N]``.
    :param p_open: ``P(gate > 0)`` per unit, ``[N]`` — the relevance.
    :param keep_rate: ``[B]`` expected fraction of open units per sample.
    :param loss: the bottleneck loss (sum of weighted terms).
    :param terms: each term, detached, for logging.
    :param relevance: ``P(gate > 0)`` from the scores before the logit bound, detached:
        the same as ``p_open`` inside the bound, and still ordered beyond it, so units
        the mask shut (or opened) with different conviction do not tie in a ranking
        (the gate's :meth:`~bottleneck.gates.Gate.ranking`; the top-k gate ranks by sigmoid).
    """

    logits: Tensor
    gates: Tensor
    p_open: Tensor
    keep_rate: Tensor
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    relevance: Tensor | None = None


class MaskLayer(nn.Module):
    """Information-bottleneck mask over units.

    :param gate: a gate name registered with the plugin manager (``hard_concrete``,
        ``concrete``, ``gaussian``, ``topk``) or a :class:`~bottleneck.gates.Gate`.
    :param keep: target fraction of units kept per sample, in (0, 1].
    :param hidden: scorer width.
    :param rate_weight: weight of the gate's rate term (``None``: the gate's default).
    :param smooth_weight: weight of total variation over the unit graph.
    :param constraint_step: dual-ascent step of the keep-rate multiplier (0 disables it).
    :param constraint: ``"equal"`` holds the keep rate at ``keep``; ``"at_most"`` below it.
    :param constraint_damping: proportional gain of the keep-rate constraint (see
        :class:`~bottleneck.objective.KeepRateConstraint`); larger values track the
        target more tightly when the task pushes every gate open.
    :param init_open: open probability of every unit at initialisation.
    :param logit_bound: logits are clamped to ``[-bound, bound]`` in the forward pass
        with the gradient passed straight through, so a unit pushed shut can always
        reopen (no dead, saturated gates when the keep-rate multiplier overshoots).
    :param keep_warmup: fraction of training (as reported to :meth:`anneal`) over which the
        keep target falls linearly from ``init_open`` to ``keep``. In joint training the
        model must learn the task before the mask can learn what the task needs; with a
        tight budget from step 0 neither gets a signal (the image demo uses 0.3).
    :param in_features: unit feature size, or ``None`` to infer on first call.
    :param gate_options: keyword arguments of the named gate (``{"temperature": 0.5}`` for ``hard_concrete``).
    :param context: give the scorer each sample's pooled context (see
        :class:`~bottleneck.scorer.EquivariantScorer`); ``False`` scores every unit on its own.
    :param activation: the scorer's hidden activation, ``"relu"`` or ``"leaky_relu"`` (cannot
        die; for high mask learning rates, see :data:`~bottleneck.scorer.ACTIVATIONS`).
    """

    def __init__(
        self,
        gate: str | Gate = "hard_concrete",
        keep: float = 0.3,
        *,
        hidden: int = 64,
        rate_weight: float | None = None,
        smooth_weight: float = 0.05,
        constraint_step: float = 0.05,
        constraint: str = "equal",
        constraint_damping: float = 1.0,
        init_open: float = 0.9,
        logit_bound: float = 6.0,
        keep_warmup: float = 0.0,
        in_features: int | None = None,
        context: bool = True,
        activation: str = "relu",
        gate_options: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0:
            raise BottleneckError(f"keep must be a fraction in (0, 1] (got {keep!r})")
        if not 0.0 < init_open < 1.0:
            raise BottleneckError(f"init_open must be in (0, 1) (got {init_open!r})")
        if isinstance(gate, str):
            from .plugins import make_gate

            gate = make_gate(gate, keep=keep, **(gate_options or {}))
        elif gate_options:
            raise BottleneckError("gate_options apply to a gate given by name, not to a Gate instance")
        elif not isinstance(gate, Gate):
            raise BottleneckError(f"gate must be a gate name or a Gate instance (got {describe(gate)})")
        self.gate = gate
        self.keep = float(keep)
        self.rate_weight = gate.default_rate_weight if rate_weight is None else float(rate_weight)
        self.smooth_weight = float(smooth_weight)
        self.scorer = EquivariantScorer(hidden, gate.params_per_unit, in_features, context=context,
                                        activation=activation)
        self.scorer.set_output_bias(gate.init_bias(init_open))
        self.constraint = KeepRateConstraint(keep, constraint_step, constraint, constraint_damping)
        if logit_bound <= 0:
            raise BottleneckError(f"logit_bound must be > 0 (got {logit_bound!r})")
        self.logit_bound = float(logit_bound)
        if not 0.0 <= keep_warmup < 1.0:
            raise BottleneckError(f"keep_warmup must be a fraction in [0, 1) (got {keep_warmup!r})")
        self.keep_warmup, self.init_open = float(keep_warmup), float(init_open)

    def scores(self, units: Units) -> Tensor:
        """Gate logits for ``units`` (``[N]`` or ``[N, P]``)."""
        return self._bounded(self.scorer(units.x, units.batch, units.num_samples))[0]

    def _bounded(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Clamped logits (straight-through) and a penalty pulling raw scores back inside the bound."""
        logits = straight_through(raw.clamp(-self.logit_bound, self.logit_bound), raw)
        # softshrink(raw, b) is raw -/+ b beyond the bound and 0 inside: its square is
        # (|raw| - b)^2 clamped at 0, in one operation (and one backward) instead of three
        excess = F.softshrink(raw, self.logit_bound).square().mean()
        return self._squeeze(logits), excess

    def _squeeze(self, logits: Tensor) -> Tensor:
        return logits.squeeze(-1) if self.gate.params_per_unit == 1 else logits

    def forward(self, units: Units) -> MaskResult:
        batch, num_samples = units.batch, units.num_samples
        # samples of one size are checked for once, for the scorer's pooling and the keep rate
        width = pooled_width(units.x, batch, num_samples) if self.scorer.context else None
        raw = self.scorer(units.x, batch, num_samples, width=width)
        logits, excess = self._bounded(raw)
        gates, p_open = self.gate.gates_and_open(logits, batch, num_samples, sample=self.training)
        keep_rate = per_sample_mean(p_open, batch, num_samples, width=width)
        mean_keep = keep_rate.mean()
        smooth = smoothness_loss(p_open, units.edge_index, batch, num_samples)
        keep_term = self.constraint(mean_keep)
        loss = keep_term + excess
        if self.smooth_weight != 0:
            loss = loss + self.smooth_weight * smooth
        if self.rate_weight != 0:
            rate = rate_loss(self.gate, logits, batch, num_samples)
            loss = loss + self.rate_weight * rate
        elif self.gate.rate_is_expected_open:  # only logged, and the keep rate is that mean already
            rate = mean_keep.detach()
        else:  # only logged: no autograd graph
            with torch.no_grad():
                rate = rate_loss(self.gate, logits, batch, num_samples)
        terms = {
            "rate": rate.detach(),
            "keep_penalty": keep_term.detach(),
            "smoothness": smooth.detach(),
            "multiplier": self.constraint.multiplier.detach().clone(),
            "keep_rate": mean_keep.detach(),
            "logit_bound": excess.detach(),
        }
        relevance = self.gate.ranking(self._squeeze(raw.detach()), batch, num_samples)
        return MaskResult(logits, gates, p_open, keep_rate, loss, terms, relevance)

    def infer(self, units: Units) -> MaskResult:
        """Deterministic gates and relevance only: the inference pass of :meth:`forward`.

        Explanations and sparse inference need neither the sampled gates nor the loss
        terms (rate, smoothness, keep-rate constraint); skipping them leaves the scorer
        as the whole cost of the mask. ``loss`` is a zero and ``terms`` is empty.
        """
        batch, num_samples = units.batch, units.num_samples
        raw = self.scorer(units.x, batch, num_samples)
        logits = self._squeeze(raw.clamp(-self.logit_bound, self.logit_bound))
        gates, p_open = self.gate.gates_and_open(logits, batch, num_samples, sample=False)
        keep_rate = per_sample_mean(p_open, batch, num_samples)
        relevance = self.gate.ranking(self._squeeze(raw), batch, num_samples)
        return MaskResult(logits, gates, p_open, keep_rate, raw.new_zeros(()), {}, relevance)

    def relevance(self, units: Units) -> Tensor:
        """``[N]`` relevance only (as :attr:`MaskResult.relevance`): all a sparse pass at a given keep needs."""
        raw = self.scorer(units.x, units.batch, units.num_samples)
        return self.gate.ranking(self._squeeze(raw), units.batch, units.num_samples)

    def anneal(self, progress: float) -> None:
        """Forward the training progress (0..1) to the gate's schedule and the keep-target warm-up."""
        self.gate.anneal(progress)
        if self.keep_warmup > 0:
            start = max(self.keep, self.init_open)
            ramp = min(progress / self.keep_warmup, 1.0)
            target = start + (self.keep - start) * ramp
            self.constraint.target = target
            self.gate.keep = target  # fixed-budget gates (top-k) follow the same schedule

    def extra_repr(self) -> str:
        return (
            f"keep={self.keep}, rate_weight={self.rate_weight}, smooth_weight={self.smooth_weight}"
        )
