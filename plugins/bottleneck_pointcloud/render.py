"""PNG renderings of point clouds coloured by relevance (matplotlib, Agg backend).

matplotlib is an optional dependency (``pip install bottleneck-mask[viz]``); it is
imported only when a function here is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from bottleneck.errors import BottleneckError, describe
from bottleneck.viz import pyplot, save_figure

__all__ = ["render_cloud", "render_grid"]

_CMAP = "viridis"
_DPI = 100
_PANEL = 3.2  # inches per panel


def _as_cloud(pos: Tensor, relevance: Tensor, gt: Tensor | None, what: str) -> tuple[Any, Any, Any]:
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        raise BottleneckError(f"{what}: expected pos of shape [n, 3], got {describe(pos)}")
    n = pos.shape[0]
    if not isinstance(relevance, Tensor) or relevance.reshape(-1).numel() != n:
        raise BottleneckError(
            f"{what}: expected relevance with {n} values (one per point), got {describe(relevance)}"
        )
    if gt is not None and (not isinstance(gt, Tensor) or gt.reshape(-1).numel() != n):
        raise BottleneckError(
            f"{what}: expected gt with {n} values (one per point), got {describe(gt)}"
        )
    p = pos.detach().float().cpu().numpy()
    r = relevance.detach().float().reshape(-1).cpu().numpy()
    g = None if gt is None else gt.detach().reshape(-1).bool().cpu().numpy()
    return p, r, g


def _equal_axes(ax: Any, p: Any) -> None:
    if p.shape[0] == 0:
        return
    centre = (p.max(0) + p.min(0)) / 2
    half = max(float((p.max(0) - p.min(0)).max()) / 2, 1e-6)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])


def _scatter(fig: Any, ax: Any, p: Any, r: Any, title: str | None) -> None:
    vmin, vmax = (float(r.min()), float(r.max())) if r.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    order = r.argsort()  # draw the most relevant points last, on top
    sc = ax.scatter(
        p[order, 0], p[order, 1], p[order, 2], c=r[order], cmap=_CMAP, vmin=vmin, vmax=vmax,
        s=6, depthshade=False, linewidths=0,
    )  # fmt: skip
    fig.colorbar(sc, ax=ax, shrink=0.6, pad=0.02).set_label("relevance")
    _equal_axes(ax, p)
    if title:
        ax.set_title(title, fontsize=9)


def _scatter_gt(ax: Any, p: Any, g: Any) -> None:
    ax.scatter(p[~g, 0], p[~g, 1], p[~g, 2], c="lightgray", s=6, depthshade=False, linewidths=0)
    ax.scatter(p[g, 0], p[g, 1], p[g, 2], c="crimson", s=6, depthshade=False, linewidths=0)
    _equal_axes(ax, p)
    ax.set_title("ground-truth part", fontsize=9)


def render_cloud(
    pos: Tensor,
    relevance: Tensor,
    path: str | Path,
    *,
    title: str | None = None,
    gt: Tensor | None = None,
) -> Path:
    """Write a PNG of one cloud ``pos`` [n, 3] coloured by ``relevance`` [n].

    With ``gt`` ([n] bool), a second panel shows the ground-truth part in red.
    Returns the path written. Raises :class:`~bottleneck.errors.BottleneckError`
    on mismatched shapes or when matplotlib is not installed.
    """
    p, r, g = _as_cloud(pos, relevance, gt, "render_cloud")
    plt = pyplot("rendering point clouds")
    cols = 1 if g is None else 2
    fig = plt.figure(figsize=(_PANEL * cols + 0.6, _PANEL))
    _scatter(fig, fig.add_subplot(1, cols, 1, projection="3d"), p, r, title)
    if g is not None:
        _scatter_gt(fig.add_subplot(1, cols, 2, projection="3d"), p, g)
    return save_figure(fig, path, dpi=_DPI)


def render_grid(
    clouds: Sequence[tuple[Tensor, Tensor]],
    path: str | Path,
    *,
    titles: Sequence[str | None] | None = None,
    gts: Sequence[Tensor | None] | None = None,
) -> Path:
    """Write a PNG of several ``(pos, relevance)`` clouds, one column each.

    ``titles`` and ``gts`` (optional, one per cloud, entries may be None) add a
    title and a second row with each cloud's ground-truth part. Returns the path.
    """
    clouds = list(clouds)
    if not clouds:
        raise BottleneckError("render_grid: expected at least one (pos, relevance) cloud, got none")
    k = len(clouds)
    for name, seq in (("titles", titles), ("gts", gts)):
        if seq is not None and len(seq) != k:
            raise BottleneckError(
                f"render_grid: expected {k} {name} (one per cloud), got {len(seq)}"
            )
    data = [
        _as_cloud(pos, rel, None if gts is None else gts[i], f"render_grid cloud {i}")
        for i, (pos, rel) in enumerate(clouds)
    ]
    rows = 2 if gts is not None and any(g is not None for g in gts) else 1
    plt = pyplot("rendering point clouds")
    fig = plt.figure(figsize=(_PANEL * k + 0.6, _PANEL * rows))
    for i, (p, r, g) in enumerate(data):
        title = None if titles is None else titles[i]
        _scatter(fig, fig.add_subplot(rows, k, i + 1, projection="3d"), p, r, title)
        if g is not None:
            _scatter_gt(fig.add_subplot(rows, k, k + i + 1, projection="3d"), p, g)
    return save_figure(fig, path, dpi=_DPI)
