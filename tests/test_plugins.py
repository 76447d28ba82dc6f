"""The plugin system: in-process plugins, entry points, broken plugins, env vars, meta-tests."""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import bottleneck
from bottleneck import hookspecs
from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.plugins import (
    PluginWarning,
    demos,
    detect_modality,
    gate_types,
    get_modality,
    modalities,
    new_plugin_manager,
    plugin_info,
    use_plugin_manager,
)
from bottleneck.units import Units, batch_from_counts

HOOK_NAMES = sorted(name for name in dir(hookspecs) if name.startswith("bottleneck_"))


class VectorSets(bottleneck.Modality):
    """A tiny modality for tests: ``[B, N, F]`` tensors whose rows are units, zero baseline."""

    name = "vector_sets"
    baselines = ("zero",)

    def accepts(self, inputs: Any) -> bool:
        return isinstance(inputs, torch.Tensor) and inputs.dim() == 3 and inputs.shape[-1] == 5

    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        b, n, f = inputs.shape
        return Units(inputs.reshape(-1, f), batch_from_counts(torch.full((b,), n)), b)

    def apply_gates(self, inputs, units, gates, baseline):
        return inputs * gates.view(inputs.shape[0], -1, 1)

    def drop_units(self, inputs, units, keep):
        return inputs.reshape(-1, inputs.shape[-1])[keep].view(inputs.shape[0], -1, inputs.shape[-1])


class InlinePlugin:
    @bottleneck.hookimpl
    def bottleneck_register_modalities(self, register):
        register(VectorSets())


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *extra: importlib.metadata.EntryPoint) -> None:
    real = importlib.metadata.entry_points

    def entry_points(**params: Any):
        found = list(real(**params))
        return found + [ep for ep in extra if ep.group == params.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


# -- one test per hook (datasette-style meta-tests check they exist) -------------

def test_bottleneck_register_modalities(plugin_manager) -> None:
    assert "pointcloud" in modalities()
    plugin = InlinePlugin()
    bottleneck.register(plugin, name="inline")
    try:
        assert isinstance(get_modality("vector_sets"), VectorSets)
        masked = bottleneck.attach(torch.nn.Flatten(), "vector_sets", keep=0.5)
        out = masked(torch.randn(2, 6, 5))
        assert out.gates.shape == (12,)
        out.ib_loss.backward()
    finally:
        bottleneck.unregister(plugin)
    assert "vector_sets" not in modalities()


def test_bottleneck_register_gates(plugin_manager) -> None:
    assert {"hard_concrete", "concrete", "gaussian", "topk"} <= set(gate_types())


def test_bottleneck_register_demos(plugin_manager) -> None:
    assert "pointcloud" in demos()


def test_bottleneck_register_cues(plugin_manager) -> None:
    from bottleneck.cues import Cue, Planted
    from bottleneck.plugins import cues, get_cue

    assert {"corner_patch", "tint", "cluster"} <= set(cues())
    assert get_cue("corner_patch", "image").modality == "image"

    class Stripe(Cue):
        name, modality = "stripe", "image"

        def plant(self, inputs, assignment, num_classes):
            return Planted(inputs, torch.zeros(inputs.shape[0], *inputs.shape[2:], dtype=torch.bool))

    class ThirdParty:
        @bottleneck.hookimpl
        def bottleneck_register_cues(self, register):
            register(Stripe())

    plugin = ThirdParty()
    bottleneck.register(plugin)
    try:
        assert isinstance(get_cue("stripe"), Stripe)
    finally:
        bottleneck.unregister(plugin)
    with pytest.raises(BottleneckError, match=r"unknown cue 'stripe'; registered cues: \['cluster', 'corner_patch', 'tint'"):
        get_cue("stripe")
    with pytest.raises(BottleneckError, match="unknown cue 'tint' for modality 'text'"):
        get_cue("tint", "text")


def test_bottleneck_detect_modality(plugin_manager) -> None:
    assert detect_modality(torch.randn(2, 10, 3)) == "pointcloud"

    class Override:
        @bottleneck.hookimpl
        def bottleneck_detect_modality(self, inputs):
            return "pointcloud" if isinstance(inputs, str) else None

    plugin = Override()
    bottleneck.register(plugin)
    try:
        assert detect_modality("anything") == "pointcloud"
    finally:
        bottleneck.unregister(plugin)
    with pytest.raises(BottleneckError, match="cannot detect the modality of str"):
        detect_modality("anything")


def test_every_hook_is_documented_and_tested() -> None:
    here = globals()
    for name in HOOK_NAMES:
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec) or ""
        assert doc.splitlines()[0].strip(), f"{name} needs a summary line"
        for parameter in inspect.signature(spec).parameters:
            assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"
        if spec.bottleneck_spec["firstresult"] if hasattr(spec, "bottleneck_spec") else False:
            assert "Stops at first non-None result" in doc
        assert f"test_{name}" in here, f"no test named test_{name}"


# -- entry points -----------------------------------------------------------------

def test_plugin_loaded_through_a_faked_entry_point(tmp_path, monkeypatch) -> None:
    write_module(tmp_path, monkeypatch, "fake_vector_plugin", """
        import bottleneck
        from tests.test_plugins import VectorSets

        @bottleneck.hookimpl
        def bottleneck_register_modalities(register):
            register(VectorSets())
    """)
    fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("fake_vectors", "fake_vector_plugin", "bottleneck"))
    with use_plugin_manager(new_plugin_manager()):
        assert "vector_sets" in modalities()
        assert "pointcloud" in modalities()
        assert any(row.name == "fake_vectors" for row in plugin_info())


def test_broken_plugin_warns_by_name_and_the_rest_works(tmp_path, monkeypatch) -> None:
    write_module(tmp_path, monkeypatch, "broken_plugin", "raise RuntimeError('kaboom')\n")
    fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("broken", "broken_plugin", "bottleneck"))
    with pytest.warns(PluginWarning, match=r"plugin 'broken'.*failed to import.*RuntimeError: kaboom"):
        pm = new_plugin_manager()
    with use_plugin_manager(pm):
        assert "pointcloud" in modalities()
        masked = bottleneck.attach(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)), "pointcloud")
        assert masked(torch.randn(2, 16, 3)).output.shape == (2, 2)


def test_misspelt_hook_is_rejected_loudly(tmp_path, monkeypatch) -> None:
    write_module(tmp_path, monkeypatch, "misspelt_plugin", """
        import bottleneck

        @bottleneck.hookimpl
        def bottleneck_register_modalitys(register):
            pass
    """)
    fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("misspelt", "misspelt_plugin", "bottleneck"))
    with pytest.warns(PluginWarning, match=r"plugin 'misspelt'.*invalid.*bottleneck_register_modalitys"):
        pm = new_plugin_manager()
    assert pm.get_plugin("misspelt") is None

    class Misspelt:
        @bottleneck.hookimpl
        def bottleneck_detect_modalty(self, inputs):
            return None

    with pytest.warns(PluginWarning, match="misspelt"):
        pm = new_plugin_manager()
    with use_plugin_manager(pm), pytest.raises(BottleneckError, match="is invalid"):
        bottleneck.register(Misspelt())


def test_strict_mode_raises(tmp_path, monkeypatch) -> None:
    write_module(tmp_path, monkeypatch, "broken_plugin2", "import not_a_real_module_xyz\n")
    fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("broken2", "broken_plugin2", "bottleneck"))
    monkeypatch.setenv("BOTTLENECK_STRICT_PLUGINS", "1")
    with pytest.raises(BottleneckError, match="broken2.*ModuleNotFoundError"):
        new_plugin_manager()


def test_disable_autoload_and_allowlist(monkeypatch) -> None:
    monkeypatch.setenv("BOTTLENECK_DISABLE_PLUGIN_AUTOLOAD", "1")
    with use_plugin_manager(new_plugin_manager()):
        assert "pointcloud" not in modalities()
        with pytest.raises(BottleneckError, match="unknown modality 'pointcloud'.*DISABLE_PLUGIN_AUTOLOAD"):
            get_modality("pointcloud")
    monkeypatch.setenv("BOTTLENECK_PLUGINS", "bottleneck_pointcloud")
    with use_plugin_manager(new_plugin_manager()):
        assert "pointcloud" in modalities()


def test_plugin_manager_is_lazy_and_idempotent() -> None:
    from bottleneck import plugins

    first = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is first
    before = len(first.get_plugins())
    plugins.load_entry_points(first)
    assert len(first.get_plugins()) == before


def test_cli_lists_plugins_with_versions_and_hooks(capsys) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "pointcloud" in out and "bottleneck-mask 0.1.0" in out
    assert "bottleneck_register_modalities" in out


def test_registering_a_wrong_object_says_what_was_expected(plugin_manager) -> None:
    class Wrong:
        @bottleneck.hookimpl
        def bottleneck_register_modalities(self, register):
            register("not a modality")

    plugin = Wrong()
    bottleneck.register(plugin)
    try:
        with pytest.raises(BottleneckError, match="expects a Modality instance.*str"):
            modalities()
    finally:
        bottleneck.unregister(plugin)


def test_no_warnings_on_a_clean_install() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        new_plugin_manager()
