"""Images as units: ``[B, C, H, W]`` float tensors cut into pixels or square patches.

Units are the patches of a ``patch_size`` grid (``patch_size=1``: pixels); each
unit's features are its pixel values plus its grid position, and the unit graph
is the 4-neighbour grid. Patch size: given, the model's own for a ViT, or by
default the largest power of two up to 16 that divides H and W and still
leaves at least 64 units (8x8 digits: pixels; 32x32: 4; 224x224: 16). When H or
W is not a multiple of the patch size the adapter raises, unless ``pad=True``:
the grid then covers the image padded at the bottom/right by edge replication,
and gates are cropped back, so the model always gets its own image size.

Baselines (what a dropped patch becomes):

* ``zero`` (default for CNNs) — black;
* ``mean`` — the per-channel mean of every training image seen (a running mean
  the masked model owns and saves);
* ``blur`` — the image blurred by a Gaussian (``blur_sigma``, default ``2 * patch``
  pixels), so a dropped patch keeps only coarse context (Fong & Vedaldi);
* ``learned`` — a learned per-channel value (DiffMask's placeholder);
* ``remove`` (default for ViTs) — closed patch tokens are hidden from attention
  in training and removed from the sequence in sparse inference, so training
  sees what inference sees; half-open patches are blended towards black.

A CNN cannot skip pixels, so its sparse path (``can_drop() is False``) applies
hard gates with the baseline instead; a ViT's sparse path removes patch tokens
before the encoder.

Hidden insertion (``attach(cnn, where="layer2")``) masks the feature map's
spatial positions (``[B, C', h, w]``, one unit per position, baselines ``zero``,
``mean``, ``blur``, ``learned``); relevance is upsampled bilinearly to the input
and averaged over each input patch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from bottleneck.errors import BottleneckError, describe
from bottleneck.fill import LearnedChannelValue, RunningChannelMean
from bottleneck.key_bias_attention import check_gradient_share
from bottleneck.modality import Modality
from bottleneck.units import Units

from .encoder import GridEncoder
from .vit import PatchLayout, find_patch_layout, forward_on_kept_patches, forward_with_open_patches

#: Fewest units the automatic patch size leaves per image.
MIN_AUTO_UNITS = 64
#: Largest automatic patch size.
MAX_AUTO_PATCH = 16
OPTIONS = ("patch_size", "pad", "blur_sigma", "encoder", "attention_gradient_share")
CNN_BASELINES = ("zero", "mean", "blur", "learned")
HIDDEN_BASELINES = CNN_BASELINES


@dataclass
class OpenPatches:
    """ViT input in training with the ``remove`` baseline: pixels plus which patch tokens are visible.

    ``gates`` (float ``[B, P]``, with gradients) makes the visibility differentiable for
    closed patches too (see :func:`~bottleneck_image.vit.forward_with_open_patches`).
    """

    pixels: Tensor
    open: Tensor  # [B, P] bool
    gates: Tensor | None = None


@dataclass
class KeptPatches:
    """ViT input for sparse inference: pixels plus which patch tokens go into the encoder."""

    pixels: Tensor
    kept: Tensor  # [B, P] bool


def auto_patch_size(height: int, width: int) -> int:
    """The largest power of two <= 16 dividing ``height`` and ``width`` that leaves >= 64 units."""
    size = MAX_AUTO_PATCH
    while size > 1:
        if height % size == 0 and width % size == 0 and (height // size) * (width // size) >= MIN_AUTO_UNITS:
            return size
        size //= 2
    return 1


def grid_edges(rows: int, cols: int, num_samples: int, device: torch.device) -> Tensor:
    """``[2, E]`` 4-neighbour grid edges (both directions) for ``num_samples`` grids of ``rows x cols``."""
    index = torch.arange(rows * cols, device=device).view(rows, cols)
    right = torch.stack([index[:, :-1].reshape(-1), index[:, 1:].reshape(-1)])
    down = torch.stack([index[:-1, :].reshape(-1), index[1:, :].reshape(-1)])
    one = torch.cat([right, down], dim=1)
    one = torch.cat([one, one.flip(0)], dim=1)
    offsets = (torch.arange(num_samples, device=device) * rows * cols).repeat_interleave(one.shape[1])
    return one.repeat(1, num_samples) + offsets


@functools.lru_cache(maxsize=16)
def _grid_layout(
    num_samples: int, rows: int, cols: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """``(pos, position feature in [-1, 1], batch)`` of ``num_samples`` unit grids, built once per shape.

    The index structure of a batch of images depends on its shape alone; rebuilding it on
    every training step was a dozen small ops. Callers must not modify the tensors in place.
    """
    r = torch.arange(rows, device=device, dtype=dtype)
    c = torch.arange(cols, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).view(-1, 2)
    pos = grid.repeat(num_samples, 1)
    position = 2 * pos / torch.tensor([max(rows - 1, 1), max(cols - 1, 1)], device=device, dtype=dtype) - 1
    batch = torch.arange(num_samples, device=device).repeat_interleave(rows * cols)
    return pos, position, batch


_grid_edges_cached = functools.lru_cache(maxsize=16)(grid_edges)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflect padding (radius 3 sigma, clipped to the image)."""
    radius = max(1, min(int(3 * sigma + 0.5), images.shape[-1] - 1, images.shape[-2] - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), vertical, groups=channels)


def _check_images(images: Any, what: str, channels: int | None) -> Tensor:
    if not isinstance(images, Tensor):
        raise BottleneckError(f"{what} must be a [B, C, H, W] float tensor (got {describe(images)})")
    if images.dim() != 4:
        hint = " (a single image? add the batch dimension with x.unsqueeze(0))" if images.dim() == 3 else ""
        raise BottleneckError(f"{what} must be a 4-d [B, C, H, W] tensor (got {describe(images)}){hint}")
    if not images.is_floating_point():
        raise BottleneckError(
            f"{what} must be floating point, e.g. scaled to [0, 1] with x.float() / 255 "
            f"(got {describe(images)})"
        )
    if 0 in images.shape:
        raise BottleneckError(f"{what} is empty: every image needs >= 1 channel and pixel (got {describe(images)})")
    if channels is not None and images.shape[1] != channels:
        raise BottleneckError(
            f"the model takes {channels}-channel images; {what} has {images.shape[1]} channels "
            f"(got {describe(images)})"
        )
    finite = torch.isfinite(images)
    if not finite.all():
        bad = int((~finite).sum())
        raise BottleneckError(f"{what} holds {bad} NaN or Inf pixel values; clean the images first")
    return images


class ImageModality(Modality):
    """Adapter for image classifiers: CNNs, any ``nn.Module`` on ``[B, C, H, W]``, and ViTs.

    :param patch_size: side of a square unit in pixels (``None``: automatic, or the ViT's).
    :param pad: pad H and W up to a multiple of the patch size instead of raising.
    :param blur_sigma: Gaussian sigma of the ``blur`` baseline in pixels (``None``: 2 x patch).
    :param encoder: the scorer reads features from a small CNN over the unit grid
        (:class:`~bottleneck_image.encoder.GridEncoder`, default) rather than each
        patch's pixels alone, so patterns that straddle patch borders are recognised.
    :param channels: channel count the model takes (checked on every input), if known.
    :param layout: the ViT's patch layout when the model is a ViT.
    :param attention_gradient_share: ViTs only: the share of a batch's images whose patch
        gates get their gradient through each attention layer, drawn anew per layer and
        scaled to keep the gradient unbiased (1, the default: every image; see
        :mod:`~bottleneck.key_bias_attention`). Below 1 a training step costs less and its
        gate gradient is noisier: 0.25 took the speed bench's ViT step from 1.33 to 1.22
        times the plain one.
    """

    name = "image"
    baselines = CNN_BASELINES
    #: Joint training on images needs the model to learn the task before the budget bites
    #: (keep target falls from 0.9 over the first half of training), and a stiffer keep-rate
    #: controller: one image has few units, each gate's task gradient dwarfs its share of the
    #: keep term, and with the default gain every gate saturates open, then all close at once.
    layer_defaults: ClassVar[dict[str, Any]] = {"keep_warmup": 0.5, "constraint_damping": 10.0}

    def __init__(
        self,
        patch_size: int | None = None,
        pad: bool = False,
        blur_sigma: float | None = None,
        encoder: bool = True,
        channels: int | None = None,
        layout: PatchLayout | None = None,
        attention_gradient_share: float = 1.0,
    ) -> None:
        if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1):
            raise BottleneckError(f"patch_size must be a positive int (got {patch_size!r})")
        if blur_sigma is not None and not (isinstance(blur_sigma, (int, float)) and blur_sigma > 0):
            raise BottleneckError(f"blur_sigma must be a positive number (got {blur_sigma!r})")
        self.patch_size, self.pad, self.blur_sigma = patch_size, bool(pad), blur_sigma
        self.encoder = bool(encoder)
        self.channels, self.layout = channels, layout
        self.attention_gradient_share = check_gradient_share(attention_gradient_share, "attention_gradient_share")
        if layout is None and self.attention_gradient_share != 1.0:
            raise BottleneckError(
                "attention_gradient_share applies to a ViT's patch gates, which train through its attention; "
                f"this model has no patch tokens (got attention_gradient_share={attention_gradient_share!r})"
            )
        if layout is not None:
            self.baselines = ("remove", *CNN_BASELINES)

    # -- configuration --------------------------------------------------------
    def configure(self, model: nn.Module, **options: Any) -> ImageModality:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise BottleneckError(f"image modality options are {list(OPTIONS)} (got unknown {unknown})")
        layout = find_patch_layout(model)
        patch_size = options.get("patch_size")
        if layout is not None:
            if patch_size is not None and patch_size != layout.patch_size:
                raise BottleneckError(
                    f"the ViT's patch tokens are the units, so patch_size must be its patch size "
                    f"{layout.patch_size} (got {patch_size})"
                )
            if options.get("pad"):
                raise BottleneckError("pad=True cannot be used with a ViT: it takes one fixed image size")
            patch_size, channels = layout.patch_size, layout.num_channels
        else:
            first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
            channels = first_conv.in_channels if first_conv is not None else None
        return ImageModality(
            patch_size, bool(options.get("pad", False)), options.get("blur_sigma"),
            bool(options.get("encoder", True)), channels, layout, options.get("attention_gradient_share", 1.0),
        )

    def make_baseline(self, baseline: str) -> nn.Module | None:
        if baseline == "mean":
            return RunningChannelMean(dim=1)
        if baseline == "learned":
            return LearnedChannelValue(dim=1)
        return None

    def make_encoder(self) -> nn.Module | None:
        return GridEncoder() if self.encoder else None

    def can_drop(self) -> bool:
        return self.layout is not None

    def accepts(self, inputs: Any) -> bool:
        return isinstance(inputs, Tensor) and inputs.dim() == 4

    # -- inputs -> units ------------------------------------------------------
    def patch_for(self, height: int, width: int) -> int:
        """The patch size used for ``height x width`` images (checks divisibility)."""
        size = self.patch_size or auto_patch_size(height, width)
        if size > max(height, width):
            raise BottleneckError(f"patch_size {size} is larger than the {height}x{width} images")
        if not self.pad and (height % size or width % size):
            raise BottleneckError(
                f"image size {height}x{width} is not a multiple of patch_size {size}; choose a "
                f"patch_size dividing both, or attach(..., pad=True) to pad the grid"
            )
        if self.layout is not None and (height, width) != tuple(self.layout.image_size):
            raise BottleneckError(
                f"the ViT takes {self.layout.image_size[0]}x{self.layout.image_size[1]} images "
                f"(got {height}x{width})"
            )
        return size

    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        images = _check_images(inputs, "images", self.channels)
        return self._units(images, self.patch_for(*images.shape[-2:]), with_graph, kind="input")

    def _units(self, images: Tensor, patch: int, with_graph: bool, kind: str) -> Units:
        num_samples, _, height, width = images.shape
        pad_h, pad_w = (-height) % patch, (-width) % patch
        padded = F.pad(images.detach(), (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images.detach()
        rows, cols = padded.shape[-2] // patch, padded.shape[-1] // patch
        values = rearrange(padded, "b c (r p) (s q) -> (b r s) (c p q)", p=patch, q=patch)
        raw = values  # a hidden layer's own features, before the scaling below (bottleneck.fbi reads them)
        if kind == "hidden":  # feature maps have arbitrary scale: standardise per sample
            scale = padded.reshape(num_samples, -1).pow(2).mean(-1).sqrt().clamp(min=1e-6)
            padded = padded / scale.view(-1, 1, 1, 1)
            values = values / scale.repeat_interleave(rows * cols).unsqueeze(-1)
        pos, position, batch = _grid_layout(num_samples, rows, cols, images.device, values.dtype)
        edge_index = _grid_edges_cached(rows, cols, num_samples, images.device) if with_graph else None
        return Units(
            x=torch.cat([values, position], dim=-1), batch=batch, num_samples=num_samples, pos=pos,
            edge_index=edge_index,
            meta={"kind": kind, "patch": patch, "grid": (rows, cols), "size": (height, width), "image": padded,
                  **({"features": raw} if kind == "hidden" else {})},
        )

    # -- gates -> inputs ------------------------------------------------------
    def gate_map(self, values: Tensor, units: Units) -> Tensor:
        """``[N]`` per-unit values -> ``[B, 1, H, W]`` per-pixel map (each pixel takes its unit's value)."""
        rows, cols = units.meta["grid"]
        patch, (height, width) = units.meta["patch"], units.meta["size"]
        grid = values.view(units.num_samples, 1, rows, cols)
        if patch > 1:
            grid = grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
        return grid[..., :height, :width]

    def pixel_map(self, values: Tensor, units: Units) -> Tensor:
        """``[N]`` per-unit values -> ``[B, H, W]``, for pictures and pixel-level metrics."""
        return self.gate_map(values, units)[:, 0]

    def unit_truth(self, pixels: Tensor, units: Units) -> Tensor:
        """``[B, H, W]`` bool per-pixel ground truth -> ``[N]`` bool: units holding any true pixel."""
        rows, cols = units.meta["grid"]
        patch, (height, width) = units.meta["patch"], units.meta["size"]
        if pixels.shape != (units.num_samples, height, width):
            raise BottleneckError(
                f"expected ground truth of shape [{units.num_samples}, {height}, {width}] (got {describe(pixels)})"
            )
        padded = F.pad(pixels.float(), (0, cols * patch - width, 0, rows * patch - height))
        return F.max_pool2d(padded.unsqueeze(1), patch).reshape(-1) > 0

    def _baseline_value(self, images: Tensor, baseline: str, patch: int, state: nn.Module | None) -> Tensor:
        if baseline in ("zero", "remove"):
            return torch.zeros((), dtype=images.dtype, device=images.device)
        if baseline == "blur":
            return gaussian_blur(images, self.blur_sigma or 2.0 * patch)
        if state is None:
            raise BottleneckError(f"the {baseline!r} baseline needs its state module (make_baseline)")
        return state(images)

    def apply_gates(self, inputs: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        self.check_baseline(baseline)
        if baseline == "remove" and gates.requires_grad:
            # training: each token's attention weight is multiplied by its gate and the
            # pixels stay whole, so a closed patch's gradient says what attending it would do
            open_ = (gates > 0).view(units.num_samples, -1)
            return OpenPatches(inputs, open_, gates.to(inputs.dtype).view(units.num_samples, -1))
        gate = self.gate_map(gates.to(inputs.dtype), units)
        value = self._baseline_value(inputs, baseline, units.meta["patch"], state.get("state"))
        masked = gate * inputs + (1.0 - gate) * value
        if baseline == "remove":
            return OpenPatches(masked, (gates > 0).view(units.num_samples, -1))
        return masked

    def drop_units(self, inputs: Any, units: Units, keep: Tensor) -> Any:
        if self.layout is None:
            raise BottleneckError(
                "a convolutional model cannot skip pixels: only ViT-style models (patch tokens) take "
                "a reduced input; MaskedModel.sparse applies hard gates for other models"
            )
        return KeptPatches(inputs, keep.view(units.num_samples, -1))

    def call_model(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, KeptPatches):
            return forward_on_kept_patches(model, inputs.pixels, inputs.kept, *args, **kwargs)
        if isinstance(inputs, OpenPatches):
            return forward_with_open_patches(model, inputs.pixels, inputs.open, *args, gates=inputs.gates,
                                             gradient_share=self.attention_gradient_share, **kwargs)
        return model(inputs, *args, **kwargs)

    # -- hidden-layer insertion -----------------------------------------------
    def hidden_to_units(self, features: Any, *, with_graph: bool = True, inputs: Units | None = None) -> Units:
        if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
            raise BottleneckError(
                "hidden insertion on an image model needs a layer whose output is a [B, C, H, W] "
                f"float feature map (got {describe(features)})"
            )
        return self._units(features, 1, with_graph, kind="hidden")

    def apply_hidden_gates(self, features: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        if baseline not in HIDDEN_BASELINES:
            raise BottleneckError(
                f"baseline at a hidden layer must be one of {list(HIDDEN_BASELINES)} (got {baseline!r})"
            )
        gate = self.gate_map(gates.to(features.dtype), units)
        value = self._baseline_value(features, baseline, 1, state.get("state"))
        return gate * features + (1.0 - gate) * value

    def relevance_to_input(self, values: Tensor, hidden: Units, inputs: Units) -> Tensor:
        rows, cols = inputs.meta["grid"]
        patch = inputs.meta["patch"]
        grid = values.view(hidden.num_samples, 1, *hidden.meta["grid"]).float()
        upsampled = F.interpolate(grid, size=(rows * patch, cols * patch), mode="bilinear", align_corners=False)
        pooled = F.avg_pool2d(upsampled, patch) if patch > 1 else upsampled
        return pooled.reshape(-1).to(values.dtype)

    # -- pictures -------------------------------------------------------------
    def render(self, inputs: Any, units: Units, relevance: Tensor, out_dir: Path, **options: Any) -> list[Path]:
        """A heatmap overlay PNG per image (up to ``max_samples``, default 8) and one grid PNG.

        :param options: ``max_samples``, ``prefix`` (default ``"image"``), ``gt``
            (``[B, H, W]`` bool ground truth), ``kept`` (``[N]`` bool kept units;
            default: the top ``keep`` fraction by relevance, ``keep`` default 0.3).
        """
        from bottleneck.segment import segment_topk_mask

        from .render import render_grid, render_overlay

        max_samples = int(options.get("max_samples", 8))
        prefix = str(options.get("prefix", "image"))
        gt = options.get("gt")
        kept = options.get("kept")
        if kept is None:
            kept = segment_topk_mask(relevance, units.batch.cpu(), units.num_samples, float(options.get("keep", 0.3)))
        cpu_units = units.with_(x=units.x.cpu(), batch=units.batch.cpu())
        images = inputs.pixels if isinstance(inputs, (OpenPatches, KeptPatches)) else inputs
        images = images.detach().cpu()[:max_samples]
        maps = self.pixel_map(relevance.cpu().float(), cpu_units)[:max_samples]
        kept_maps = self.pixel_map(kept.cpu().float(), cpu_units)[:max_samples] > 0.5
        truth = gt.detach().cpu()[:max_samples] if gt is not None else None
        paths = [
            render_overlay(images[i], maps[i], out_dir / f"{prefix}_{i:03d}.png", title=f"sample {i}",
                           gt=None if truth is None else truth[i])
            for i in range(images.shape[0])
        ]
        paths.append(render_grid(images, maps, kept_maps, out_dir / f"{prefix}_grid.png", gt=truth))
        return paths
