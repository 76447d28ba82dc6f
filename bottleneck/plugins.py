"""The plugin manager: lazy, idempotent loading of built-in and third-party plugins.

Built-in modalities are registered through the ``bottleneck`` entry-point group
exactly like third-party ones. Entry points load one by one: a plugin that
fails to import or declares a misspelt hook is skipped with a warning naming it
and its distribution, and everything else keeps working.

Environment variables:

* ``BOTTLENECK_DISABLE_PLUGIN_AUTOLOAD=1`` — load no entry points (like pytest's
  ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``); combine with ``BOTTLENECK_PLUGINS``.
* ``BOTTLENECK_PLUGINS=mod1,mod2`` — import these modules and register them as plugins.
* ``BOTTLENECK_STRICT_PLUGINS=1`` — a broken plugin raises instead of warning.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .cues import Cue
from .demo import Demo
from .errors import BottleneckError, describe
from .gates import Gate
from .modality import Modality

ENTRY_POINT_GROUP = "bottleneck"
DISABLE_AUTOLOAD_ENV = "BOTTLENECK_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "BOTTLENECK_PLUGINS"
STRICT_ENV = "BOTTLENECK_STRICT_PLUGINS"
#: Core plugins registered directly (they live inside the core package).
DEFAULT_PLUGINS: tuple[str, ...] = ("bottleneck.builtin",)


class PluginWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, for ``bottleneck plugins``."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def new_plugin_manager(*, autoload: bool | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with the hookspecs, core plugins and (optionally) entry points.

    :param autoload: load entry points; ``None`` follows ``BOTTLENECK_DISABLE_PLUGIN_AUTOLOAD``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.bottleneck_dists = {}  # type: ignore[attr-defined]
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload is None:
        autoload = not _truthy(os.environ.get(DISABLE_AUTOLOAD_ENV))
    if autoload:
        load_entry_points(pm)
    for module_name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if pm.get_plugin(module_name) is None:
            _load_one(pm, module_name, lambda name=module_name: importlib.import_module(name), None)
    pm.check_pending()
    return pm


def _fail(message: str, error: BaseException) -> None:
    if _truthy(os.environ.get(STRICT_ENV)):
        raise BottleneckError(message) from error
    warnings.warn(message, PluginWarning, stacklevel=3)


def _load_one(pm: pluggy.PluginManager, name: str, load: Any, dist: Any) -> None:
    where = f" (distribution {dist.metadata['Name']} {dist.version})" if dist is not None else ""
    try:
        plugin = load()
    except Exception as error:  # one broken plugin must not break the library
        _fail(f"bottleneck plugin {name!r}{where} failed to import and was skipped: "
              f"{type(error).__name__}: {error}", error)
        return
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except Exception as error:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        _fail(f"bottleneck plugin {name!r}{where} is invalid and was skipped: "
              f"{type(error).__name__}: {error}", error)
        return
    pm.bottleneck_dists[name] = dist  # type: ignore[attr-defined]


def load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load every ``bottleneck`` entry point not yet registered (idempotent)."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        _load_one(pm, ep.name, ep.load, getattr(ep, "dist", None))


_plugin_manager: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _plugin_manager
    if _plugin_manager is None:
        _plugin_manager = new_plugin_manager()
    return _plugin_manager


@contextmanager
def use_plugin_manager(pm: pluggy.PluginManager) -> Iterator[pluggy.PluginManager]:
    """Make ``pm`` the process-wide manager inside the block (for tests and embedding)."""
    global _plugin_manager
    previous, _plugin_manager = _plugin_manager, pm
    try:
        yield pm
    finally:
        _plugin_manager = previous


def register(plugin: Any, name: str | None = None) -> str:
    """Register an in-process plugin; a misspelt hook raises at once."""
    pm = get_plugin_manager()
    registered = pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        pm.unregister(plugin)
        raise BottleneckError(f"plugin {registered!r} is invalid: {error}") from error
    return registered  # type: ignore[return-value]


def unregister(plugin: Any = None, name: str | None = None) -> None:
    """Remove an in-process plugin registered with :func:`register`."""
    get_plugin_manager().unregister(plugin, name=name)


def _collect(hook_name: str, is_valid: Any, expected: str) -> dict[str, Any]:
    """Call a discovery hook with a validating ``register`` callback; returns ``{name: item}``."""
    found: dict[str, Any] = {}

    def register_one(item: Any) -> None:
        if not is_valid(item):
            raise BottleneckError(f"{hook_name} expects {expected} (got {describe(item)})")
        name = item.name
        if not name:
            raise BottleneckError(f"{hook_name}: {item!r} has no name")
        if name in found:
            raise BottleneckError(f"{hook_name}: the name {name!r} is registered twice")
        found[name] = item

    getattr(get_plugin_manager().hook, hook_name)(register=register_one)
    return found


def modalities() -> dict[str, Modality]:
    """Registered modalities by name."""
    return _collect("bottleneck_register_modalities", lambda m: isinstance(m, Modality), "a Modality instance")


def gate_types() -> dict[str, type[Gate]]:
    """Registered gate classes by name."""
    return _collect(
        "bottleneck_register_gates", lambda g: isinstance(g, type) and issubclass(g, Gate), "a Gate subclass"
    )


def demos() -> dict[str, Demo]:
    """Registered demos by name."""
    return _collect("bottleneck_register_demos", lambda d: isinstance(d, Demo), "a Demo")


def cues() -> dict[str, Cue]:
    """Registered bias cues by name."""
    return _collect("bottleneck_register_cues", lambda c: isinstance(c, Cue), "a Cue instance")


def get_cue(name: str, modality: str | None = None) -> Cue:
    """The registered cue ``name`` (for ``modality``, when given), or an error listing the known ones."""
    known = cues()
    if name not in known or (modality is not None and known[name].modality != modality):
        choices = sorted(n for n, c in known.items() if modality is None or c.modality == modality)
        where = f" for modality {modality!r}" if modality else ""
        raise BottleneckError(f"unknown cue {name!r}{where}; registered cues: {choices or 'none'}")
    return known[name]


def get_modality(name: str) -> Modality:
    """The registered modality ``name``, or a :class:`BottleneckError` listing the known ones."""
    known = modalities()
    if name not in known:
        raise BottleneckError(
            f"unknown modality {name!r}; registered modalities: {sorted(known) or 'none'} "
            f"(is its plugin installed, or is {DISABLE_AUTOLOAD_ENV} set?)"
        )
    return known[name]


def make_gate(name: str, **kwargs: Any) -> Gate:
    """Instantiate the registered gate ``name``."""
    known = gate_types()
    if name not in known:
        raise BottleneckError(f"gate must be one of {sorted(known)} (got {name!r})")
    try:
        return known[name](**kwargs)
    except TypeError as error:
        options = sorted(k for k in kwargs if k != "keep")
        raise BottleneckError(f"gate {name!r} does not take the options {options}: {error}") from None


def detect_modality(inputs: Any) -> str:
    """The modality name of ``inputs``, or a :class:`BottleneckError` saying what was given."""
    name = get_plugin_manager().hook.bottleneck_detect_modality(inputs=inputs)
    if name is None:
        raise BottleneckError(
            f"cannot detect the modality of {describe(inputs)}; pass modality= one of "
            f"{sorted(modalities())}"
        )
    return name


def plugin_info() -> list[PluginInfo]:
    """Every registered plugin with its distribution, version and implemented hooks."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = pm.bottleneck_dists.get(name)  # type: ignore[attr-defined]
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        rows.append(PluginInfo(
            name=name,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
            hooks=hooks,
        ))
    return rows
