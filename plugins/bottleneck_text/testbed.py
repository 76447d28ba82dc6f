"""The text testbed for ``bottleneck bench explain``: a BiLSTM on the planted-word corpus.

The label of each sentence is carried by 1-3 lexicon words among fillers and
label-independent distractors; the ground truth per token is the planted
evidence (:func:`~bottleneck_text.data.word_evidence_to_tokens`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from bottleneck.explanation import Explanation
from bottleneck.modality import Modality
from bottleneck.testbed import Testbed
from bottleneck.units import Units

from .data import build_tokenizer, encode, make_planted_sentiment
from .demo import MAX_LENGTH, build_model

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 2000, "test_size": 128, "epochs": 4, "joint_epochs": 3, "explain_epochs": 6},
    False: {"train_size": 2000, "test_size": 512, "epochs": 6, "joint_epochs": 4, "explain_epochs": 10},
}
BATCH_SIZE = 64


def token_truth(truth: Tensor, units: Units, adapter: Modality) -> Tensor:
    """Per-unit evidence from the ``[B, L]`` token-level evidence."""
    return truth.to(units.batch.device)[units.meta["rows"], units.meta["cols"]]


def prepare(*, quick: bool = False, seed: int = 0, **overrides: Any) -> Testbed:
    """The BiLSTM testbed; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    sizes = {**SIZES[quick], **overrides}
    train_set = make_planted_sentiment(sizes["train_size"], seed=seed)
    test_set = make_planted_sentiment(sizes["test_size"], seed=seed + 1)
    tokenizer = build_tokenizer(train_set.texts)
    train = train_set.loader(tokenizer, batch_size=32, shuffle=True, seed=seed, max_length=MAX_LENGTH)
    encoded = encode(tokenizer, test_set, max_length=MAX_LENGTH)
    test = []
    for start in range(0, len(test_set), BATCH_SIZE):
        part = slice(start, start + BATCH_SIZE)
        inputs = {k: encoded[k][part] for k in ("input_ids", "attention_mask")}
        test.append((inputs, encoded["labels"][part], encoded["evidence"][part]))

    def render(explanation: Explanation, out_dir: Path, index: int) -> list[Path]:
        rows = slice(index * BATCH_SIZE, index * BATCH_SIZE + explanation.num_samples)
        return explanation.render(out_dir, tokenizer=tokenizer, evidence=encoded["evidence"][rows],
                                  prefix=f"tokens_batch{index}")

    return Testbed(
        modality="text",
        model_name="BiLSTMClassifier",
        make_model=lambda: build_model("bilstm", len(tokenizer), train_set.num_classes),
        train=train,
        test=test,
        attach_options={"special_ids": list(tokenizer.all_special_ids), "placeholder_id": tokenizer.mask_token_id},
        feature_layer="token_features",
        epochs=sizes["epochs"],
        joint_epochs=sizes["joint_epochs"],
        lr=3e-3,
        joint_keep=0.3,
        explain_epochs=sizes["explain_epochs"],
        explain_lr=1e-2,
        settings={"quick": quick, "seed": seed, **sizes},
        unit_truth=token_truth,
        render=render,
    )


__all__ = ["prepare", "token_truth"]
