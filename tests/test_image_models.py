"""The image plugin's reference models and the ViT patch-token operations."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bottleneck.errors import BottleneckError
from bottleneck_image.models import SmallResNet, make_vit
from bottleneck_image.vit import (
    PatchLayout,
    find_patch_layout,
    forward_on_kept_patches,
    forward_with_open_patches,
)

P = 16  # patches of the tiny ViT: 16x16 images, 4x4 patches


def tiny_vit(attn: str = "sdpa", num_classes: int = 5) -> nn.Module:
    """A 2-layer ViT on 16x16 RGB images, in eval mode, seeded."""
    torch.manual_seed(0)
    model = make_vit(
        num_classes,
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
    )
    model.config._attn_implementation = attn
    return model.eval()


def random_kept(counts: list[int], seed: int = 0) -> Tensor:
    """Bool [len(counts), P] with ``counts[i]`` random patches kept in row ``i``."""
    g = torch.Generator().manual_seed(seed)
    kept = torch.zeros(len(counts), P, dtype=torch.bool)
    for i, k in enumerate(counts):
        kept[i, torch.randperm(P, generator=g)[:k]] = True
    return kept


def images(b: int, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


class Wrapper(nn.Module):
    """A user's module holding a ViT; forwards keyword arguments, adds one of its own."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.backbone = vit

    def forward(self, x: Tensor, scale: float = 1.0, **kwargs: Any) -> Tensor:
        return self.backbone(x, **kwargs).logits * scale


class Raising(Wrapper):
    """Runs the ViT, then fails."""

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        self.backbone(x, **kwargs)
        raise RuntimeError("boom")


def record_lengths(model: nn.Module) -> tuple[list[int], Any]:
    """Sequence lengths seen by the first encoder layer, and the hook handle."""
    lengths: list[int] = []
    layer = model.vit.layers[0]
    handle = layer.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    return lengths, handle


def layout_hooks(model: nn.Module) -> dict:
    """Forward hooks left on the model's ViT embeddings."""
    return find_patch_layout(model).embeddings._forward_hooks


# --------------------------------------------------------------------------- SmallResNet


@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 32), (3, 8)])
def test_small_resnet_shapes(channels: int, size: int) -> None:
    model = SmallResNet(7, in_channels=channels, width=8)
    assert model.in_channels == channels
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
    assert model(torch.randn(2, channels, size, size + 4)).shape == (2, 7)


def test_small_resnet_named_layers_and_gradients() -> None:
    model = SmallResNet(4, in_channels=1, width=8, blocks=2)
    names = [name for name, _ in model.named_children()]
    assert names == ["stem", "layer1", "layer2", "layer3", "pool", "head"]
    assert len(model.layer1) == len(model.layer3) == 2
    assert model.head.in_features == 32
    model(torch.randn(3, 1, 16, 16)).sum().backward()
    grad = model.stem[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_small_resnet_bad_input() -> None:
    with pytest.raises(BottleneckError, match=r"\[B, 3, H, W\]"):
        SmallResNet(4)(torch.randn(2, 1, 16, 16))
    with pytest.raises(BottleneckError, match="width"):
        SmallResNet(4, width=0)


# --------------------------------------------------------------------------- ViT


def test_make_vit_logits() -> None:
    model = tiny_vit(num_classes=6)
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0
    assert model(images(2)).logits.shape == (2, 6)


def test_find_patch_layout() -> None:
    model = tiny_vit()
    layout = find_patch_layout(model)
    assert isinstance(layout, PatchLayout)
    assert layout.embeddings is model.vit.embeddings
    assert (layout.patch_size, layout.image_size, layout.num_channels) == (4, (16, 16), 3)
    assert layout.grid == (4, 4) and layout.num_patches == P
    assert layout.num_prefix_tokens == 1
    assert find_patch_layout(model.vit).embeddings is model.vit.embeddings
    assert find_patch_layout(Wrapper(model)).embeddings is model.vit.embeddings
    assert find_patch_layout(SmallResNet(3, width=8)) is None


def test_keep_all_equals_plain_call() -> None:
    model = tiny_vit()
    x = images(3)
    kept = torch.ones(3, P, dtype=torch.bool)
    torch.testing.assert_close(forward_on_kept_patches(model, x, kept).logits, model(x).logits)
    torch.testing.assert_close(forward_with_open_patches(model, x, kept).logits, model(x).logits)


def test_encoder_sees_only_kept_tokens() -> None:
    model = tiny_vit()
    x = images(4)
    kept = random_kept([4, 4, 4, 4])  # keep 0.25
    lengths, handle = record_lengths(model)
    try:
        out = forward_on_kept_patches(model, x, kept).logits
        model(x)
    finally:
        handle.remove()
    assert lengths == [1 + 4, 1 + P]
    assert not torch.allclose(out, model(x).logits, atol=1e-3)  # dropping patches matters
    assert not layout_hooks(model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("counts", [[4, 4, 4], [1, 7, 16], [3, 2, 9]])
def test_open_patches_equal_kept_patches(attn: str, counts: list[int]) -> None:
    model = tiny_vit(attn)
    x = images(len(counts))
    kept = random_kept(counts, seed=sum(counts))
    dense_mask = forward_with_open_patches(model, x, kept).logits
    gathered = forward_on_kept_patches(model, x, kept).logits
    torch.testing.assert_close(gathered, dense_mask, atol=1e-5, rtol=1e-5)


def test_unequal_counts_match_rows_alone() -> None:
    model = tiny_vit()
    counts = [2, 5, 16, 1]
    x = images(4)
    kept = random_kept(counts, seed=3)
    lengths, handle = record_lengths(model)
    try:
        batch = forward_on_kept_patches(model, x, kept).logits
        rows = [
            forward_on_kept_patches(model, x[i : i + 1], kept[i : i + 1]).logits for i in range(4)
        ]
    finally:
        handle.remove()
    assert lengths == [1 + 16, 1 + 2, 1 + 5, 1 + 16, 1 + 1]
    torch.testing.assert_close(batch, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_gradients_and_no_grad() -> None:
    model = tiny_vit()
    kept = random_kept([3, 6])
    grads = []
    for fn in (forward_on_kept_patches, forward_with_open_patches):
        x = images(2).requires_grad_()
        fn(model, x, kept).logits.square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    # closed patches get no gradient; kept ones do
    per_patch = grads[0].abs().sum(1).unfold(1, 4, 4).unfold(2, 4, 4).sum((-1, -2)).flatten(1)
    assert (per_patch[~kept] == 0).all() and (per_patch[kept] > 0).all()
    assert model.vit.embeddings.cls_token.grad is not None
    with torch.no_grad():
        out = forward_on_kept_patches(model, images(2), kept).logits
    assert not out.requires_grad
    with torch.inference_mode():
        forward_on_kept_patches(model, images(2), kept)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_differentiable_gates_remove_closed_patches_and_give_them_gradients(attn: str) -> None:
    model = tiny_vit(attn)
    kept = random_kept([3, 9], seed=5)
    x = images(2).requires_grad_()
    gates = kept.float().requires_grad_()
    logits = forward_with_open_patches(model, x, kept, gates=gates).logits
    torch.testing.assert_close(logits, forward_on_kept_patches(model, x, kept).logits, atol=1e-5, rtol=1e-5)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weights).sum().backward()
    assert (gates.grad[~kept].abs() > 1e-6).all() and (gates.grad[kept].abs() > 1e-6).all()
    # the model cannot read a closed patch: its pixels get (almost) no gradient
    per_patch = x.grad.abs().sum(1).unfold(1, 4, 4).unfold(2, 4, 4).sum((-1, -2)).flatten(1)
    assert float(per_patch[~kept].max()) < 1e-12 * float(per_patch[kept].max())
    # a closed gate's gradient is the slope of opening it a little (multiplicative attention)
    row, patch = 0, int(torch.nonzero(~kept[0])[0])
    nudged = kept.float().clone()
    nudged[row, patch] = 1e-3
    with torch.no_grad():
        moved = forward_with_open_patches(model, x, kept, gates=nudged).logits
        slope = float(((moved - logits) * weights).sum()) / 1e-3
    assert slope == pytest.approx(float(gates.grad[row, patch]), rel=0.05)


def test_differentiable_gates_errors() -> None:
    model, kept = tiny_vit(), random_kept([3, 9])
    with pytest.raises(BottleneckError, match="float gates of shape"):
        forward_with_open_patches(model, images(2), kept, gates=kept)
    with pytest.raises(BottleneckError, match="float gates of shape"):
        forward_with_open_patches(model, images(2), kept, gates=torch.ones(2, 3))


def test_wrapper_kwargs_pass_through() -> None:
    model = tiny_vit()
    wrapped = Wrapper(model)
    x = images(3)
    kept = random_kept([2, 4, 8])
    expected = forward_on_kept_patches(model, x, kept).logits
    torch.testing.assert_close(forward_on_kept_patches(wrapped, x, kept, scale=2.0), 2 * expected)
    torch.testing.assert_close(
        forward_with_open_patches(wrapped, x, kept, scale=2.0), 2 * expected, atol=1e-5, rtol=1e-5
    )


def test_hook_removed_when_model_raises() -> None:
    model = tiny_vit()
    with pytest.raises(RuntimeError, match="boom"):
        forward_on_kept_patches(Raising(model), images(2), random_kept([2, 3]))
    assert not layout_hooks(model)


def test_errors() -> None:
    model = tiny_vit()
    x = images(2)
    with pytest.raises(
        BottleneckError, match=r"bool tensor of shape \[B, num_patches\] = \[2, 16\]"
    ):
        forward_on_kept_patches(model, x, torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(BottleneckError, match=r"\[2, 16\].*float32"):
        forward_on_kept_patches(model, x, torch.ones(2, P))
    with pytest.raises(BottleneckError, match=r"\[2, 16\]"):
        forward_on_kept_patches(model, x, torch.ones(3, P, dtype=torch.bool))
    with pytest.raises(BottleneckError, match=r"open_patches.*\[2, 16\]"):
        forward_with_open_patches(model, x, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(BottleneckError, match=r"rows \[1\] keep none"):
        forward_on_kept_patches(model, x, random_kept([3, 0]))
    with pytest.raises(BottleneckError, match="ViT-style model"):
        forward_on_kept_patches(SmallResNet(3, width=8), x, random_kept([3, 3]))
    with pytest.raises(BottleneckError, match="ViT-style model"):
        forward_with_open_patches(SmallResNet(3, width=8), x, random_kept([3, 3]))
    with pytest.raises(BottleneckError, match="attention_mask"):
        forward_on_kept_patches(model, x, random_kept([3, 3]), attention_mask=torch.ones(2, 17))
    assert not layout_hooks(model)


def test_deit_two_prefix_tokens() -> None:
    """A model with CLS + distillation tokens keeps both prefix tokens."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = DeiTForImageClassificationWithTeacher(config).eval()
    assert find_patch_layout(model).num_prefix_tokens == 2
    x = images(3)
    kept = random_kept([2, 5, 9])
    torch.testing.assert_close(
        forward_on_kept_patches(model, x, kept).logits,
        forward_with_open_patches(model, x, kept).logits,
        atol=1e-5,
        rtol=1e-5,
    )
