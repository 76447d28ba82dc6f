"""What the attention gates' gradient costs a training step, by ``attention_gradient_share``.

The speed bench's ViT and BERT train their masks through their attention
(:mod:`bottleneck.key_bias_attention`): each key's gate gets its gradient from two
matrix products per head, computed in the backward pass. With
``attention_gradient_share=s`` each attention layer computes it for a drawn run of
that share of the batch's samples, scaled to stay unbiased. This script times, side
by side in one process (interleaved rounds, medians), on the bench's own timing
batches and models (random weights: the work does not depend on them):

* ``plain``: a training step (forward, backward, Adam) of the model alone;
* ``share <s>``: the jointly masked model's step at each share;
* ``no gate gradient``: the masked step with the gate gradient replaced by zeros
  (what the gradient costs on top of the rest of the mask; never used for training).

Each masked step's ``ratio`` is its median over the plain step's, as the bench's
``train_overhead``. The ViT is timed as the bench times it (hard-concrete gates), BERT
with the top-k gate its attention gates need. Prints a table and writes JSON::

    python benchmarks/attention_gradient_share.py --json benchmarks/results/attention_gradient_share_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import bottleneck.key_bias_attention as key_bias
from bottleneck.speed import SpeedCase, _masked_step, _plain_step
from bottleneck.timing import add_timing_arguments, interleaved, setup_device, steady_heap
from bottleneck.train import _to
from bottleneck.wrap import attach

SHARES = (1.0, 0.5, 0.25, 0.125)


def bench_cases() -> list[SpeedCase]:
    """The speed bench's ViT and BERT, with the smallest training sets (never trained here)."""
    from bottleneck_image.speed import prepare_speed as image_cases
    from bottleneck_text.speed import prepare_speed as text_cases

    cases = [*image_cases(quick=True, vit_epochs=1, joint_epochs=1, test_size=64),
             *text_cases(quick=True, train_size=64, test_size=32, epochs=1, joint_epochs=1)]
    return [case for case in cases if case.name in ("ViT", "BERT")]


@contextmanager
def no_gate_gradient() -> Iterator[None]:
    """The per-key bias gradient replaced by zeros of its shape, for the block."""
    exact = key_bias._floor_bias_gradient

    def zeros(grad_out: torch.Tensor, out: torch.Tensor, key_bias_: torch.Tensor, query: torch.Tensor,
              key: torch.Tensor, *_: Any) -> torch.Tensor:
        return query.new_zeros(query.shape[0], query.shape[1], key.shape[2], dtype=torch.float32)

    key_bias._floor_bias_gradient = zeros
    try:
        yield
    finally:
        key_bias._floor_bias_gradient = exact


def time_case(case: SpeedCase, device: torch.device, shares: tuple[float, ...], repeats: int,
              warmup: int) -> dict[str, Any]:
    """Plain step, masked step at each share and without the gate gradient: medians and ratios."""
    inputs, targets = _to(case.batch, device)
    plain = case.make_model().to(device).train()
    modes: dict[str, Callable[[], None]] = {"plain": _stepper(plain, inputs, targets, masked=False)}
    for share in shares:
        options = {**case.attach_options, "attention_gradient_share": share}
        masked = attach(case.make_model(), case.modality, **options).to(device).train()
        masked(inputs)  # lazily sized layers
        modes[f"share {share:g}"] = _stepper(masked, inputs, targets, masked=True)
    exact = attach(case.make_model(), case.modality, **{**case.attach_options, "attention_gradient_share": 1.0})
    exact = exact.to(device).train()
    exact(inputs)
    step = _stepper(exact, inputs, targets, masked=True)

    def without_gradient() -> None:
        with no_gate_gradient():
            step()

    modes["no gate gradient"] = without_gradient
    times = interleaved(modes, repeats, warmup, device)
    plain_ms = 1000 * statistics.median(times["plain"])
    return {name: {"median_ms": 1000 * statistics.median(t), "min_ms": 1000 * min(t),
                   "ratio": 1000 * statistics.median(t) / plain_ms} for name, t in times.items()}


def _stepper(model: torch.nn.Module, inputs: Any, targets: torch.Tensor, *, masked: bool) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _masked_step if masked else _plain_step
    return lambda: step(model, optimizer, inputs, targets)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser)
    parser.add_argument("--shares", default=",".join(f"{s:g}" for s in SHARES), help="comma-separated, in (0, 1]")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.repeats == 30:  # the shared default; these steps are longer, and the bench's own count is 31
        args.repeats = 21
    device = setup_device(parser, args)
    heap = steady_heap() if device.type == "cpu" else None
    shares = tuple(float(s) for s in args.shares.split(","))
    figures = {}
    for case in bench_cases():
        figures[case.name] = time_case(case, device, shares, args.repeats, args.warmup)
        print(f"\n{case.name} (median ms, ratio to the plain step):")
        for name, row in figures[case.name].items():
            print(f"  {name:18s} {row['median_ms']:7.2f} ms  x{row['ratio']:.3f}")
    result = {"device": str(device), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
              "warmup": args.warmup, "heap": heap, "shares": list(shares), "figures": figures}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
