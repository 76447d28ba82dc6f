"""``AuditReport``: what a bias audit measured, as JSON, Markdown and pictures.

:func:`bottleneck.audit` fills it; ``report.save(DIR)`` writes

* ``report.json`` — every figure (:meth:`AuditReport.to_dict`);
* ``report.md`` — the verdict, the figures and the most cue-reliant examples, for a reviewer;
* ``groups.png`` — accuracy per group with its bootstrap interval;
* ``relevance_share.png`` — relevance share on cue units against their area share,
  per sample, beside the counterfactual accuracies;
* ``examples/`` — renders of the most cue-reliant examples (cue units flagged).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .groups import GroupReport
from .metrics import nanmean
from .viz import pyplot, save_figure

#: The audit flags a cue when its relevance share is at least this multiple of its area share...
LEAN_THRESHOLD = 3.0
#: ... or when swapping the cue costs at least this much accuracy (a fraction).
SWAP_DROP_THRESHOLD = 0.10


@dataclass
class Example:
    """One of the most cue-reliant test samples.

    :param index: its position in the audit data.
    :param label: its true class.
    :param predicted_present: the prediction with its own class's cue.
    :param predicted_swapped: the prediction with another class's cue.
    :param probability_present: probability of the true class with its own cue.
    :param probability_drop: how much that probability falls when the cue is swapped.
    :param relevance_share: share of its relevance on cue units (decorrelated cue).
    :param area_share: share of its units that are cue units.
    """

    index: int
    label: int
    predicted_present: int
    predicted_swapped: int
    probability_present: float
    probability_drop: float
    relevance_share: float
    area_share: float


@dataclass
class AuditReport:
    """The result of :func:`bottleneck.audit`."""

    name: str
    cue: str
    method: str
    num_samples: int
    relevance_share: Tensor
    area_share: Tensor
    accuracy: dict[str, float]
    groups: GroupReport
    examples: list[Example]
    renderer: Callable[[Path], list[Path]] | None = field(default=None, repr=False)

    # -- figures ---------------------------------------------------------------
    @property
    def cue_relevance_share(self) -> float:
        """Mean share of relevance on cue units (decorrelated cue)."""
        return nanmean(self.relevance_share)

    @property
    def cue_area_share(self) -> float:
        """Mean share of units that are cue units."""
        return nanmean(self.area_share)

    @property
    def lean(self) -> float:
        """Relevance share over area share: 1 is no preference for the cue."""
        area = self.cue_area_share
        return self.cue_relevance_share / area if area > 0 else float("nan")

    @property
    def swap_drop(self) -> float:
        """Accuracy with the cue present minus accuracy with it swapped."""
        return self.accuracy["present"] - self.accuracy["swapped"]

    @property
    def flagged(self) -> dict[str, bool]:
        """Which of the audit's two tests say the model leans on the cue."""
        return {"relevance": self.lean >= LEAN_THRESHOLD, "counterfactual": self.swap_drop >= SWAP_DROP_THRESHOLD}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (NaN becomes ``None``)."""
        values: dict[str, Any] = {
            "model": self.name,
            "cue": self.cue,
            "method": self.method,
            "num_samples": self.num_samples,
            "cue_relevance_share": self.cue_relevance_share,
            "cue_area_share": self.cue_area_share,
            "relevance_over_area": self.lean,
            "accuracy_cue_present": self.accuracy["present"],
            "accuracy_cue_removed": self.accuracy["removed"],
            "accuracy_cue_swapped": self.accuracy["swapped"],
            "accuracy_decorrelated": self.accuracy["decorrelated"],
            "swap_drop": self.swap_drop,
            "worst_group": str(self.groups.worst.group),
            "worst_group_accuracy": self.groups.worst.accuracy,
            "flagged": self.flagged,
            "groups": self.groups.to_dict(),
            "most_cue_reliant": [vars(e) for e in self.examples],
        }
        return _finite(values)

    # -- writing ---------------------------------------------------------------
    def verdict(self) -> str:
        """One sentence for a reviewer."""
        flags = self.flagged
        if all(flags.values()):
            return "The model leans on the cue: both the relevance and the counterfactual test flag it."
        if any(flags.values()):
            which = "relevance" if flags["relevance"] else "counterfactual"
            return f"Mixed evidence: only the {which} test flags the cue."
        return "The audit finds no reliance on the cue."

    def to_markdown(self) -> str:
        """The report as Markdown."""
        g = self.groups
        lines = [
            f"# Bias audit: {self.name}",
            "",
            f"Cue: **{self.cue}**; relevance from **{self.method}**; {self.num_samples} test samples.",
            "",
            f"**{self.verdict()}**",
            "",
            "| figure | value |",
            "|---|---|",
            f"| cue relevance share | {self.cue_relevance_share:.3f} |",
            f"| cue area share | {self.cue_area_share:.3f} |",
            f"| relevance / area (flag at ≥ {LEAN_THRESHOLD:g}) | {self.lean:.2f} |",
            f"| accuracy, cue present (own class) | {self.accuracy['present']:.3f} |",
            f"| accuracy, cue removed | {self.accuracy['removed']:.3f} |",
            f"| accuracy, cue swapped (another class) | {self.accuracy['swapped']:.3f} |",
            f"| swap drop (flag at ≥ {SWAP_DROP_THRESHOLD:g}) | {self.swap_drop:.3f} |",
            f"| accuracy, cue decorrelated | {self.accuracy['decorrelated']:.3f} |",
            "",
            f"## Groups (decorrelated cue; {g.confidence:.0%} bootstrap intervals, {g.resamples} resamples)",
            "",
            "| group | samples | accuracy | interval |",
            "|---|---|---|---|",
            *(f"| {r.group} | {r.count} | {r.accuracy:.3f} | [{r.low:.3f}, {r.high:.3f}] |" for r in g.groups),
            "",
            f"Worst group: **{g.worst.group}** ({g.worst.accuracy:.3f}); largest gap {g.largest_gap:.3f} "
            f"[{g.gap_interval[0]:.3f}, {g.gap_interval[1]:.3f}].",
            "",
            "## Most cue-reliant examples",
            "",
            "Ranked by the drop in the true class's probability when the cue is swapped to another class.",
            "",
            "| sample | label | predicted (own cue) | predicted (swapped cue) | p(label) own cue | drop | "
            "relevance share | area share |",
            "|---|---|---|---|---|---|---|---|",
            *(f"| {e.index} | {e.label} | {e.predicted_present} | {e.predicted_swapped} | {e.probability_present:.3f} "
              f"| {e.probability_drop:.3f} | {e.relevance_share:.3f} | {e.area_share:.3f} |" for e in self.examples),
        ]
        return "\n".join(lines) + "\n"

    def plot_groups(self, path: Path) -> Path:
        """Accuracy per group with its interval."""
        plt = pyplot("plotting audit groups")
        rows = self.groups.groups
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(rows), 3.2))
        accuracy = [r.accuracy for r in rows]
        errors = [[r.accuracy - r.low for r in rows], [r.high - r.accuracy for r in rows]]
        ax.bar(range(len(rows)), accuracy, yerr=errors, capsize=6, color="#4c78a8")
        ax.set_xticks(range(len(rows)), [f"{r.group}\n(n={r.count})" for r in rows])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{self.name}: accuracy per group ({self.groups.confidence:.0%} bootstrap)")
        return save_figure(fig, path)

    def plot_relevance(self, path: Path) -> Path:
        """Histogram of per-sample relevance share on the cue against its area share; counterfactual accuracies."""
        plt = pyplot("plotting audit relevance")
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        share = self.relevance_share[~self.relevance_share.isnan()].numpy()
        area = self.cue_area_share
        left.hist(share, bins=20, range=(0.0, 1.0), color="#e45756", alpha=0.8, label="samples")
        left.axvline(area, color="grey", lw=1.5, label=f"area share {area:.3f}")
        left.axvline(min(LEAN_THRESHOLD * area, 1.0), color="grey", lw=1.5, ls="--",
                     label=f"{LEAN_THRESHOLD:g} x area (flag)")
        left.axvline(self.cue_relevance_share, color="black", lw=1.5, label=f"mean {self.cue_relevance_share:.3f}")
        left.set_xlabel("share of the sample's relevance on cue units")
        left.set_ylabel("samples")
        left.legend(fontsize=8)
        left.set_title(f"relevance on the cue ({self.method})", fontsize=10)
        keys = ("present", "removed", "swapped", "decorrelated")
        right.bar(range(len(keys)), [self.accuracy[k] for k in keys], color=["#54a24b", "#bab0ac", "#e45756", "#4c78a8"])
        right.set_xticks(range(len(keys)), list(keys), fontsize=8)
        right.set_ylim(0, 1.05)
        right.set_ylabel("accuracy")
        right.set_title("accuracy with the cue ...", fontsize=10)
        fig.suptitle(f"{self.name}: {self.cue}", y=1.03)
        return save_figure(fig, path)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write the report, its pictures and renders of the most cue-reliant examples into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [out / "report.json", out / "report.md"]
        files[0].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        files[1].write_text(self.to_markdown())
        files.append(self.plot_groups(out / "groups.png"))
        files.append(self.plot_relevance(out / "relevance_share.png"))
        if self.renderer is not None:
            files += self.renderer(out / "examples")
        return files


def _finite(value: Any) -> Any:
    """``value`` with NaN/Inf floats replaced by ``None`` (valid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


__all__ = ["LEAN_THRESHOLD", "SWAP_DROP_THRESHOLD", "AuditReport", "Example"]
