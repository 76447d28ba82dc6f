"""BERT's joint fine-tune recipe, seed by seed: the sparse accuracy each recipe gives at keep 0.25.

The speed bench's BERT mask is fine-tuned jointly with the model from a trained dense
BERT (``bottleneck_text.speed``). Whether that run finds the planted evidence or
collapses to chance depends on the seed, so a recipe is judged here on several seeds,
each from the same cached dense model:

* the dense BERT of each seed is trained once (the bench's sizes and settings) and
  cached in ``--cache``;
* the mask is attached as the bench attaches it (top-k gates, attention gates unless
  ``--hidden``), with ``torch.manual_seed(seed + 100)``, and fine-tuned jointly for
  ``--joint-epochs`` at the model's rate, the mask at ``--mask-lr-scale`` times it,
  optionally distilling from the dense model (``--distill``);
* as the bench does, the run returns to its best epoch by sparse accuracy on the
  held-out sentences, from the second half of the joint epochs on.

Each seed prints and appends one JSON line: the sparse accuracy at keep 0.25 on the
test sentences, the masked model's own accuracy (its deterministic gates, closed
tokens hidden) and the dense accuracy. Unlike the bench, the dense reference is not
trained on, and the mask's seed is not the dense run's random stream.

    python benchmarks/text_bert_recipe.py --seeds 0,1,2,3,4 --mask-lr-scale 10 --joint-epochs 6
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bottleneck.checkpoint import BestOnValidation
from bottleneck.distill import DenseTeacher
from bottleneck.speed import TARGET_KEEP, SpeedCase
from bottleneck.train import evaluate, fit
from bottleneck.wrap import attach
from bottleneck_text.speed import prepare_speed


def dense_model(case: SpeedCase, seed: int, cache: Path) -> torch.nn.Module:
    """The dense BERT of ``seed``, trained as the bench trains it, or loaded from ``cache``."""
    torch.manual_seed(seed)
    model = case.make_model()
    path = cache / f"bert_dense_seed{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
    else:
        # the joint run's batch order must not depend on whether this model came from the
        # cache: a first run, training it here, drew other orders than the runs after it
        # (seeds 0-4 gave 0.984, 1.000, 1.000, 0.500, 0.844 against 0.990, 1.000, 1.000,
        # 0.955, 1.000 from the cache, same code). The published figures are the cached kind.
        # The joint runs of one command share the shuffling generator, so a seed's order also
        # depends on the seeds before it: the figures are of ``--seeds 0,1,2,3,4``. Trained
        # again, seed 0's model matched the cached one to the bit three times and once was up
        # to 4e-5 apart (2 threads); its joint run then ended at 0.936 instead of 1.000.
        shuffle = getattr(getattr(case.train, "sampler", None), "generator", None)
        state = shuffle.get_state() if shuffle is not None else None
        fit(model, case.train, epochs=case.epochs, lr=case.lr, progress=False)
        if shuffle is not None:
            shuffle.set_state(state)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def run_seed(case: SpeedCase, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One joint fine-tune from the cached dense model of ``seed``; its accuracies."""
    dense = dense_model(case, seed, args.cache)
    torch.manual_seed(seed + 100)
    options = {**case.attach_options, **case.joint_options}
    if args.hidden:
        options["attention_gates"] = False
    if args.keep_warmup is not None:
        options["keep_warmup"] = args.keep_warmup
    if args.attention_gradient_share is not None:
        options["attention_gradient_share"] = args.attention_gradient_share
    masked = attach(copy.deepcopy(dense), case.modality, keep=TARGET_KEEP, **options)
    teacher = DenseTeacher(dense, weight=args.distill) if args.distill else None
    first = min(math.ceil(case.select_from * args.joint_epochs), args.joint_epochs - 1)
    pick = BestOnValidation(masked, case.validation, sparse_keep=TARGET_KEEP, start_epoch=first)
    clip = case.joint_max_grad_norm if args.max_grad_norm is None else args.max_grad_norm
    model_lr, mask_lr = args.model_lr_scale * case.joint_lr, args.mask_lr_scale * case.joint_lr
    start = time.perf_counter()
    if args.mask_first_epochs:  # the mask alone on the frozen model (rate 0); the keep warm-up runs in both fits
        fit(masked, case.train, epochs=args.mask_first_epochs, lr=0.0, mask_lr=mask_lr, progress=False)
    if args.warmup_distill:  # the budget falls over a first fit that distils from the dense model
        warm = max(1, round(masked.mask.keep_warmup * args.joint_epochs))
        masked.mask.keep_warmup = 0.99
        fit(masked, case.train, epochs=warm, lr=model_lr, mask_lr=mask_lr, progress=False,
            penalty=DenseTeacher(dense, weight=args.warmup_distill), max_grad_norm=clip)
        masked.mask.keep_warmup = 0.0
        masked.mask.anneal(1.0)
        pick.start_epoch = max(0, pick.start_epoch - warm)
        epochs_left = args.joint_epochs - warm
    else:
        epochs_left = args.joint_epochs
    history = fit(masked, case.train, epochs=epochs_left, lr=model_lr, mask_lr=mask_lr, progress=False,
                  penalty=teacher,
                  max_grad_norm=clip, on_epoch=pick)
    pick.restore()
    masked.eval()
    return {"seed": seed, "mask_lr_scale": args.mask_lr_scale, "model_lr_scale": args.model_lr_scale,
            "mask_first_epochs": args.mask_first_epochs, "warmup_distill": args.warmup_distill,
            "max_grad_norm": clip, "joint_epochs": args.joint_epochs,
            "distill": args.distill, "attention_gates": not args.hidden, "keep_warmup": masked.mask.keep_warmup,
            "attention_gradient_share": options.get("attention_gradient_share", 1.0),
            "sparse_accuracy": evaluate(masked, case.test, sparse=True, sparse_keep=TARGET_KEEP)["accuracy"],
            "masked_accuracy": evaluate(masked, case.test)["accuracy"],
            "dense_accuracy": evaluate(dense, case.test)["accuracy"],
            "task_loss_per_epoch": [round(epoch.get("task", float("nan")), 4) for epoch in history.epochs],
            "grad_norm_per_epoch": [round(epoch.get("grad_norm", float("nan")), 2) for epoch in history.epochs],
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--mask-lr-scale", type=float, default=10.0, help="the mask's rate over the model's")
    parser.add_argument("--joint-epochs", type=int, default=6)
    parser.add_argument("--distill", type=float, default=0.0, help="DenseTeacher weight (0: none)")
    parser.add_argument("--model-lr-scale", type=float, default=1.0,
                        help="the model's rate in the joint run over the bench's (the mask's stays at --mask-lr-scale)")
    parser.add_argument("--mask-first-epochs", type=int, default=0,
                        help="epochs of the mask alone on the frozen dense model before the joint run")
    parser.add_argument("--max-grad-norm", type=float, default=None,
                        help="clip the joint run's gradient norm here (default: the bench's)")
    parser.add_argument("--warmup-distill", type=float, default=0.0,
                        help="distil from the dense model at this weight while the budget falls, then stop "
                             "(the task losses reported are those of the epochs after)")
    parser.add_argument("--keep-warmup", type=float, default=None,
                        help="lower the top-k budget to keep 0.25 over this fraction of the run "
                             "(default: the text modality's, 0.5)")
    parser.add_argument("--hidden", action="store_true", help="closed tokens hidden, not attention-gated")
    parser.add_argument("--attention-gradient-share", type=float, default=None,
                        help="share of each batch's texts whose gates get their gradient per attention layer "
                             "(default: the bench case's)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bottleneck" / "bert_recipe",
                        help="where the dense models are kept between runs")
    parser.add_argument("--json", type=Path, help="append one JSON line per seed here")
    args = parser.parse_args(argv)
    case = {c.name: c for c in prepare_speed(quick=False)}["BERT"]
    for seed in (int(s) for s in args.seeds.split(",")):
        line = json.dumps(run_seed(case, seed, args))
        print(line, flush=True)
        if args.json:
            with args.json.open("a") as out:
                out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
