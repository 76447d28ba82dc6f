"""Dense BERT forward vs the same BERT on kept tokens only (dropped and re-packed).

Builds ``make_bert(1000, 2)`` (default config: width 128, 2 layers, 4 heads,
sdpa) with random weights (speed does not depend on the weights), a batch of
random token ids with every token real, and per-row random kept tokens,
``k = ceil(keep * length)`` per row with the first token (CLS) always among
them. Times, under ``torch.inference_mode()``:

* ``dense``: ``model(input_ids, attention_mask=ones)`` on all ``length`` tokens;
* ``masked``: ``model(input_ids, attention_mask=kept)``, the dropped tokens hidden
  by the attention mask (what training does; dense cost plus a mask);
* ``packed``: ``forward_packed(model, pack_kept(input_ids, ones, kept))``: the
  dropped tokens are removed and each row re-packed, so the encoder runs on
  ``k`` tokens (the packing is inside the timing).

``packed`` and ``masked`` give the same logits; their largest difference is
recorded. Modes are interleaved so that load changes on a shared machine hit
all alike; the table gives the median and interquartile range per call, and
the speed-up is ``median(dense) / median(packed)``. Results go to JSON.

    python benchmarks/text_bert_sparse.py --device cpu --repeats 20
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import bottleneck_text  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "plugins"))

import bottleneck  # noqa: E402
from bottleneck.timing import add_timing_arguments, interleaved, quartiles, setup_device  # noqa: E402
from bottleneck_text.demo import BERT_CONFIG  # noqa: E402
from bottleneck_text.models import make_bert  # noqa: E402
from bottleneck_text.shorten import forward_packed, pack_kept  # noqa: E402


def random_kept(batch: int, length: int, k: int, device: torch.device, seed: int) -> torch.Tensor:
    """Bool [batch, length]: the first token plus each row's own ``k - 1`` random others."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, length, generator=g)
    scores[:, 0] = 2.0  # above any random score: CLS is always kept
    kept = torch.zeros(batch, length, dtype=torch.bool)
    kept.scatter_(1, scores.topk(k, dim=1).indices, True)
    return kept.to(device)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per row (<= 256)")
    parser.add_argument("--keep", type=float, default=0.3, help="fraction of tokens kept per row")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks/results/text_bert_sparse.json",
        help="default benchmarks/results/text_bert_sparse.json",
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.keep <= 1.0:
        parser.error(f"--keep must be in (0, 1], got {args.keep}")
    if not 2 <= args.length <= 256:
        parser.error(f"--length must be in [2, 256] (make_bert's max_position), got {args.length}")

    device = setup_device(parser, args)
    model = make_bert(1000, 2, **BERT_CONFIG).to(device).eval()
    masked = bottleneck.attach(model, "text", keep=args.keep).to(device).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(1, vocab, (args.batch, args.length), generator=g).to(device)
    ones = torch.ones_like(ids)
    k = max(1, math.ceil(args.keep * args.length))
    kept = random_kept(args.batch, args.length, k, device, args.seed)
    kept_mask = kept.long()

    with torch.inference_mode():
        packed = pack_kept(ids, ones, kept)
        assert packed.input_ids.shape == (args.batch, k)
        masked_logits = model(ids, attention_mask=kept_mask).logits
        packed_logits = forward_packed(model, packed).logits
        max_abs_diff = float((packed_logits - masked_logits).abs().max())
        modes: dict[str, Callable[[], Any]] = {
            "dense": lambda: model(ids, attention_mask=ones),
            "masked": lambda: model(ids, attention_mask=kept_mask),
            "packed": lambda: forward_packed(model, pack_kept(ids, ones, kept)),
            "sparse": lambda: masked.sparse({"input_ids": ids, "attention_mask": ones}, keep=args.keep),
        }
        times = interleaved(modes, args.repeats, args.warmup, device)

    stats = {name: quartiles(t) for name, t in times.items()}
    ratio = stats["dense"]["median_ms"] / stats["packed"]["median_ms"]
    ratio_masked = stats["masked"]["median_ms"] / stats["packed"]["median_ms"]
    ratio_sparse = stats["dense"]["median_ms"] / stats["sparse"]["median_ms"]
    tokens = {"dense": args.length, "masked": args.length, "packed": k, "sparse": k}

    print(
        f"BERT {model.config.hidden_size}x{model.config.num_hidden_layers} layers, "
        f"batch {args.batch}, length {args.length}, keep {args.keep} (k={k}), "
        f"device {device}, threads {torch.get_num_threads()}, repeats {args.repeats}"
    )
    print(f"{'mode':<12}{'tokens':>8}{'median ms':>12}{'IQR ms':>10}")
    for name, s in stats.items():
        print(f"{name:<12}{tokens[name]:>8}{s['median_ms']:>12.2f}{s['iqr_ms']:>10.2f}")
    print(f"speed-up dense / packed: {ratio:.2f}x (masked / packed: {ratio_masked:.2f}x)")
    print(f"speed-up dense / whole sparse path (mask + packed model): {ratio_sparse:.2f}x")
    print(f"max |logits(packed) - logits(masked)|: {max_abs_diff:.2e}")

    import transformers

    result = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "settings": {
            "model": f"make_bert(1000, 2, **{BERT_CONFIG}), sdpa",
            "hidden_size": model.config.hidden_size,
            "num_layers": model.config.num_hidden_layers,
            "attn_implementation": model.config._attn_implementation,
            "batch": args.batch,
            "length": args.length,
            "keep": args.keep,
            "k": k,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
        },
        "tokens": tokens,
        "timings": stats,
        "raw_ms": {name: [1e3 * t for t in ts] for name, ts in times.items()},
        "speedup_dense_over_packed": ratio,
        "speedup_masked_over_packed": ratio_masked,
        "speedup_dense_over_sparse": ratio_sparse,
        "max_abs_diff_packed_vs_masked": max_abs_diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
