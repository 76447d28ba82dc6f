"""Side-by-side timing for benchmarks: interleaved repeats, median and interquartile range.

Modes are timed in turn (a, b, c, a, b, c, ...) so that load changes on a
shared machine hit every mode alike; CUDA is synchronised around each call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["interleaved", "quartiles", "time_call"]


def quartiles(times: list[float]) -> dict[str, float]:
    """Median and interquartile range of ``times`` (seconds), in milliseconds."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_ms": 1e3 * median, "iqr_ms": 1e3 * (q3 - q1), "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3}


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(
    modes: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """``{mode: [seconds per call]}``: ``warmup`` untimed rounds, then ``repeats`` timed rounds."""
    for _ in range(warmup):
        for fn in modes.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            times[name].append(time_call(fn, device))
    return times
