"""Built-in image plugin for bottleneck, loaded through the ``bottleneck`` entry point.

Provides the ``image`` modality (``[B, C, H, W]`` float images cut into pixels or
patches, 4-neighbour unit graph; CNNs, any image ``nn.Module``, and Hugging Face
ViTs whose patch tokens are removed before the encoder in sparse inference;
hidden insertion at a CNN feature map), the reference models ``SmallResNet``
and a tiny ViT, embedded data (a planted-evidence set with per-pixel ground
truth and scikit-learn's 8x8 digits), a renderer, ``bottleneck demo image`` and two
bias cues (a coloured corner patch and a colour tint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from bottleneck.hookspecs import hookimpl

from .adapter import ImageModality

if TYPE_CHECKING:
    from bottleneck.cues import Cue
    from bottleneck.demo import Demo
    from bottleneck.modality import Modality

__version__ = "0.1.0"


@hookimpl
def bottleneck_register_modalities(register: Callable[[Modality], None]) -> None:
    register(ImageModality())


@hookimpl
def bottleneck_register_demos(register: Callable[[Demo], None]) -> None:
    from .audit import prepare_audit
    from .demo import DEMO
    from .speed import prepare_speed
    from .testbed import prepare  # builds on the demo module, so it is attached here

    register(replace(DEMO, testbed=prepare, audit=prepare_audit, speed=prepare_speed))


@hookimpl
def bottleneck_register_cues(register: Callable[[Cue], None]) -> None:
    from .cues import ColourTint, CornerPatch

    register(CornerPatch())
    register(ColourTint())
