"""The mask on images: units and grid graph, baselines, CNN and ViT sparse paths, hidden insertion, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck.metrics import mean_auroc
from bottleneck.plugins import get_modality
from bottleneck_image.adapter import ImageModality, OpenPatches, auto_patch_size, gaussian_blur


def tiny_cnn(channels: int = 3, classes: int = 4) -> nn.Module:
    """A user's own CNN the library has never seen: a plain ``nn.Sequential``."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def tiny_vit(image_size: int = 16, patch_size: int = 4, classes: int = 4):
    from bottleneck_image.models import make_vit

    return make_vit(classes, image_size=image_size, patch_size=patch_size, hidden_size=32,
                    num_layers=2, num_heads=2, intermediate_size=64)


def images(batch: int = 3, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# -- units ---------------------------------------------------------------------------
def test_auto_patch_size_leaves_at_least_64_units() -> None:
    assert auto_patch_size(8, 8) == 1
    assert auto_patch_size(16, 16) == 2
    assert auto_patch_size(32, 32) == 4
    assert auto_patch_size(224, 224) == 16
    assert auto_patch_size(28, 28) == 2
    assert auto_patch_size(7, 9) == 1


def test_units_are_patches_with_a_four_neighbour_grid() -> None:
    adapter = ImageModality(patch_size=4)
    x = images(batch=2, size=16)
    units = adapter.to_units(x)
    assert units.num_samples == 2 and units.num_units == 2 * 16
    assert units.x.shape == (32, 3 * 4 * 4 + 2)
    # the first unit's features are its patch's pixels (channel-major)
    assert torch.equal(units.x[0, :48], x[0, :, :4, :4].reshape(-1))
    rows, cols = 4, 4
    assert units.edge_index.shape[1] == 2 * 2 * (rows * (cols - 1) + (rows - 1) * cols)
    src, dst = units.edge_index
    assert (units.batch[src] == units.batch[dst]).all()  # no edge crosses samples
    distance = (units.pos[src] - units.pos[dst]).abs().sum(-1)
    assert (distance == 1).all()  # only 4-neighbours


def test_pixel_map_inverts_the_patch_grid() -> None:
    adapter = ImageModality(patch_size=2)
    units = adapter.to_units(images(batch=2, size=8))
    values = torch.arange(units.num_units, dtype=torch.float)
    pixels = adapter.pixel_map(values, units)
    assert pixels.shape == (2, 8, 8)
    assert pixels[0, 0, 0] == pixels[0, 1, 1] == 0 and pixels[0, 0, 2] == 1 and pixels[1, 7, 7] == 31


def test_padding_covers_sizes_that_are_not_a_multiple_of_the_patch() -> None:
    model = tiny_cnn()
    masked = bottleneck.attach(model, "image", patch_size=4, pad=True)
    x = images(size=18)
    out = masked(x)
    assert out.units.meta["grid"] == (5, 5) and out.output.shape == (3, 4)
    with pytest.raises(BottleneckError, match="not a multiple of patch_size 4.*pad=True"):
        bottleneck.attach(tiny_cnn(), "image", patch_size=4)(x)


# -- bad input -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(3, 16, 16), r"4-d \[B, C, H, W\].*add the batch dimension"),
        (torch.rand(1, 2, 3, 16, 16), r"4-d \[B, C, H, W\]"),
        ((torch.rand(2, 3, 16, 16) * 255).to(torch.uint8), "must be floating point.*x.float\\(\\) / 255"),
        (torch.rand(2, 1, 16, 16), "the model takes 3-channel images; images has 1 channels"),
        (torch.rand(0, 3, 16, 16), "empty"),
    ],
)
def test_bad_images_raise_the_library_error(bad: torch.Tensor, message: str) -> None:
    masked = bottleneck.attach(tiny_cnn(), "image")
    with pytest.raises(BottleneckError, match=message):
        masked(bad)


def test_a_mask_refuses_units_of_another_size_than_it_was_built_on() -> None:
    """The automatic patch size follows the image size (4 on 32x32, 2 on 16x16), and with it the
    units' features: a mask built on one cannot score the other, and says why. With a fixed
    patch size the same mask serves both sizes (the CNN pools globally)."""
    masked = bottleneck.attach(tiny_cnn(), "image")
    masked(images(size=32))
    with pytest.raises(BottleneckError, match=r"takes \d+ features per unit .* these inputs give \d+.*patch_size"):
        masked.sparse(images(size=16), keep=0.25)
    fixed = bottleneck.attach(tiny_cnn(), "image", patch_size=4)
    fixed(images(size=32))
    assert fixed.sparse(images(size=16), keep=0.25).kept_counts.tolist() == [4, 4, 4]


def test_nan_pixels_are_refused() -> None:
    x = images()
    x[1, 0, 3, 3] = float("nan")
    x[2, 2, 0, 0] = float("inf")
    with pytest.raises(BottleneckError, match="2 NaN or Inf pixel values"):
        bottleneck.attach(tiny_cnn(), "image")(x)


def test_unknown_options_and_baselines_are_refused() -> None:
    with pytest.raises(BottleneckError, match="image modality options are.*unknown \\['patch'\\]"):
        bottleneck.attach(tiny_cnn(), "image", patch=4)
    with pytest.raises(BottleneckError, match="baseline for modality 'image' must be one of"):
        bottleneck.attach(tiny_cnn(), "image", baseline="remove")  # a CNN cannot remove patches
    with pytest.raises(BottleneckError, match="patch_size must be its patch size 4"):
        bottleneck.attach(tiny_vit(), "image", patch_size=2)


def test_image_modality_is_detected_from_a_4d_tensor(plugin_manager) -> None:
    masked = bottleneck.attach(tiny_cnn())
    masked(images())
    assert masked.modality_name == "image" and masked.baseline == "zero"


# -- baselines and gradients ---------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur", "learned"])
def test_every_baseline_passes_gradients_to_the_mask_and_model(baseline: str, device) -> None:
    masked = bottleneck.attach(tiny_cnn(), "image", baseline=baseline, keep=0.3).to(device)
    out = masked(images().to(device))
    loss = nn.functional.cross_entropy(out.output, torch.tensor([0, 1, 2], device=device)) + out.ib_loss
    loss.backward()
    for name, parameter in masked.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in masked.mask.parameters())
    if baseline == "learned":
        assert masked.baseline_state.value.grad.abs().sum() > 0


def test_closed_patches_take_the_baseline_value() -> None:
    adapter = ImageModality(patch_size=4)
    x = images(batch=2)
    units = adapter.to_units(x)
    gates = torch.zeros(units.num_units)
    gates[0] = 1.0  # only the top-left patch of sample 0 stays
    zero = adapter.apply_gates(x, units, gates, "zero")
    assert torch.equal(zero[0, :, :4, :4], x[0, :, :4, :4]) and zero[0, :, 4:].abs().sum() == 0
    blur = adapter.apply_gates(x, units, gates, "blur")
    assert torch.allclose(blur[1], gaussian_blur(x, 8.0)[1])
    assert blur[1].std() < x[1].std() / 2  # the blur really removes detail


def test_mean_baseline_is_the_mean_of_the_training_images() -> None:
    masked = bottleneck.attach(tiny_cnn(), "image", baseline="mean")
    first, second = images(batch=4, seed=1), images(batch=2, seed=2) * 0.5
    masked.train()
    masked(first)
    masked(second)
    expected = torch.cat([first, second]).mean(dim=(0, 2, 3))
    assert torch.allclose(masked.baseline_state.total / masked.baseline_state.count, expected.double(), atol=1e-6)
    masked.eval()
    masked(images(batch=3, seed=3) + 5)  # eval batches do not move the mean
    assert torch.allclose(masked.baseline_state.total / masked.baseline_state.count, expected.double(), atol=1e-6)


def test_blur_of_a_constant_image_is_the_constant() -> None:
    x = torch.full((1, 2, 9, 7), 0.25)
    assert torch.allclose(gaussian_blur(x, 1.5), x)


# -- sparse paths --------------------------------------------------------------------
def test_cnn_sparse_uses_hard_gates_and_says_units_were_not_removed() -> None:
    masked = bottleneck.attach(tiny_cnn(), "image", keep=0.25).eval()
    x = images()
    out = masked.sparse(x, keep=0.25)
    assert not out.removed
    assert out.kept_counts.tolist() == [16, 16, 16]  # 25% of 64 patches of 2x2
    assert out.inputs.shape == x.shape
    dropped = ~ImageModality(patch_size=2).pixel_map(out.kept.float(), out.units).bool()
    assert (out.inputs.permute(1, 0, 2, 3)[:, dropped] == 0).all()


def test_vit_sparse_path_runs_the_encoder_on_kept_tokens_only() -> None:
    vit = tiny_vit()
    masked = bottleneck.attach(vit, "image", keep=0.25).eval()
    assert masked.baseline == "remove"
    lengths: list[int] = []
    first_layer = vit.vit.encoder.layer[0] if hasattr(vit.vit, "encoder") else vit.vit.layers[0]
    first_layer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = masked.sparse(images(), keep=0.25)
    assert out.removed and out.kept_counts.tolist() == [4, 4, 4]
    assert lengths == [1 + 4]  # CLS + 4 of 16 patch tokens


def test_vit_remove_baseline_trains_on_what_sparse_inference_sees() -> None:
    vit = tiny_vit()
    masked = bottleneck.attach(vit, "image", keep=0.5).eval()
    x = images()
    dense = masked(x)
    assert isinstance(masked.adapter().apply_gates(x, dense.units, dense.gates, "remove"), OpenPatches)
    sparse = masked.sparse(x)  # keep=None: the units whose deterministic gate is open
    assert torch.equal(sparse.kept, (dense.gates > 0) | sparse.kept)
    assert torch.allclose(sparse.output.logits, dense.output.logits, atol=1e-5)


def test_vit_training_gives_closed_patches_gradients_through_the_attention() -> None:
    """A closed patch's gate learns whether attending it would help (DynamicViT's masking)."""
    masked = bottleneck.attach(tiny_vit(), "image", keep=0.25, gate="topk").train()
    x = images()
    logits: list[torch.Tensor] = []

    def keep_logits(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        logits.append(output)

    masked.mask.scorer.register_forward_hook(keep_logits)
    out = masked(x)
    gated = masked.adapter().apply_gates(x, out.units, out.gates, "remove")
    assert isinstance(gated, OpenPatches) and gated.pixels is x  # pixels whole, attention gated
    out.output.logits.logsumexp(-1).sum().backward()
    grad = logits[0].grad.flatten()
    closed = out.gates.detach() == 0
    assert closed.any() and (grad[closed] != 0).all() and (grad[~closed] != 0).all()



def test_vit_attention_gradient_share_trains_the_mask_from_a_share_of_the_images(tmp_path) -> None:
    """``attention_gradient_share=0.5`` on a one-layer ViT: two of four images' gates get a gradient.

    The option is saved with the mask and restored with it.
    """
    from bottleneck_image.models import make_vit

    def vit() -> nn.Module:
        torch.manual_seed(0)
        return make_vit(4, image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=2,
                        intermediate_size=64)

    masked = bottleneck.attach(vit(), "image", keep=0.25, gate="topk", attention_gradient_share=0.5).train()
    logits: list[torch.Tensor] = []

    def keep_logits(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        logits.append(output)

    masked.mask.scorer.register_forward_hook(keep_logits)
    out = masked(images(batch=4))
    out.output.logits.logsumexp(-1).sum().backward()
    per_image = (logits[0].grad.view(4, -1) != 0).any(1)
    assert int(per_image.sum()) == 2
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors")
    assert bottleneck.load(path, vit()).modality_options == {"attention_gradient_share": 0.5}


@pytest.mark.parametrize("share", [0.0, 2, "all"])
def test_attention_gradient_share_errors(share: object) -> None:
    with pytest.raises(BottleneckError, match="attention_gradient_share must be a fraction"):
        bottleneck.attach(tiny_vit(), "image", attention_gradient_share=share)
    with pytest.raises(BottleneckError, match="applies to a ViT's patch gates.*no patch tokens"):
        bottleneck.attach(tiny_cnn(), "image", attention_gradient_share=0.5)


# -- hidden insertion ----------------------------------------------------------------
class BlobNet(nn.Module):
    """Defined here, unknown to the library: two conv stages and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16x16 noise with one 4x4 blob at a random place; its sign is the class."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    gt = torch.zeros(n, 16, 16, dtype=torch.bool)
    corners = torch.randint(0, 13, (n, 2), generator=g)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, 0, r:r + 4, c:c + 4] += 2.0 if y[i] else -2.0
        gt[i, r:r + 4, c:c + 4] = True
    return x, y, gt


def test_hidden_insertion_trains_and_explains_a_user_cnn() -> None:
    torch.manual_seed(0)
    x, y, gt = blobs(512, seed=0)
    masked = bottleneck.attach(BlobNet(), "image", where="features", keep=0.2)
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]
    history = bottleneck.fit(masked, loader, epochs=12, lr=3e-3, progress=False)
    assert history.epochs[-1]["task"] < 0.2
    x_test, y_test, gt_test = blobs(128, seed=1)
    accuracy = bottleneck.evaluate(masked, [(x_test, y_test)])
    assert accuracy["accuracy"] > 0.9 and accuracy["keep_rate"] < 0.3
    out = masked(x_test)
    assert out.units.meta["grid"] == (8, 8)  # the mask gates the 8x8 feature map
    explanation = masked.explain(x_test)
    assert explanation.units.meta["grid"] == (8, 8) and explanation.units.meta["patch"] == 2  # input units
    relevance = explanation.modality.pixel_map(explanation.relevance, explanation.units)
    assert relevance.shape == (128, 16, 16)
    batch = torch.arange(128).repeat_interleave(256)
    auroc = mean_auroc(relevance.reshape(-1), gt_test.reshape(-1), batch, 128)
    assert auroc > 0.85, auroc
    with pytest.raises(BottleneckError, match="sits at layer 'features'"):
        masked.sparse(x_test)


def test_hidden_insertion_errors_name_the_layers() -> None:
    with pytest.raises(BottleneckError, match="names no layer of BlobNet; its layers are: 'features'"):
        bottleneck.attach(BlobNet(), "image", where="backbone")
    masked = bottleneck.attach(BlobNet(), "image", where="classifier.4")  # Flatten: not a feature map
    with pytest.raises(BottleneckError, match=r"\[B, C, H, W\] float feature map"):
        masked(torch.rand(2, 1, 16, 16))
    with pytest.raises(BottleneckError, match="must be one of"):
        bottleneck.attach(BlobNet(), "image", where="features", baseline="remove")


def test_save_and_load_keep_options_and_baseline_state(tmp_path) -> None:
    masked = bottleneck.attach(tiny_cnn(), "image", baseline="learned", patch_size=4, keep=0.4)
    masked(images())
    with torch.no_grad():
        masked.baseline_state.value.fill_(0.7)
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors", include_model=True)
    restored = bottleneck.load(path, tiny_cnn())
    assert restored.modality_options == {"patch_size": 4}
    assert torch.allclose(restored.baseline_state.value, torch.full((3,), 0.7))
    restored.eval(), masked.eval()
    x = images(seed=5)
    assert torch.allclose(restored(x).output, masked(x).output)


def test_image_plugin_is_registered_through_its_entry_point(plugin_manager) -> None:
    assert isinstance(get_modality("image"), ImageModality)
    names = {name for name, _ in plugin_manager.list_name_plugin()}
    assert "image" in names


def test_unit_truth_marks_patches_holding_any_evidence_pixel() -> None:
    adapter = ImageModality(patch_size=4)
    units = adapter.to_units(images(batch=2, size=8))
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 3, 3] = True  # top-left patch only
    gt[1, 4:6, 0:8] = True  # both bottom patches
    assert adapter.unit_truth(gt, units).tolist() == [True, False, False, False, False, False, True, True]
    with pytest.raises(BottleneckError, match=r"ground truth of shape \[2, 8, 8\]"):
        adapter.unit_truth(gt[:, :4], units)


def test_the_scorer_reads_a_grid_encoder_that_trains_and_is_saved(tmp_path) -> None:
    from bottleneck_image.encoder import GridEncoder

    masked = bottleneck.attach(tiny_cnn(), "image", keep=0.3)
    out = masked(images())
    assert isinstance(masked.unit_encoder, GridEncoder)
    out.ib_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in masked.unit_encoder.parameters())
    plain = bottleneck.attach(tiny_cnn(), "image", encoder=False)
    plain(images())
    assert plain.unit_encoder is None
