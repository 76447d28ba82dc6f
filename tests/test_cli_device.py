"""``--device`` is checked before any command starts work, with one message for every command."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark
from torch import nn

from bottleneck.cli import main
from bottleneck.devices import checked_device, torch_device
from bottleneck.errors import BottleneckError
from bottleneck.scaling import main as scaling_main
from bottleneck.train import fit

#: Every command that takes ``--device``, with the other arguments it needs to get past argparse.
COMMANDS = {
    "demo": ["demo", "pointcloud", "--out", "{out}", "--quick"],
    "bench explain": ["bench", "explain", "--modality", "pointcloud", "--json", "{out}/x.json", "--quick"],
    "bench speed": ["bench", "speed", "--json", "{out}/x.json", "--quick", "--no-scaling"],
    "explain": ["explain", "{out}/missing.safetensors", "--out", "{out}"],
    "audit": ["audit", "--modality", "pointcloud", "--out", "{out}", "--quick"],
}


def _run(command: str, device: str, out) -> int:
    return main([part.format(out=out) for part in COMMANDS[command]] + ["--device", device])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_device_fails_before_any_work(command, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _run(command, "tpu", out) == 2
    err = capsys.readouterr().err
    assert err == "bottleneck: error: --device 'tpu' is not a device bottleneck runs on: " \
        "expected cpu, cuda, cuda:N or mps\n"
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cuda_without_cuda_says_so(command, tmp_path, capsys) -> None:
    assert _run(command, "cuda:1", tmp_path / "out") == 2
    assert capsys.readouterr().err == "bottleneck: error: --device cuda:1 but CUDA is not available here\n"


@pytest.mark.parametrize("text", ["meta", "cuda:x", "", "cpu cpu"])
def test_devices_the_commands_cannot_run_on(text) -> None:
    with pytest.raises(BottleneckError, match="expected cpu, cuda, cuda:N or mps"):
        checked_device(text)


def test_the_devices_this_machine_has_pass_unchanged() -> None:
    assert checked_device("cpu") == "cpu"
    assert checked_device("cpu:0") == "cpu:0"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert checked_device(f"cuda:{count - 1}") == f"cuda:{count - 1}"
        with pytest.raises(BottleneckError, match=f"has {count} CUDA device"):
            checked_device(f"cuda:{count}")


@pytest.mark.parametrize("script", ["scaling", "launch_profile"])
def test_the_benchmark_scripts_check_their_device_as_a_usage_error(script, capsys) -> None:
    script_main = scaling_main if script == "scaling" else load_benchmark("launch_profile").main
    with pytest.raises(SystemExit) as exited:
        script_main(["--device", "tpu"])
    assert exited.value.code == 2
    assert "argument --device: --device 'tpu' is not a device bottleneck runs on" in capsys.readouterr().err


def test_the_library_entry_points_check_their_device_too() -> None:
    """``fit`` (and ``run_speed``, ``run_benchmark``, ...) through :func:`torch_device`: the same message, named ``device``."""
    with pytest.raises(BottleneckError, match="^device 'tpu' is not a device bottleneck runs on"):
        fit(nn.Linear(2, 2), [], device="tpu")
    assert torch_device(torch.device("cpu")) == torch.device("cpu")
