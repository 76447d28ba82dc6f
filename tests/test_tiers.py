"""The two test tiers: a plain run leaves the ``slow`` tier out and says which tests and how to run
them; ``-m slow``, ``--full`` and a test id each run what they name."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = """
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_long():
    pass
"""


@pytest.fixture
def tiers(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: the full-setting tier\n")
    pytester.makepyfile(test_tiers_inner=TESTS)
    return pytester


def test_a_plain_run_leaves_the_slow_tier_out_and_names_it(tiers: pytest.Pytester) -> None:
    result = tiers.runpytest("-q")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines([
        "*1 slow tests not run (the full-setting tier)*",
        "*not run: test_tiers_inner.py::test_long",
        "*run them with: python -m pytest -q -m slow*--full*",
    ])


@pytest.mark.parametrize("args, passed", [(["-m", "slow"], 1), (["--full"], 2),
                                          (["test_tiers_inner.py::test_long"], 1)])
def test_a_run_that_picks_its_tests_runs_them(tiers: pytest.Pytester, args: list[str], passed: int) -> None:
    result = tiers.runpytest("-q", *args)
    result.assert_outcomes(passed=passed, deselected=2 - passed if args[0] == "-m" else 0)
    assert "slow tests not run" not in result.stdout.str()
