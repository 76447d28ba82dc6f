"""The text models of ``bottleneck bench speed``: the BiLSTM and BERT on the planted-word corpus.

Sentences are longer here than in the demo (60-110 words, up to 128 tokens, the
small BERT's position limit): sparse inference packs each sentence's kept tokens
into a shorter sequence, and what that saves grows with the length (attention is
quadratic in it). The BiLSTM is timed for training and explanation overhead only.
"""

from __future__ import annotations

from typing import Any

from bottleneck.speed import SpeedCase

from .data import build_tokenizer, encode, make_planted_sentiment
from .demo import SETTINGS, build_model

#: (quick, full) sizes.
SIZES: dict[bool, dict[str, int]] = {
    True: {"train_size": 1000, "test_size": 256, "validation_size": 256, "epochs": 4, "joint_epochs": 4},
    False: {"train_size": 2000, "test_size": 512, "validation_size": 256, "epochs": 6, "joint_epochs": 6},
}
BATCH_SIZE = 32
MAX_LENGTH = 128
WORDS = {"min_words": 60, "max_words": 110}
#: BERT's mask is fine-tuned onto the trained dense BERT with the top-k gate (its
#: ``joint_options``), as the other sparse models are: with hard-concrete gates the
#: fine-tuned BERT lost 22 points even on every token (0.752 against 1.000 dense; a full
#: run, one seed).
#:
#: BERT's mask trains through its attention (``attention_gates``): each token's attention
#: weight is multiplied by its gate, so closed tokens get gradients too. With tokens only
#: hidden (the text modality's default) the joint run's sparse accuracy at keep 0.25 was
#: 0.980, 0.967 and 0.881 on seeds 0, 1 and 2 against dense 1.000, 0.990 and 1.000: the
#: trained BERT is saturated (loss 0.000, open tokens' gate gradients about 1e-10), so the
#: mask had almost no signal. With attention gates: 1.000, 0.990 and 0.500 -- seed 2 still
#: collapses (its first-order gradients at closed evidence tokens point the wrong way for
#: 87% of them; see the issue note). BERT-only runs of this bench, full sizes, 2 threads.
#: Those attention-gate figures were flattered by a leak: closed tokens were attended
#: with weight ``floor * e^s``, and the fine-tuned BERT learned logits large enough to
#: read them (seed 0 of the recipe runs below, distilling from the dense model at weight
#: 3: training task loss 0.014, accuracy 0.5 with the tokens removed). Closed keys are
#: now removed from the forward value
#: (:func:`~bottleneck.key_bias_attention.key_bias_attention`), and the old recipe
#: collapsed to chance on two of three seeds: the model forgets the task while the mask
#: still drops the evidence. Hence :data:`BERT_MASK_LR` and 6 joint epochs.
#: Attention gates need hard 0/1 gates, so BERT's training overhead is timed with the
#: top-k gate its joint run trains with, not the default hard-concrete one.
#:
#: Each attention layer computes the gate gradient of a quarter of the batch's texts (a
#: drawn run, scaled to stay unbiased: ``attention_gradient_share``, see
#: :mod:`~bottleneck.key_bias_attention`). From the cached dense BERTs (recipe below,
#: seeds 0-4, mask at 10x for 6 epochs) the sparse accuracy at keep 0.25 was 1.000,
#: 0.998, 1.000, 0.996, 1.000, against 1.000, 0.998, 1.000, 1.000, 0.877 with every
#: text's gradient: the noisier gradient did not cost the mask, and the step got cheaper.
ATTENTION_GATES = {"attention_gates": True, "gate": "topk", "attention_gradient_share": 0.25}
#: The mask's learning rate in BERT's joint run, as a multiple of the model's: the mask
#: must find the evidence tokens before the model, trained on what the mask keeps,
#: unlearns them. From the same dense BERTs (full sizes, 2 threads, sparse accuracy at
#: keep 0.25 on the test set, seeds 0-4; dense 1.000 but 0.996 on seed 3): at 1x and 4
#: epochs 0.535, 0.500, 1.000 (seeds 0-2); at 10x and 4 epochs 1.000, 0.996, 0.998, 0.500,
#: 0.994; at 10x and 6 epochs 0.998, 1.000, 1.000, 1.000, 0.996, and on the computed
#: gate gradient that replaced the second attention pass (the same gradient to float
#: rounding) 1.000, 1.000, 1.000, 0.941, 1.000: seed 3 is on an edge. (A third of the model's
#: rate, mask at 1x: 0.617 and 1.000 on seeds 0 and 1; 10x with distillation at weight 1:
#: 0.500 on seed 3; 30x: 0.816 on seed 3.) ``benchmarks/text_bert_recipe.py`` runs these.
BERT_MASK_LR = 10.0
#: The issue's sparse speed-up target for BERT at keep 0.25.
BERT_TARGET = 1.8
#: BERT's runs end at their best epoch, from this fraction of the joint epochs on, on 256
#: held-out sentences (another seed of the corpus; the masked run by sparse accuracy at
#: keep 0.25, the dense run by accuracy), as DGCNN's: its sparse accuracy was 0.994 and
#: 0.980 in two full runs against 1.000 dense, a point or two that one epoch decides.
BERT_SELECT_FROM = 0.5
#: BERT's joint run is made again, up to three runs, when its held-out sparse accuracy ends
#: more than 2 points under the dense model's (``SpeedCase.joint_attempts``): the recipe
#: finds the evidence on most seeds and collapses to chance on the rest, and which seeds
#: depends on the processor's rounding. Run 22 of the bench, the first on an AMD EPYC, had
#: its one BERT run end at 0.641 (dense 1.000; runs 20 and 21 on an Intel Xeon, same code
#: and seed: 1.000), and ``benchmarks/text_bert_recipe.py`` there gave 1.000, 1.000 and 0.500
#: on seeds 0-2. A collapsed run shows on the held-out sentences; the test set decides nothing.
BERT_JOINT_ATTEMPTS = 3


def _batches(encoded: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """``({input_ids, attention_mask}, labels)`` pairs of :data:`BATCH_SIZE` sentences, in order."""
    count = len(encoded["labels"])
    return [({k: encoded[k][i:i + BATCH_SIZE] for k in ("input_ids", "attention_mask")}, encoded["labels"][i:i + BATCH_SIZE])
            for i in range(0, count, BATCH_SIZE)]


def prepare_speed(*, quick: bool = False, seed: int = 0, **overrides: Any) -> list[SpeedCase]:
    """The BiLSTM and BERT speed cases; ``overrides`` replace entries of :data:`SIZES` (for tests)."""
    sizes = {**SIZES[quick], **overrides}
    train_set = make_planted_sentiment(sizes["train_size"], seed=seed, **WORDS)
    test_set = make_planted_sentiment(sizes["test_size"], seed=seed + 1, **WORDS)
    tokenizer = build_tokenizer(train_set.texts)
    train = train_set.loader(tokenizer, batch_size=BATCH_SIZE, shuffle=True, seed=seed, max_length=MAX_LENGTH)
    encoded = encode(tokenizer, test_set, max_length=MAX_LENGTH)
    test = _batches(encoded)
    validation = _batches(encode(tokenizer, make_planted_sentiment(sizes["validation_size"], seed=seed + 2, **WORDS),
                                 max_length=MAX_LENGTH))
    options = {"special_ids": list(tokenizer.all_special_ids), "placeholder_id": tokenizer.mask_token_id}
    settings = {"batch": BATCH_SIZE, "max_length": MAX_LENGTH, **WORDS, **sizes,
                "tokens_per_sentence": float(encoded["attention_mask"].sum(1).float().mean())}
    vocab, classes = len(tokenizer), train_set.num_classes
    return [
        SpeedCase(
            name="BiLSTM", modality="text", make_model=lambda: build_model("bilstm", vocab, classes),
            batch=test[0], attach_options=options, settings=settings,
        ),
        SpeedCase(
            name="BERT", modality="text", make_model=lambda: build_model("bert", vocab, classes),
            batch=test[0], attach_options={**options, **ATTENTION_GATES}, sparse_target=BERT_TARGET, train=train,
            test=test,
            epochs=sizes["epochs"], lr=SETTINGS["bert"]["lr"], joint_epochs=sizes["joint_epochs"],
            joint_lr=SETTINGS["bert"]["lr"], joint_mask_lr=BERT_MASK_LR * SETTINGS["bert"]["lr"],
            joint_options={"gate": "topk"}, validation=validation,
            select_from=BERT_SELECT_FROM, joint_attempts=BERT_JOINT_ATTEMPTS, settings=settings,
        ),
    ]
