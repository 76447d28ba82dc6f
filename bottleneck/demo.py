"""``Demo``: a runnable end-to-end job a plugin registers for ``bottleneck demo NAME``.

Every modality's demo writes ``report.json`` with the same keys, so results can
be compared and checked the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import BottleneckError

#: Keys every demo's ``report.json`` has. Fractions are floats in [0, 1];
#: ``gt_auroc`` may be ``None`` for data without ground truth.
REPORT_KEYS: tuple[str, ...] = (
    "modality",
    "model",
    "accuracy_plain",
    "accuracy_masked",
    "accuracy_sparse",
    "keep_rate",
    "gt_auroc",
    "seconds",
)
FRACTION_KEYS = ("accuracy_plain", "accuracy_masked", "accuracy_sparse", "keep_rate", "gt_auroc")


@dataclass
class Demo:
    """A demo job.

    :param name: what follows ``bottleneck demo`` on the command line.
    :param run: ``run(out_dir, device=..., quick=..., **options) -> report dict``.
    :param help: one line for ``bottleneck demo --help``.
    :param options: extra command-line options, ``{name: (type, default, help)}``.
    :param testbed: builds the modality's :class:`~bottleneck.testbed.Testbed` for benchmarks.
    :param audit: builds the modality's :class:`~bottleneck.cue_setting.CueSetting` for ``bottleneck audit``.
    :param speed: builds the modality's :class:`~bottleneck.speed.SpeedCase` list for ``bottleneck bench speed``.
    """

    name: str
    run: Callable[..., dict[str, Any]]
    help: str = ""
    options: dict[str, tuple[type, Any, str]] = field(default_factory=dict)
    #: ``prepare(quick=..., seed=...) -> Testbed`` for ``bottleneck bench explain`` (optional).
    testbed: Callable[..., Any] | None = None
    #: ``prepare_audit(cue=..., quick=..., seed=..., correlation=...) -> CueSetting`` (optional).
    audit: Callable[..., Any] | None = None
    #: ``prepare_speed(quick=..., seed=...) -> list[SpeedCase]`` for ``bottleneck bench speed`` (optional).
    speed: Callable[..., Any] | None = None


#: A demo option's default: a count, or ``None`` for "all" (the image demo's training set).
Default = TypeVar("Default")


def count_or_default(value: int | None, default: Default, name: str) -> int | Default:
    """``value`` when given (an int >= 1), else ``default`` (which may be ``None``: "all").

    ``value or default`` turned ``--epochs 0`` into the default run, silently; 0 and
    negative counts are refused instead, naming the option.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BottleneckError(f"--{name.replace('_', '-')} must be an int >= 1 (got {value!r})")
    return value


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Check ``report`` has the shared keys with valid values and write ``report.json``."""
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise BottleneckError(f"demo report lacks the shared keys {missing}")
    for key in FRACTION_KEYS:
        value = report[key]
        if value is None and key == "gt_auroc":
            continue
        if not isinstance(value, float) or math.isnan(value) or not 0.0 <= value <= 1.0:
            raise BottleneckError(f"demo report key {key!r} must be a float in [0, 1] (got {value!r})")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path
