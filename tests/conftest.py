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


# --- the two tiers: the default run leaves out `slow` tests, and says so -----------------------

FULL_TIER_HINT = (
    "python -m pytest -q -m slow  (only those: 7 to 13 minutes on the 2-core machines measured, "
    "up to about 25 on the slowest seen)  or  python -m pytest -q --full  (everything)"
)

#: the node ids of the slow tests a plain run left out, for the summary
_LEFT_OUT = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true",
        help="also run the tests marked slow: the README's demos and benchmarks at their full settings",
    )


def _picks_its_own_tests(config: pytest.Config) -> bool:
    """True when the command chose tests itself: ``--full``, a ``-m`` expression, or a test id."""
    return bool(config.getoption("--full") or config.option.markexpr
                or any("::" in str(arg) for arg in config.args))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the ``slow`` tier out of a plain run; the summary names what was left out and how to run it.

    The slow tier is the README's demos and benchmarks at their full settings (minutes each on
    2 cores); the default run checks the same pipelines at reduced settings, so a plain
    ``python -m pytest -q`` (what CI runs) stays inside the CI time budget.
    """
    if _picks_its_own_tests(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if not slow:
        return
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not item.get_closest_marker("slow")]
    config.stash[_LEFT_OUT] = [item.nodeid for item in slow]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """After the results: how many slow tests a plain run left out, which, and the command for them."""
    left_out = config.stash.get(_LEFT_OUT, [])
    if left_out:
        terminalreporter.write_sep("-", f"{len(left_out)} slow tests not run (the full-setting tier)")
        for nodeid in left_out:
            terminalreporter.write_line(f"  not run: {nodeid}")
        terminalreporter.write_line(f"  run them with: {FULL_TIER_HINT}")
