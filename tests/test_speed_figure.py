"""The speed report's picture: every panel draws the report's own figures and bounds, and bad reports get clear errors.

The report drawn is the committed full run (``benchmarks/results/speed_cpu_run24.json``,
four sparse models, scaling up to 100k units) and variants of it; the drawn lines are
read back from the figure, so a panel that plotted the wrong field would fail here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib.image
import pytest
from figure_artists import artist as _artist
from figure_artists import laid_out

from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.scaling import KNN_PEAK_MIB_MAX
from bottleneck.speed import TARGET_KEEP
from bottleneck.speed_figure import load_speed_report, plot_speed, speed_figure
from bottleneck.viz import pyplot

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "speed_cpu_run24.json"


@pytest.fixture(scope="module")
def full_report() -> dict:
    return load_speed_report(RESULTS)


@pytest.fixture
def drawn(full_report):
    fig = speed_figure(full_report)
    yield fig
    pyplot().close(fig)


def test_sparse_panels_draw_each_models_speedups_processes_target_and_accuracies(full_report, drawn) -> None:
    assert set(full_report["sparse_speedup"]) == {"ViT", "PointNet", "DGCNN", "BERT"}
    for name, per_keep in full_report["sparse_speedup"].items():
        line = _artist(drawn, f"speedup:{name}")
        assert list(line.get_xdata()) == [float(k) for k in per_keep]
        assert list(line.get_ydata()) == [v["speedup"] for v in per_keep.values()]
        processes = _artist(drawn, f"processes:{name}")
        judged = full_report["details"]["sparse"][name]["keeps"][str(TARGET_KEEP)]["speedup_per_process"]
        assert list(processes.get_ydata()) == judged and set(processes.get_xdata()) == {TARGET_KEEP}
        target = _artist(drawn, f"target:{name}")
        assert list(target.get_ydata()) == [full_report["claims"][f"sparse_speedup_{name}"]["target"]]
        accuracy = _artist(drawn, f"accuracy:{name}")
        assert list(accuracy.get_ydata()) == [v["accuracy"] for v in per_keep.values()]
        dense = _artist(drawn, f"dense_accuracy:{name}")
        assert set(dense.get_ydata()) == {full_report["details"]["sparse"][name]["dense_accuracy"]}


def test_overhead_panel_draws_every_models_train_and_explain_ratio(full_report, drawn) -> None:
    for kind, section in (("train step", "train"), ("explanation", "explain")):
        bars, = [c for ax in drawn.axes for c in ax.containers if c.get_label().startswith(f"{kind} (limit")]
        figures = full_report["details"][section]
        assert [bar.get_width() for bar in bars] == pytest.approx([figures[name]["ratio"] for name in figures])


def test_the_overhead_legend_covers_no_bar(full_report) -> None:
    """The legend sits in a free row under the last model, not on its bars (it hid the end of
    run 25's BERT bar); checked on every committed run drawn beside its report, whose overheads reach 1.53."""
    drawn_runs = sorted(RESULTS.parent.glob("speed_cpu_run*.png"))
    assert len(drawn_runs) >= 6  # runs 23 to 28 at least
    later = [load_speed_report(path.with_suffix(".json")) for path in drawn_runs]
    for report in (full_report, *later):
        fig = speed_figure(report)
        with laid_out(fig) as renderer:
            ax = next(a for a in fig.axes if any(c.get_label().startswith("train step") for c in a.containers))
            legend = ax.get_legend().get_window_extent(renderer)
            bars = [bar.get_window_extent(renderer) for container in ax.containers for bar in container]
        assert bars and not any(legend.overlaps(bar) for bar in bars)


def test_scaling_panels_draw_the_judged_times_a_linear_reference_and_knn_memory(full_report, drawn) -> None:
    sizes = full_report["scaling"]["sizes"]
    judged = _artist(drawn, "mask_layer:judged")
    assert list(judged.get_xdata()) == [int(n) for n in sizes]
    assert list(judged.get_ydata()) == [row["mask_layer_ms_one_thread"] for row in sizes.values()]
    linear = _artist(drawn, "mask_layer:linear")  # slope one through the 1k point: 10x the time at 10x units
    ys = dict(zip(linear.get_xdata(), linear.get_ydata(), strict=True))
    assert ys[1000] == sizes["1000"]["mask_layer_ms_one_thread"] and ys[10000] == pytest.approx(10 * ys[1000])
    floor = _artist(drawn, "mask_layer:floor")
    assert list(floor.get_ydata()) == [full_report["scaling"]["mask_layer_floor"]["ms"]]
    peak = _artist(drawn, "knn:peak")
    assert list(peak.get_ydata()) == [row["knn_peak_mib"] for row in sizes.values()]
    layer_peak = _artist(drawn, "mask_layer:peak")
    assert list(layer_peak.get_ydata()) == [row["mask_layer_peak_mib"] for row in sizes.values()]
    assert any(list(line.get_ydata()) == [KNN_PEAK_MIB_MAX] * 2 for ax in drawn.axes for line in ax.lines)


def test_a_report_from_before_the_mask_layers_memory_draws_without_it(full_report) -> None:
    report = copy.deepcopy(full_report)
    for row in report["scaling"]["sizes"].values():
        del row["mask_layer_peak_mib"]
    fig = speed_figure(report)
    gids = {line.get_gid() for ax in fig.axes for line in ax.lines}
    pyplot().close(fig)
    assert "knn:peak" in gids and "mask_layer:peak" not in gids


def test_claims_panel_says_met_and_missed_as_the_claims_do(full_report) -> None:
    report = copy.deepcopy(full_report)
    report["claims"]["sparse_speedup_DGCNN"].update(speedup=4.38, speedup_holds=False)
    report["scaling"]["mask_layer_linear_8_to_12"] = False
    fig = speed_figure(report)
    text = _artist(fig, "claims").get_text()
    pyplot().close(fig)
    lines = {line.split()[1]: line.split()[0] for line in text.splitlines()}
    assert lines["sparse_speedup_DGCNN"] == "MISSED" and lines["sparse_speedup_ViT"] == "met"
    assert lines["mask"] == "MISSED" and lines["kNN"] == "met"
    assert "4.38" in text


def test_a_report_without_scaling_or_sparse_models_says_what_was_not_measured(full_report, tmp_path) -> None:
    report = copy.deepcopy(full_report)
    report["scaling"] = None
    report["sparse_speedup"] = {}
    report["details"]["sparse"] = {}
    fig = speed_figure(report)
    notes = [text.get_text() for ax in fig.axes for text in ax.texts]
    pyplot().close(fig)
    assert notes.count("no scaling section in this report (--no-scaling)") == 2
    assert notes.count("no model with a sparse path in this report") == 2


def test_cli_plot_writes_a_picture(tmp_path, capsys) -> None:
    out = tmp_path / "figures" / "speed.png"
    assert main(["bench", "plot", str(RESULTS), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 1000 and height > 600


@pytest.mark.parametrize(("content", "message"), [
    (None, "no speed report at"),
    ("not json", "is not a JSON speed report"),
    ("[1, 2]", "a speed report is a JSON object (got list"),
    ('{"train_overhead": {}}', "is not a speed report (bottleneck bench speed --json): it has no sparse_speedup"),
])
def test_bad_report_files_get_clear_errors(tmp_path, capsys, content, message) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BottleneckError, match=None) as error:
        load_speed_report(path)
    assert message in str(error.value)
    assert main(["bench", "plot", str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_garbled_report_names_the_field_and_writes_nothing(full_report, tmp_path) -> None:
    report = copy.deepcopy(full_report)
    del report["sparse_speedup"]["DGCNN"]["0.25"]["speedup"]
    with pytest.raises(BottleneckError, match="lacks or garbles a field the figure needs.*'speedup'"):
        plot_speed(report, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    path = tmp_path / "garbled.json"
    path.write_text(json.dumps(report))
    assert main(["bench", "plot", str(path), "--out", str(tmp_path / "x.png")]) == 2
