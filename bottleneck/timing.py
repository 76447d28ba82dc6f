"""Side-by-side timing for benchmarks: interleaved repeats, median and interquartile range.

Modes are timed in turn (a, b, c, a, b, c, ...) so that load changes on a
shared machine hit every mode alike; CUDA is synchronised around each call.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "add_timing_arguments", "interleaved", "quartiles", "run_child", "setup_device", "steady_heap", "time_call",
    "top_level_ops", "use_threads",
]


def quartiles(times: list[float]) -> dict[str, float]:
    """Median and interquartile range of ``times`` (seconds), in milliseconds."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_ms": 1e3 * median, "iqr_ms": 1e3 * (q3 - q1), "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3}


#: glibc ``mallopt`` parameters (``malloc.h``) and the values :func:`steady_heap` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEADY_HEAP = {"mmap_threshold_mib": 256, "trim_threshold_mib": 1024}


def steady_heap() -> dict[str, Any]:
    """Keep freed memory in this process's heap (glibc), so timings do not measure page faults.

    glibc serves a large allocation (above a threshold that starts at 128 KiB and adapts)
    with fresh ``mmap`` pages and hands them back on free, so the next call faults them in
    again: a fresh PointNet's dense forward on the bench batch took 25 ms, the same model
    after a few training steps 15 ms, and one full bench measured it at 24.7 ms against
    15.0 ms in the run before -- an allocator state, not the model. Raising the mmap and
    trim thresholds keeps buffers up to 256 MiB in the heap (what jemalloc, tcmalloc and
    CUDA's caching allocator give); both sides of every comparison run under it. The fresh
    PointNet then took 16.8 ms. Returns what was applied (``applied`` is ``False`` where
    the C library has no ``mallopt``: not glibc).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return {**STEADY_HEAP, "applied": False}
    applied = (mallopt(_M_MMAP_THRESHOLD, STEADY_HEAP["mmap_threshold_mib"] << 20) == 1
               and mallopt(_M_TRIM_THRESHOLD, STEADY_HEAP["trim_threshold_mib"] << 20) == 1)
    return {**STEADY_HEAP, "applied": applied}


def use_threads(count: int) -> bool:
    """Give torch ``count`` intra-op threads, calling ``torch.set_num_threads`` only if it has another count.

    Setting the count torch already has is not free: on this project's 2-core machine
    (OpenMP, MKL, oneDNN) ``torch.set_num_threads(2)`` in a process that had 2 threads
    made the bench ViT's forward 22% slower (11.9 against 14.6 ms) and its training step
    17% slower (39.1 against 45.5 ms), side by side in fresh processes; in the sparse
    timing child DGCNN's sparse call took 9.8-10.2 against 9.5-9.6 ms with its dense
    forward unchanged. A day later six such children gave the same DGCNN ratios with
    and without the call (x4.67-x4.78 against x4.12-x4.82): the machine's state moves
    these timings as much as the call did. Returns whether the count was changed.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        from .errors import BottleneckError

        raise BottleneckError(f"thread count must be an int >= 1 (got {count!r})")
    if torch.get_num_threads() == count:
        return False
    torch.set_num_threads(count)
    return True


def run_child(what: str, module: str, *args: str) -> Any:
    """Run ``python -m MODULE ARGS`` in a fresh process and return the JSON of its last output line.

    Benchmarks time in fresh processes so that what the caller ran before (training,
    a large heap, cold caches) does not leak into a figure. A failing child raises
    :class:`~bottleneck.errors.BottleneckError` with the tail of its stderr.
    """
    from .errors import BottleneckError

    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise BottleneckError(f"the {what} child process failed (exit {done.returncode}, "
                              f"python -m {module}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def top_level_ops(events: Any) -> int:
    """How many ATen operations a profile recorded that no other ATen operation called (``prof.events()``).

    The operations a caller asked for, forward and backward: the dispatch overhead a call
    pays per operation (and on a GPU a kernel launch each), not the views and copies those
    operations make inside themselves.
    """
    aten = [e for e in events if e.name.startswith("aten::")]
    return sum(e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::") for e in aten)


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


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script shares: device, repeats, warm-up, threads, seed."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per mode first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def setup_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Check the shared options (exiting through ``parser.error``), apply threads and seed; the device."""
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 for quartiles")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads is not None:
        use_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)
