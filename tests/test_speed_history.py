"""Speed reports side by side: each run's judged figures and verdicts, the tally, the picture, clear errors.

The reports are the committed full runs 22, 23 and 24 (the same machine, the same timed
code but for run 22's operation cut; DGCNN missed, met, missed) and edited copies of
them; the expected figures are read from the JSON, and the drawn ones back from the figure.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from figure_artists import artist, artists, laid_out

from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.speed import TARGET_KEEP
from bottleneck.speed_history import (
    history_figure,
    history_markdown,
    load_history,
    run_figures,
    tally,
)
from bottleneck.viz import pyplot

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RUNS = [RESULTS / "speed_cpu_run22.json", RESULTS / "speed_cpu_run23.json", RESULTS / "speed_cpu_run24.json"]
LABELS = ["run22", "run23", "run24"]


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _per_process(report: dict, model: str) -> list[float]:
    return report["details"]["sparse"][model]["keeps"][str(TARGET_KEEP)]["speedup_per_process"]


@pytest.fixture(scope="module")
def runs():
    return load_history(RUNS, LABELS)


def test_each_run_carries_its_reports_judged_figures_and_verdicts(runs) -> None:
    assert [run.label for run in runs] == LABELS
    for run, path in zip(runs, RUNS, strict=True):
        report = _report(path)
        for model, figures in run.sparse.items():
            claim = report["claims"][f"sparse_speedup_{model}"]
            assert figures.speedup == claim["speedup"] and figures.target == claim["target"]
            assert figures.processes == _per_process(report, model)
            assert (figures.speedup_holds, figures.accuracy_holds) == (claim["speedup_holds"], claim["accuracy_holds"])
        assert run.train_worst == (report["claims"]["train_overhead_at_most_1.25"]["worst"],
                                   report["claims"]["train_overhead_at_most_1.25"]["worst_ratio"])
        assert run.mask_layer_ratio == report["scaling"]["mask_layer_ratio_10k_over_1k"]
    # DGCNN: missed, met, missed; run 22's BERT missed on accuracy (0.641), not on speed
    assert [run.sparse["DGCNN"].holds for run in runs] == [False, True, False]
    assert [run.sparse["BERT"].holds for run in runs] == [False, True, True]
    assert runs[0].sparse["BERT"].speedup_holds and not runs[0].sparse["BERT"].accuracy_holds


def test_markdown_marks_each_missed_claim_and_tallies_how_often_each_held(runs) -> None:
    text = history_markdown(runs)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| run2")}
    assert set(rows) == {"run22", "run23", "run24"}
    header = next(line for line in text.splitlines() if line.startswith("| run |")).split(" | ")
    dgcnn = header.index("DGCNN at keep 0.25")
    assert rows["run22"].split(" | ")[dgcnn].endswith("**MISSED** (speed-up)")
    assert rows["run22"].split(" | ")[header.index("BERT at keep 0.25")].endswith("**MISSED** (accuracy)")
    assert "**MISSED**" not in rows["run23"].split(" | ")[dgcnn]
    assert "x5.14 [4.24-5.35]" in rows["run23"].split(" | ")[dgcnn]  # the median and each process's figure
    every = [v for path in RUNS for v in _per_process(_report(path), "DGCNN")]
    line = next(line for line in tally(runs) if line.startswith("DGCNN"))
    assert "met in 1 of 3 runs" in line and f"x{min(every):.2f}-x{max(every):.2f}" in line
    assert next(line for line in tally(runs) if line.startswith("BERT")).count("met in 2 of 3 runs") == 1


def test_a_figure_is_never_rounded_across_its_target() -> None:
    report = _report(RUNS[-1])
    report["claims"]["sparse_speedup_ViT"].update(speedup=1.995, speedup_holds=False)
    report["claims"]["train_overhead_at_most_1.25"].update(worst_ratio=1.2507, holds=False)
    run = run_figures(report, "edited")
    row = history_markdown([run]).splitlines()[2]
    assert "x1.995" in row and "x2.00" not in row
    assert "1.251 (CNN) **MISSED**" in row and "1.25 (CNN)" not in row


def test_reports_without_a_section_show_it_as_not_measured() -> None:
    report = _report(RUNS[-1])
    del report["scaling"]
    del report["claims"]["sparse_speedup_BERT"]
    runs = [run_figures(report, "partial"), run_figures(_report(RUNS[-1]), "full")]
    text = history_markdown(runs)
    partial = text.splitlines()[2]
    assert partial.count("not measured") == 3  # BERT, the mask layer ratio, the kNN peak
    assert "BERT sparse speed-up (>= x1.8, accuracy within 2 points): met in 1 of 1 runs" in text
    pyplot().close(history_figure(runs))  # draws the gaps too


def test_figure_draws_each_runs_speedups_processes_targets_and_misses(runs) -> None:
    fig = history_figure(runs)
    try:
        for model in ("ViT", "PointNet", "DGCNN", "BERT"):
            line = artist(fig, f"history:{model}")
            assert list(line.get_ydata()) == [run.sparse[model].speedup for run in runs]
            assert list(line.get_xdata()) == [0, 1, 2]
            assert set(artist(fig, f"history_target:{model}").get_ydata()) == {runs[0].sparse[model].target}
            missed = artists(fig, f"history_missed:{model}")
            assert len(missed) == sum(not run.sparse[model].speedup_holds for run in runs)
            accuracy_missed = artists(fig, f"history_accuracy_missed:{model}")
            assert len(accuracy_missed) == sum(not run.sparse[model].accuracy_holds for run in runs)
            for index, run in enumerate(runs):
                dashes = artist(fig, f"history_processes:{model}:{run.label}")
                assert list(dashes.get_ydata()) == run.sparse[model].processes
                assert set(dashes.get_xdata()) == {index}
        ratio = artist(fig, "history:mask_layer_ratio")
        assert list(ratio.get_ydata()) == [run.mask_layer_ratio for run in runs]
        train = artist(fig, "history:train_overhead")
        assert list(train.get_ydata()) == [run.train_worst[1] for run in runs]
        labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
        assert labels == LABELS
    finally:
        pyplot().close(fig)


def test_no_panel_title_runs_into_another(runs) -> None:
    """Each sparse panel's title names its target, its tally and its markers: three lines, not two
    long ones that ran across the neighbouring panel's title (seen in the eight-run figure)."""
    fig = history_figure(runs)
    with laid_out(fig) as renderer:
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 6
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def test_cli_prints_and_writes_the_table_and_the_picture(tmp_path, capsys) -> None:
    table, picture = tmp_path / "history.md", tmp_path / "history.png"
    code = main(["bench", "history", *map(str, RUNS), "--labels", ",".join(LABELS), "--markdown", str(table),
                 "--figure", str(picture)])
    assert code == 0
    out = capsys.readouterr().out
    assert table.read_text() in out and "DGCNN sparse speed-up" in table.read_text()
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(["bench", "history", str(RUNS[0])])  # labels default to the file names
    assert "| speed_cpu_run22 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(RUNS[0]), str(RUNS[0])], "distinct labels"),
        ([str(RUNS[0]), "--labels", "a,b"], "2 labels for 1 reports"),
        (["missing.json"], "no speed report at missing.json"),
    ],
)
def test_cli_errors_say_what_is_wrong(args, message, capsys) -> None:
    assert main(["bench", "history", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "BottleneckError(" not in err  # the file's own error, said once, not wrapped in another


def test_a_file_that_is_not_json_is_named_plainly(tmp_path, capsys) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a report")
    assert main(["bench", "history", str(path)]) == 2
    assert capsys.readouterr().err == f"bottleneck: error: {path} is not a JSON speed report: " \
        "Expecting value: line 1 column 1 (char 0)\n"


def test_a_garbled_report_is_named_in_the_error(tmp_path) -> None:
    report = copy.deepcopy(_report(RUNS[-1]))
    del report["claims"]["sparse_speedup_DGCNN"]["speedup"]
    path = tmp_path / "garbled.json"
    path.write_text(json.dumps(report))
    with pytest.raises(BottleneckError, match=r"garbled\.json: the speed report lacks or garbles.*'speedup'"):
        load_history([path])
    with pytest.raises(BottleneckError, match="no speed reports given"):
        load_history([])
