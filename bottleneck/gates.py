"""Gate distributions: how a unit's logit becomes a (random) gate in [0, 1].

Every gate has the same interface so the mask layer, the objective and the
tests treat them alike:

* ``rsample(logits, batch, num_samples)`` — a reparameterised sample (training);
* ``deterministic(logits, batch, num_samples)`` — the gate used at inference;
* ``expected_open(logits, batch, num_samples)`` — ``P(gate > 0)``, the expected
  L0 norm of the unit, differentiable; it is what the keep-rate constraint holds;
* ``rate(logits)`` — the per-unit rate penalty (KL to a prior, or expected L0);
* ``init_bias(p_open)`` — scorer output bias that opens a unit with probability ``p_open``.

``logits`` is ``[N]`` (or ``[N, 2]`` for :class:`GaussianGate`, which also
predicts a scale). ``batch``/``num_samples`` are needed only by per-sample gates
(:class:`TopKGate`); ``batch=None`` means one sample.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .segment import broadcast, segment_mean, segment_topk_mask

_EPS = 1e-6


def _uniform(like: Tensor) -> Tensor:
    return torch.rand_like(like).clamp(_EPS, 1.0 - _EPS)


def _check_keep(keep: float) -> float:
    if not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
        raise BottleneckError(f"keep must be a fraction in (0, 1] (got {keep!r})")
    return float(keep)


class Gate(nn.Module, abc.ABC):
    """Base class of gate distributions; subclasses set ``name``."""

    name: ClassVar[str] = ""
    params_per_unit: ClassVar[int] = 1
    #: Default weight of :meth:`rate` in the bottleneck loss.
    default_rate_weight: ClassVar[float] = 0.0
    #: Whether :meth:`rate` is :meth:`expected_open` (the expected L0 norm): the mask layer
    #: then logs the keep rate it has computed already as the rate, instead of a second pass.
    rate_is_expected_open: ClassVar[bool] = False

    def __init__(self, keep: float = 0.3) -> None:
        super().__init__()
        self.keep = _check_keep(keep)

    def check_logits(self, logits: Tensor) -> None:
        """Raise :class:`BottleneckError` when logits do not have this gate's shape."""
        want = 1 if self.params_per_unit == 1 else 2
        if logits.dim() != want or (want == 2 and logits.shape[-1] != self.params_per_unit):
            shape = "[N]" if want == 1 else f"[N, {self.params_per_unit}]"
            raise BottleneckError(f"{self.name} gate expects logits {shape}; got {describe(logits)}")

    @abc.abstractmethod
    def rsample(self, logits: Tensor, batch: Tensor | None = None, num_samples: int = 1) -> Tensor:
        """A reparameterised sample of the gates, ``[N]`` in [0, 1]."""

    @abc.abstractmethod
    def deterministic(
        self, logits: Tensor, batch: Tensor | None = None, num_samples: int = 1
    ) -> Tensor:
        """The gates used at inference, ``[N]`` in [0, 1], no randomness."""

    @abc.abstractmethod
    def expected_open(
        self, logits: Tensor, batch: Tensor | None = None, num_samples: int = 1
    ) -> Tensor:
        """``P(gate > 0)`` per unit, differentiable in the logits."""

    def ranking(self, logits: Tensor, batch: Tensor | None = None, num_samples: int = 1) -> Tensor:
        """``[N]`` scores that order units by relevance (explanations, sparse top-k): by default
        the open probability; a gate whose open probability is 0/1 orders by something finer."""
        return self.expected_open(logits, batch, num_samples)

    def gates_and_open(self, logits: Tensor, batch: Tensor | None = None, num_samples: int = 1, *,
                       sample: bool) -> tuple[Tensor, Tensor]:
        """The gates applied (:meth:`rsample` with ``sample``, else :meth:`deterministic`) and
        :meth:`expected_open`, in that order: what :class:`~bottleneck.layer.MaskLayer` needs of
        every gate in one call, so that a gate whose two share work does it once (the top-k
        gate's per-sample selection)."""
        gates = (self.rsample if sample else self.deterministic)(logits, batch, num_samples)
        return gates, self.expected_open(logits, batch, num_samples)

    def rate(self, logits: Tensor) -> Tensor:
        """Per-unit rate penalty; zero for gates with a fixed budget."""
        return logits.new_zeros(logits.shape[0])

    def init_bias(self, p_open: float) -> list[float]:
        """Output bias of the scorer that gives ``expected_open == p_open``."""
        return [math.log(p_open / (1.0 - p_open))]

    def anneal(self, progress: float) -> None:
        """Called by the trainer with the fraction of training done (temperature schedules)."""

    def extra_repr(self) -> str:
        return f"keep={self.keep}"


class HardConcreteGate(Gate):
    """Stretched and rectified binary concrete (Louizos et al., 2018). The default.

    Samples have exact zeros and ones, and the expected L0 norm has a closed
    form, so the keep rate is a differentiable quantity.
    """

    name = "hard_concrete"
    default_rate_weight = 0.0
    rate_is_expected_open = True

    def __init__(
        self, keep: float = 0.3, temperature: float = 2.0 / 3.0, stretch: tuple[float, float] = (-0.1, 1.1)
    ) -> None:
        super().__init__(keep)
        low, high = stretch
        if not (low < 0.0 and high > 1.0) or temperature <= 0:
            raise BottleneckError(
                f"hard_concrete needs stretch (low < 0, high > 1) and temperature > 0 "
                f"(got stretch={stretch}, temperature={temperature})"
            )
        self.temperature, self.low, self.high = float(temperature), float(low), float(high)
        self._log_ratio = math.log(-self.low / self.high)

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def rsample(self, logits, batch=None, num_samples=1):
        u = _uniform(logits)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / self.temperature)
        return self._stretch(s)

    def deterministic(self, logits, batch=None, num_samples=1):
        """The most likely state of each gate: 1 where ``P(open) > 1/2``, else 0.

        Training samples are almost all exactly 0 or 1, so inference sees the
        same kind of input; Louizos et al.'s soft estimator would shrink kept
        units towards the baseline, which training never showed the model.
        """
        return (self.expected_open(logits) > 0.5).to(logits.dtype)

    def expected_open(self, logits, batch=None, num_samples=1):
        return torch.sigmoid(logits - self.temperature * self._log_ratio)

    def rate(self, logits):
        return self.expected_open(logits)

    def init_bias(self, p_open):
        return [math.log(p_open / (1.0 - p_open)) + self.temperature * self._log_ratio]

    def extra_repr(self):
        return f"keep={self.keep}, temperature={self.temperature:.3g}, stretch=({self.low}, {self.high})"


class ConcreteGate(Gate):
    """Binary concrete / Gumbel-sigmoid (L2X, PGExplainer) with an annealed temperature.

    Gates are soft (never exactly 0 or 1); a unit counts as open when its gate
    exceeds 0.5, which happens with probability ``sigmoid(logit)``. The rate is
    the KL divergence to a Bernoulli(keep) prior.
    """

    name = "concrete"
    default_rate_weight = 0.01

    def __init__(self, keep: float = 0.3, temperature: tuple[float, float] = (2.0, 0.5)) -> None:
        super().__init__(keep)
        start, end = temperature
        if start <= 0 or end <= 0:
            raise BottleneckError(f"concrete temperatures must be > 0 (got {temperature})")
        self.start, self.end = float(start), float(end)
        self.temperature = self.start

    def anneal(self, progress: float) -> None:
        progress = min(max(progress, 0.0), 1.0)
        self.temperature = self.start * (self.end / self.start) ** progress

    def rsample(self, logits, batch=None, num_samples=1):
        u = _uniform(logits)
        return torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / self.temperature)

    def deterministic(self, logits, batch=None, num_samples=1):
        return torch.sigmoid(logits)

    def expected_open(self, logits, batch=None, num_samples=1):
        return torch.sigmoid(logits)

    def rate(self, logits):
        q = torch.sigmoid(logits)
        p = min(max(self.keep, 1e-6), 1.0 - 1e-6)  # keep=1 (explain mode): a prior that still has a log
        log_q, log_1q = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
        return q * (log_q - math.log(p)) + (1 - q) * (log_1q - math.log1p(-p))

    def extra_repr(self):
        return f"keep={self.keep}, temperature=({self.start}, {self.end})"


class GaussianGate(Gate):
    """PointMask's gate: ``z ~ N(mu, sigma^2)``, ``m = clamp(sigmoid(z) - t, 0, 1)``.

    The scorer predicts ``(mu, log sigma)`` per unit; the rate is the KL
    divergence of ``N(mu, sigma^2)`` to ``N(0, 1)`` (beta = 0.5 and t = 0.2 in the
    paper's code). A unit is open when ``sigmoid(z) > t``.
    """

    name = "gaussian"
    params_per_unit = 2
    default_rate_weight = 0.5
    LOG_SIGMA_RANGE = (-6.0, 3.0)

    def __init__(self, keep: float = 0.3, threshold: float = 0.2) -> None:
        super().__init__(keep)
        if not 0.0 < threshold < 1.0:
            raise BottleneckError(f"gaussian threshold must be in (0, 1) (got {threshold})")
        self.threshold = float(threshold)
        self._logit_t = math.log(threshold / (1.0 - threshold))

    def _split(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = logits.unbind(-1)
        return mu, log_sigma.clamp(*self.LOG_SIGMA_RANGE)

    def rsample(self, logits, batch=None, num_samples=1):
        mu, log_sigma = self._split(logits)
        z = mu + log_sigma.exp() * torch.randn_like(mu)
        return (torch.sigmoid(z) - self.threshold).clamp(0.0, 1.0)

    def deterministic(self, logits, batch=None, num_samples=1):
        mu, _ = self._split(logits)
        return (torch.sigmoid(mu) - self.threshold).clamp(0.0, 1.0)

    def expected_open(self, logits, batch=None, num_samples=1):
        mu, log_sigma = self._split(logits)
        normal = torch.distributions.Normal(0.0, 1.0)
        return normal.cdf((mu - self._logit_t) / log_sigma.exp())

    def rate(self, logits):
        mu, log_sigma = self._split(logits)
        return 0.5 * (torch.exp(2 * log_sigma) + mu**2 - 1.0) - log_sigma

    def init_bias(self, p_open):
        return [self._logit_t + torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p_open)).item(), 0.0]

    def extra_repr(self):
        return f"keep={self.keep}, threshold={self.threshold}"


class _StraightThrough(torch.autograd.Function):
    """Forward the exact hard values, backward the gradient of the soft ones."""

    @staticmethod
    def forward(ctx, hard: Tensor, soft: Tensor) -> Tensor:  # type: ignore[override]
        return hard.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, grad


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return _StraightThrough.apply(hard.detach(), soft)


class _CentredPerSample(torch.autograd.Function):
    """Identity forward; the backward subtracts each sample's mean gradient from its units'."""

    @staticmethod
    def forward(ctx, values: Tensor, batch: Tensor, num_samples: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(batch)
        ctx.num_samples = num_samples
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (batch,) = ctx.saved_tensors
        return grad - broadcast(segment_mean(grad, batch, ctx.num_samples), batch), None, None


def centred_per_sample(values: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """``values`` whose gradient is centred within each sample (a fixed budget moves only ranks)."""
    return _CentredPerSample.apply(values, batch, num_samples)


class TopKGate(Gate):
    """Straight-through hard top-k per sample: a fixed budget of ``ceil(keep * n_i)`` units.

    Forward values are exactly 0 or 1; gradients pass through ``sigmoid(logit)``,
    centred within each sample. With a fixed budget only the order of a sample's
    scores decides what is kept, so a gradient that pushes every unit of a sample
    the same way (the task saying "open more") says nothing the gate can act on, and
    uncentred it drives all logits against their bound: when a ViT's closed patches
    got gradients through the attention, the demo's scorer logits ran to the bound
    (bound penalty 466 at the last epoch) and the masked ViT fell to 0.554; centred,
    0.928 (its plain ViT: 0.946; 0.912 in a one-thread run).
    """

    name = "topk"

    @staticmethod
    def _one_sample(logits: Tensor, batch: Tensor | None, num_samples: int) -> tuple[Tensor, int]:
        if batch is None:
            return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device), 1
        return batch, num_samples

    def _hard(self, logits: Tensor, batch: Tensor, num_samples: int) -> Tensor:
        return segment_topk_mask(logits.detach(), batch, num_samples, self.keep).to(logits.dtype)

    @staticmethod
    def _through(hard: Tensor, logits: Tensor, batch: Tensor, num_samples: int) -> Tensor:
        """``hard`` forward; the sigmoid's gradient backward, centred within each sample."""
        return centred_per_sample(straight_through(hard, torch.sigmoid(logits)), batch, num_samples)

    def rsample(self, logits, batch=None, num_samples=1):
        batch, num_samples = self._one_sample(logits, batch, num_samples)
        return self._through(self._hard(logits, batch, num_samples), logits, batch, num_samples)

    def deterministic(self, logits, batch=None, num_samples=1):
        batch, num_samples = self._one_sample(logits, batch, num_samples)
        return self._hard(logits, batch, num_samples)

    def expected_open(self, logits, batch=None, num_samples=1):
        return self.rsample(logits, batch, num_samples)

    def gates_and_open(self, logits, batch=None, num_samples=1, *, sample):
        """One selection for both: the top-k of the same logits is the same mask. Each output
        keeps its own straight-through branch, made in the order of the base class's two
        calls, so that training sums the same gradients in the same order as before."""
        batch, num_samples = self._one_sample(logits, batch, num_samples)
        hard = self._hard(logits, batch, num_samples)
        gates = self._through(hard, logits, batch, num_samples) if sample else hard
        return gates, self._through(hard, logits, batch, num_samples)

    def ranking(self, logits, batch=None, num_samples=1):
        # the open probability is 0/1 here: rank by the sigmoid, so a sparse pass at another
        # keep than the gate's takes the most relevant units, not ties broken at random
        return torch.sigmoid(logits)

    def init_bias(self, p_open):
        return [0.0]


BUILTIN_GATES: tuple[type[Gate], ...] = (HardConcreteGate, ConcreteGate, GaussianGate, TopKGate)
