"""Built-in point-cloud plugin for bottleneck, loaded through the ``bottleneck`` entry point.

Provides the ``pointcloud`` modality (PyG ``Data``/``Batch`` and dense ``[B, N, 3]``
inputs, points as units, kNN unit graph), the reference models PointNet and
DGCNN, an embedded procedural dataset with ground truth, a renderer and the
``bottleneck demo pointcloud`` job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from bottleneck.hookspecs import hookimpl

from .adapter import PointCloudModality

if TYPE_CHECKING:
    from bottleneck.cues import Cue
    from bottleneck.demo import Demo
    from bottleneck.modality import Modality

__version__ = "0.1.0"


@hookimpl
def bottleneck_register_modalities(register: Callable[[Modality], None]) -> None:
    register(PointCloudModality())


@hookimpl
def bottleneck_register_demos(register: Callable[[Demo], None]) -> None:
    from .audit import prepare_audit
    from .demo import DEMO
    from .speed import prepare_speed
    from .testbed import prepare  # builds on the demo module, so it is attached here

    register(replace(DEMO, testbed=prepare, audit=prepare_audit, speed=prepare_speed))


@hookimpl
def bottleneck_register_cues(register: Callable[[Cue], None]) -> None:
    from .cues import PointCluster

    register(PointCluster())
