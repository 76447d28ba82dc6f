"""Wrap a CNN you already have with a bottleneck mask, at its input or at a hidden layer.

The ``nn.Sequential`` below stands in for your own image classifier: the
library has never seen it. ``bottleneck.attach`` puts the mask over 4x4 input
patches (``--where input``, the default) or over the feature map of a layer you
name (``--where features``, IBA-style); ``bottleneck.fit`` trains mask and model
together on the embedded planted-pattern images; one forward pass then explains
any image, and the renders show input | relevance | kept patches.

    python examples/wrap_cnn.py --out out/wrap_cnn [--where features] [--epochs 6] [--fast]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import bottleneck
from bottleneck.metrics import mean_auroc
from bottleneck_image.data import make_planted


def my_cnn(num_classes: int) -> nn.Sequential:
    """Your model: a plain convolutional stack on [B, 3, 32, 32] images."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),  # "features" ends here
        nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


class MyClassifier(nn.Module):
    """The same CNN split in two named parts, so a hidden layer can be named."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers = list(my_cnn(num_classes))
        self.features, self.head = nn.Sequential(*layers[:6]), nn.Sequential(*layers[6:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/wrap_cnn"))
    parser.add_argument("--where", default="input", help="'input' or a layer name such as 'features'")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set = make_planted(300 if args.fast else 3000, seed=0)
    test_set = make_planted(100 if args.fast else 500, seed=1)
    model = MyClassifier(train_set.num_classes)
    masked = bottleneck.attach(model, "image", keep=0.3, where=args.where, patch_size=4)
    bottleneck.fit(masked, train_set.loader(64, shuffle=True), epochs=1 if args.fast else args.epochs, lr=3e-3)

    accuracy = bottleneck.evaluate(masked, test_set.loader(250))
    print(f"accuracy {accuracy['accuracy']:.3f} with {accuracy['keep_rate']:.0%} of the units open")

    sample = test_set[torch.arange(100)]
    explanation = masked.explain(sample.images)        # one forward pass, relevance per input patch
    pixels = explanation.modality.pixel_map(explanation.relevance, explanation.units)
    batch = torch.arange(len(sample)).repeat_interleave(pixels[0].numel())
    auroc = mean_auroc(pixels.reshape(-1), sample.gt.reshape(-1), batch, len(sample))
    print(f"relevance vs the planted pattern: pixel AUROC {auroc:.3f}")

    files = explanation.render(args.out, max_samples=6, gt=sample.gt)
    path = bottleneck.save_mask(masked, args.out / "mask.safetensors")
    print(f"wrote {len(files)} renders and {path}")


if __name__ == "__main__":
    main()
