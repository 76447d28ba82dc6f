"""``bottleneck demo text``: a BiLSTM or a small BERT, plain vs jointly masked, on embedded text.

Trains the same model (same initial weights) plain and with the default
hard-concrete mask over tokens, then measures test accuracy (plain, masked,
sparse at the keep target — dropped tokens removed and each sequence re-packed
shorter), the keep rate, and how well the relevance finds the planted evidence
words (token AUROC). Writes ``report.json``, an HTML page of highlighted
tokens and the trained mask, and prints a few highlighted sentences.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bottleneck
from bottleneck.demo import Demo, count_or_default, write_report
from bottleneck.errors import BottleneckError
from bottleneck.metrics import mean_auroc

from .data import TextSet, build_tokenizer, encode, make_counting, make_planted_sentiment
from .models import BiLSTMClassifier, make_bert
from .render import ansi_line

MODELS = ("bilstm", "bert")
DATASETS = ("planted", "counting")
MAX_LENGTH = 64
#: Per model: epochs and learning rate.
SETTINGS: dict[str, dict[str, Any]] = {
    "bilstm": {"epochs": 6, "lr": 3e-3},
    "bert": {"epochs": 6, "lr": 1e-3},
}
#: The small BERT (``make_bert`` defaults, positions up to 128); ``benchmarks/text_bert_sparse.py``
#: times this one at batch 32, length 128.
BERT_CONFIG: dict[str, int] = {"hidden_size": 128, "num_layers": 2, "num_heads": 4,
                               "intermediate_size": 256, "max_position": 128}


def build_model(kind: str, vocab_size: int, num_classes: int) -> nn.Module:
    """The reference model ``kind`` for a vocabulary of ``vocab_size``."""
    if kind == "bilstm":
        return BiLSTMClassifier(vocab_size, num_classes)
    if kind == "bert":
        return make_bert(vocab_size, num_classes, **BERT_CONFIG)
    raise BottleneckError(f"--model must be one of {list(MODELS)} (got {kind!r})")


def load_data(name: str, train_size: int, test_size: int, seed: int) -> tuple[TextSet, TextSet]:
    """Train and test sets of the embedded corpus ``name``."""
    if name == "planted":
        return make_planted_sentiment(train_size, seed=seed), make_planted_sentiment(test_size, seed=seed + 1)
    if name == "counting":
        return make_counting(train_size, seed=seed), make_counting(test_size, seed=seed + 1)
    raise BottleneckError(f"--data must be one of {list(DATASETS)} (got {name!r})")


@torch.no_grad()
def token_auroc(masked: bottleneck.MaskedModel, encoded: dict[str, torch.Tensor], batch_size: int = 250) -> float:
    """Mean per-sequence AUROC of the relevance against the planted evidence tokens (units only)."""
    device = next(masked.parameters()).device
    scores, truth, batches, offset = [], [], [], 0
    for start in range(0, encoded["input_ids"].shape[0], batch_size):
        part = {k: encoded[k][start:start + batch_size].to(device) for k in ("input_ids", "attention_mask")}
        explanation = masked.explain(part)
        units = explanation.units
        evidence = encoded["evidence"][start:start + batch_size].to(device)
        scores.append(explanation.relevance.cpu())
        truth.append(evidence[units.meta["rows"], units.meta["cols"]].cpu())
        batches.append(units.batch.cpu() + offset)
        offset += units.num_samples
    return mean_auroc(torch.cat(scores), torch.cat(truth), torch.cat(batches), offset)


def run(
    out_dir: Path, *, device: str = "cpu", quick: bool = False, model: str = "bilstm", data: str = "planted",
    epochs: int | None = None, keep: float = 0.3, train_size: int | None = None, gate: str = "hard_concrete",
    progress: bool = True, seed: int = 0,
) -> dict[str, Any]:
    """Run the demo and write ``out_dir/report.json``, ``tokens.html`` and the mask; returns the report."""
    if model not in MODELS:
        raise BottleneckError(f"--model must be one of {list(MODELS)} (got {model!r})")
    started = time.perf_counter()
    torch.manual_seed(seed)
    dev = torch.device(device)
    settings = SETTINGS[model]
    epochs = count_or_default(epochs, 2 if quick else settings["epochs"], "epochs")
    train_size = count_or_default(train_size, 400 if quick else 2000, "train_size")
    lr = settings["lr"]
    train_set, test_set = load_data(data, train_size, 200 if quick else 1000, seed)
    tokenizer = build_tokenizer(train_set.texts)
    train = train_set.loader(tokenizer, batch_size=32, shuffle=True, seed=seed, max_length=MAX_LENGTH)
    test = test_set.loader(tokenizer, batch_size=250, max_length=MAX_LENGTH)

    initial = build_model(model, len(tokenizer), train_set.num_classes)
    plain = copy.deepcopy(initial).to(dev)
    start = time.perf_counter()
    bottleneck.fit(plain, train, epochs=epochs, lr=lr, device=dev, progress=progress, description="plain")
    plain_seconds = time.perf_counter() - start
    accuracy_plain = bottleneck.evaluate(plain, test)["accuracy"]

    special = list(tokenizer.all_special_ids)
    masked = bottleneck.attach(copy.deepcopy(initial), "text", gate=gate, keep=keep, special_ids=special,
                               placeholder_id=tokenizer.mask_token_id).to(dev)
    start = time.perf_counter()
    bottleneck.fit(masked, train, epochs=epochs, lr=lr, device=dev, progress=progress, description=gate)
    masked_seconds = time.perf_counter() - start
    dense = bottleneck.evaluate(masked, test)
    sparse = bottleneck.evaluate(masked, test, sparse=True, sparse_keep=keep)
    encoded = encode(tokenizer, test_set, max_length=MAX_LENGTH)
    auroc = token_auroc(masked, encoded) if encoded.get("evidence") is not None else None

    report: dict[str, Any] = {
        "modality": "text",
        "model": type(masked.model).__name__,
        "accuracy_plain": accuracy_plain,
        "accuracy_masked": dense["accuracy"],
        "accuracy_sparse": sparse["accuracy"],
        "keep_rate": dense["keep_rate"],
        "gt_auroc": auroc,
        "seconds": 0.0,
        "data": data,
        "gate": gate,
        "keep_target": keep,
        "baseline": masked.baseline,
        "details": {
            "expected_keep_rate": dense["expected_keep_rate"],
            "sparse_keep_rate": sparse["keep_rate"],
            "plain_train_seconds": plain_seconds,
            "masked_train_seconds": masked_seconds,
        },
        "settings": {"epochs": epochs, "train_size": len(train_set), "test_size": len(test_set),
                     "vocab_size": len(tokenizer), "max_length": MAX_LENGTH, "lr": lr, "device": str(dev),
                     "quick": quick, "seed": seed},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = {k: encoded[k][:8].to(dev) for k in ("input_ids", "attention_mask")}
    explanation = masked.explain(sample)
    kept = masked.sparse(sample, keep=keep).kept
    with torch.no_grad():
        predictions = bottleneck.train._logits_of(masked(sample).output).argmax(-1).tolist()
    labels = test_set.labels[:8].tolist()
    captions = [f"label {test_set.class_names[y]}, masked model says {test_set.class_names[p]}"
                for y, p in zip(labels, predictions, strict=True)]
    evidence = encoded.get("evidence")
    report["renders"] = [p.name for p in explanation.render(
        out_dir, tokenizer=tokenizer, kept=kept, captions=captions,
        evidence=None if evidence is None else evidence[:8])]
    if progress:
        adapter = explanation.modality
        for (words, values, _), (_, kept_values, _) in zip(
            adapter.token_rows(explanation.units, explanation.relevance, tokenizer)[:4],
            adapter.token_rows(explanation.units, kept.float()), strict=False,
        ):
            print(ansi_line(words, values, [v > 0.5 for v in kept_values]))
    bottleneck.save_mask(masked, out_dir / "mask.safetensors", include_model=True)
    report["seconds"] = time.perf_counter() - started
    write_report(out_dir, report)
    return report


DEMO = Demo(
    name="text",
    run=run,
    help="a BiLSTM or small BERT on an embedded planted-word corpus: plain vs jointly masked",
    options={
        "model": (str, "bilstm", "reference model: bilstm (plain torch) or bert (transformers config)"),
        "data": (str, "planted", "embedded corpus: planted (evidence words, ground truth) or counting"),
        "epochs": (int, None, "training epochs per model (default 6, or 2 with --quick)"),
        "keep": (float, 0.3, "target fraction of tokens kept"),
        "train_size": (int, None, "training sentences (default 2000, or 400 with --quick)"),
        "gate": (str, "hard_concrete", "gate of the mask"),
    },
)
