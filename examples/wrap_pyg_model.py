"""Wrap an existing PyTorch Geometric point-cloud classifier with a bottleneck mask.

The model below stands in for one you already have: it takes a PyG ``Batch``
and returns logits. ``bottleneck.attach`` adds the mask in front of it without
touching its code; ``bottleneck.fit`` trains mask and model together; then one
forward pass explains any cloud, and ``sparse`` runs the model on the kept
points only.

    python examples/wrap_pyg_model.py --out out/wrap_pyg [--epochs 12] [--fast]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch_geometric.loader import DataLoader
from torch_geometric.nn import MLP, global_max_pool

import bottleneck
from bottleneck.metrics import mean_auroc
from bottleneck_pointcloud.data import NUM_CLASSES, make_shapes


class MyPointClassifier(nn.Module):
    """Your model: per-point MLP, max pool, classifier (any PyG model works the same way)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.points = MLP([3, 64, 128, 256], norm="batch_norm")
        self.head = MLP([256, 128, num_classes], dropout=0.3, norm=None)

    def forward(self, data) -> torch.Tensor:
        return self.head(global_max_pool(self.points(data.pos), data.batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/wrap_pyg"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
    args = parser.parse_args()

    torch.manual_seed(0)
    size = 160 if args.fast else 2000
    train = DataLoader(make_shapes(size, seed=0), batch_size=32, shuffle=True)
    test_set = make_shapes(size // 4, seed=1)
    test = DataLoader(test_set, batch_size=64)

    model = MyPointClassifier(NUM_CLASSES)
    masked = bottleneck.attach(model, keep=0.3)          # modality detected from the PyG batch
    bottleneck.fit(masked, train, epochs=1 if args.fast else args.epochs)

    dense = bottleneck.evaluate(masked, test)
    sparse = bottleneck.evaluate(masked, test, sparse=True, sparse_keep=0.3)
    batch = next(iter(test))
    explanation = masked.explain(batch)                    # one forward pass, per-point relevance
    auroc = mean_auroc(explanation.relevance, batch.gt, explanation.batch, explanation.num_samples)
    print(f"accuracy masked {dense['accuracy']:.3f} at keep rate {dense['keep_rate']:.3f}")
    print(f"accuracy sparse {sparse['accuracy']:.3f} on {sparse['keep_rate']:.0%} of the points")
    print(f"relevance vs ground-truth part: AUROC {auroc:.3f}")

    files = explanation.render(args.out, max_samples=4)
    path = bottleneck.save_mask(masked, args.out / "mask.safetensors")
    print(f"wrote {len(files)} renders and {path}")


if __name__ == "__main__":
    main()
