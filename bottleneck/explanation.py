"""``Explanation``: per-unit relevance of a batch, in flat and dense form, renderable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from torch_geometric.utils import to_dense_batch

from .modality import Modality
from .units import Units


@dataclass
class Explanation:
    """Relevance of every unit of every sample, from one forward pass of the mask.

    :param relevance: ``[N]`` probability that each unit's gate is open, in [0, 1].
    :param gates: ``[N]`` deterministic gates (what the masked model sees at inference).
    :param units: the units the relevance refers to (``units.batch`` maps them to samples).
    :param inputs: the inputs that were explained.
    :param modality: the adapter, used to render.
    """

    relevance: Tensor
    gates: Tensor
    units: Units
    inputs: Any
    modality: Modality

    @property
    def batch(self) -> Tensor:
        return self.units.batch

    @property
    def num_samples(self) -> int:
        return self.units.num_samples

    def to_dense(self, fill_value: float = 0.0) -> tuple[Tensor, Tensor]:
        """``([B, N_max] relevance, [B, N_max] bool valid)`` padded per sample."""
        return to_dense_batch(self.relevance, self.batch, fill_value, batch_size=self.num_samples)

    def per_sample(self) -> list[Tensor]:
        """One relevance vector per sample, in unit order."""
        return list(self.relevance.split(self.units.counts().tolist()))

    def render(self, out_dir: str | Path, **options: Any) -> list[Path]:
        """Write the modality's pictures of this explanation into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return self.modality.render(self.inputs, self.units, self.relevance.detach().cpu(), out, **options)
