"""Built-in text plugin for bottleneck, loaded through the ``bottleneck`` entry point.

Provides the ``text`` modality (``input_ids`` with ``attention_mask`` as tensors,
dicts or a ``BatchEncoding``, or ``inputs_embeds``; tokens as units, padding
excluded; the mask at the output of the model's input embedding; the sparse
path re-packs each sequence shorter), the reference models ``BiLSTMClassifier``
and a small BERT, embedded corpora with per-token ground truth, an offline
tokenizer, HTML and terminal renderers, and ``bottleneck demo text``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from bottleneck.hookspecs import hookimpl

from .adapter import TextModality

if TYPE_CHECKING:
    from bottleneck.cues import Cue
    from bottleneck.demo import Demo
    from bottleneck.modality import Modality

__version__ = "0.1.0"


@hookimpl
def bottleneck_register_modalities(register: Callable[[Modality], None]) -> None:
    register(TextModality())


@hookimpl
def bottleneck_register_demos(register: Callable[[Demo], None]) -> None:
    from .audit import prepare_audit
    from .demo import DEMO
    from .speed import prepare_speed
    from .testbed import prepare  # builds on the demo module, so it is attached here

    register(replace(DEMO, testbed=prepare, audit=prepare_audit, speed=prepare_speed))


@hookimpl
def bottleneck_register_cues(register: Callable[[Cue], None]) -> None:
    from .cues import PlantedWord

    register(PlantedWord())
