"""The core's own plugin: the built-in gates and the modality-detection fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .gates import BUILTIN_GATES, Gate
from .hookspecs import hookimpl


@hookimpl
def bottleneck_register_gates(register: Callable[[type[Gate]], None]) -> None:
    for gate in BUILTIN_GATES:
        register(gate)


@hookimpl(trylast=True)
def bottleneck_detect_modality(inputs: Any) -> str | None:
    from .plugins import modalities

    for name, modality in modalities().items():
        if modality.accepts(inputs):
            return name
    return None
