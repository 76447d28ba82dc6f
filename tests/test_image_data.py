"""Embedded image data (planted evidence, sklearn digits) and the image renderer."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bottleneck.errors import BottleneckError
from bottleneck_image.data import (
    CLASS_NAMES,
    CLASS_PATTERNS,
    DISTRACTOR_PATTERNS,
    NUM_CLASSES,
    PALETTE,
    PATTERN_NAMES,
    ImageSet,
    glyphs,
    make_planted,
)

_BRIGHT = 0.9  # every palette colour has a channel >= 0.95; the background stays below 0.5


def _bright(images: torch.Tensor) -> torch.Tensor:
    return images.amax(1) >= _BRIGHT


def _crop(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` [H, W] cropped to the bounding box of its True pixels."""
    rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
    return mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


# --------------------------------------------------------------------------- glyph tables


def test_class_names() -> None:
    assert len(CLASS_NAMES) == NUM_CLASSES == 8
    assert PATTERN_NAMES[:NUM_CLASSES] == CLASS_NAMES
    assert len(PATTERN_NAMES) >= 8
    assert not set(CLASS_PATTERNS) & set(DISTRACTOR_PATTERNS)


@pytest.mark.parametrize("size", [6, 7, 9, 12])
def test_glyphs_pairwise_different_under_translation(size: int) -> None:
    classes, distractors = glyphs("class", size), glyphs("distractor", size)
    assert classes.dtype == torch.bool and classes.shape == (len(CLASS_PATTERNS), size, size)
    assert distractors.shape == (len(DISTRACTOR_PATTERNS), size, size)
    table = torch.cat([classes, distractors])
    # every glyph fills its box (touches all four sides), so equal crops <=> equal arrays
    for g in table:
        assert g[0].any() and g[-1].any() and g[:, 0].any() and g[:, -1].any()
    crops = [_crop(g) for g in table]
    for i in range(len(table)):
        for j in range(i + 1, len(table)):
            assert crops[i].shape != crops[j].shape or not torch.equal(crops[i], crops[j]), (i, j)


def test_glyph_ink_ranges_overlap() -> None:
    """Distractors carry as much ink as class patterns, so ink says nothing about the class."""
    c, d = glyphs("class").sum((1, 2)), glyphs("distractor").sum((1, 2))
    assert d.min() <= c.min() and d.max() >= c.max()


def test_glyphs_reject_bad_arguments() -> None:
    with pytest.raises(BottleneckError, match="kind"):
        glyphs("other")
    with pytest.raises(BottleneckError, match="size"):
        glyphs("class", 5)


# --------------------------------------------------------------------------- planted


def test_planted_deterministic_by_seed() -> None:
    a, b, c = make_planted(64, seed=3), make_planted(64, seed=3), make_planted(64, seed=4)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.gt, b.gt)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.gt, c.gt)


def test_planted_fields_and_ranges() -> None:
    d = make_planted(83, seed=0)
    assert isinstance(d, ImageSet) and len(d) == 83 and d.name == "planted"
    assert d.images.shape == (83, 3, 32, 32) and d.images.dtype == torch.float32
    assert d.labels.shape == (83,) and d.labels.dtype == torch.long
    assert d.gt is not None and d.gt.shape == (83, 32, 32) and d.gt.dtype == torch.bool
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert d.class_names == list(CLASS_NAMES) and d.num_classes == 8
    assert d.image_shape == (3, 32, 32)
    counts = torch.bincount(d.labels, minlength=8)
    assert counts.max() - counts.min() <= 1  # balanced
    assert not torch.equal(d.labels[:16], torch.arange(16) % 8)  # shuffled, not cycled


def test_planted_other_sizes() -> None:
    d = make_planted(40, size=48, num_classes=10, pattern_size=9, seed=1)
    assert d.images.shape == (40, 3, 48, 48) and d.class_names == list(PATTERN_NAMES[:10])
    assert set(d.labels.tolist()) == set(range(10))
    ink = glyphs("class", 9).sum((1, 2))
    assert torch.equal(d.gt.sum((1, 2)), ink[d.labels])


def test_gt_marks_exactly_the_class_glyph() -> None:
    d = make_planted(400, noise=0.0, seed=5)
    classes, bright = glyphs("class"), _bright(d.images)
    palette = torch.tensor(PALETTE)
    assert (d.images.amax(1)[~bright] < 0.55).all()  # the background is dark
    assert torch.equal(d.gt.sum((1, 2)), classes[d.labels].sum((1, 2)))
    for i in range(len(d)):
        g = d.gt[i]
        assert torch.equal(_crop(g), classes[d.labels[i]])  # the class glyph's strokes
        assert bright[i][g].all()
        # one palette colour over the whole glyph
        colours = d.images[i].permute(1, 2, 0)[g].unique(dim=0)
        assert colours.shape[0] == 1 and (palette == colours[0]).all(1).any()
        # its box grown by the 1-pixel gap holds no other ink
        rows, cols = g.any(1).nonzero().squeeze(1), g.any(0).nonzero().squeeze(1)
        r0, r1 = max(int(rows.min()) - 1, 0), int(rows.max()) + 2
        c0, c1 = max(int(cols.min()) - 1, 0), int(cols.max()) + 2
        assert torch.equal(bright[i, r0:r1, c0:c1], g[r0:r1, c0:c1])


def test_class_pattern_position_is_spread() -> None:
    d = make_planted(1000, seed=2)
    top = d.gt.any(2).float().argmax(1)  # first row holding the glyph
    left = d.gt.any(1).float().argmax(1)
    assert int(top.min()) == 0 and int(top.max()) == 26
    assert int(left.min()) == 0 and int(left.max()) == 26


def test_distractors_independent_of_label() -> None:
    lo, hi = 2, 4
    d = make_planted(2000, num_distractors=(lo, hi), noise=0.0, seed=7)
    ink = glyphs("distractor").sum((1, 2))
    outside = (_bright(d.images) & ~d.gt).sum((1, 2)).float()
    assert outside.min() >= lo * ink.min() and outside.max() <= hi * ink.max()
    overall = outside.mean()
    for k in range(d.num_classes):
        # ~250 images per class; the standard error of a class mean is about 1 pixel
        assert abs(outside[d.labels == k].mean() - overall) < 4.0, k
    # colours do not depend on the class either: every class glyph uses the whole palette
    for k in range(d.num_classes):
        sel = d.labels == k
        colours = d.images[sel].permute(0, 2, 3, 1)[d.gt[sel]].unique(dim=0)
        assert colours.shape[0] == len(PALETTE), k


def test_no_distractors() -> None:
    d = make_planted(50, num_distractors=(0, 0), noise=0.0, seed=0)
    assert torch.equal(_bright(d.images), d.gt)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"num_classes": len(PATTERN_NAMES) + 1},
        {"pattern_size": 5},
        {"size": 5},
        {"num_distractors": (3, 2)},
        {"num_distractors": (2, 9)},  # cannot be guaranteed to fit
        {"num_distractors": 3},
        {"noise": -0.1},
    ],
)
def test_planted_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(BottleneckError, match="make_planted"):
        make_planted(10, **kwargs)


# --------------------------------------------------------------------------- ImageSet


def test_imageset_indexing_and_loader() -> None:
    d = make_planted(50, seed=0)
    sub = d[torch.tensor([3, 1, 4])]
    assert len(sub) == 3 and torch.equal(sub.images[1], d.images[1])
    assert torch.equal(sub.gt[2], d.gt[4]) and sub.class_names == d.class_names
    assert len(d[10:20]) == 10 and len(d[7]) == 1 and torch.equal(d[-1].labels, d.labels[-1:])

    batches = list(d.loader(batch_size=16))
    assert [len(b) for b in batches] == [2, 2, 2, 2]
    assert all(isinstance(b, tuple) for b in batches)
    assert [b[0].shape[0] for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), d.images)
    assert torch.equal(torch.cat([y for _, y in batches]), d.labels)

    def order(seed: int) -> torch.Tensor:
        return torch.cat([y for _, y in d.loader(batch_size=16, shuffle=True, seed=seed)])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
    assert torch.equal(order(1).sort().values, d.labels.sort().values)


def test_imageset_rejects_bad_shapes() -> None:
    with pytest.raises(BottleneckError, match="labels"):
        ImageSet(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), None, ["a"], "x")
    with pytest.raises(BottleneckError, match="gt"):
        ImageSet(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                 torch.zeros(4, 8, 7, dtype=torch.bool), ["a"], "x")  # fmt: skip
    with pytest.raises(BottleneckError, match="images"):
        ImageSet(torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long), None, ["a"], "x")
    with pytest.raises(BottleneckError, match="batch_size"):
        make_planted(4).loader(batch_size=0)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_split() -> None:
    pytest.importorskip("sklearn")
    from bottleneck_image.data import load_digits

    train, test = load_digits(16, test_size=500, seed=0)
    assert len(train) == 1797 - 500 and len(test) == 500
    for s in (train, test):
        assert s.images.shape[1:] == (1, 16, 16) and s.images.dtype == torch.float32
        assert s.images.min() >= 0 and s.images.max() <= 1 and s.images.max() > 0.9
        assert s.labels.dtype == torch.long and s.gt is None
        assert s.class_names == [str(k) for k in range(10)]
    assert (torch.bincount(test.labels, minlength=10) - 50).abs().max() <= 2  # stratified

    again, _ = load_digits(16, test_size=500, seed=0)
    other, _ = load_digits(16, test_size=500, seed=1)
    assert torch.equal(again.images, train.images)
    assert not torch.equal(other.images, train.images)


def test_digits_split_is_a_partition() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from bottleneck_image.data import load_digits

    train, test = load_digits(8, test_size=300, seed=3)  # size 8: no interpolation
    raw = torch.as_tensor(sklearn_datasets.load_digits().images, dtype=torch.float32) / 16

    def rows(x: torch.Tensor) -> Counter:
        return Counter(tuple(r) for r in x.reshape(x.shape[0], -1).tolist())

    assert rows(train.images) + rows(test.images) == rows(raw)  # no overlap, nothing lost


def test_digits_rejects_bad_test_size() -> None:
    pytest.importorskip("sklearn")
    from bottleneck_image.data import load_digits

    with pytest.raises(BottleneckError, match="test_size"):
        load_digits(test_size=0)
    with pytest.raises(BottleneckError, match="test_size"):
        load_digits(test_size=1797)


# --------------------------------------------------------------------------- render


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_overlay_and_grid(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bottleneck_image.render import render_grid, render_overlay

    d = make_planted(3, seed=0)
    rel = d.gt.float() * 0.7 + torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    kept = rel > 0.6
    out = render_overlay(d.images[0], rel[0], tmp_path / "a.png", title="plus", gt=d.gt[0])
    assert out == tmp_path / "a.png" and _is_png(out)
    grey = torch.rand(1, 16, 16)
    assert _is_png(render_overlay(grey, torch.rand(16, 16), tmp_path / "sub" / "b.png"))
    out = render_grid(
        d.images, rel, kept, tmp_path / "g.png", gt=d.gt, titles=["a", "b", "c"], max_rows=2
    )
    assert _is_png(out)
    out = render_grid(grey[None], torch.rand(1, 16, 16), torch.ones(1, 16, 16, dtype=torch.bool),
                      tmp_path / "h.png")  # fmt: skip
    assert _is_png(out)


def test_render_rejects_bad_shapes(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bottleneck_image.render import render_grid, render_overlay

    img, rel = torch.rand(3, 8, 8), torch.rand(8, 8)
    with pytest.raises(BottleneckError, match=r"relevance of shape \[8, 8\]"):
        render_overlay(img, torch.rand(8, 7), tmp_path / "x.png")
    with pytest.raises(BottleneckError, match="image of shape"):
        render_overlay(torch.rand(2, 8, 8), rel, tmp_path / "x.png")
    with pytest.raises(BottleneckError, match="gt"):
        render_overlay(img, rel, tmp_path / "x.png", gt=torch.zeros(8, dtype=torch.bool))
    imgs, rels, kept = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), torch.ones(2, 8, 8).bool()
    with pytest.raises(BottleneckError, match=r"kept of shape \[2, 8, 8\]"):
        render_grid(imgs, rels, kept[:1], tmp_path / "x.png")
    with pytest.raises(BottleneckError, match="relevance"):
        render_grid(imgs, rels[:, :4], kept, tmp_path / "x.png")
    with pytest.raises(BottleneckError, match="images"):
        render_grid(imgs[0], rels, kept, tmp_path / "x.png")
    with pytest.raises(BottleneckError, match="titles"):
        render_grid(imgs, rels, kept, tmp_path / "x.png", titles=["one"])
    assert not (tmp_path / "x.png").exists()


def test_shared_pyplot_uses_agg() -> None:
    pytest.importorskip("matplotlib")
    from bottleneck.viz import pyplot

    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
