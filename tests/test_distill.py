"""DenseTeacher: distillation from the dense model into a jointly masked one, as fit()'s penalty."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bottleneck
from bottleneck.distill import DenseTeacher
from bottleneck.errors import BottleneckError
from bottleneck.objective import faithfulness_loss


def classifier(seed: int = 0) -> nn.Module:
    """A small CNN a user might bring: conv features, pooled, linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    )


def data(n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noise images whose class is the quadrant holding a bright square (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for q in range(3):
        rows = y == q
        top, left = 8 * (q // 2), 8 * (q % 2)
        x[rows, :, top + 2:top + 6, left + 2:left + 6] += 1.0
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_the_term_is_zero_when_the_masked_model_sees_what_the_teacher_sees() -> None:
    model = classifier()
    masked = bottleneck.attach(copy.deepcopy(model), "image", keep=1.0, gate="topk").train()
    batch = data()[0]
    out = masked(batch[0])
    assert bool((out.gates == 1).all())
    assert float(DenseTeacher(model)(out, batch).detach()) == pytest.approx(0.0, abs=1e-6)


def test_the_term_is_the_tempered_kl_and_trains_the_student_not_the_teacher() -> None:
    model = classifier()
    masked = bottleneck.attach(copy.deepcopy(model), "image", keep=0.25, gate="topk").train()
    teacher = DenseTeacher(masked, weight=2.0, temperature=3.0)  # a MaskedModel: its wrapped model
    before = [p.detach().clone() for p in teacher.teacher.parameters()]
    batch = data()[0]
    out = masked(batch[0])
    term = teacher(out, batch)
    expected = 2.0 * 9.0 * faithfulness_loss(model(batch[0]) / 3.0, out.output / 3.0)
    assert float(term) == pytest.approx(float(expected), rel=1e-5) and float(term) > 0
    term.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in masked.model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.teacher.parameters())
    bottleneck.fit(masked, data(), epochs=2, lr=1e-2, progress=False, penalty=teacher)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.teacher.parameters(), strict=True))
    assert not teacher.teacher.training


def test_distillation_keeps_the_masked_model_closer_to_the_teacher() -> None:
    """Fine-tuned with the term, the masked model's predictions stay nearer the dense model's."""
    model = classifier()
    bottleneck.fit(model, data(), epochs=15, lr=1e-2, progress=False)
    test = data(64, seed=1)
    kls = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(1)
        masked = bottleneck.attach(copy.deepcopy(model), "image", keep=0.25, gate="topk")
        penalty = DenseTeacher(model, weight=weight) if weight else None
        bottleneck.fit(masked, data(), epochs=8, lr=3e-3, progress=False, penalty=penalty)
        with torch.no_grad():
            kls[weight] = sum(float(faithfulness_loss(model(x), masked(x).output)) for x, _ in test)
    assert kls[5.0] < 0.8 * kls[0.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"teacher": "model"}, "must be a torch.nn.Module"),
        ({"weight": -1.0}, "weight must be >= 0"),
        ({"weight": float("nan")}, "weight must be a finite number"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": True}, "temperature must be a finite number"),
    ],
)
def test_bad_settings_are_refused(options: dict, message: str) -> None:
    settings = {"teacher": classifier(), **options}
    with pytest.raises(BottleneckError, match=message):
        DenseTeacher(**settings)


def test_bad_outputs_are_refused() -> None:
    batch = data()[0]
    with pytest.raises(BottleneckError, match="masked model's output"):
        DenseTeacher(classifier())(classifier()(batch[0]), batch)
    other = nn.Sequential(nn.Flatten(), nn.Linear(256, 5))  # 5 classes against the student's 3
    masked = bottleneck.attach(classifier(), "image", keep=0.5, gate="topk")
    with pytest.raises(BottleneckError, match=r"teacher's logits are \[16, 5\]"):
        DenseTeacher(other)(masked(batch[0]), batch)
