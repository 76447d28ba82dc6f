"""The speed benchmark's report as one picture, its targets drawn in.

``bottleneck bench speed --figure FILE`` draws it after a run and ``bottleneck bench
plot REPORT.json --out FILE`` from a saved report (a full run takes half an hour; a
picture should not). Six panels, each figure with the bound it is judged against:

* sparse speed-up over the dense model against the keep, per model, with every timing
  process's figure at the judged keep (a median of three can hide a draw) and the target;
* the sparse path's accuracy against the keep, the dense model's as a dashed line;
* train and explain overheads per model against their limits;
* the mask layer's time against units per sample on log axes, with a line of slope one
  (linear cost) through the 1k point;
* the peak memory of one exact kNN search and of one mask-layer step against units, with
  kNN's 2 GiB limit;
* which claims hold, as the report's ``claims`` say.

A report that lacks a section (``--models``, ``--no-scaling``, ``--quick``) gets a panel
that says what was not measured instead of an empty or misleading plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import BottleneckError, describe
from .scaling import KNN_PEAK_MIB_MAX, LINEAR_RATIO_BOUNDS
from .speed import ACCURACY_DROP_MAX, EXPLAIN_OVERHEAD_MAX, TARGET_KEEP, TRAIN_OVERHEAD_MAX
from .viz import pyplot, save_figure

__all__ = ["claim_holds", "load_speed_report", "plot_speed", "speed_figure"]

#: Sections every speed report has (``bottleneck bench speed --json``, ``benchmarks/merge_speed.py``).
REQUIRED_SECTIONS = ("train_overhead", "sparse_speedup", "explain_overhead", "details", "claims")
#: One colour per model, in the order the report lists them (Tableau 10, as matplotlib's default cycle).
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")


def load_speed_report(path: str | Path) -> dict[str, Any]:
    """A speed report read from ``path``, or a :class:`BottleneckError` saying what is wrong with the file."""
    file = Path(path)
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise BottleneckError(f"no speed report at {file}: write one with bottleneck bench speed --json") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BottleneckError(f"{file} is not a JSON speed report: {exc}") from exc
    _check_report(report, str(file))
    return report


def _check_report(report: Any, source: str) -> None:
    if not isinstance(report, dict):
        raise BottleneckError(f"{source}: a speed report is a JSON object (got {describe(report)})")
    missing = [key for key in REQUIRED_SECTIONS if key not in report]
    if missing:
        raise BottleneckError(f"{source} is not a speed report (bottleneck bench speed --json): it has no "
                              f"{', '.join(missing)}; its keys are {sorted(report)[:8]}")


def claim_holds(claim: dict[str, Any]) -> bool:
    """Whether every verdict of a report's claim holds (``holds``, ``speedup_holds``, ``accuracy_holds``)."""
    return all(value for key, value in claim.items() if key == "holds" or key.endswith("_holds"))


def speed_figure(report: dict[str, Any]) -> Any:
    """The matplotlib figure of ``report`` (six panels; see the module docstring)."""
    _check_report(report, "report")
    plt = pyplot("plotting the speed benchmark")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.4))
    names = list(dict.fromkeys([*report["details"]["train"], *report["sparse_speedup"]]))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    _speedup_panel(axes[0, 0], report, colours)
    _accuracy_panel(axes[0, 1], report, colours)
    _overhead_panel(axes[0, 2], report, colours)
    scaling = report.get("scaling") or {}
    _mask_layer_panel(axes[1, 0], scaling)
    _memory_panel(axes[1, 1], scaling)
    _claims_panel(axes[1, 2], report)
    settings = report.get("settings", {})
    where = settings.get("device_name", "an unnamed device")
    threads = f", {settings['threads']} threads" if "threads" in settings else ""
    fig.suptitle(f"bottleneck bench speed on {where} ({settings.get('device', '?')}{threads})", fontsize=12)
    fig.tight_layout()
    return fig


def plot_speed(report: dict[str, Any], path: str | Path) -> Path:
    """Draw ``report`` (:func:`speed_figure`) into ``path`` (PNG, SVG or PDF by its suffix); returns the path."""
    try:
        fig = speed_figure(report)
    except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or truncated report, not a bug here
        pyplot().close("all")
        raise BottleneckError(f"the speed report lacks or garbles a field the figure needs ({exc!r}); "
                              "draw one written by bottleneck bench speed --json") from exc
    return save_figure(fig, path)


def _not_measured(ax: Any, title: str, why: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _without_sparse_models(ax: Any, report: dict[str, Any], title: str) -> bool:
    """Whether ``report`` has no sparse model, the panel then saying so."""
    if report["sparse_speedup"]:
        return False
    _not_measured(ax, title, "no model with a sparse path in this report")
    return True


def _keep_axis(ax: Any, report: dict[str, Any], label: str) -> None:
    """The keeps on a log x axis, ticked at the keeps measured."""
    ax.set_xscale("log")
    keeps = sorted({float(k) for per_keep in report["sparse_speedup"].values() for k in per_keep})
    ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
    ax.minorticks_off()
    ax.set_xlabel(label)


def _speedup_panel(ax: Any, report: dict[str, Any], colours: dict[str, str]) -> None:
    title = "sparse inference: dense time / sparse time"
    if _without_sparse_models(ax, report, title):
        return
    for name, per_keep in report["sparse_speedup"].items():
        keeps = [float(k) for k in per_keep]
        colour = colours[name]
        ax.plot(keeps, [v["speedup"] for v in per_keep.values()], "o-", color=colour, label=name, gid=f"speedup:{name}")
        judged = report["details"]["sparse"].get(name, {}).get("keeps", {}).get(str(TARGET_KEEP), {})
        each = judged.get("speedup_per_process", [])
        if len(each) > 1:
            ax.plot([TARGET_KEEP] * len(each), each, "_", color=colour, markersize=12, mew=1.5,
                    gid=f"processes:{name}")
        target = report["claims"].get(f"sparse_speedup_{name}", {}).get("target")
        if target is not None:
            ax.plot([TARGET_KEEP], [target], marker="*", color=colour, markersize=13, markeredgecolor="black",
                    linestyle="none", gid=f"target:{name}")
    ax.axhline(1.0, color="grey", lw=1, ls=":")
    ax.set_yscale("log")
    _keep_axis(ax, report, "keep (fraction of units the model computes on)")
    ticks = [t for t in (0.5, 1, 2, 3, 5, 8, 12) if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    ax.set_yticks(ticks, [f"x{t:g}" for t in ticks])
    ax.set_title(f"{title}\n* target at keep {TARGET_KEEP:g}; dashes: each timing process", fontsize=10)
    ax.legend(fontsize=8)


def _accuracy_panel(ax: Any, report: dict[str, Any], colours: dict[str, str]) -> None:
    title = "accuracy of the sparse path (dashed: dense model)"
    if _without_sparse_models(ax, report, title):
        return
    for name, per_keep in report["sparse_speedup"].items():
        colour = colours[name]
        ax.plot([float(k) for k in per_keep], [v["accuracy"] for v in per_keep.values()], "o-", color=colour,
                label=name, gid=f"accuracy:{name}")
        dense = report["details"]["sparse"].get(name, {}).get("dense_accuracy")
        if dense is not None:
            ax.axhline(dense, color=colour, lw=1, ls="--", gid=f"dense_accuracy:{name}")
            ax.errorbar([TARGET_KEEP], [dense - ACCURACY_DROP_MAX / 2], yerr=ACCURACY_DROP_MAX / 2, color=colour,
                        capsize=4, lw=1)
    _keep_axis(ax, report, "keep")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}\nbars: within {100 * ACCURACY_DROP_MAX:g} points of dense at keep {TARGET_KEEP:g}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _overhead_panel(ax: Any, report: dict[str, Any], colours: dict[str, str]) -> None:
    title = "overheads: masked time / plain time"
    train, explain = report["details"]["train"], report["details"]["explain"]
    names = list(dict.fromkeys([*train, *explain]))
    if not names:
        _not_measured(ax, title, "no model in this report")
        return
    height = 0.38
    rows = range(len(names))
    for offset, (kind, figures, limit, hatch) in enumerate(
            (("train step", train, TRAIN_OVERHEAD_MAX, ""), ("explanation", explain, EXPLAIN_OVERHEAD_MAX, "//"))):
        values = [figures.get(name, {}).get("ratio", math.nan) for name in names]
        ys = [row + (offset - 0.5) * height for row in rows]
        ax.barh(ys, values, height=height, color=[colours[name] for name in names], hatch=hatch,
                edgecolor="white" if not hatch else "black", lw=0.5, label=f"{kind} (limit {limit:g})")
        ax.vlines(limit, min(ys) - height / 2, max(ys) + height / 2, color="black", lw=1.2,
                  ls="-" if not hatch else "--")
    labels = [name if train.get(name, {}).get("judged", True) else f"{name}\n(not judged)" for name in names]
    ax.set_yticks(list(rows), labels, fontsize=8)
    # first model on top; bars as wide for one model; a free row under the last one holds the legend,
    # which otherwise sat on the last model's bars (run 25's BERT)
    ax.set_ylim(len(names) + 0.9, -0.5 - height / 2)
    ax.set_xlabel("ratio (solid line: train limit; dashed: explain limit)")
    ax.set_title(f"{title}\nplain: a training step; hatched: one explanation / one forward", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _mask_layer_panel(ax: Any, scaling: dict[str, Any]) -> None:
    title = "mask layer forward + backward, one sample"
    sizes = scaling.get("sizes") or {}
    if len(sizes) < 2:
        _not_measured(ax, title, "no scaling section in this report (--no-scaling)" if not sizes else "one size only")
        return
    units = [int(n) for n in sizes]
    judged_key = "mask_layer_ms_one_thread" if all("mask_layer_ms_one_thread" in r for r in sizes.values()) \
        else "mask_layer_ms"
    judged = [row[judged_key] for row in sizes.values()]
    judged_on = scaling.get("mask_layer_judged_on", "as timed")
    ax.plot(units, judged, "o-", color=PALETTE[0], label=f"judged ({judged_on})", gid="mask_layer:judged")
    if judged_key != "mask_layer_ms":
        ax.plot(units, [row["mask_layer_ms"] for row in sizes.values()], "s--", color=PALETTE[1], alpha=0.8,
                label="all threads", gid="mask_layer:all_threads")
    if "1000" in sizes:
        at_1k = sizes["1000"][judged_key]
        ax.plot(units, [at_1k * n / 1000 for n in units], ":", color="grey", label="linear through 1k",
                gid="mask_layer:linear")
    floor = scaling.get("mask_layer_floor")
    if floor:
        ax.plot([floor["units"]], [floor["ms"]], "v", color=PALETTE[0], markersize=8,
                label=f"floor ({floor['units']} units)", gid="mask_layer:floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("units per sample")
    ax.set_ylabel("ms per step")
    ratio = scaling.get("mask_layer_ratio_10k_over_1k")
    low, high = LINEAR_RATIO_BOUNDS
    verdict = f"10k/1k = {ratio:.2f} (bounds {low:g}-{high:g})" if ratio is not None else "10k/1k not measured"
    ax.set_title(f"{title}\n{verdict}", fontsize=10)
    ax.legend(fontsize=8)


def _memory_panel(ax: Any, scaling: dict[str, Any]) -> None:
    title = "peak memory of one call"
    sizes = scaling.get("sizes") or {}
    if not sizes:
        _not_measured(ax, title, "no scaling section in this report (--no-scaling)")
        return
    units = [int(n) for n in sizes]
    ax.plot(units, [row["knn_peak_mib"] for row in sizes.values()], "o-", color=PALETTE[2],
            label=f"exact kNN, k={scaling.get('k', '?')} (chunked)", gid="knn:peak")
    if all("mask_layer_peak_mib" in row for row in sizes.values()):
        ax.plot(units, [row["mask_layer_peak_mib"] for row in sizes.values()], "s-", color=PALETTE[0],
                label="mask layer step (fwd+bwd)", gid="mask_layer:peak")
    ax.axhline(KNN_PEAK_MIB_MAX, color="black", lw=1.2, ls="--", label=f"kNN limit {KNN_PEAK_MIB_MAX / 1024:g} GiB")
    ax.plot(units, [4 * n * n / 2**20 for n in units], ":", color="grey", label="one float32 n x n table",
            gid="knn:quadratic")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=max(4 * max(units) ** 2 / 2**20, 2 * KNN_PEAK_MIB_MAX))
    ax.set_xlabel("units (points) per sample")
    ax.set_ylabel("MiB above the level before the call")
    largest = scaling.get("knn_peak_mib_at_largest")
    verdict = f"kNN {largest:.0f} MiB at {max(units):,} points" if largest is not None else ""
    layer = scaling.get("mask_layer_peak_mib_at_largest")
    if layer is not None:
        verdict += f"; mask layer {layer:.0f} MiB"
    ax.set_title(f"{title}\n{verdict}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _claims_panel(ax: Any, report: dict[str, Any]) -> None:
    ax.axis("off")
    ax.set_title("claims (from the figures)", fontsize=10)
    lines = []
    for name, claim in report["claims"].items():
        if not isinstance(claim, dict):
            continue
        holds = claim_holds(claim)
        figure = next((claim[key] for key in ("speedup", "worst_ratio") if key in claim), None)
        detail = f" {figure:.2f}" if isinstance(figure, (int, float)) else ""
        if "target" in claim:
            detail += f" (>= {claim['target']:g}; acc {claim['accuracy']:.3f} vs {claim['dense_accuracy']:.3f})"
        lines.append(("met   " if holds else "MISSED") + f"  {name}{detail}")
    scaling = report.get("scaling") or {}
    if "mask_layer_linear_8_to_12" in scaling:
        lines.append(("met   " if scaling["mask_layer_linear_8_to_12"] else "MISSED")
                     + f"  mask layer 10k/1k {scaling['mask_layer_ratio_10k_over_1k']:.2f}")
    if "knn_peak_under_2_gib" in scaling:
        lines.append(("met   " if scaling["knn_peak_under_2_gib"] else "MISSED")
                     + f"  kNN peak {scaling['knn_peak_mib_at_largest']:.0f} MiB")
    ax.text(0.0, 1.0, "\n".join(lines) or "no claims in this report", va="top", ha="left", family="monospace",
            fontsize=7.5, transform=ax.transAxes, gid="claims")
