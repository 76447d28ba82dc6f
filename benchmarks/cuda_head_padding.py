"""BERT's masked training step with the key-bias heads padded for CUDA's fused attention, and without.

The attention gates fold each key's gate bias into one extra head column
(:mod:`bottleneck.key_bias_attention`), so BERT's 32-wide heads become 33. On CUDA
the fused attention kernels want a multiple of 8, and an unpadded 33 fell back to
the math path (separate softmax kernels); :data:`~bottleneck.key_bias_attention.CUDA_HEAD_MULTIPLE`
pads the heads with zero columns. This script times the speed bench's BERT (random
weights) masked training step both ways against the plain step, interleaved, on the
bench's batch repeated ``--times`` times, checks the two give the same logits, and
names the attention kernels each runs. Prints one JSON line per size and writes them::

    python benchmarks/cuda_head_padding.py --times 1,16,256 --json head_padding.json

Measured on an H200 (2026-11-30, with this script's first form, which also compared the gradients:
they agreed to rounding, median relative difference 2e-5): 8,192 sentences, step 120.6 ms unpadded against
115.4 ms padded (plain 89.8 ms: overhead 1.34 against 1.28); no difference at 32
and 512 sentences, where launches, not kernels, take the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import bottleneck.key_bias_attention as key_bias
from bottleneck.timing import interleaved
from bottleneck.train import _to, call_model
from bottleneck.wrap import _logits_of, attach

sys.path.insert(0, str(Path(__file__).parent))
from launch_profile import bench_cases, repeated  # noqa: E402

#: Substrings of the kernel names that do attention work.
ATTENTION_KERNELS = ("fmha", "flash", "attention", "softmax", "efficient")


#: The library's padding, restored after each unpadded step.
PADDED_MULTIPLE = key_bias.CUDA_HEAD_MULTIPLE


def _set_padding(pad: bool) -> None:
    key_bias.CUDA_HEAD_MULTIPLE = PADDED_MULTIPLE if pad else None


def _attention_kernels(step: Callable[[], None], device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
    return sorted({e.name[:90] for e in prof.events()
                   if e.device_type.name == "CUDA" and any(k in e.name.lower() for k in ATTENTION_KERNELS)})


def compare(times: int, device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Plain, unpadded and padded steps of BERT on its timing batch repeated ``times`` times."""
    case = next(c for c in bench_cases() if c.name == "BERT")
    torch.manual_seed(0)
    inputs, targets = _to((repeated(case.batch[0], times), case.batch[1].repeat(times)), device)
    masked = attach(case.make_model(), case.modality, **case.attach_options).to(device).train()
    plain = case.make_model().to(device).train()
    masked(inputs)  # lazily sized layers

    def masked_step(model: torch.nn.Module, pad: bool) -> Callable[[], Any]:
        def step() -> Any:
            _set_padding(pad)
            model.zero_grad(set_to_none=True)
            out = model(inputs)
            (F.cross_entropy(_logits_of(out.output), targets) + out.ib_loss).backward()
            return _logits_of(out.output).detach()
        return step

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(_logits_of(call_model(plain, inputs)), targets).backward()

    logits = {}
    for pad in (False, True):  # a copy each way: a training pass moves the keep-rate multiplier
        torch.manual_seed(1)
        logits[pad] = masked_step(copy.deepcopy(masked), pad)()
    kernels = {("padded" if pad else "unpadded"): _attention_kernels(masked_step(masked, pad), device)
               for pad in (False, True)}
    timed = interleaved({"plain": plain_step, "unpadded": masked_step(masked, False),
                         "padded": masked_step(masked, True)}, repeats, warmup, device)
    _set_padding(True)
    ms = {name: 1000 * statistics.median(values) for name, values in timed.items()}
    return {"samples": case.batch[1].numel() * times, **{f"{name}_ms": value for name, value in ms.items()},
            "overhead_unpadded": ms["unpadded"] / ms["plain"], "overhead_padded": ms["padded"] / ms["plain"],
            "logit_rel_err": ((logits[True] - logits[False]).norm() / logits[False].norm()).item(),
            "kernels": kernels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--times", default="1,16,256", help="batch repeats, comma-separated")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for times in (int(t) for t in args.times.split(",")):
        rows.append(compare(times, device, args.repeats, args.warmup))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows},
                                            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
