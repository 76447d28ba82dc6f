"""Reference image classifiers: a small ResNet in plain torch and a small random ViT.

:class:`SmallResNet` is the convolutional model the image plugin trains in
seconds on a CPU (16x16 one-channel digits, 32x32 RGB shapes); its named stages
``stem``, ``layer1``, ``layer2``, ``layer3``, ``pool`` and ``head`` are where a
mask can be attached. :func:`make_vit` builds a Hugging Face
``ViTForImageClassification`` with random weights, the model on which
:mod:`bottleneck_image.vit` can drop patch tokens for real sparse inference.
Both take images [B, C, H, W] and give logits [B, num_classes].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from bottleneck.errors import BottleneckError, describe

if TYPE_CHECKING:
    from transformers import ViTForImageClassification

__all__ = ["BasicBlock", "SmallResNet", "make_vit"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, a residual shortcut, ReLU after the sum.

    The shortcut is the identity when shape is kept, else a strided 1x1 conv + BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Feature map [B, out, ceil(H / stride), ceil(W / stride)] for ``x`` [B, in, H, W]."""
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, stride: int, blocks: int) -> nn.Sequential:
    """``blocks`` basic blocks; only the first one changes width and resolution."""
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    """Small CIFAR-style ResNet for any image size H, W >= 8.

    ``stem`` (3x3 conv + BN + ReLU, width ``w``) -> ``layer1`` (width ``w``)
    -> ``layer2`` (width ``2w``, stride 2) -> ``layer3`` (width ``4w``, stride 2)
    -> ``pool`` (global average) -> ``head`` (linear). Each layer holds
    ``blocks`` :class:`BasicBlock` s. One block per layer by default so that a
    training step stays cheap on a CPU; ``blocks=2`` gives a ResNet-14.

    Args:
        num_classes: number of output logits.
        in_channels: image channels, 1 for grey digits, 3 for RGB.
        width: base width ``w``.
        blocks: basic blocks per layer (1 or more).
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: int = 32, *, blocks: int = 1
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("width", width),
            ("blocks", blocks),
        ):
            if not isinstance(value, int) or value < 1:
                raise BottleneckError(f"{name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.stem = nn.Sequential(
            _conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.layer1 = _stage(width, width, 1, blocks)
        self.layer2 = _stage(width, 2 * width, 2, blocks)
        self.layer3 = _stage(2 * width, 4 * width, 2, blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes] for images ``x`` [B, in_channels, H, W]."""
        if (
            not isinstance(x, Tensor)
            or x.dim() != 4
            or x.shape[1] != self.in_channels
            or not x.is_floating_point()
        ):
            raise BottleneckError(
                f"expected a float tensor of shape [B, {self.in_channels}, H, W], got {describe(x)}"
            )
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.pool(h))


def make_vit(
    num_classes: int,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 3,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
) -> ViTForImageClassification:
    """A small ``ViTForImageClassification`` with random weights (nothing is downloaded).

    Dropout is 0 so that a forward is deterministic and dropping patch tokens
    (:func:`bottleneck_image.vit.forward_on_kept_patches`) is exactly comparable
    with masking them. Attention uses PyTorch's ``scaled_dot_product_attention``
    ("sdpa"). The model returns an ``ImageClassifierOutput``; read ``.logits``.
    """
    from transformers import ViTConfig, ViTForImageClassification

    if image_size % patch_size:
        raise BottleneckError(
            f"image_size must be a multiple of patch_size, got {image_size} and {patch_size}"
        )
    if hidden_size % num_heads:
        raise BottleneckError(
            f"hidden_size must be a multiple of num_heads, got {hidden_size} and {num_heads}"
        )
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        num_labels=num_classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    return ViTForImageClassification(config)
