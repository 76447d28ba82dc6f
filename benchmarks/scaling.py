"""How the mask layer and the kNN scale with the units per sample (1k, 10k, 100k points).

For each size, one sample of random points:

* ``mask_layer_ms``: one training step of :class:`~bottleneck.layer.MaskLayer` (scorer,
  hard-concrete gates, objective; forward and backward), median of ``--repeats`` calls;
  the cost should grow linearly with the units (the 10k/1k ratio near 10);
* ``knn_ms`` and ``knn_peak_mib``: :func:`bottleneck.neighbors.knn_graph` (k=16, the pure-torch
  chunked path unless torch_cluster imports). Peak memory is measured in a fresh child
  process: the rise of its peak resident set size (``ru_maxrss``) over the level after
  the points were made, so it counts every allocation of the call (CPU), or
  ``torch.cuda.max_memory_allocated`` on CUDA. A dense ``N x N`` float distance matrix
  would need 37 GiB at 100k points; the chunked kNN must stay under 2 GiB.

    python benchmarks/scaling.py --json benchmarks/results/scaling_cpu.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from bottleneck.layer import MaskLayer
from bottleneck.neighbors import HAS_TORCH_CLUSTER, knn_graph
from bottleneck.timing import time_call
from bottleneck.units import Units

SIZES = (1_000, 10_000, 100_000)
K = 16


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def knn_child(points: int, device: str) -> dict[str, float]:
    """Run in a fresh process: time and peak memory of one kNN graph over ``points`` points."""
    dev = torch.device(device)
    pos = torch.rand(points, 3, generator=torch.Generator().manual_seed(0)).to(dev)
    knn_graph(pos[:64], K)  # warm-up on a tiny input (kernels, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _peak_rss_mib()
    seconds = time_call(lambda: knn_graph(pos, K), dev)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = _peak_rss_mib() - before
    return {"knn_ms": 1000 * seconds, "knn_peak_mib": peak}


def mask_layer_ms(points: int, device: torch.device, repeats: int) -> float:
    """Median time of one forward + backward pass of the mask layer on one sample of ``points`` units."""
    torch.manual_seed(0)
    layer = MaskLayer("hard_concrete", keep=0.3, in_features=3, smooth_weight=0.0).to(device)
    units = Units(x=torch.randn(points, 3, device=device), batch=torch.zeros(points, dtype=torch.long, device=device),
                  num_samples=1)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(units).loss.backward()

    step()  # warm-up
    times = sorted(time_call(step, device) for _ in range(repeats))
    return 1000 * times[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child-knn", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_knn:
        print(json.dumps(knn_child(args.child_knn, args.device)))
        return 0
    device = torch.device(args.device)
    rows: dict[str, dict[str, float]] = {}
    for points in SIZES:
        child = subprocess.run([sys.executable, __file__, "--child-knn", str(points), "--device", args.device],
                               check=True, capture_output=True, text=True)
        rows[str(points)] = {"mask_layer_ms": mask_layer_ms(points, device, args.repeats),
                             **json.loads(child.stdout.strip().splitlines()[-1])}
        print(f"{points:>7} units: mask layer {rows[str(points)]['mask_layer_ms']:.2f} ms, "
              f"kNN {rows[str(points)]['knn_ms']:.0f} ms, kNN peak {rows[str(points)]['knn_peak_mib']:.0f} MiB",
              flush=True)
    ratio = rows["10000"]["mask_layer_ms"] / rows["1000"]["mask_layer_ms"]
    report = {
        "scaling": rows,
        "mask_layer_ratio_10k_over_1k": ratio,
        "mask_layer_linear_8_to_12": 8.0 <= ratio <= 12.0,
        "knn_peak_under_2_gib_at_100k": rows["100000"]["knn_peak_mib"] < 2048,
        "settings": {"device": str(device), "k": K, "torch_cluster": HAS_TORCH_CLUSTER, "repeats": args.repeats,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "scaling"}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
