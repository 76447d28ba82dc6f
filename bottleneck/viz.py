"""Lazy access to matplotlib for the renderers (an optional dependency).

matplotlib is only needed to write figures, so it is not a hard dependency
(``pip install bottleneck-mask[viz]``). Renderers call :func:`pyplot` when they
draw instead of importing matplotlib at module level, so importing a plugin never
fails or slows down because matplotlib is missing. The Agg backend is forced
because the renderers only write files; it needs no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BottleneckError

__all__ = ["pyplot", "save_figure"]


def pyplot(purpose: str = "rendering") -> Any:
    """Import ``matplotlib.pyplot`` on the non-interactive Agg backend and return it.

    ``purpose`` names what needs matplotlib in the error message, e.g.
    ``"rendering point clouds"``. Raises :class:`~bottleneck.errors.BottleneckError`
    saying how to install it when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BottleneckError(
            f"{purpose} needs matplotlib: pip install bottleneck-mask[viz]"
        ) from exc
    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (parents created), always closing it; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return out
