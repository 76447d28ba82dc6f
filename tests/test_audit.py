"""Bias audits: known-answer models, the report files, the mitigation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import bottleneck
from bottleneck.bias_audit import AuditData, audit, default_groups
from bottleneck.cues import CueAssignment
from bottleneck.errors import BottleneckError
from bottleneck.mitigation import CueGatePenalty, FlaggedBatches, group_weights
from bottleneck_image.cues import CornerPatch, class_colours

CLASSES = 4


class PatchReader(nn.Module):
    """Predicts the class whose cue colour is nearest to the mean colour of one 4x4 corner."""

    def __init__(self, corner: str) -> None:
        super().__init__()
        self.corner = corner
        self.register_buffer("colours", class_colours(CLASSES, 3))
        self.scale = nn.Parameter(torch.tensor(50.0))  # a parameter, so the model has a device

    def forward(self, images: Tensor) -> Tensor:
        rows, cols = CornerPatch(4, self.corner).region(images.shape[-2], images.shape[-1])
        colour = images[:, :, rows, cols].mean(dim=(-2, -1))  # [B, 3]
        return -self.scale * torch.cdist(colour, self.colours).square()


def image_data(n: int = 48, seed: int = 0) -> AuditData:
    generator = torch.Generator().manual_seed(seed)
    images = 0.4 * torch.rand(n, 3, 16, 16, generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)

    def encode(planted, y):
        return [(planted.inputs[i:i + 32], y[i:i + 32], planted.flags[i:i + 32]) for i in range(0, y.numel(), 32)]

    def render(explanation, out_dir, prefix, flags):
        return explanation.render(out_dir, prefix=prefix, gt=flags)

    return AuditData("image", images, labels, CLASSES, encode, select=lambda x, rows: x[rows],
                     unit_flags=lambda flags, units, adapter: adapter.unit_truth(flags, units), render=render)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_model_that_reads_only_the_cue_is_flagged_with_known_figures(method: str) -> None:
    report = audit(PatchReader("top_left"), image_data(), cue=CornerPatch(4, "top_left"), method=method, top_k=3)
    assert report.accuracy["present"] == 1.0
    assert report.accuracy["swapped"] == 0.0
    assert report.cue_area_share == pytest.approx(1 / 16)  # one 4x4 patch of sixteen
    assert report.cue_relevance_share == pytest.approx(1.0)  # nothing else changes the output
    assert report.flagged == {"relevance": True, "counterfactual": True}
    names = {g.group: g for g in report.groups.groups}
    assert names["cue aligned"].accuracy == 1.0 and names["cue conflicting"].accuracy == 0.0
    assert report.groups.worst.group == "cue conflicting"
    assert [e.probability_drop for e in report.examples] == sorted((e.probability_drop for e in report.examples),
                                                                   reverse=True)
    assert len(report.examples) == 3 and report.examples[0].probability_drop > 0.9


def test_a_model_that_ignores_the_cue_is_not_flagged() -> None:
    report = audit(PatchReader("bottom_right"), image_data(), cue=CornerPatch(4, "top_left"), method="occlusion")
    assert report.cue_relevance_share == pytest.approx(0.0, abs=1e-6)
    assert report.accuracy["present"] == report.accuracy["removed"] == report.accuracy["swapped"]
    assert report.flagged == {"relevance": False, "counterfactual": False}
    assert "no reliance" in report.verdict()


def test_report_files_and_keys(tmp_path: Path) -> None:
    report = audit(PatchReader("top_left"), image_data(), cue=CornerPatch(4, "top_left"), method="occlusion",
                   top_k=2)
    files = report.save(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert {"report.json", "report.md", "groups.png", "relevance_share.png"} <= names
    assert any(name.startswith("examples/") and name.endswith(".png") for name in names)
    values = json.loads((tmp_path / "report.json").read_text())
    for key in ("cue_relevance_share", "cue_area_share", "accuracy_cue_present", "accuracy_cue_removed",
                "accuracy_cue_swapped", "worst_group_accuracy"):
        assert isinstance(values[key], float), key
    assert values["groups"]["groups"]["cue conflicting"]["low"] <= values["groups"]["groups"]["cue conflicting"]["high"]
    text = (tmp_path / "report.md").read_text()
    assert "leans on the cue" in text and "| cue conflicting |" in text


def test_caller_groups_replace_the_default_ones() -> None:
    data = image_data()
    groups = (data.labels >= 2).long()
    report = audit(PatchReader("top_left"), data, cue=CornerPatch(4, "top_left"), method="random", groups=groups,
                   group_names={0: "low classes", 1: "high classes"})
    assert sorted(g.group for g in report.groups.groups) == ["high classes", "low classes"]
    assert sum(g.count for g in report.groups.groups) == data.num_samples


def test_bad_audit_input_is_refused() -> None:
    data = image_data()
    cue = CornerPatch(4)
    with pytest.raises(BottleneckError, match="a plain model has no mask to audit"):
        audit(PatchReader("top_left"), data, cue=cue, method="mask")
    with pytest.raises(BottleneckError, match="unknown audit method 'lime'"):
        audit(PatchReader("top_left"), data, cue=cue, method="lime")
    with pytest.raises(BottleneckError, match="groups must be a \\[48\\] tensor"):
        audit(PatchReader("top_left"), data, cue=cue, groups=torch.zeros(3, dtype=torch.long))
    from bottleneck_text.cues import PlantedWord

    with pytest.raises(BottleneckError, match="plants into 'text' data, the audit data is 'image'"):
        audit(PatchReader("top_left"), data, cue=PlantedWord())
    with pytest.raises(BottleneckError, match="needs \\[B\\] labels with B >= 1"):
        AuditData("image", data.clean[:0], data.labels[:0], CLASSES, data.encode, data.select)


def test_default_groups_split_aligned_conflicting_and_absent() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    assignment = CueAssignment(torch.tensor([True, True, False, True]), torch.tensor([0, 2, 2, 3]), labels)
    assert default_groups(assignment).tolist() == [0, 1, 2, 0]


def test_group_weights_give_every_group_the_same_total_weight() -> None:
    groups = torch.tensor([0, 0, 0, 1])
    weights = group_weights(groups)
    assert torch.allclose(weights, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert weights.mean().item() == pytest.approx(1.0)
    with pytest.raises(BottleneckError, match="non-empty \\[N\\] tensor"):
        group_weights(torch.zeros(0, dtype=torch.long))


def test_reweighted_batches_draw_groups_evenly() -> None:
    groups = torch.cat([torch.zeros(950, dtype=torch.long), torch.ones(50, dtype=torch.long)])
    loader = FlaggedBatches(lambda order: [order], 1000, 1000, weights=group_weights(groups), seed=0)
    drawn = torch.cat([next(iter(loader)) for _ in range(5)])
    assert groups[drawn].float().mean().item() == pytest.approx(0.5, abs=0.03)
    shuffled = next(iter(FlaggedBatches(lambda order: [order], 1000, 100)))
    assert sorted(shuffled.tolist()) == list(range(1000))
    assert len(FlaggedBatches(lambda order: [order], 1000, 300)) == 4


def test_cue_gate_penalty_trains_the_mask_to_shut_cue_units() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images = 0.5 * torch.rand(256, 3, 16, 16, generator=generator)
    labels = torch.randint(0, CLASSES, (256,), generator=generator)
    cue = CornerPatch(4, "top_left")
    planted = cue.plant(images, CueAssignment(torch.ones(256, dtype=torch.bool), labels, labels), CLASSES)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, CLASSES))
    masked = bottleneck.attach(model, "image", keep=0.5)

    def unit_flags(flags, units, adapter):
        return adapter.unit_truth(flags, units)

    penalty = CueGatePenalty(masked, unit_flags, weight=5.0)
    batches = [(planted.inputs[i:i + 64], labels[i:i + 64], planted.flags[i:i + 64]) for i in range(0, 256, 64)]
    history = bottleneck.fit(masked, batches, epochs=6, lr=1e-2, progress=False, penalty=penalty)
    assert history.epochs[-1]["penalty"] < history.epochs[0]["penalty"]
    explanation = masked.explain(planted.inputs[:64])
    flags = unit_flags(planted.flags[:64], explanation.units, masked.adapter())
    assert explanation.relevance[flags].mean() < 0.2 < explanation.relevance[~flags].mean()


def test_cue_gate_penalty_refuses_what_it_cannot_penalise() -> None:
    with pytest.raises(BottleneckError, match="pass a MaskedModel"):
        CueGatePenalty(nn.Linear(2, 2), lambda f, u, a: f)  # type: ignore[arg-type]
    masked = bottleneck.attach(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), "image", keep=0.5)
    penalty = CueGatePenalty(masked, lambda f, u, a: f)
    output = masked(torch.rand(2, 3, 8, 8))
    with pytest.raises(BottleneckError, match="needs \\(inputs, targets, flags\\) training batches"):
        penalty(output, (torch.rand(2, 3, 8, 8), torch.zeros(2)))
