"""Bias cues: assignment at a chosen correlation, and the image cues plant what they say."""

from __future__ import annotations

import pytest
import torch

from bottleneck.cues import assign_cues
from bottleneck.errors import BottleneckError
from bottleneck_image.cues import ColourTint, CornerPatch, class_colours


def labels(n: int = 4000, classes: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("correlation", [0.0, 0.25, 0.95, 1.0])
def test_cue_agrees_with_the_label_at_the_chosen_correlation(correlation: float) -> None:
    y = labels()
    assignment = assign_cues(y, 4, correlation, generator=torch.Generator().manual_seed(1))
    assert assignment.present.all()
    assert assignment.aligned.float().mean().item() == pytest.approx(correlation, abs=0.02)
    assert ((assignment.variant >= 0) & (assignment.variant < 4)).all()
    if correlation == 0.25:  # 1/C: the variant is independent of the label (decorrelated test data)
        for c in range(4):
            shares = torch.bincount(assignment.variant[y == c], minlength=4).float() / (y == c).sum()
            assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.05)


def test_presence_swaps_and_removal() -> None:
    y = labels(2000)
    assignment = assign_cues(y, 4, 1.0, presence=0.5, generator=torch.Generator().manual_seed(2))
    assert assignment.present.float().mean().item() == pytest.approx(0.5, abs=0.04)
    swapped = assignment.swapped(4)
    assert not swapped.aligned.any()
    assert torch.equal(swapped.variant, (y + 1) % 4)
    assert not assignment.removed().present.any()
    with pytest.raises(BottleneckError, match=r"shift must be in 1..3"):
        assignment.swapped(4, shift=4)


def test_assignment_is_reproducible_and_checks_its_input() -> None:
    y = labels(100)
    first = assign_cues(y, 4, 0.9, generator=torch.Generator().manual_seed(3))
    second = assign_cues(y, 4, 0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.variant, second.variant)
    with pytest.raises(BottleneckError, match=r"correlation must be a probability in \[0, 1\] \(got 1.5\)"):
        assign_cues(y, 4, 1.5)
    with pytest.raises(BottleneckError, match=r"labels must be in \[0, 3\)"):
        assign_cues(y, 3, 0.5)
    with pytest.raises(BottleneckError, match=r"labels must be a \[B\] long tensor"):
        assign_cues(y.float(), 4, 0.5)
    with pytest.raises(BottleneckError, match="at least 2 classes"):
        assign_cues(torch.zeros(3, dtype=torch.long), 1, 0.5)


def test_corner_patch_paints_the_class_colour_exactly_where_it_says() -> None:
    images = torch.rand(3, 3, 16, 16)
    y = torch.tensor([0, 1, 2])
    assignment = assign_cues(y, 3, 1.0)
    assignment.present[2] = False
    planted = CornerPatch(size=4, corner="bottom_right").plant(images, assignment, 3)
    colours = class_colours(3, 3)
    for i in range(2):
        assert torch.equal(planted.inputs[i, :, 12:, 12:], colours[y[i], :, None, None].expand(3, 4, 4))
        assert planted.flags[i].sum() == 16 and planted.flags[i, 12:, 12:].all()
    assert torch.equal(planted.inputs[2], images[2]) and not planted.flags[2].any()
    outside = ~planted.flags[:, None].expand_as(images)
    assert torch.equal(planted.inputs[outside], images[outside])  # nothing else changes
    assert torch.equal(images, images.clone())  # the input was not modified in place


def test_tint_blends_every_pixel_towards_the_class_colour() -> None:
    images = torch.rand(2, 3, 8, 8)
    assignment = assign_cues(torch.tensor([0, 1]), 2, 0.0)  # reversed: each shows the other class
    planted = ColourTint(strength=0.5).plant(images, assignment, 2)
    colours = class_colours(2, 3)
    expected = 0.5 * images + 0.5 * colours[[1, 0]][:, :, None, None]
    assert torch.allclose(planted.inputs, expected)
    assert planted.flags.all()


def test_colours_are_distinct_and_grey_images_get_grey_levels() -> None:
    rgb = class_colours(8, 3)
    assert torch.cdist(rgb, rgb).add(torch.eye(8)).min() > 0.2
    assert class_colours(4, 1).shape == (4, 1)
    with pytest.raises(BottleneckError, match="1- or 3-channel"):
        class_colours(4, 2)


def test_bad_cue_input_is_refused() -> None:
    assignment = assign_cues(torch.tensor([0, 1]), 2, 1.0)
    with pytest.raises(BottleneckError, match=r"\[B, C, H, W\] float images"):
        CornerPatch().plant(torch.rand(2, 8, 8), assignment, 2)
    with pytest.raises(BottleneckError, match="for 2 samples, the batch has 3"):
        CornerPatch().plant(torch.rand(3, 3, 8, 8), assignment, 2)
    with pytest.raises(BottleneckError, match="does not fit"):
        CornerPatch(size=10).plant(torch.rand(2, 3, 8, 8), assignment, 2)
    with pytest.raises(BottleneckError, match="corner must be one of"):
        CornerPatch(corner="middle")
    with pytest.raises(BottleneckError, match=r"strength must be in \(0, 1\)"):
        ColourTint(strength=1.0)


def test_point_cluster_adds_flagged_points_at_the_class_place() -> None:
    from torch_geometric.data import Batch

    from bottleneck_pointcloud.cues import PointCluster, class_directions
    from bottleneck_pointcloud.data import make_shapes

    clouds = Batch.from_data_list(make_shapes(3, min_points=40, max_points=60, seed=0))
    assignment = assign_cues(torch.tensor([0, 1, 2]), 8, 1.0)
    assignment.present[1] = False
    cue = PointCluster(size=16, distance=1.5, spread=0.01)
    planted = cue.plant(clouds, assignment, 8)
    before = torch.bincount(clouds.batch, minlength=3)
    after = torch.bincount(planted.inputs.batch, minlength=3)
    assert after.tolist() == [before[0] + 16, before[1], before[2] + 16]
    assert planted.flags.shape == (int(after.sum()),) and planted.flags.sum() == 32
    assert not planted.inputs.gt[planted.flags].any()  # cue points are not the planted evidence
    first = planted.inputs.get_example(0)
    extra = first.pos[-16:]
    centroid = clouds.get_example(0).pos.mean(0)
    direction = torch.nn.functional.normalize(extra.mean(0) - centroid, dim=0)
    assert torch.dot(direction, class_directions(8)[0]) > 0.99
    assert torch.equal(planted.inputs.get_example(1).pos, clouds.get_example(1).pos)
    with pytest.raises(BottleneckError, match="needs a PyG Batch"):
        cue.plant(torch.rand(3, 10, 3), assignment, 8)


def test_planted_word_inserts_the_class_word_and_keeps_evidence_aligned() -> None:
    from bottleneck_text.cues import CUE_WORDS, PlantedWord
    from bottleneck_text.data import (
        build_tokenizer,
        encode,
        make_planted_sentiment,
        word_evidence_to_tokens,
    )

    data = make_planted_sentiment(40, seed=0)
    assignment = assign_cues(data.labels, 2, 1.0, generator=torch.Generator().manual_seed(0))
    assignment.present[0] = False
    planted = PlantedWord().plant(data, assignment, 2)
    texts = planted.inputs.texts
    assert texts[0] == data.texts[0] and not planted.flags[0].any()
    for i in range(1, 40):
        words = texts[i].split()
        marked = [w for w, flag in zip(words, planted.flags[i].tolist(), strict=False) if flag]
        assert marked == [CUE_WORDS[int(data.labels[i])]]
        assert len(words) == len(data.texts[i].split()) + 1
        kept_evidence = [w for w, e in zip(words, planted.inputs.evidence[i], strict=True) if e]
        original = [w for w, e in zip(data.texts[i].split(), data.evidence[i], strict=True) if e]
        assert kept_evidence == original  # the planted evidence still marks the same words
    tokenizer = build_tokenizer(texts)
    encoded = encode(tokenizer, planted.inputs)
    flags = [row[: len(t.split())].tolist() for row, t in zip(planted.flags, texts, strict=True)]
    token_flags = word_evidence_to_tokens(tokenizer(texts, padding=True, return_tensors="pt"), flags)
    assert token_flags.shape == encoded["input_ids"].shape and int(token_flags.sum()) >= 39
    with pytest.raises(BottleneckError, match="3 classes need 3 cue words"):
        PlantedWord(words=("a", "b")).plant(data.texts, assign_cues(data.labels, 3, 1.0), 3)
