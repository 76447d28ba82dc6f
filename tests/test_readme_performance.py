"""The README's Performance section shows the committed runs' own figures, not a stale copy.

Its tables of the latest full run are the run's Markdown as :func:`bottleneck.speed.markdown`
makes it from the committed JSON, and its tally is :func:`bottleneck.speed_history.tally` of
every committed run: a README edited by hand, or a run added without the README, fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bottleneck.speed import markdown
from bottleneck.speed_history import load_history, tally

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _performance_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Performance\n")
    return readme[start:readme.index("\n## ", start + 1)]


def _latest_run(section: str) -> int:
    """The run the section reports: the run number of the one figure of a run it shows."""
    shown = re.findall(r"\]\(benchmarks/results/speed_cpu_run(\d+)\.png\)", section)
    assert len(shown) == 1, f"the Performance section should show one run's figure, shows {shown}"
    return int(shown[0])


def _tables(text: str) -> list[str]:
    """Each Markdown table of ``text`` (consecutive lines that start with ``|``)."""
    return [match.group(0).strip() for match in re.finditer(r"(?:^\|.*(?:\n|$))+", text, re.M)]


def _tables_not_shown(section: str) -> list[str]:
    """The latest run's tables, as its JSON gives them, that ``section`` does not hold verbatim."""
    report = json.loads((RESULTS / f"speed_cpu_run{_latest_run(section)}.json").read_text())
    tables = _tables(markdown(report))
    assert len(tables) == 3  # overheads, sparse speed-ups, scaling
    return [table for table in tables if table not in section]


def _committed_runs() -> list[Path]:
    runs = [path for path in RESULTS.glob("speed_cpu_run*.json") if re.fullmatch(r"speed_cpu_run\d+", path.stem)]
    return sorted(runs, key=lambda path: int(path.stem.removeprefix("speed_cpu_run")))


def test_the_latest_runs_tables_are_its_own() -> None:
    assert _tables_not_shown(_performance_section()) == []


def test_a_figure_changed_by_hand_is_caught() -> None:
    """One speed-up in the README's copy of the sparse table, off by 0.01: that table is reported."""
    section = _performance_section()
    shown = [table for table in _tables(section) if table.startswith("| model | dense |")][0]
    edited = re.sub(r"x(\d)\.(\d)(\d)", lambda m: f"x{m[1]}.{m[2]}{(int(m[3]) + 1) % 10}", shown, count=1)
    assert edited != shown
    assert [table.splitlines()[0] for table in _tables_not_shown(section.replace(shown, edited))] == [
        "| model | dense | keep 0.1 | keep 0.25 | keep 0.5 | keep 1.0 |"]


def test_the_tally_is_that_of_every_committed_run() -> None:
    runs = _committed_runs()
    labels = [path.stem.removeprefix("speed_cpu_") for path in runs]
    section = _performance_section()
    lines = tally(load_history(runs, labels))
    assert lines
    missing = [line for line in lines if line not in section]
    assert missing == [], f"the README's tally lacks or differs in: {missing}"
    assert f"--labels {','.join(labels)} " in section  # the command that makes it names every run
