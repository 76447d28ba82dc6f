"""Dense forward against ``MaskedModel.sparse`` at each keep, timed side by side, in this or a fresh process.

The bench trains its models in the process that times them. After minutes of
training that process ran the sparse paths 10-15% slower than a small process
timing the same models (PointNet x2.39 against x2.58-2.69, DGCNN x3.76 against
x4.33-4.52, 2 CPU cores): its heap and caches carry the training's state. A model
serves from a process that loads it and runs inference, so by default the bench
saves both models and the batch to a temporary file and times them in a fresh
child process (``python -m bottleneck.sparse_timing FILE``), dense and sparse
interleaved as before.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .timing import interleaved, run_child, steady_heap, use_threads
from .train import call_model


def time_sparse(dense: nn.Module, masked: nn.Module, inputs: Any, keeps: tuple[float, ...], repeats: int,
                warmup: int, device: torch.device) -> dict[str, list[float]]:
    """``{"dense": [s, ...], "0.25": [s, ...], ...}``: seconds per call, interleaved, without autograd."""
    modes: dict[str, Callable[[], Any]] = {"dense": lambda: call_model(dense, inputs)}
    for keep in keeps:
        modes[str(keep)] = lambda keep=keep: masked.sparse(inputs, keep=keep)
    with torch.no_grad():
        return interleaved(modes, repeats, warmup, device)


def time_sparse_in_child(dense: nn.Module, masked: nn.Module, inputs: Any, keeps: tuple[float, ...],
                         repeats: int, warmup: int, device: torch.device, *,
                         hold_heap: bool) -> dict[str, list[float]]:
    """:func:`time_sparse` in a fresh Python process, with this process's thread count and heap setting."""
    payload = {"dense": dense, "masked": masked, "inputs": inputs, "keeps": list(keeps), "repeats": repeats,
               "warmup": warmup, "device": str(device), "threads": torch.get_num_threads(), "hold_heap": hold_heap}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sparse_timing.pt"
        torch.save(payload, path)
        return run_child("sparse timing", "bottleneck.sparse_timing", str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("payload", help="file written by time_sparse_in_child")
    args = parser.parse_args(argv)
    payload = torch.load(args.payload, weights_only=False)  # written by this package a moment ago
    if payload["hold_heap"]:
        steady_heap()
    use_threads(payload["threads"])  # only if it differs: setting the same count slowed the ViT by 22%
    device = torch.device(payload["device"])
    times = time_sparse(payload["dense"].eval(), payload["masked"].eval(), payload["inputs"],
                        tuple(payload["keeps"]), payload["repeats"], payload["warmup"], device)
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
