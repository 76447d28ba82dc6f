"""Terms of the bottleneck objective, each a small function or module.

* :func:`rate_loss` — the gate's rate (KL to a prior, or expected L0), per sample;
* :class:`KeepRateConstraint` — ``mean keep == target`` (or ``<= target``) held
  by a Lagrange multiplier updated by dual ascent, so users say ``keep=0.2``
  instead of tuning a coefficient (DiffMask / HardKuma style);
* :func:`smoothness_loss` — total variation of the open probability over the
  unit graph the plugin supplies;
* :func:`faithfulness_loss` — KL(p(x) || p(masked x)) for explain mode.

All terms average over units within a sample first and then over samples, so a
sample of 2000 points weighs as much as one of 200.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BottleneckError
from .gates import Gate
from .segment import segment_mean


def per_sample_mean(values: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """``[N] -> [B]`` mean over each sample's units."""
    return segment_mean(values, batch, num_samples)


def rate_loss(gate: Gate, logits: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """Mean over samples of the per-sample mean rate penalty of ``gate``."""
    return per_sample_mean(gate.rate(logits), batch, num_samples).mean()


def smoothness_loss(p_open: Tensor, edge_index: Tensor | None, batch: Tensor, num_samples: int) -> Tensor:
    """Total variation ``|p_i - p_j|`` over the unit graph, averaged per sample.

    Returns 0 when the plugin gives no graph.
    """
    if edge_index is None or edge_index.numel() == 0:
        return p_open.new_zeros(())
    src, dst = edge_index
    diff = (p_open[src] - p_open[dst]).abs()
    return segment_mean(diff, batch[dst], num_samples).mean()


CONSTRAINT_KINDS = ("equal", "at_most")


class KeepRateConstraint(nn.Module):
    """Holds the mean keep rate at ``target`` with a damped Lagrange multiplier.

    The multiplier is a buffer updated by dual ascent on every training forward
    pass, ``lambda <- lambda + step * (keep - target)``, so it works with any
    optimiser and any training loop, and it is saved with the mask. The loss
    term is ``(lambda + damping * (keep - target)) * keep`` — the damping term
    (the "modified differential method of multipliers", Platt & Barr 1988)
    reacts at once when the keep rate crosses the target, so the multiplier's
    memory does not overshoot and shut every gate for good.

    :param kind: ``"equal"`` (default) holds ``keep == target``; ``"at_most"``
        holds ``keep <= target`` (the multiplier is clipped at 0), which lets the
        mask close everything when the task gives no reason to keep units.
    """

    def __init__(self, target: float, step: float = 0.05, kind: str = "equal", damping: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < target <= 1.0:
            raise BottleneckError(f"keep must be a fraction in (0, 1] (got {target!r})")
        if step < 0 or damping < 0:
            raise BottleneckError(f"constraint step and damping must be >= 0 (got {step}, {damping})")
        if kind not in CONSTRAINT_KINDS:
            raise BottleneckError(f"constraint must be one of {list(CONSTRAINT_KINDS)} (got {kind!r})")
        self.target, self.step, self.kind, self.damping = float(target), float(step), kind, float(damping)
        self.register_buffer("multiplier", torch.zeros(()))

    def forward(self, keep_rate: Tensor) -> Tensor:
        """Loss term for the mean keep rate ``keep_rate`` (a scalar tensor)."""
        violation = keep_rate.detach().float() - self.target
        if self.training and self.step > 0:
            with torch.no_grad():
                self.multiplier.add_(self.step * violation)
                if self.kind == "at_most":
                    self.multiplier.clamp_(min=0.0)
        effective = self.multiplier + self.damping * violation
        if self.kind == "at_most":
            effective = effective.clamp(min=0.0)
        return effective.to(keep_rate.dtype) * keep_rate

    def extra_repr(self) -> str:
        return f"target={self.target}, step={self.step}, kind={self.kind!r}, damping={self.damping}"


def faithfulness_loss(reference_logits: Tensor, masked_logits: Tensor) -> Tensor:
    """KL(p(x) || p(masked x)) per sample, averaged; ``reference_logits`` carry no gradient."""
    log_p = F.log_softmax(reference_logits.detach().float(), dim=-1)
    log_q = F.log_softmax(masked_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
