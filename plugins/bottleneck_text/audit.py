"""The text setting of ``bottleneck audit``: a BiLSTM on the planted-word corpus with a planted-word cue.

A few lexicon words decide the label; the cue (a made-up word per class, inserted
at a random place) agrees with the label in ``correlation`` of the training
sentences. Units are tokens; the cue word's tokens are the cue units.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottleneck.bias_audit import AuditData, FlaggedBatch
from bottleneck.cue_setting import CueSetting
from bottleneck.cues import Cue, Planted, assign_cues
from bottleneck.explanation import Explanation
from bottleneck.plugins import get_cue

from .data import TextSet, build_tokenizer, encode, make_planted_sentiment
from .demo import MAX_LENGTH, build_model
from .testbed import token_truth

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 2000, "test_size": 256, "epochs": 4},
    False: {"train_size": 3000, "test_size": 1000, "epochs": 6},
}
BATCH_SIZE = 32


def encode_flagged(tokenizer: Any, planted: Planted, labels: Tensor) -> dict[str, Tensor]:
    """Token ids, attention mask, labels and token-level cue flags of a planted set of sentences."""
    texts = planted.inputs.texts if isinstance(planted.inputs, TextSet) else planted.inputs
    words = [planted.flags[i, : len(text.split())].tolist() for i, text in enumerate(texts)]
    marked = TextSet(list(texts), labels.clone(), words, [str(c) for c in range(int(labels.max()) + 1)], "cue")
    encoded = encode(tokenizer, marked, max_length=MAX_LENGTH)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "labels": encoded["labels"], "flags": encoded["evidence"]}


def _chunks(encoded: dict[str, Tensor], order: Tensor, size: int) -> Iterator[FlaggedBatch]:
    for start in range(0, order.numel(), size):
        rows = order[start:start + size]
        mask = encoded["attention_mask"][rows]
        width = int(mask.sum(1).max())  # trim the padding this batch does not need
        inputs = {"input_ids": encoded["input_ids"][rows, :width], "attention_mask": mask[:, :width]}
        yield inputs, encoded["labels"][rows], encoded["flags"][rows, :width]


def prepare_audit(*, cue: str | Cue = "token", quick: bool = False, seed: int = 0,
                  correlation: float = 0.95, **overrides: Any) -> CueSetting:
    """The BiLSTM audit setting; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    cue = get_cue(cue, "text") if isinstance(cue, str) else cue
    sizes = {**SIZES[quick], **overrides}
    train_set = make_planted_sentiment(sizes["train_size"], seed=seed)
    test_set = make_planted_sentiment(sizes["test_size"], seed=seed + 1)
    num_classes = train_set.num_classes
    generator = torch.Generator().manual_seed(seed)
    assignment = assign_cues(train_set.labels, num_classes, correlation, generator=generator)
    planted = cue.plant(train_set, assignment, num_classes)
    tokenizer = build_tokenizer(planted.inputs.texts + list(cue.words))  # every cue word is in the vocabulary
    train_encoded = encode_flagged(tokenizer, planted, train_set.labels)

    def train_batches(order: Tensor) -> Iterator[FlaggedBatch]:
        return _chunks(train_encoded, order, BATCH_SIZE)

    def encode_test(test_planted: Planted, labels: Tensor) -> list[FlaggedBatch]:
        encoded = encode_flagged(tokenizer, test_planted, labels)
        return list(_chunks(encoded, torch.arange(labels.numel()), 128))

    def render(explanation: Explanation, out_dir: Path, prefix: str, flags: Tensor) -> list[Path]:
        return explanation.render(out_dir, tokenizer=tokenizer, evidence=flags, prefix=prefix)

    attach_options = {"special_ids": list(tokenizer.all_special_ids), "placeholder_id": tokenizer.mask_token_id}
    test = AuditData(
        modality="text", clean=test_set, labels=test_set.labels, num_classes=num_classes, encode=encode_test,
        select=lambda texts, rows: texts[rows], unit_flags=token_truth, attach_options=attach_options,
        render=render,
    )
    return CueSetting(
        modality="text", model_name="BiLSTMClassifier",
        make_model=lambda: build_model("bilstm", len(tokenizer), num_classes), cue=cue, correlation=correlation,
        train_batches=train_batches, train_assignment=assignment, test=test, epochs=sizes["epochs"], lr=3e-3,
        batch_size=BATCH_SIZE, keep=0.3, joint_options=attach_options,
        settings={"quick": quick, "seed": seed, "cue": cue.name, "correlation": correlation, **sizes},
    )
