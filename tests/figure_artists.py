"""Read drawn data back from a matplotlib figure by the ``gid`` its plotting code gave each artist."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def artists(fig: Any, gid: str) -> list[Any]:
    """Every line or text in ``fig`` whose gid is ``gid``."""
    return [a for ax in fig.axes for a in [*ax.lines, *ax.texts] if a.get_gid() == gid]


def artist(fig: Any, gid: str) -> Any:
    """The one line or text in ``fig`` whose gid is ``gid``."""
    found = artists(fig, gid)
    assert len(found) == 1, f"{len(found)} artists with gid {gid!r}"
    return found[0]


@contextmanager
def laid_out(fig: Any) -> Iterator[Any]:
    """``fig`` drawn, for its artists' places on the canvas: yields the renderer for
    ``get_window_extent`` and closes the figure afterwards."""
    from bottleneck.viz import pyplot

    try:
        fig.canvas.draw()
        yield fig.canvas.get_renderer()
    finally:
        pyplot().close(fig)
