"""Token relevance as an HTML page and as ANSI-coloured terminal text.

Each token gets a background whose strength is its relevance (0 white, 1 full
colour); dropped tokens (outside the kept set) are struck through, and tokens
of the ground-truth evidence are underlined, so a reader sees at a glance what
the mask kept, how sure it was, and whether that was the planted evidence.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from bottleneck.errors import BottleneckError

__all__ = ["ansi_line", "render_html"]

#: Background colour of a fully relevant token (RGB).
_COLOUR = (255, 170, 0)


def _check(tokens: Sequence[str], relevance: Sequence[float], what: str) -> None:
    if len(tokens) != len(relevance):
        raise BottleneckError(f"{what}: expected one relevance per token ({len(tokens)}), got {len(relevance)}")


def _background(value: float) -> tuple[int, int, int]:
    v = min(max(float(value), 0.0), 1.0)
    return tuple(round(255 + (c - 255) * v) for c in _COLOUR)  # type: ignore[return-value]


def render_html(
    examples: Sequence[dict],
    path: str | Path,
    *,
    title: str = "Token relevance",
) -> Path:
    """Write an HTML page with one highlighted sentence per example.

    :param examples: dicts with ``tokens`` (list of str), ``relevance`` (list of float in
        [0, 1]), and optionally ``kept`` (list of bool), ``evidence`` (list of bool) and
        ``caption`` (str, e.g. label and prediction).
    """
    rows = []
    for i, example in enumerate(examples):
        tokens, relevance = list(example["tokens"]), [float(r) for r in example["relevance"]]
        _check(tokens, relevance, f"example {i}")
        kept = list(example.get("kept") or [True] * len(tokens))
        evidence = list(example.get("evidence") or [False] * len(tokens))
        spans = []
        for token, value, keep, truth in zip(tokens, relevance, kept, evidence, strict=True):
            r, g, b = _background(value)
            style = f"background: rgb({r},{g},{b});"
            if not keep:
                style += " text-decoration: line-through; color: #888;"
            if truth:
                style += " border-bottom: 3px solid #06c;"
            spans.append(f'<span title="{value:.2f}" style="{style}">{html.escape(token)}</span>')
        caption = html.escape(str(example.get("caption", f"example {i}")))
        rows.append(f'<div class="ex"><div class="cap">{caption}</div><p>{" ".join(spans)}</p></div>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; }}
.ex {{ margin: 1.2em 0; }} .cap {{ color: #555; font-size: 0.9em; }}
span {{ padding: 1px 2px; border-radius: 3px; line-height: 2; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Background: relevance (white 0, orange 1). Struck through: dropped by the mask.
Underlined blue: planted evidence.</p>
{chr(10).join(rows)}
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def ansi_line(tokens: Sequence[str], relevance: Sequence[float], kept: Sequence[bool] | None = None) -> str:
    """One line of terminal text: each token on a 24-bit background by relevance; dropped ones dim."""
    _check(tokens, relevance, "ansi_line")
    kept = list(kept) if kept is not None else [True] * len(tokens)
    parts = []
    for token, value, keep in zip(tokens, relevance, kept, strict=True):
        r, g, b = _background(value)
        dim = "" if keep else "\x1b[2m"
        parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{dim}{token}\x1b[0m")
    return " ".join(parts)
