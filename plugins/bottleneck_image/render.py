"""PNG renderings of images with their relevance and kept pixels (matplotlib, Agg backend).

matplotlib is an optional dependency (``pip install bottleneck-mask[viz]``); it is
imported only when a function here is called (:func:`bottleneck.viz.pyplot`).

Relevance is drawn on a fixed ``[0, 1]`` colour scale (values outside are clipped)
so that panels of different images compare directly. The ground truth, when given,
is outlined along pixel edges rather than filled, so the relevance under it stays
visible. In the "kept" panel the pixels the mask drops are dimmed and hatched, so
the reader sees exactly what the model is left with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottleneck.errors import BottleneckError, describe
from bottleneck.viz import pyplot, save_figure

__all__ = ["render_grid", "render_overlay"]

_CMAP = "inferno"
_ALPHA = 0.55  # opacity of the relevance heatmap over the image
_GT_COLOUR = "white"
_DROP_DIM = 0.2  # dropped pixels keep this fraction of their brightness
_DPI = 100
_PANEL = 2.4  # inches per panel
_OUTLINE_UPSAMPLE = 8  # the gt mask is upsampled before contouring so outlines follow pixel edges


def _check_image(image: Any, what: str, name: str = "image") -> tuple[int, int, int]:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise BottleneckError(
            f"{what}: expected {name} of shape [C, H, W] with C 1 (grey) or 3 (RGB), "
            f"got {describe(image)}"
        )
    c, h, w = image.shape
    return int(c), int(h), int(w)


def _check_map(value: Any, shape: tuple[int, ...], what: str, name: str) -> None:
    if value is not None and (not isinstance(value, Tensor) or tuple(value.shape) != shape):
        dims = ", ".join(str(d) for d in shape)
        raise BottleneckError(f"{what}: expected {name} of shape [{dims}], got {describe(value)}")


def _hwc(image: Tensor) -> Any:
    """[C, H, W] tensor -> [H, W, 3] numpy array in [0, 1] (grey repeated to RGB)."""
    x = image.detach().float().cpu().clamp(0.0, 1.0)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def _plain(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _pixel_region(mask: Tensor) -> tuple[Any, Any, Any]:
    """``(x, y, z)`` for contour/contourf so that the 0.5 level of ``z`` follows the pixel
    edges of ``mask`` [H, W]: the mask upsampled, on cell centres in pixel coordinates."""
    g = mask.detach().bool().cpu()
    h, w = g.shape
    k = _OUTLINE_UPSAMPLE
    z = g.repeat_interleave(k, 0).repeat_interleave(k, 1).float().numpy()
    ys = (torch.arange(h * k) + 0.5) / k - 0.5
    xs = (torch.arange(w * k) + 0.5) / k - 0.5
    return xs.numpy(), ys.numpy(), z


def _outline(ax: Any, mask: Tensor) -> None:
    """Outline the True pixels of ``mask`` [H, W] along their pixel edges."""
    if not bool(mask.any()) or bool(mask.all()):
        return  # nothing to outline (and contour would warn)
    region = _pixel_region(mask)
    # a dark halo under a bright line keeps the outline visible on any glyph colour
    ax.contour(*region, levels=[0.5], colors="black", linewidths=2.6)
    ax.contour(*region, levels=[0.5], colors=_GT_COLOUR, linewidths=1.2)


def _overlay(
    fig: Any, ax: Any, image: Tensor, relevance: Tensor, gt: Tensor | None, label: bool = True
) -> None:
    ax.imshow(_hwc(image), interpolation="nearest")
    r = relevance.detach().float().cpu().clamp(0.0, 1.0).numpy()
    im = ax.imshow(r, cmap=_CMAP, vmin=0.0, vmax=1.0, alpha=_ALPHA, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    if label:
        bar.set_label("relevance", fontsize=8)
    if gt is not None:
        _outline(ax, gt)
    _plain(ax)


def _kept(ax: Any, image: Tensor, kept: Tensor, plt: Any) -> float:
    """Draw ``image`` with the pixels not in ``kept`` dimmed and hatched; returns the kept
    fraction."""
    keep = kept.detach().bool().cpu()
    x = _hwc(image)
    x[~keep.numpy()] *= _DROP_DIM
    ax.imshow(x, interpolation="nearest")
    if not bool(keep.all()):
        with plt.rc_context({"hatch.color": "0.55", "hatch.linewidth": 0.6}):
            ax.contourf(*_pixel_region(~keep), levels=[0.5, 1.5], colors="none", hatches=["////"])
    _plain(ax)
    return float(keep.float().mean())


def render_overlay(
    image: Tensor,
    relevance: Tensor,
    path: str | Path,
    *,
    title: str | None = None,
    gt: Tensor | None = None,
) -> Path:
    """Write a PNG of ``image`` [C, H, W] with ``relevance`` [H, W] as a heatmap on top.

    ``image`` is grey (C = 1) or RGB (C = 3) and clipped to ``[0, 1]``; ``relevance``
    is drawn semi-transparently on a fixed ``[0, 1]`` scale with a colour bar; ``gt``
    ([H, W] bool, optional) is outlined. Returns the path written. Raises
    :class:`~bottleneck.errors.BottleneckError` on mismatched shapes or when
    matplotlib is not installed.
    """
    _, h, w = _check_image(image, "render_overlay")
    _check_map(relevance, (h, w), "render_overlay", "relevance")
    _check_map(gt, (h, w), "render_overlay", "gt")
    plt = pyplot("rendering images")
    fig, ax = plt.subplots(figsize=(_PANEL + 0.8, _PANEL))
    _overlay(fig, ax, image, relevance, gt)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=_DPI)


def render_grid(
    images: Tensor,
    relevance: Tensor,
    kept: Tensor,
    path: str | Path,
    *,
    gt: Tensor | None = None,
    titles: Sequence[str] | None = None,
    max_rows: int = 8,
) -> Path:
    """Write a PNG with one row per example: input | relevance overlay | kept pixels.

    ``images`` is [B, C, H, W] (C 1 or 3), ``relevance`` [B, H, W], ``kept`` [B, H, W]
    bool (True where the mask keeps the pixel) and ``gt`` [B, H, W] bool (optional,
    outlined on the relevance column). ``titles`` (one per example) label the rows.
    Only the first ``max_rows`` examples are drawn. Returns the path written.
    """
    what = "render_grid"
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise BottleneckError(
            f"{what}: expected images of shape [B, C, H, W] with C 1 (grey) or 3 (RGB), "
            f"got {describe(images)}"
        )
    b, _, h, w = (int(d) for d in images.shape)
    if b == 0:
        raise BottleneckError(f"{what}: expected at least one image, got {describe(images)}")
    _check_map(relevance, (b, h, w), what, "relevance")
    _check_map(kept, (b, h, w), what, "kept")
    _check_map(gt, (b, h, w), what, "gt")
    if titles is not None and len(titles) != b:
        raise BottleneckError(f"{what}: expected {b} titles (one per image), got {len(titles)}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise BottleneckError(f"{what}: expected a positive integer max_rows, got {max_rows!r}")
    rows = min(b, max_rows)
    plt = pyplot("rendering images")
    fig, axes = plt.subplots(rows, 3, figsize=(3 * _PANEL + 0.8, rows * _PANEL), squeeze=False)
    for i in range(rows):
        ax_in, ax_rel, ax_kept = axes[i]
        ax_in.imshow(_hwc(images[i]), interpolation="nearest")
        _plain(ax_in)
        if titles is not None:
            ax_in.set_ylabel(titles[i], fontsize=9)
        _overlay(fig, ax_rel, images[i], relevance[i], None if gt is None else gt[i], False)
        frac = _kept(ax_kept, images[i], kept[i], plt)
        ax_kept.set_title(f"{'kept pixels: ' if i == 0 else 'kept '}{100 * frac:.0f}%", fontsize=9)
        if i == 0:
            ax_in.set_title("input", fontsize=9)
            ax_rel.set_title("relevance" + ("" if gt is None else " (gt outlined)"), fontsize=9)
    return save_figure(fig, path, dpi=_DPI)
