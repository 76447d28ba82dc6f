"""Dense ViT forward vs the same ViT on kept patch tokens only, with and without the mask.

Builds the demo's ViT (``bottleneck_image.demo.VIT_CONFIG``: 32x32 RGB, 4x4
patches -> 64 patch tokens) with random weights (speed does not depend on the
weights) and times, under ``torch.inference_mode()``:

* ``dense``: ``model(x)`` on all 1 + 64 tokens;
* ``kept``: ``forward_on_kept_patches(model, x, kept)`` where each row keeps its
  own random top-k patches, ``k = ceil(keep * 64)``, so the encoder runs on
  1 + k tokens (the index computation and gather are inside the timing);
* ``sparse``: the whole library path, ``bottleneck.attach(model, "image").sparse(x, keep=keep)``:
  unit features, the mask's encoder and scorer, per-sample top-k, token removal
  and the model on the kept tokens.

Dense and kept repeats are interleaved so that load changes on a shared
machine hit both alike; the table gives the median and interquartile range per
call, and the speed-up is ``median(dense) / median(kept)``. Results go to JSON.

    python benchmarks/image_vit_sparse.py --device cpu --repeats 20
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
    import bottleneck_image  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "plugins"))

import bottleneck  # noqa: E402
from bottleneck.timing import add_timing_arguments, interleaved, quartiles, setup_device  # noqa: E402
from bottleneck_image.demo import VIT_CONFIG  # noqa: E402
from bottleneck_image.models import make_vit  # noqa: E402

#: ViT sizes to time: the demo's, and make_vit's default (twice as wide).
CONFIGS: dict[str, dict[str, int]] = {
    "demo": VIT_CONFIG,
    "base": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256},
}
from bottleneck_image.vit import find_patch_layout, forward_on_kept_patches  # noqa: E402


def random_topk(
    batch: int, num_patches: int, k: int, device: torch.device, seed: int
) -> torch.Tensor:
    """Bool [batch, num_patches]: each row keeps its own ``k`` highest random scores."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, num_patches, generator=g)
    kept = torch.zeros(batch, num_patches, dtype=torch.bool)
    kept.scatter_(1, scores.topk(k, dim=1).indices, True)
    return kept.to(device)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of patches kept per row")
    parser.add_argument(
        "--config", choices=sorted(CONFIGS), default="demo",
        help="demo: the ViT the image demo trains (width 64); base: make_vit's default (width 128)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/image_vit_sparse_CONFIG.json"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / f"benchmarks/results/image_vit_sparse_{args.config}.json"
    if not 0.0 < args.keep <= 1.0:
        parser.error(f"--keep must be in (0, 1], got {args.keep}")

    device = setup_device(parser, args)
    config = CONFIGS[args.config]
    model = make_vit(8, **config).to(device).eval()
    masked = bottleneck.attach(model, "image", keep=args.keep).to(device).eval()
    layout = find_patch_layout(model)
    num_patches = layout.num_patches
    k = math.ceil(args.keep * num_patches)
    x = torch.randn(args.batch, layout.num_channels, *layout.image_size, device=device)
    kept = random_topk(args.batch, num_patches, k, device, args.seed)

    with torch.inference_mode():
        dense_logits = model(x).logits
        kept_logits = forward_on_kept_patches(model, x, kept).logits
        assert kept_logits.shape == dense_logits.shape
        sparse = masked.sparse(x, keep=args.keep)
        assert sparse.removed and int(sparse.kept_counts.min()) == k
        modes: dict[str, Callable[[], Any]] = {
            "dense": lambda: model(x),
            "kept": lambda: forward_on_kept_patches(model, x, kept),
            "sparse": lambda: masked.sparse(x, keep=args.keep),
        }
        times = interleaved(modes, args.repeats, args.warmup, device)

    stats = {name: quartiles(t) for name, t in times.items()}
    ratio = stats["dense"]["median_ms"] / stats["kept"]["median_ms"]
    ratio_sparse = stats["dense"]["median_ms"] / stats["sparse"]["median_ms"]
    tokens = {"dense": 1 + num_patches, "kept": 1 + k, "sparse": 1 + k}

    print(
        f"ViT 32x32/4 ({num_patches} patches), batch {args.batch}, keep {args.keep} (k={k}), "
        f"device {device}, threads {torch.get_num_threads()}, repeats {args.repeats}"
    )
    print(f"{'mode':<12}{'tokens':>8}{'median ms':>12}{'IQR ms':>10}")
    for name, s in stats.items():
        print(f"{name:<12}{tokens[name]:>8}{s['median_ms']:>12.2f}{s['iqr_ms']:>10.2f}")
    print(f"speed-up dense / kept (model only): {ratio:.2f}x")
    print(f"speed-up dense / sparse (with the mask): {ratio_sparse:.2f}x")

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
            "model": f"make_vit(8, **{config}), sdpa",
            "config": args.config,
            "attn_implementation": model.config._attn_implementation,
            "batch": args.batch,
            "keep": args.keep,
            "k": k,
            "num_patches": num_patches,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
        },
        "tokens": {name: tokens[name] for name in stats},
        "timings": stats,
        "raw_ms": {name: [1e3 * t for t in ts] for name, ts in times.items()},
        "speedup_dense_over_kept": ratio,
        "speedup_dense_over_sparse": ratio_sparse,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
