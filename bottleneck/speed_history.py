"""Several speed reports side by side: is a missed target a regression or a draw?

One run of ``bottleneck bench speed`` takes half an hour, and a small timed call moves
with the machine's state: DGCNN's sparse speed-up at keep 0.25 went x4.38, x5.14, x4.74
in three full runs of the same timed code on one machine. A single report cannot tell
a regression from such a draw; the run before it, and the one before that, can.

``bottleneck bench history RUN.json [RUN.json ...]`` reads the reports in the order
given and gives, per run, every judged figure with its verdict (a Markdown table on
stdout or ``--markdown``), a per-claim tally ("met in 2 of 7 runs; processes x4.22-x5.35"),
and with ``--figure`` a picture: each sparse model's judged speed-up per run (the median
and every timing process) against its target, the worst train and explain overheads
against their limits, and the mask layer's 10k/1k ratio inside its bounds.

Runs are labelled by their file names (``speed_cpu_run23.json`` -> ``speed_cpu_run23``)
unless labels are given. Reports from before a figure existed (the mask layer's peak
memory, per-process speed-ups) show it as not measured rather than failing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BottleneckError
from .scaling import LINEAR_RATIO_BOUNDS
from .speed import (
    ACCURACY_DROP_MAX,
    EXPLAIN_OVERHEAD_MAX,
    TARGET_KEEP,
    TRAIN_OVERHEAD_MAX,
    judged_text,
)
from .speed_figure import PALETTE, claim_holds, load_speed_report
from .viz import pyplot, save_figure

__all__ = ["RunFigures", "history_figure", "history_markdown", "load_history", "plot_history", "run_figures", "tally"]


@dataclass(frozen=True)
class SparseFigures:
    """One model's judged sparse figures in one run (at :data:`~bottleneck.speed.TARGET_KEEP`)."""

    speedup: float
    target: float
    processes: list[float]
    accuracy: float
    dense_accuracy: float
    speedup_holds: bool
    accuracy_holds: bool

    @property
    def holds(self) -> bool:
        """Whether the claim holds: the speed-up reaches its target and the accuracy stays within 2 points."""
        return self.speedup_holds and self.accuracy_holds


@dataclass(frozen=True)
class RunFigures:
    """The judged figures of one speed report, as the history compares them."""

    label: str
    device: str
    train_worst: tuple[str, float] | None
    explain_worst: tuple[str, float] | None
    sparse: dict[str, SparseFigures] = field(default_factory=dict)
    mask_layer_ratio: float | None = None
    knn_peak_mib: float | None = None
    holds: dict[str, bool] = field(default_factory=dict)


def run_figures(report: dict[str, Any], label: str) -> RunFigures:
    """The judged figures of ``report`` (a :func:`~bottleneck.speed_figure.load_speed_report` result)."""
    claims = report["claims"]
    holds: dict[str, bool] = {}
    worst: dict[str, tuple[str, float] | None] = {}
    for kind, limit in (("train", TRAIN_OVERHEAD_MAX), ("explain", EXPLAIN_OVERHEAD_MAX)):
        claim = claims.get(f"{kind}_overhead_at_most_{limit:g}")
        worst[kind] = None if not claim or "worst" not in claim else (str(claim["worst"]), float(claim["worst_ratio"]))
        if worst[kind] is not None:
            holds[f"{kind}_overhead"] = claim_holds(claim)
    sparse = {}
    for name, claim in claims.items():
        if not name.startswith("sparse_speedup_") or not isinstance(claim, dict):
            continue
        model = name.removeprefix("sparse_speedup_")
        judged = report["details"]["sparse"].get(model, {}).get("keeps", {}).get(str(TARGET_KEEP), {})
        sparse[model] = SparseFigures(
            speedup=float(claim["speedup"]), target=float(claim["target"]),
            processes=[float(v) for v in judged.get("speedup_per_process", [claim["speedup"]])],
            accuracy=float(claim["accuracy"]), dense_accuracy=float(claim["dense_accuracy"]),
            speedup_holds=bool(claim["speedup_holds"]), accuracy_holds=bool(claim["accuracy_holds"]))
    scaling = report.get("scaling") or {}
    if "mask_layer_linear_8_to_12" in scaling:
        holds["mask_layer_linear"] = bool(scaling["mask_layer_linear_8_to_12"])
    if "knn_peak_under_2_gib" in scaling:
        holds["knn_peak"] = bool(scaling["knn_peak_under_2_gib"])
    settings = report.get("settings", {})
    return RunFigures(
        label=label, device=f"{settings.get('device_name', '?')} ({settings.get('device', '?')})",
        train_worst=worst["train"], explain_worst=worst["explain"], sparse=sparse,
        mask_layer_ratio=scaling.get("mask_layer_ratio_10k_over_1k"),
        knn_peak_mib=scaling.get("knn_peak_mib_at_largest"), holds=holds)


def load_history(paths: list[str | Path], labels: list[str] | None = None) -> list[RunFigures]:
    """The judged figures of each report in ``paths``, in order, labelled by ``labels`` or the file names."""
    if not paths:
        raise BottleneckError("no speed reports given: pass one or more files written by bottleneck bench speed --json")
    if labels is None:
        labels = [Path(path).stem for path in paths]
    elif len(labels) != len(paths):
        raise BottleneckError(f"{len(labels)} labels for {len(paths)} reports: give one label per report")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise BottleneckError(f"runs need distinct labels; {repeated} name more than one report (give --labels)")
    runs = []
    for path, label in zip(paths, labels, strict=True):
        report = load_speed_report(path)  # its own errors say what is wrong with the file
        try:
            runs.append(run_figures(report, label))
        except (KeyError, TypeError, ValueError) as exc:  # a hand-edited or truncated report
            raise BottleneckError(f"{path}: the speed report lacks or garbles a judged figure ({exc!r})") from exc
    return runs


def _verdict(holds: bool | None) -> str:
    """`` **MISSED**`` after a figure whose claim failed; nothing where it held or was not judged."""
    return " **MISSED**" if holds is False else ""


def _ratio_text(ratio: float) -> str:
    """The mask layer's 10k/1k ratio, never rounded across the bound it is nearest."""
    low, high = LINEAR_RATIO_BOUNDS
    nearest, at_least = (low, True) if abs(ratio - low) <= abs(ratio - high) else (high, False)
    return judged_text(ratio, nearest, at_least=at_least)


def _ratio_cell(run: RunFigures) -> str:
    if run.mask_layer_ratio is None:
        return "not measured"
    return f"{_ratio_text(run.mask_layer_ratio)}{_verdict(run.holds.get('mask_layer_linear'))}"


def _limits(kind: str) -> float:
    return TRAIN_OVERHEAD_MAX if kind == "train" else EXPLAIN_OVERHEAD_MAX


def _models(runs: list[RunFigures]) -> list[str]:
    return list(dict.fromkeys(model for run in runs for model in run.sparse))


def tally(runs: list[RunFigures]) -> list[str]:
    """One line per judged claim: in how many runs it held, and the spread of its figures."""
    lines = []
    for model in _models(runs):
        having = [run.sparse[model] for run in runs if model in run.sparse]
        met = sum(figures.holds for figures in having)
        each = [value for figures in having for value in figures.processes]
        target = having[0].target
        medians = [figures.speedup for figures in having]
        low, high = (judged_text(value, target, at_least=True) for value in (min(medians), max(medians)))
        lines.append(f"{model} sparse speed-up (>= x{target:g}, accuracy within {100 * ACCURACY_DROP_MAX:g} "
                     f"points): met in "
                     f"{met} of {len(having)} runs; medians x{low}-x{high}, timing processes "
                     f"x{judged_text(min(each), target, at_least=True)}-x{judged_text(max(each), target, at_least=True)}")
    for kind, pick in (("train", lambda run: run.train_worst), ("explain", lambda run: run.explain_worst)):
        having = [run for run in runs if pick(run) is not None]
        if having:
            values = [pick(run)[1] for run in having]
            met = sum(run.holds[f"{kind}_overhead"] for run in having)
            low, high = (judged_text(value, _limits(kind), at_least=False) for value in (min(values), max(values)))
            lines.append(f"worst {kind} overhead (<= {_limits(kind):g}): met in {met} of {len(having)} runs; "
                         f"{low}-{high}")
    ratios = [(run, run.mask_layer_ratio) for run in runs if run.mask_layer_ratio is not None]
    if ratios:
        met = sum(run.holds.get("mask_layer_linear", False) for run, _ in ratios)
        low, high = LINEAR_RATIO_BOUNDS
        lines.append(f"mask layer 10k/1k ({low:g}-{high:g}): met in {met} of {len(ratios)} runs; "
                     f"{_ratio_text(min(v for _, v in ratios))}-{_ratio_text(max(v for _, v in ratios))}")
    return lines


def history_markdown(runs: list[RunFigures]) -> str:
    """A Markdown table of every run's judged figures (MISSED in bold where a claim fails) and the tally."""
    models = _models(runs)
    low, high = LINEAR_RATIO_BOUNDS
    head = ["run", "device", f"worst train overhead (<= {TRAIN_OVERHEAD_MAX:g})",
            f"worst explain overhead (<= {EXPLAIN_OVERHEAD_MAX:g})",
            *[f"{model} at keep {TARGET_KEEP:g}" for model in models],
            f"mask layer 10k/1k ({low:g}-{high:g})", "kNN peak at largest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [run.label, run.device]
        for kind, worst in (("train", run.train_worst), ("explain", run.explain_worst)):
            cells.append("not measured" if worst is None else f"{judged_text(worst[1], _limits(kind), at_least=False)} "
                         f"({worst[0]}){_verdict(run.holds[f'{kind}_overhead'])}")
        for model in models:
            figures = run.sparse.get(model)
            if figures is None:
                cells.append("not measured")
                continue
            spread = (f" [{min(figures.processes):.2f}-{max(figures.processes):.2f}]"
                      if len(figures.processes) > 1 else "")
            missed = [what for what, holds in (("speed-up", figures.speedup_holds),
                                               ("accuracy", figures.accuracy_holds)) if not holds]
            cells.append(f"x{judged_text(figures.speedup, figures.target, at_least=True)}{spread}, "
                         f"acc {figures.accuracy:.3f}/{figures.dense_accuracy:.3f}"
                         + (f" **MISSED** ({', '.join(missed)})" if missed else ""))
        cells.append(_ratio_cell(run))
        cells.append("not measured" if run.knn_peak_mib is None
                     else f"{run.knn_peak_mib:.0f} MiB{_verdict(run.holds.get('knn_peak'))}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Sparse cells: median speed-up [each timing process's], sparse/dense test accuracy at keep "
             f"{TARGET_KEEP:g}. MISSED: the run's claim failed (speed-up or accuracy)."]
    return "\n".join([*lines, "", *notes, "", *(f"- {line}" for line in tally(runs))]) + "\n"


def history_figure(runs: list[RunFigures]) -> Any:
    """A figure: each sparse model's judged speed-up per run, the overheads, the mask layer's ratio."""
    plt = pyplot("plotting the speed history")
    models = _models(runs)
    panels = len(models) + 2
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    x = list(range(len(runs)))
    for ax, (index, model) in zip(flat, enumerate(models), strict=False):
        _sparse_panel(ax, runs, model, PALETTE[index % len(PALETTE)])
    _overhead_panel(flat[len(models)], runs)
    _ratio_panel(flat[len(models) + 1], runs)
    for ax in flat[panels:]:
        ax.axis("off")
    for ax in flat[:panels]:
        ax.set_xticks(x, [run.label for run in runs], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(runs) - 0.5)
    fig.suptitle(f"bottleneck bench speed: {len(runs)} runs, judged figures against their targets", fontsize=12)
    fig.tight_layout()
    return fig


def _sparse_panel(ax: Any, runs: list[RunFigures], model: str, colour: str) -> None:
    xs = [i for i, run in enumerate(runs) if model in run.sparse]
    figures = [runs[i].sparse[model] for i in xs]
    ax.plot(xs, [f.speedup for f in figures], "o-", color=colour, label="median of the timing processes",
            gid=f"history:{model}")
    for i, f in zip(xs, figures, strict=True):
        if len(f.processes) > 1:
            ax.plot([i] * len(f.processes), f.processes, "_", color=colour, markersize=12, mew=1.5,
                    gid=f"history_processes:{model}:{runs[i].label}")
        if not f.speedup_holds:
            ax.plot([i], [f.speedup], "x", color="black", markersize=9, mew=2, gid=f"history_missed:{model}")
        if not f.accuracy_holds:
            ax.plot([i], [f.speedup], "s", mfc="none", color="black", markersize=11, mew=1.5,
                    gid=f"history_accuracy_missed:{model}")
    targets = sorted({f.target for f in figures})
    for target in targets:
        ax.axhline(target, color="black", lw=1.2, ls="--", gid=f"history_target:{model}")
    met = sum(f.holds for f in figures)
    ax.set_ylabel("dense time / sparse time")
    ax.set_title(f"{model}: sparse speed-up at keep {TARGET_KEEP:g}\n"
                 f"target x{'/'.join(f'{t:g}' for t in targets)} (dashed); met in {met} of {len(figures)} runs\n"
                 "x: speed-up missed; square: accuracy missed", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")


def _overhead_panel(ax: Any, runs: list[RunFigures]) -> None:
    for kind, pick, limit, colour in (("train", lambda r: r.train_worst, TRAIN_OVERHEAD_MAX, PALETTE[0]),
                                      ("explain", lambda r: r.explain_worst, EXPLAIN_OVERHEAD_MAX, PALETTE[1])):
        xs = [i for i, run in enumerate(runs) if pick(run) is not None]
        ax.plot(xs, [pick(runs[i])[1] for i in xs], "o-", color=colour, label=f"worst {kind} (limit {limit:g})",
                gid=f"history:{kind}_overhead")
        ax.axhline(limit, color=colour, lw=1.2, ls="--")
    ax.set_ylabel("masked time / plain time")
    ax.set_title("worst overhead over the models", fontsize=9)
    ax.legend(fontsize=7)


def _ratio_panel(ax: Any, runs: list[RunFigures]) -> None:
    low, high = LINEAR_RATIO_BOUNDS
    xs = [i for i, run in enumerate(runs) if run.mask_layer_ratio is not None]
    ax.plot(xs, [runs[i].mask_layer_ratio for i in xs], "o-", color=PALETTE[2], label="10k/1k",
            gid="history:mask_layer_ratio")
    ax.axhspan(low, high, color=PALETTE[2], alpha=0.12, label=f"linear: {low:g}-{high:g}")
    ax.set_ylabel("time at 10k units / at 1k")
    ax.set_title("mask layer: growth of its step with the units", fontsize=9)
    ax.legend(fontsize=7)


def plot_history(runs: list[RunFigures], path: str | Path) -> Path:
    """Draw :func:`history_figure` into ``path`` (PNG, SVG or PDF by its suffix); returns the path."""
    return save_figure(history_figure(runs), path)
