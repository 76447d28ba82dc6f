"""Every hook a bottleneck plugin can implement.

A plugin is any module or object with functions named after these specs and
decorated with :data:`bottleneck.hookimpl`. Built-in plugins and third-party
ones are loaded the same way: through the ``bottleneck`` entry-point group.

Discovery hooks take a ``register`` callback that the core validates (the
pattern of llm's ``register_models``); dispatch hooks are ``firstresult`` and
return ``None`` to pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .cues import Cue
    from .demo import Demo
    from .gates import Gate
    from .modality import Modality

PROJECT = "bottleneck"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bottleneck_register_modalities(register: Callable[[Modality], None]) -> None:
    """Register the modalities (input adapters) this plugin provides.

    :param register: call it once per :class:`~bottleneck.modality.Modality`
        instance; a name already taken raises :class:`~bottleneck.BottleneckError`.
    """


@hookspec
def bottleneck_register_gates(register: Callable[[type[Gate]], None]) -> None:
    """Register gate distributions by class.

    :param register: call it with a :class:`~bottleneck.gates.Gate` subclass whose
        ``name`` is not taken yet.
    """


@hookspec
def bottleneck_register_demos(register: Callable[[Demo], None]) -> None:
    """Register demos that ``bottleneck demo NAME`` runs.

    :param register: call it with a :class:`~bottleneck.demo.Demo`.
    """


@hookspec
def bottleneck_register_cues(register: Callable[[Cue], None]) -> None:
    """Register bias cues (spurious signals) that audits can plant into a modality's data.

    :param register: call it with a :class:`~bottleneck.cues.Cue` instance whose
        ``name`` is not taken yet.
    """


@hookspec(firstresult=True)
def bottleneck_detect_modality(inputs: Any) -> str | None:
    """Name the modality of ``inputs`` when the user did not say.

    Stops at first non-None result. The core's fallback (``trylast``) asks each
    registered modality's ``accepts``.

    :param inputs: the first positional argument the wrapped model is called with.
    :return: a registered modality name, or ``None`` to pass.
    """
