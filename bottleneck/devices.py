"""A ``--device`` name checked against this machine, before a command or script starts work.

``torch.device("tpu")`` fails deep in whatever first moves a tensor, after the data
is built and perhaps after minutes of training; ``cuda`` on a machine without it
fails there too. Every command and benchmark script checks its ``--device`` here (and
the library's entry points, ``fit``, ``run_speed`` and the like, their ``device``)
first, so each says the same thing: what it expected and what this machine lacks.
"""

from __future__ import annotations

import argparse

import torch

from .errors import BottleneckError

#: Device types the commands run on (``cuda`` may name an index, ``cuda:1``).
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_HELP = "torch device: cpu (default), cuda, cuda:N or mps; checked before the command starts"


def checked_device(text: str, name: str = "--device") -> str:
    """``text`` as given, once it names a device this machine has; else a :class:`BottleneckError`
    saying what was expected (``cpu``, ``cuda``, ``cuda:N``, ``mps``) and what is missing; ``name`` is
    what the message calls it (the option, or the argument of a library function)."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise BottleneckError(f"{name} {text!r} is not a device bottleneck runs on: expected cpu, cuda, "
                              f"cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BottleneckError(f"{name} {text} but CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BottleneckError(f"{name} {text} but this machine has {count} CUDA device"
                                  f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BottleneckError(f"{name} {text} but MPS is not available here")
    return text


def torch_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` once :func:`checked_device` has passed it: the library's entry points
    (``fit``, ``run_speed``, ...) say what is wrong with a device as the commands do."""
    return torch.device(checked_device(str(device), "device"))


def device_argument(text: str) -> str:
    """:func:`checked_device` as an argparse ``type=``: a bad name is a usage error (exit 2)."""
    try:
        return checked_device(text)
    except BottleneckError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
