"""Where a command will write is checked before it starts work: a bad path fails in a second, not after the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bottleneck import output_paths
from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.output_paths import FIGURE, FILE, FOLDER, check_output

RUN = str(Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "speed_cpu_run28.json")


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    """A folder, a file, and a path under that file (where no folder can be made)."""
    (tmp_path / "a_file.txt").write_text("x")
    return {"folder": str(tmp_path), "file": str(tmp_path / "a_file.txt"),
            "under_file": str(tmp_path / "a_file.txt" / "sub" / "x.json"), "new": str(tmp_path / "new" / "deeper")}


#: (command, the message's start); ``{folder}`` etc. are filled from :func:`places`. Every one of
#: these would otherwise train or time for minutes and then fail, or fail with a traceback.
CASES = [
    (["bench", "speed", "--json", "{folder}"], "--json {folder} is a folder; expected a file name in it"),
    (["bench", "speed", "--json", "{new}/x.json", "--figure", "{new}/x.txt"],
     "--figure {new}/x.txt: the suffix picks the picture's format and matplotlib cannot write '.txt'"),
    (["bench", "speed", "--json", "{new}/x.json", "--markdown", "{under_file}"],
     "--markdown {under_file}: {file} is a file, so no folder can be made under it"),
    (["bench", "explain", "--modality", "pointcloud", "--json", "{folder}"], "--json {folder} is a folder"),
    (["bench", "explain", "--modality", "pointcloud", "--json", "{new}/x.json", "--out", "{file}"],
     "--out {file} is a file; expected a folder to write into"),
    (["bench", "plot", RUN, "--out", "{new}/speed"],
     "--out {new}/speed: the suffix picks the picture's format and it has none; use .png, .svg or .pdf"),
    (["bench", "history", RUN, "--markdown", "{folder}"], "--markdown {folder} is a folder"),
    (["bench", "history", RUN, "--figure", "{new}/h.csv"],
     "--figure {new}/h.csv: the suffix picks the picture's format and matplotlib cannot write '.csv'"),
    (["demo", "pointcloud", "--quick", "--out", "{file}"], "--out {file} is a file; expected a folder"),
    (["audit", "--modality", "pointcloud", "--quick", "--out", "{file}"], "--out {file} is a file"),
    (["explain", "{new}/mask.safetensors", "--out", "{under_file}"],
     "--out {under_file}: {file} is a file, so no folder can be made under it"),
]


@pytest.mark.parametrize(("command", "message"), CASES, ids=[" ".join(c[:2]) + f" {i}" for i, (c, _) in enumerate(CASES)])
def test_a_bad_output_fails_before_any_work(command, message, places, capsys) -> None:
    assert main([part.format(**places) for part in command]) == 2
    assert capsys.readouterr().err.startswith("bottleneck: error: " + message.format(**places))
    assert not Path(places["new"]).exists()  # nothing made, nothing written


def test_outputs_in_folders_not_made_yet_are_written(places) -> None:
    figure = Path(places["new"]) / "speed.svg"
    assert main(["bench", "plot", RUN, "--out", str(figure)]) == 0
    assert figure.read_text().startswith("<?xml")


@pytest.mark.parametrize("suffix", [".png", ".PDF", ".svg"])
def test_the_formats_the_help_names_pass(suffix, places) -> None:
    check_output(f"{places['new']}/x{suffix}", FIGURE, "--figure")


def test_a_folder_it_cannot_write_in_is_named(places, monkeypatch) -> None:
    """As root every folder is writable, so a refusal to make the file is forced here; the message is what is tested."""
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output_paths.tempfile, "TemporaryFile", refuse)
    with pytest.raises(BottleneckError, match=r"--json .*x\.json: cannot write in .* \(Permission denied\)"):
        check_output(f"{places['new']}/x.json", FILE, "--json")
    with pytest.raises(BottleneckError, match="cannot write in"):
        check_output(places["new"], FOLDER, "--out")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc: a folder no one can make a file in")
@pytest.mark.parametrize("command", [["bench", "plot", RUN, "--out", "/proc/speed.png"],
                                     ["bench", "speed", "--quick", "--json", "/proc/speed.json", "--no-progress"]])
def test_a_folder_that_takes_no_files_is_refused_before_any_work(command, capsys) -> None:
    """``/proc`` passes every permission check for root (``os.access``) yet takes no new file:
    the plot failed in PIL's ``open`` and the benchmark after its first model (writing the
    partial report), each as a traceback. A real file is tried instead."""
    assert main(command) == 2
    assert "cannot write in /proc" in capsys.readouterr().err
