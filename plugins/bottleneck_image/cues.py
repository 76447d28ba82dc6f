"""Image bias cues: a coloured corner patch and a colour tint, one colour per class.

Both draw their colours from :func:`class_colours` (evenly spaced hues, or grey
levels for one-channel images), so variant ``c`` of a cue is the same colour in
every image and a model can learn it as a shortcut for class ``c``.
"""

from __future__ import annotations

import colorsys
from typing import Any

import torch
from torch import Tensor

from bottleneck.cues import Cue, CueAssignment, Planted
from bottleneck.errors import BottleneckError, describe

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def class_colours(num_classes: int, channels: int) -> Tensor:
    """``[num_classes, channels]`` distinct colours in [0, 1]: evenly spaced hues, or grey levels."""
    if channels == 1:
        return torch.linspace(0.15, 0.95, num_classes).view(-1, 1)
    if channels != 3:
        raise BottleneckError(f"image cues support 1- or 3-channel images (got {channels} channels)")
    return torch.tensor([colorsys.hsv_to_rgb(c / num_classes, 0.9, 1.0) for c in range(num_classes)],
                        dtype=torch.float32)


def _check(images: Any, assignment: CueAssignment) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise BottleneckError(f"image cues need [B, C, H, W] float images (got {describe(images)})")
    if assignment.present.shape != (images.shape[0],):
        raise BottleneckError(
            f"cue assignment is for {assignment.present.numel()} samples, the batch has {images.shape[0]}"
        )
    return images


class CornerPatch(Cue):
    """A ``size`` x ``size`` square of the class colour in one corner of the image.

    :param size: side of the square in pixels.
    :param corner: one of ``top_left``, ``top_right``, ``bottom_left``, ``bottom_right``.
    """

    name = "corner_patch"
    modality = "image"

    def __init__(self, size: int = 4, corner: str = "top_left") -> None:
        if corner not in CORNERS:
            raise BottleneckError(f"corner must be one of {list(CORNERS)} (got {corner!r})")
        if not isinstance(size, int) or size < 1:
            raise BottleneckError(f"size must be a positive number of pixels (got {size!r})")
        self.size, self.corner = size, corner

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns of the square in an image of ``height`` x ``width``."""
        if self.size > min(height, width):
            raise BottleneckError(f"a {self.size}-pixel corner patch does not fit a {height}x{width} image")
        rows = slice(0, self.size) if self.corner.startswith("top") else slice(height - self.size, height)
        cols = slice(0, self.size) if self.corner.endswith("left") else slice(width - self.size, width)
        return rows, cols

    def plant(self, inputs: Any, assignment: CueAssignment, num_classes: int) -> Planted:
        images = _check(inputs, assignment)
        b, c, h, w = images.shape
        rows, cols = self.region(h, w)
        colours = class_colours(num_classes, c).to(images)[assignment.variant.to(images.device)]  # [B, C]
        out = images.clone()
        present = assignment.present.to(images.device)
        patch = colours[:, :, None, None].expand(b, c, self.size, self.size)
        out[:, :, rows, cols] = torch.where(present[:, None, None, None], patch, images[:, :, rows, cols])
        flags = torch.zeros(b, h, w, dtype=torch.bool, device=images.device)
        flags[:, rows, cols] = present[:, None, None]
        return Planted(out, flags)


class ColourTint(Cue):
    """The whole image blended towards the class colour: ``(1 - strength) * x + strength * colour``.

    Every pixel carries the tint, so its flags cover the whole image (area share 1):
    the audit measures this cue by its counterfactual accuracies, not by relevance share.

    :param strength: blend weight of the colour, in (0, 1).
    """

    name = "tint"
    modality = "image"

    def __init__(self, strength: float = 0.25) -> None:
        if not 0.0 < strength < 1.0:
            raise BottleneckError(f"strength must be in (0, 1) (got {strength!r})")
        self.strength = float(strength)

    def plant(self, inputs: Any, assignment: CueAssignment, num_classes: int) -> Planted:
        images = _check(inputs, assignment)
        b, c, h, w = images.shape
        colours = class_colours(num_classes, c).to(images)[assignment.variant.to(images.device)]
        tinted = (1.0 - self.strength) * images + self.strength * colours[:, :, None, None]
        present = assignment.present.to(images.device)
        out = torch.where(present[:, None, None, None], tinted, images)
        flags = present[:, None, None].expand(b, h, w).clone()
        return Planted(out, flags)
