"""Shared fixtures: a device fixture (CPU always, CUDA when present) and a fresh plugin manager."""

from __future__ import annotations

import pytest
import torch

from bottleneck.plugins import new_plugin_manager, use_plugin_manager

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Run a tensor test on the CPU, and again on CUDA when it is available."""
    return torch.device(request.param)


@pytest.fixture
def plugin_manager():
    """A fresh plugin manager (entry points loaded) installed as the process-wide one."""
    pm = new_plugin_manager()
    with use_plugin_manager(pm):
        yield pm
