"""Embedded image data (no download): procedural "planted evidence" images and sklearn digits.

Planted evidence (:func:`make_planted`)
---------------------------------------

Each RGB image (32 x 32 by default) holds exactly one *class pattern* -- a small
binary glyph whose **shape alone** decides the label -- among a few *distractor*
glyphs, on a low-contrast textured background:

* The background is a dark grey level per image with a small colour tint, plus a
  smooth random texture (a coarse 4 x 4 random field upsampled bilinearly). It is
  drawn independently of the label, so it carries no class information.
* The class pattern is placed at a uniformly random position.
* ``U{num_distractors}`` distractor glyphs (both ends inclusive; the count is drawn
  independently of the label) come from a *separate* vocabulary of glyphs that are
  never class patterns. They have the same size, the same stroke style and the
  same pixel-count range as the class patterns, so neither "how much bright ink
  there is" nor "how many glyphs there are" says anything about the class. They
  are placed uniformly at random among positions that keep a gap of at least one
  background pixel to every other glyph (class pattern included), so glyphs never
  touch and each stays a separate, readable shape.
* Every glyph (class or distractor) is painted in a colour drawn uniformly from one
  shared palette of bright colours, so colour never reveals which glyph is the
  evidence nor which class it is.
* Gaussian pixel noise of standard deviation ``noise`` is added to the whole image,
  which is then clipped to ``[0, 1]``.

A model can only solve the task by finding the one glyph whose shape is in the
class vocabulary and reading it, which is what an explanation should point at: the
ground truth ``gt`` marks exactly the **stroke pixels** of the class glyph (not its
bounding box, whose remaining pixels are plain background and carry no evidence).

Glyphs are defined on a 6 x 6 grid (the tables below; ``#`` is ink). Each one
touches all four sides of its box, so two glyphs that differ as arrays differ
under every translation too; no rotations or flips are applied, so a mirrored
glyph is a different shape (``diagonal`` is a class, ``slash`` a distractor).
``pattern_size`` larger than 6 scales them up by nearest-neighbour resampling,
which keeps them pairwise different. Class patterns (class index -- name, ink pixels):

====  ========  ===  ==============================================
  0   plus      20   2-pixel-thick plus filling the box
  1   ring      20   square outline
  2   x         12   both diagonals
  3   tee       16   top bar and a 2-pixel-thick stem
  4   ell       11   left bar and bottom bar
  5   diagonal  11   2-pixel-thick diagonal from top-left to bottom-right
  6   checker   18   1-pixel checkerboard
  7   bracket   16   "[": left bar, top and bottom bars
  8   triangle  15   right triangle outline, right angle bottom-left
  9   arrow     16   upward arrow with a 2-pixel-thick shaft
====  ========  ===  ==============================================

The default ``num_classes=8`` uses the first eight; up to ten are available.
Distractors (ink pixels): ``aitch`` (H, 16), ``cup`` (U, 16), ``zed`` (Z, 16),
``bars`` (top and bottom bars, 12), ``dots`` (four 2 x 2 corner blocks, 16),
``ee`` (E, 20), ``slash`` (mirrored diagonal, 11), ``fork`` (Y, 12).

Generation is vectorised over images (4000 images take well under a
second) and deterministic given ``seed`` (a private :class:`torch.Generator`; the
global RNG is never touched).

Digits (:func:`load_digits`)
----------------------------

scikit-learn's embedded 8 x 8 handwritten digits (1797 images, no download), scaled
to ``[0, 1]`` and upsampled bilinearly, split into train and test sets with the
class proportions preserved. They have no pixel-level ground truth (``gt=None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from bottleneck.errors import BottleneckError, describe

__all__ = [
    "CLASS_NAMES",
    "CLASS_PATTERNS",
    "DISTRACTOR_PATTERNS",
    "NUM_CLASSES",
    "PALETTE",
    "PATTERN_NAMES",
    "ImageSet",
    "glyphs",
    "load_digits",
    "make_planted",
]

# --------------------------------------------------------------------------- glyph tables

CLASS_PATTERNS: dict[str, tuple[str, ...]] = {
    "plus": ("..##..", "..##..", "######", "######", "..##..", "..##.."),
    "ring": ("######", "#....#", "#....#", "#....#", "#....#", "######"),
    "x": ("#....#", ".#..#.", "..##..", "..##..", ".#..#.", "#....#"),
    "tee": ("######", "..##..", "..##..", "..##..", "..##..", "..##.."),
    "ell": ("#.....", "#.....", "#.....", "#.....", "#.....", "######"),
    "diagonal": ("##....", ".##...", "..##..", "...##.", "....##", ".....#"),
    "checker": ("#.#.#.", ".#.#.#", "#.#.#.", ".#.#.#", "#.#.#.", ".#.#.#"),
    "bracket": ("######", "#.....", "#.....", "#.....", "#.....", "######"),
    "triangle": ("#.....", "##....", "#.#...", "#..#..", "#...#.", "######"),
    "arrow": ("..##..", ".####.", "#.##.#", "..##..", "..##..", "..##.."),
}
"""Class glyphs on the 6 x 6 base grid (``#`` is ink), in class-index order."""

DISTRACTOR_PATTERNS: dict[str, tuple[str, ...]] = {
    "aitch": ("#....#", "#....#", "######", "#....#", "#....#", "#....#"),
    "cup": ("#....#", "#....#", "#....#", "#....#", "#....#", "######"),
    "zed": ("######", "....#.", "...#..", "..#...", ".#....", "######"),
    "bars": ("######", "......", "......", "......", "......", "######"),
    "dots": ("##..##", "##..##", "......", "......", "##..##", "##..##"),
    "ee": ("######", "#.....", "#####.", "#.....", "#.....", "######"),
    "slash": ("....##", "...##.", "..##..", ".##...", "##....", "#....."),
    "fork": ("#....#", ".#..#.", "..##..", "..##..", "..##..", "..##.."),
}
"""Distractor glyphs on the 6 x 6 base grid; none of them is a class pattern."""

PATTERN_NAMES: tuple[str, ...] = tuple(CLASS_PATTERNS)
"""Every available class pattern, in class-index order."""

NUM_CLASSES = 8
"""Number of classes used by default."""

CLASS_NAMES: tuple[str, ...] = PATTERN_NAMES[:NUM_CLASSES]
"""Names of the default classes (the first :data:`NUM_CLASSES` class patterns)."""

PALETTE: tuple[tuple[float, float, float], ...] = (
    (1.00, 0.30, 0.30),  # red
    (0.30, 1.00, 0.35),  # green
    (0.40, 0.60, 1.00),  # blue
    (1.00, 0.95, 0.30),  # yellow
    (0.30, 1.00, 1.00),  # cyan
    (1.00, 0.40, 1.00),  # magenta
    (1.00, 0.65, 0.20),  # orange
    (0.95, 0.95, 0.95),  # white
)
"""Bright glyph colours shared by class patterns and distractors (every channel max is >= 0.95)."""

_BASE = 6  # side of the glyph tables
_BG_LEVEL = (0.10, 0.30)  # per-image background grey level
_BG_TINT = 0.05  # per-channel offset, uniform in [-tint, tint]
_BG_TEXTURE = 0.10  # amplitude of the smooth texture, uniform in [-a, a] before smoothing
_TEXTURE_GRID = 4  # the texture is a random field on this grid, upsampled to the image
_MAX_ROUNDS = 1000  # rejection-sampling rounds per glyph slot before giving up


def _table(patterns: dict[str, tuple[str, ...]]) -> Tensor:
    return torch.tensor([[[ch == "#" for ch in row] for row in g] for g in patterns.values()])


def glyphs(kind: str = "class", size: int = _BASE) -> Tensor:
    """The glyph table ``[K, size, size]`` (bool) of ``kind`` ``"class"`` or ``"distractor"``.

    Row ``k`` of the class table is the pattern of class ``k``. ``size`` at least 6
    scales the 6 x 6 tables up by nearest-neighbour resampling.
    """
    if kind not in ("class", "distractor"):
        raise BottleneckError(f"glyphs: expected kind 'class' or 'distractor', got {kind!r}")
    if not isinstance(size, int) or size < _BASE:
        raise BottleneckError(f"glyphs: expected an integer size >= {_BASE}, got {size!r}")
    table = _table(CLASS_PATTERNS if kind == "class" else DISTRACTOR_PATTERNS)
    idx = torch.arange(size) * _BASE // size  # nearest source row/column of each output one
    return table[:, idx][:, :, idx]


# --------------------------------------------------------------------------- the set


@dataclass
class ImageSet:
    """Images with labels, optional pixel ground truth and class names.

    ``images`` is ``[N, C, H, W]`` float32 in ``[0, 1]``, ``labels`` ``[N]`` long,
    ``gt`` ``[N, H, W]`` bool (the pixels of the class-deciding evidence) or None
    when the data has none.
    """

    images: Tensor
    labels: Tensor
    gt: Tensor | None
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            raise BottleneckError(
                f"ImageSet: expected images of shape [N, C, H, W], got {describe(self.images)}"
            )
        n, _, h, w = self.images.shape
        if not isinstance(self.labels, Tensor) or self.labels.shape != (n,):
            raise BottleneckError(
                f"ImageSet: expected labels of shape ({n},), got {describe(self.labels)}"
            )
        if self.gt is not None and (not isinstance(self.gt, Tensor) or self.gt.shape != (n, h, w)):
            raise BottleneckError(
                f"ImageSet: expected gt of shape ({n}, {h}, {w}) or None, got {describe(self.gt)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> ImageSet:
        """A new set of the selected images (an int selects a set of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            gt=None if self.gt is None else self.gt[index],
            class_names=list(self.class_names),
            name=self.name,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def loader(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader of ``(images, labels)`` 2-tuples; shuffling is seeded by ``seed``.

        Batches are cut by slicing the tensors (a batch sampler, no per-item
        collation), which keeps an epoch over a few thousand images cheap.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BottleneckError(
                f"ImageSet.loader: expected a positive integer batch_size, got {batch_size!r}"
            )
        dataset = TensorDataset(self.images, self.labels)
        sampler = (
            RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else SequentialSampler(dataset)
        )
        batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
        return DataLoader(dataset, sampler=batches, batch_size=None, collate_fn=_pair)


def _pair(batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    return batch[0], batch[1]


# --------------------------------------------------------------------------- planted


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    ):
        return value
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise BottleneckError(f"make_planted: expected {what} an integer {bound}, got {value!r}")


def _place(
    pos: Tensor, active: Tensor, slot: int, span: int, room: int, gen: torch.Generator
) -> None:
    """Draw ``pos[:, slot]`` (top-left corners) uniformly among positions whose box,
    grown by the one-pixel gap, overlaps no active earlier slot; in place."""
    todo = active[:, slot].clone()
    for _ in range(_MAX_ROUNDS):
        k = int(todo.sum())
        if k == 0:
            return
        cand = torch.randint(0, room, (k, 2), generator=gen)
        prev = pos[todo, :slot]  # [k, slot, 2]
        clash = ((prev - cand[:, None, :]).abs() < span).all(-1) & active[todo, :slot]
        ok = ~clash.any(-1)
        rows = todo.nonzero().squeeze(1)
        pos[rows[ok], slot] = cand[ok]
        todo[rows[ok]] = False
    raise BottleneckError(
        f"make_planted: could not place {1 + slot} non-overlapping glyphs in some images "
        f"after {_MAX_ROUNDS} tries; use fewer distractors, a smaller pattern_size or a "
        "larger size"
    )


def _paint(
    canvas: Tensor, glyph: Tensor, pos: Tensor, colour: Tensor, active: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Paint ``glyph`` [N, s, s] at ``pos`` [N, 2] in ``colour`` [N, 3] into ``canvas``
    [N, H, W, 3] (channels last) for the ``active`` images, touching only the ink
    pixels; returns the index triples ``(image, row, column)`` of the painted ink."""
    n, i, j = (glyph & active[:, None, None]).nonzero(as_tuple=True)
    rows, cols = pos[n, 0] + i, pos[n, 1] + j
    canvas[n, rows, cols] = colour[n]
    return n, rows, cols


def make_planted(
    num_samples: int,
    *,
    size: int = 32,
    num_classes: int = NUM_CLASSES,
    pattern_size: int = _BASE,
    num_distractors: tuple[int, int] = (2, 4),
    noise: float = 0.05,
    seed: int = 0,
) -> ImageSet:
    """``num_samples`` RGB ``size`` x ``size`` images with one planted class pattern each.

    See the module docstring for the design. Labels are balanced (cycled through
    the classes, then shuffled); ``gt`` marks the stroke pixels of the class glyph.
    ``num_distractors`` is an inclusive ``(low, high)`` range for the per-image
    number of distractor glyphs. Deterministic given ``seed``.

    Raises :class:`~bottleneck.errors.BottleneckError` on bad arguments, including a
    ``high`` so large that placement could fail: ``high * (2 s + 1)^2`` must stay
    below ``(size - s + 1)^2`` for ``s = pattern_size`` (at most 4 distractors at the
    default 32 x 32 with 6 x 6 glyphs), which guarantees that every glyph finds room.
    """
    n = _check_int(num_samples, "num_samples", 1)
    nc = _check_int(num_classes, "num_classes", 2, len(PATTERN_NAMES))
    s = _check_int(pattern_size, "pattern_size", _BASE)
    size = _check_int(size, "size", s)
    if (
        not isinstance(num_distractors, tuple | list)
        or len(num_distractors) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in num_distractors)
        or not 0 <= num_distractors[0] <= num_distractors[1]
    ):
        raise BottleneckError(
            "make_planted: expected num_distractors an inclusive range (low, high) of integers "
            f"with 0 <= low <= high, got {num_distractors!r}"
        )
    lo, hi = int(num_distractors[0]), int(num_distractors[1])
    if not isinstance(noise, int | float) or not noise >= 0:
        raise BottleneckError(f"make_planted: expected noise >= 0, got {noise!r}")
    span, room = s + 1, size - s + 1  # box plus gap; number of positions per axis
    # Each glyph blocks at most (2 s + 1)^2 corner positions of a later one; if the blocked
    # area can cover the whole board, placement may be impossible -- fail early instead.
    if hi * (2 * s + 1) ** 2 >= room * room:
        raise BottleneckError(
            f"make_planted: {1 + hi} glyphs of {s} x {s} pixels may not fit in a {size} x {size} "
            f"image with one-pixel gaps; lower num_distractors (got {num_distractors!r}), "
            "pattern_size or raise size"
        )

    gen = torch.Generator().manual_seed(int(seed))
    classes, distractors = glyphs("class", s)[:nc], glyphs("distractor", s)
    palette = torch.tensor(PALETTE)

    labels = (torch.arange(n) % nc)[torch.randperm(n, generator=gen)]

    # background: grey level + tint + smooth texture
    level = torch.rand(n, 1, 1, 1, generator=gen) * (_BG_LEVEL[1] - _BG_LEVEL[0]) + _BG_LEVEL[0]
    tint = (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * _BG_TINT
    field = (torch.rand(n, 3, _TEXTURE_GRID, _TEXTURE_GRID, generator=gen) * 2 - 1) * _BG_TEXTURE
    images = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)
    images.add_(level + tint)
    canvas = images.permute(0, 2, 3, 1)  # a channels-last view: painting writes into images

    # slot 0 is the class pattern, slots 1..hi the distractors (active if below the count)
    slots = 1 + hi
    count = torch.randint(lo, hi + 1, (n,), generator=gen)
    active = torch.arange(slots)[None, :] <= count[:, None]  # slot 0 always active
    pos = torch.zeros(n, slots, 2, dtype=torch.long)
    pos[:, 0] = torch.randint(0, room, (n, 2), generator=gen)
    for slot in range(1, slots):
        _place(pos, active, slot, span, room, gen)
    which = torch.randint(0, len(distractors), (n, slots), generator=gen)
    colour = palette[torch.randint(0, len(palette), (n, slots), generator=gen)]

    gt = torch.zeros(n, size, size, dtype=torch.bool)
    gt[_paint(canvas, classes[labels], pos[:, 0], colour[:, 0], active[:, 0])] = True
    for slot in range(1, slots):
        _paint(canvas, distractors[which[:, slot]], pos[:, slot], colour[:, slot], active[:, slot])

    if noise > 0:
        images.add_(torch.randn(images.shape, generator=gen), alpha=float(noise))
    return ImageSet(
        images=images.clamp_(0.0, 1.0),
        labels=labels.long(),
        gt=gt,
        class_names=list(PATTERN_NAMES[:nc]),
        name="planted",
    )


# --------------------------------------------------------------------------- digits


def load_digits(
    size: int = 16, *, test_size: int = 500, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 8 x 8 digits as ``(train, test)`` sets of 1 x ``size`` x ``size`` images.

    Pixels are scaled to ``[0, 1]`` (divided by 16) and upsampled bilinearly
    (``align_corners=False``). The split is random given ``seed`` and stratified:
    every class contributes about ``test_size / 1797`` of its images to the test
    set, which holds exactly ``test_size`` images. ``gt`` is None (no pixel ground
    truth). Needs scikit-learn (embedded data, no download).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BottleneckError("load_digits needs scikit-learn: pip install scikit-learn") from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BottleneckError(f"load_digits: expected a positive integer size, got {size!r}")
    raw = _sk_load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8]
    y = torch.as_tensor(raw.target, dtype=torch.long)
    n = x.shape[0]
    if not isinstance(test_size, int) or isinstance(test_size, bool) or not 0 < test_size < n:
        raise BottleneckError(
            f"load_digits: expected an integer test_size in [1, {n - 1}], got {test_size!r}"
        )
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0)

    # stratified split: shuffle, rank each image within its class, and send to the test set
    # the images with the smallest within-class quantile (rank / class count)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    yp = y[perm]
    onehot = F.one_hot(yp, int(y.max()) + 1)
    rank = (onehot.cumsum(0) - 1).gather(1, yp[:, None]).squeeze(1)
    quantile = (rank.double() + 0.5) / onehot.sum(0)[yp].double()
    in_test = torch.zeros(n, dtype=torch.bool)
    in_test[quantile.argsort(stable=True)[:test_size]] = True
    test_idx, train_idx = perm[in_test], perm[~in_test]  # both in shuffled order
    names = [str(d) for d in range(10)]
    train = ImageSet(x[train_idx], y[train_idx], None, list(names), "digits-train")
    test = ImageSet(x[test_idx], y[test_idx], None, list(names), "digits-test")
    return train, test
