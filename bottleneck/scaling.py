"""How the mask layer and the neighbourhood graphs scale with the units per sample.

For each size (1k, 10k, 100k points), one sample of random points:

* ``mask_layer_ms``: one training step of :class:`~bottleneck.layer.MaskLayer` (scorer,
  hard-concrete gates, objective; forward and backward), median of ``repeats`` calls
  after 5 warm-up calls, in a fresh child process per size (never after another size); the cost should grow
  linearly with the units (the 10k/1k ratio near 10). On CPU it is also timed on one
  thread (``mask_layer_ms_one_thread``), and the judged ratio is that one: PyTorch splits
  an elementwise operation over threads only above a size (about 32k elements), so
  on 2 threads more of the 10k step runs in parallel than of the 1k step (10k: 19.9 ms
  on one thread, 12.0 on two, x1.65; 1k: 2.2 and 1.5, x1.44), and the ratio at the
  machine's threads (7.0-7.9) mixes the growth of the work with a parallel speed-up
  that grows with the size (one-thread ratio 9.0 in the same run). Both are reported.
  The judged times of the sizes up to :data:`PAIRED_MAX_UNITS` and of the floor (below)
  come from one child process that times them in turn, in rounds of short blocks
  (:func:`paired_mask_layer_ms`): a ratio of two fresh processes mixed their states
  (the 1k step took 2.8-4.4 ms and the 10k step 25-37 ms from process to process, and
  the ratio of a pair of processes ranged 5.9-11.8), where blocks in one process put
  both sizes under the same state (7.6-8.9 over six processes);
* ``knn_ms`` and ``knn_peak_mib``: :func:`bottleneck.neighbors.knn_graph` (k=16, the exact
  chunked pure-torch search unless torch_cluster imports). Peak memory is measured in a
  fresh child process: the rise of its peak resident set size (``VmHWM``) over the
  level after the points were made, so it counts every allocation of the call (CPU), or
  ``torch.cuda.max_memory_allocated`` on CUDA. A dense ``N x N`` float distance matrix
  would need 37 GiB at 100k points; the chunked kNN must stay under 2 GiB;
* ``mask_layer_peak_mib``: the memory that step takes, measured as ``knn_peak_mib`` is
  (:func:`layer_memory_child`, a fresh process per size): it should grow linearly too,
  with the activations the backward pass keeps per unit;
* ``mask_layer_floor``: the same step on :data:`FLOOR_UNITS` units, timed as the judged
  sizes are: the per-call cost that does not grow with the units, its share of the 1k
  step (a fixed cost pulls the 10k/1k ratio under 10 however linear the rest is) and
  the step's top-level ATen operations (``ops``: what that cost is paid per, and a count
  that does not move with the machine's load);
* ``serial_knn_ms``: :func:`bottleneck.neighbors.serial_knn_graph` (k=8), the approximate
  graph the point-cloud mask smooths over, ``O(N log N)``.

Run through ``bottleneck bench speed`` (its ``scaling`` section) or on its own:
``python -m bottleneck.scaling [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
from collections.abc import Callable

import torch

from .devices import DEVICE_HELP, device_argument, torch_device
from .layer import MaskLayer
from .neighbors import HAS_TORCH_CLUSTER, knn_graph, serial_knn_graph
from .timing import run_child, steady_heap, time_call, top_level_ops, use_threads
from .units import Units

SIZES = (1_000, 10_000, 100_000)
#: Units of the mask-layer step timed as the per-call floor: what a step costs before its
#: units do (kernel launches, small ops on per-sample tensors, autograd bookkeeping).
FLOOR_UNITS = 10
#: The largest size timed in :func:`paired_mask_layer_ms` with the floor and the smaller
#: sizes: with 100k-unit blocks in the same rounds the 1k step took 4.5 ms against 2.7-3.5
#: alone and the floor 1.5 against 0.9-1.2 ms (its heap and pages stay with the process),
#: so larger sizes get a process each.
PAIRED_MAX_UNITS = 10_000
#: Rounds of :func:`paired_mask_layer_ms`, and the least time one block of a size is timed
#: for (a block of the floor is tens of its steps, of 10k units a few).
PAIRED_ROUNDS = 8
PAIRED_BLOCK_SECONDS = 0.03
#: The issue's bounds: the mask layer's 10k/1k time ratio (linear cost is about 10x; a fixed
#: per-call cost pulls it down, caches spilling push it up) and kNN's peak memory at 100k points.
LINEAR_RATIO_BOUNDS = (8.0, 12.0)
KNN_PEAK_MIB_MAX = 2048
K = 16
#: Neighbours of the point-cloud unit graph (``bottleneck_pointcloud.adapter.GRAPH_K``).
SERIAL_K = 8


def _peak_rss_mib() -> float:
    """This process's peak resident set size, MiB.

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``ru_maxrss`` survives
    ``exec`` on Linux, so a child started by a large parent (the benchmark, 1-2 GiB
    after training) reported the parent's peak and a kNN rise of 0.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(flag: str, points: int | str, device: torch.device, *extra: str) -> dict[str, float]:
    """Run ``python -m bottleneck.scaling FLAG POINTS`` and read the JSON line it prints
    (``POINTS`` one size, or comma-separated sizes for ``--child-layers``).

    A fresh process per figure: what the caller ran before (a benchmark that trained
    models holds a large heap and cold caches) does not leak into the figure.
    """
    return run_child("scaling", "bottleneck.scaling", flag, str(points), "--device", str(device), *extra)


def _judged_layer_ms(sizes: tuple[int, ...], device: torch.device, args: tuple[str, ...]) -> dict[int, float]:
    """The judged step times: the floor and the sizes up to :data:`PAIRED_MAX_UNITS` from one
    :func:`paired_mask_layer_ms` child, each larger size from a child of its own."""
    paired = sorted({FLOOR_UNITS, *(points for points in sizes if points <= PAIRED_MAX_UNITS)})
    times = _child("--child-layers", ",".join(map(str, paired)), device, *args)
    out = {int(points): ms for points, ms in times.items()}
    for points in sizes:
        if points not in out:
            out[points] = _child("--child-layer", points, device, *args)["mask_layer_ms"]
    return out


def _with_peak(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(seconds, MiB)``: one call of ``fn`` and the rise of memory's high-water mark during it.

    On CPU the rise of the process's peak resident set size over its level before the
    call, so it counts every allocation of the call; on CUDA ``max_memory_allocated``
    over what was allocated before. Meant for a fresh process: a high-water mark set by
    earlier work would hide the call's.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _peak_rss_mib()
    seconds = time_call(fn, device)
    if device.type == "cuda":
        return seconds, (torch.cuda.max_memory_allocated() - before) / 2**20
    return seconds, _peak_rss_mib() - before


def knn_child(points: int, device: str) -> dict[str, float]:
    """Run in a fresh process: time and peak memory of one kNN graph over ``points`` points."""
    dev = torch.device(device)
    pos = torch.rand(points, 3, generator=torch.Generator().manual_seed(0)).to(dev)
    knn_graph(pos[:64], K)  # warm-up on a tiny input (kernels, allocator)
    seconds, peak = _with_peak(lambda: knn_graph(pos, K), dev)
    return {"knn_ms": 1000 * seconds, "knn_peak_mib": peak}


def layer_memory_child(points: int, device: str) -> dict[str, float]:
    """Run in a fresh process: the memory one mask-layer training step on ``points`` units takes.

    The rise of the peak over the level once the layer and its units exist: the
    activations kept for the backward pass, the gradients and the temporaries of both
    passes. A step on 64 units first sets up what any call needs (kernels, allocator,
    thread pool), so that is not counted as the large step's.
    """
    dev = torch.device(device)
    mask_layer_step(64, dev)()
    step = mask_layer_step(points, dev)
    return {"mask_layer_peak_mib": _with_peak(step, dev)[1]}


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = sorted(time_call(fn, device) for _ in range(repeats))
    return 1000 * times[len(times) // 2]


def mask_layer_step(points: int, device: torch.device) -> Callable[[], None]:
    """One forward + backward pass of the mask layer on one sample of ``points`` random units."""
    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0).to(device)
    units = Units(x=torch.randn(points, 3, device=device), batch=torch.zeros(points, dtype=torch.long, device=device),
                  num_samples=1)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(units).loss.backward()

    return step


def mask_layer_ops(points: int, device: torch.device) -> int:
    """Top-level ATen operations of one mask-layer step (after a warm-up step), forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    step = mask_layer_step(points, device)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return top_level_ops(prof.events())


def mask_layer_ms(points: int, device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median time of one mask-layer step on ``points`` units, after ``warmup`` untimed steps.

    Each size is timed on its own, in a run of steps as training makes them: timed in
    turn with the other sizes step by step, a 1k step after a 100k step paid for the
    caches and allocator pages the large one had taken (2.9 ms against 1.5 ms in a run of
    1k steps), which measures the interleaving, not the layer. :func:`run_scaling` calls
    this in a fresh process for the same reason, for the sizes above
    :data:`PAIRED_MAX_UNITS` and for the figures at the machine's threads; the judged
    smaller sizes take :func:`paired_mask_layer_ms` (blocks of a size, warmed up).
    """
    return _median_ms(mask_layer_step(points, device), device, repeats, warmup)


def paired_mask_layer_ms(sizes: list[int], device: torch.device, repeats: int, *, rounds: int = PAIRED_ROUNDS,
                         warmup: int = 2) -> dict[int, float]:
    """Median step time per size, the sizes timed in turn in one process: ``rounds`` rounds of one block each.

    A block is ``warmup`` untimed steps (the previous block's size had the caches), then
    at least ``ceil(repeats / rounds)`` timed steps and at least
    :data:`PAIRED_BLOCK_SECONDS` of them. Each size's median is over all its blocks, so
    the sizes share whatever state the machine and the process were in, and their
    ratio is the growth of the work rather than the difference between two processes.
    """
    steps = {points: mask_layer_step(points, device) for points in sizes}
    times: dict[int, list[float]] = {points: [] for points in sizes}
    least = max(1, math.ceil(repeats / rounds))
    for _ in range(rounds):
        for points, step in steps.items():
            for _ in range(warmup):
                step()
            first = time_call(step, device)
            count = max(least, math.ceil(PAIRED_BLOCK_SECONDS / max(first, 1e-6)))
            times[points] += [first, *(time_call(step, device) for _ in range(count - 1))]
    return {points: 1000 * statistics.median(seconds) for points, seconds in times.items()}


def serial_knn_ms(points: int, device: torch.device, repeats: int) -> float:
    """Median time of the approximate (serialised) kNN graph over ``points`` random points."""
    pos = torch.rand(points, 3, generator=torch.Generator().manual_seed(0)).to(device)
    return _median_ms(lambda: serial_knn_graph(pos, SERIAL_K), device, max(3, repeats // 2))


def linear_fit(sizes: list[int], times_ms: list[float]) -> dict[str, float]:
    """``time = fixed + slope * units`` fitted to relative errors: a per-call cost and a per-unit cost.

    A ratio of raw times is not linear when a fixed per-call cost (kernel launches, small
    ops on per-sample tensors) dominates the smallest size; the fit separates the two, and
    its largest relative residual says how well a straight line describes the growth.
    Each size's residual is taken relative to its time, so every size counts alike: the
    sizes span 100x, and a plain least-squares fit is all but decided by the largest (on
    run 28's 3.2, 27.2 and 351.7 ms at 1k, 10k and 100k units it gave -4.17 ms per call and
    a 119% residual at 1k; this fit gives 0.13 ms + 3.03 ms per 1k units, residuals within 14%).
    """
    x = torch.tensor(sizes, dtype=torch.float64)
    y = torch.tensor(times_ms, dtype=torch.float64)
    weight = 1 / y
    design = torch.stack([torch.ones_like(x), x], dim=1) * weight.unsqueeze(1)
    fixed, slope = torch.linalg.lstsq(design, (y * weight).unsqueeze(1)).solution.squeeze(1).tolist()
    fitted = fixed + slope * x
    return {"fixed_ms": fixed, "ms_per_1k_units": 1000 * slope,
            "max_relative_residual": float(((y - fitted).abs() / y).max())}


def run_scaling(device: str | torch.device = "cpu", *, repeats: int = 15, sizes: tuple[int, ...] = SIZES,
                progress: bool = True, hold_heap: bool = False) -> dict[str, object]:
    """Figures per size, the 10k/1k ratio of the mask layer and the 2 GiB kNN memory check.

    ``hold_heap`` times the mask layer with freed memory held in the child's heap
    (:func:`~bottleneck.timing.steady_heap`, as ``bench speed`` times everything else): with
    glibc's default the 10k step took 13.1-16.8 ms in three fresh processes and once 28.6 ms
    in a full bench, against 12.4-12.8 ms with it. The kNN's peak memory is always measured
    under the default allocator.
    """
    dev = torch_device(device)
    layer = ("--repeats", str(repeats), *(["--steady-heap"] if hold_heap else []))
    cpu = dev.type == "cpu"
    judged = "mask_layer_ms_one_thread" if cpu else "mask_layer_ms"
    # on CPU the work's growth, without the parallel speed-up of larger ops
    judged_ms = _judged_layer_ms(sizes, dev, (*layer, *(["--threads", "1"] if cpu else [])))
    rows: dict[str, dict[str, float]] = {}
    for points in sizes:
        row = _child("--child-layer", points, dev, *layer) if cpu else {}  # the machine's threads, for reference
        row.update({judged: judged_ms[points], "serial_knn_ms": serial_knn_ms(points, dev, repeats),
                    **_child("--child-layer-memory", points, dev), **_child("--child-knn", points, dev)})
        rows[str(points)] = row
        if progress:
            print(f"scaling {points:>7} units: mask layer {row['mask_layer_ms']:.2f} ms "
                  f"(peak {row['mask_layer_peak_mib']:.1f} MiB), kNN {row['knn_ms']:.0f} ms "
                  f"(peak {row['knn_peak_mib']:.0f} MiB), serial kNN {row['serial_knn_ms']:.1f} ms", flush=True)
    report: dict[str, object] = {"sizes": rows, "k": K, "serial_k": SERIAL_K, "torch_cluster": HAS_TORCH_CLUSTER}
    # the floor, timed with the judged sizes: the 10k/1k ratio is about (floor + 10w) / (floor + w) for w the
    # work of 1k units, so a floor above 2/7 of w pulls the ratio under 8 however linear the work is
    report["mask_layer_floor"] = {"units": FLOOR_UNITS, "ms": judged_ms[FLOOR_UNITS],
                                  "ops": mask_layer_ops(FLOOR_UNITS, dev)}
    if "1000" in rows:
        report["mask_layer_floor"]["share_of_1k_step"] = judged_ms[FLOOR_UNITS] / rows["1000"][judged]
    report["mask_layer_judged_on"] = "one CPU thread" if dev.type == "cpu" else f"{dev.type}, as timed"
    if "1000" in rows and "10000" in rows:
        ratio = rows["10000"][judged] / rows["1000"][judged]
        report["mask_layer_ratio_10k_over_1k"] = ratio
        report["mask_layer_linear_8_to_12"] = LINEAR_RATIO_BOUNDS[0] <= ratio <= LINEAR_RATIO_BOUNDS[1]
        report["mask_layer_ratio_10k_over_1k_all_threads"] = rows["10000"]["mask_layer_ms"] / rows["1000"]["mask_layer_ms"]
    if "10000" in rows and "100000" in rows:
        report["mask_layer_ratio_100k_over_10k"] = rows["100000"][judged] / rows["10000"][judged]
    if len(rows) >= 2:
        report["mask_layer_fit"] = linear_fit([int(n) for n in rows], [r[judged] for r in rows.values()])
    largest = str(max(sizes))
    report["mask_layer_peak_mib_at_largest"] = rows[largest]["mask_layer_peak_mib"]
    report["mask_layer_peak_kib_per_unit_at_largest"] = 1024 * rows[largest]["mask_layer_peak_mib"] / max(sizes)
    if "10000" in rows and "100000" in rows and rows["10000"]["mask_layer_peak_mib"] > 0:
        report["mask_layer_peak_ratio_100k_over_10k"] = (rows["100000"]["mask_layer_peak_mib"]
                                                         / rows["10000"]["mask_layer_peak_mib"])
    report["knn_peak_mib_at_largest"] = rows[largest]["knn_peak_mib"]
    report["knn_peak_under_2_gib"] = rows[largest]["knn_peak_mib"] < KNN_PEAK_MIB_MAX
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", type=device_argument, help=DEVICE_HELP)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child-knn", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-layer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-layers", help=argparse.SUPPRESS)
    parser.add_argument("--child-layer-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steady-heap", action="store_true", help="time the mask layer with a steady heap")
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this file (stdout has progress lines too)")
    args = parser.parse_args(argv)
    if args.threads:
        use_threads(args.threads)
    if args.child_layer or args.child_layers:
        if args.steady_heap:
            steady_heap()
        device = torch.device(args.device)
        if args.child_layers:
            sizes = [int(points) for points in args.child_layers.split(",")]
            print(json.dumps(paired_mask_layer_ms(sizes, device, args.repeats)))
        else:
            print(json.dumps({"mask_layer_ms": mask_layer_ms(args.child_layer, device, args.repeats)}))
        return 0
    if args.child_knn:
        print(json.dumps(knn_child(args.child_knn, args.device)))
        return 0
    if args.child_layer_memory:
        print(json.dumps(layer_memory_child(args.child_layer_memory, args.device)))
        return 0
    text = json.dumps(run_scaling(args.device, repeats=args.repeats, hold_heap=args.steady_heap), indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
