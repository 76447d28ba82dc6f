"""Training is bit-reproducible on a multi-threaded CPU: every bench model's gradient, plain, with
a joint mask and with an explain-mode mask on the frozen model, is the one
``torch.use_deterministic_algorithms(True)`` gives.

On a CPU with more than one thread some backward kernels add with parallel atomics unless torch
is told to be deterministic, so the sum's order follows the threads' timing. PointNet's T-Net
took each point's transform as ``transform[batch]``, whose backward is such a kernel: 2 of 1,000
backward passes on one batch differed in the last bits, and the bench's PointNet accuracies
moved between runs of the same training code (dense 0.805 and 0.824 in runs 27 and 28) while
every other model repeated exactly. Compared with the deterministic mode's gradient, the
atomic one differed in nearly every call (the thread that starts at the shared sample adds
first), so this test fails on such a kernel at once rather than one time in hundreds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bottleneck import attach
from bottleneck.speed import SpeedCase
from bottleneck.timing import use_threads
from bottleneck.train import _to, call_model
from bottleneck.wrap import _logits_of
from bottleneck_image.speed import prepare_speed as image_cases
from bottleneck_pointcloud.speed import prepare_speed as pointcloud_cases
from bottleneck_text.speed import prepare_speed as text_cases

#: Every model of ``bottleneck bench speed`` (the fixture checks that the plugins give these).
MODELS = ("BERT", "BiLSTM", "CNN", "CNN-8", "DGCNN", "PointNet", "ViT")


@pytest.fixture(scope="module")
def cases() -> dict[str, SpeedCase]:
    """The bench's models on one batch each of its own data (32 samples; the training sets kept small)."""
    built = {case.name: case
             for cases in (image_cases(quick=True, test_size=32),
                           pointcloud_cases(quick=True, train_size=64, dgcnn_train_size=32, test_size=32),
                           text_cases(quick=True, train_size=64, test_size=32, validation_size=32))
             for case in cases}
    assert sorted(built) == sorted(MODELS), "a bench model is missing from this test or no longer exists"
    return built


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """At least ``count`` intra-op threads: with one, no kernel runs in parallel and no order can move.

    Through :func:`~bottleneck.timing.use_threads`, which leaves the pool alone when it has the
    count already (setting the same count slowed later calls in the process).
    """
    before = torch.get_num_threads()
    use_threads(max(count, before))
    try:
        yield
    finally:
        use_threads(before)


@contextmanager
def _deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _gradient(model: torch.nn.Module, case: SpeedCase, kind: str) -> Tensor:
    """Every parameter's gradient of one training step's loss on the case's batch, flattened."""
    model = copy.deepcopy(model)  # a masked forward moves the mask's state: each call starts alike
    inputs, targets = _to(case.batch, torch.device("cpu"))
    torch.manual_seed(1)  # dropout, gate noise and the ViT's sampled attention share alike
    if kind == "plain":
        loss = F.cross_entropy(_logits_of(call_model(model, inputs)), targets)
    else:  # the explain-mode mask's loss holds its own fidelity term; the frozen model has no gradient
        out = model(inputs)
        loss = F.cross_entropy(_logits_of(out.output), targets) + out.ib_loss
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _model(case: SpeedCase, kind: str) -> Any:
    torch.manual_seed(0)
    if kind == "plain":
        return case.make_model().train()
    model = attach(case.make_model(), case.modality, **{**case.attach_options, "mode": kind}).train()
    model(_to(case.batch, torch.device("cpu"))[0])  # lazily sized layers exist after one call
    return model


@pytest.mark.parametrize("kind", ["plain", "joint", "explain"])
@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_has_the_gradient_of_the_deterministic_algorithms(
        cases: dict[str, SpeedCase], name: str, kind: str) -> None:
    case = cases[name]
    model = _model(case, kind)
    with _threads(2):
        default = _gradient(model, case, kind)
        with _deterministic():
            deterministic = _gradient(model, case, kind)
    assert default.numel() and default.isfinite().all()
    differing = int((default != deterministic).sum())
    assert differing == 0, (f"{name} ({kind}): {differing} of {default.numel()} "
                            "gradient entries differ from torch's deterministic algorithms")
