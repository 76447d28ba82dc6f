"""The image demo's CNN on planted glyphs, mask seed by mask seed, at each keep warm-up.

``bottleneck demo image`` trains the CNN's hard-concrete mask from scratch beside the
model, so one run is one draw: the demo's own seed gave a masked accuracy of 0.991 on
one run of this machine and 0.939 on another. This script judges the recipe on several
draws of the same setting:

* data, model initialisation and batch order are the demo's at ``--seed`` (as ``run``
  draws them: ``torch.manual_seed(seed)``, then the data, then the model); every
  training run starts the batch order afresh;
* the plain model is trained once, as the demo trains it, for the reference accuracy;
* for each keep warm-up of ``--keep-warmups`` and each mask seed of ``--mask-seeds``,
  the mask is attached to the same initial weights with ``torch.manual_seed(mask_seed)``
  and trained jointly for the demo's epochs; the row holds the masked model's test
  accuracy (deterministic gates), its keep rate, and the mean per-image AUROC of its
  relevance against the class pattern's patches (the demo's ``gt_auroc``).

Each row prints and the whole run is written as JSON. Unlike ``run``, the mask's random
stream does not continue the plain run's, so no row is the demo's own run.

    python benchmarks/image_cnn_mask_seeds.py --mask-seeds 1,2,3,4 --keep-warmups 0.5,0.7 \\
        --json benchmarks/results/image_cnn_mask_seeds.json
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import bottleneck
from bottleneck_image.data import ImageSet
from bottleneck_image.demo import (
    BATCH_SIZE,
    SETTINGS,
    build_model,
    load_data,
    localisation_auroc,
    run,
)

KEEP: float = inspect.signature(run).parameters["keep"].default  # the demo's keep target


def comma_list(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type: ``"1,2,3"`` as ``[cast("1"), cast("2"), cast("3")]``."""
    return lambda text: [cast(part) for part in text.split(",") if part]


def train_loader(train_set: ImageSet, seed: int) -> Any:
    """The demo's training batches, their shuffling started afresh: every run sees the same
    batch order whatever ran before it (one shared loader's order would depend on it)."""
    return train_set.loader(BATCH_SIZE, shuffle=True, seed=seed)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per keep warm-up: runs within 2 points of plain, the lowest accuracy, the AUROC spread."""
    summary = {}
    for keep_warmup in dict.fromkeys(r["keep_warmup"] for r in rows):
        group = [r for r in rows if r["keep_warmup"] == keep_warmup]
        summary[str(keep_warmup)] = {
            "within_2_points": sum(r["within_2_points"] for r in group),
            "runs": len(group),
            "accuracy_min": min(r["accuracy_masked"] for r in group),
            "gt_auroc_median": statistics.median(r["gt_auroc"] for r in group),
            "gt_auroc_min": min(r["gt_auroc"] for r in group),
        }
    return summary


def write_results(args: argparse.Namespace, epochs: int, lr: float, accuracy_plain: float,
                  rows: list[dict[str, Any]]) -> None:
    """Print the summary so far and write the whole run to ``--json``."""
    summary = summarise(rows)
    for keep_warmup, line in summary.items():
        print(f"keep_warmup {keep_warmup}: {line['within_2_points']}/{line['runs']} within 2 points of plain, "
              f"lowest accuracy {line['accuracy_min']:.3f}, AUROC median {line['gt_auroc_median']:.3f} "
              f"(lowest {line['gt_auroc_min']:.3f})", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "seed": args.seed, "epochs": epochs, "lr": lr, "keep": KEEP, "accuracy_plain": accuracy_plain,
            "threads": torch.get_num_threads(), "rows": rows, "summary": summary,
        }, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="data, model and batch-order seed (the demo's)")
    parser.add_argument("--mask-seeds", type=comma_list(int), default=[1, 2, 3, 4])
    parser.add_argument("--keep-warmups", type=comma_list(float), default=[0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's (a smoke run: 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    settings = SETTINGS[("cnn", "planted")]
    epochs, lr = args.epochs or settings["epochs"], settings["lr"]
    torch.manual_seed(args.seed)
    train_set, test_set = load_data("planted", settings["train_size"], 1000, args.seed)
    test = test_set.loader(250)
    initial = build_model("cnn", train_set)

    plain = copy.deepcopy(initial)
    bottleneck.fit(plain, train_loader(train_set, args.seed), epochs=epochs, lr=lr, progress=True, description="plain")
    accuracy_plain = bottleneck.evaluate(plain, test)["accuracy"]
    print(f"plain accuracy {accuracy_plain:.3f}", flush=True)

    rows: list[dict[str, Any]] = []
    for mask_seed in args.mask_seeds:  # seed by seed: a cut-short run still compares warm-ups
        for keep_warmup in args.keep_warmups:
            torch.manual_seed(mask_seed)
            masked = bottleneck.attach(copy.deepcopy(initial), "image", gate="hard_concrete", keep=KEEP,
                                       keep_warmup=keep_warmup)
            started = time.perf_counter()
            bottleneck.fit(masked, train_loader(train_set, args.seed), epochs=epochs, lr=lr, progress=True,
                           description=f"warm-up {keep_warmup} seed {mask_seed}")
            dense = bottleneck.evaluate(masked, test)
            row = {
                "keep_warmup": keep_warmup, "mask_seed": mask_seed,
                "accuracy_masked": dense["accuracy"], "keep_rate": dense["keep_rate"],
                "gt_auroc": localisation_auroc(masked, test_set)["units"],
                "within_2_points": dense["accuracy"] >= accuracy_plain - 0.02,
                "seconds": time.perf_counter() - started,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(args, epochs, lr, accuracy_plain, rows)  # after every row: nothing lost
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
