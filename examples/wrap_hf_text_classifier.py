"""Wrap a Hugging Face text classifier you already have and print its highlighted tokens.

The ``BertForSequenceClassification`` below stands in for your own model (built
from a config with random weights: nothing is downloaded). ``bottleneck.attach``
finds its input embedding with ``get_input_embeddings()`` and gates every token
there; ``bottleneck.fit`` trains mask and model together on the embedded
planted-word corpus; then one forward pass explains any sentence, ``sparse``
runs BERT on the kept tokens only (each sequence re-packed shorter), and the
terminal shows the tokens coloured by relevance.

    python examples/wrap_hf_text_classifier.py --out out/wrap_text [--epochs 6] [--fast]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

import bottleneck
from bottleneck_text.data import build_tokenizer, encode, make_planted_sentiment
from bottleneck_text.render import ansi_line


def my_classifier(vocab_size: int) -> BertForSequenceClassification:
    """Your model: any Hugging Face sequence classifier works the same way."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/wrap_text"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set = make_planted_sentiment(300 if args.fast else 2000, seed=0)
    test_set = make_planted_sentiment(100 if args.fast else 500, seed=1)
    tokenizer = build_tokenizer(train_set.texts)
    model = my_classifier(len(tokenizer))
    masked = bottleneck.attach(model, "text", keep=0.3, special_ids=tokenizer.all_special_ids)
    bottleneck.fit(masked, train_set.loader(tokenizer, batch_size=32, shuffle=True),
                   epochs=1 if args.fast else args.epochs, lr=1e-3)

    test = test_set.loader(tokenizer, batch_size=100)
    dense = bottleneck.evaluate(masked, test)
    sparse = bottleneck.evaluate(masked, test, sparse=True, sparse_keep=0.3)
    print(f"accuracy {dense['accuracy']:.3f} with {dense['keep_rate']:.0%} of the tokens open")
    print(f"accuracy {sparse['accuracy']:.3f} on re-packed sequences of {sparse['keep_rate']:.0%} of the tokens")

    sample = {k: v[:4] for k, v in encode(tokenizer, test_set, max_length=64).items()
              if k in ("input_ids", "attention_mask")}
    explanation = masked.explain(sample)
    for words, relevance, _ in explanation.modality.token_rows(explanation.units, explanation.relevance, tokenizer):
        print(ansi_line(words, relevance))
    files = explanation.render(args.out, tokenizer=tokenizer)
    path = bottleneck.save_mask(masked, args.out / "mask.safetensors")
    print(f"wrote {files[0]} and {path}")


if __name__ == "__main__":
    main()
