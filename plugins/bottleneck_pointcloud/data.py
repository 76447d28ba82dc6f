"""Procedural point-cloud shapes with a ground-truth discriminative part (no download).

Every cloud is a *body* with one *part* mounted on top of it:

* The body is one of three closed surfaces -- ellipsoid, box or cylinder -- with
  random half-extents in ``[0.5, 1.0]`` along each axis. Its type, size and points
  are drawn independently of the label, so the body carries **no** class
  information.
* The part is mounted just outside the body surface, in a direction drawn
  uniformly within 30 degrees of the body's +z axis (the "top"), like a fixture:
  its own canonical z axis points along that direction and it is spun by a random
  angle about it. Every canonical part fits the unit ball (circumradius about 1)
  and is scaled by ``U(0.5, 0.7)`` times the body's mean half-extent, so its size says nothing
  about the class either; only its geometry decides the class.
* The part's points are a fraction ``U(*part_fraction)`` of the cloud; their mask
  is the ground truth ``gt``.

The cloud is then centred and scaled into the unit ball. To keep the body free of
class information, the centre and scale are computed from label-independent
quantities only: the centre is the point-count-weighted mean of the body's centre
and the centre of the part's bounding sphere (close to the cloud's mean), and the
scale makes the farthest body point or the part's bounding sphere touch the unit
sphere (every point lies within it, up to jitter and the parts' thin noise). With ``rotate=True`` it is rotated about the vertical z axis
by a uniform angle and then tilted by up to 15 degrees about a random horizontal
axis (the "upright" augmentation of ModelNet-style benchmarks; full SO(3) would
put the part anywhere, which a small PointNet does not learn in a CPU-sized
budget). Finally Gaussian noise of standard deviation ``jitter`` is added and the
points are shuffled, so that their order says nothing about ``gt``.

Part geometries (class index -- name, in the part's canonical frame):

====  ==========  ==========================================================
  0   rod         thin rod of length 2, standing along the mounting axis
  1   disk        flat filled disk of radius 1, lying on the body
  2   ring        thin torus of radius 0.88, lying on the body
  3   ball        solid ball of radius 0.8
  4   cube        surface of a cube with half-side 0.577
  5   cross       two perpendicular rods of length 2, lying on the body
  6   helix       three turns of radius 0.45 over a height of 1.76, standing
  7   dumbbell    two solid balls of radius 0.3 whose centres are 1.4 apart
  8   cone        lateral surface of a cone (height 1.44, base radius 0.68), tip out
  9   bowl        hemisphere shell of radius 0.88, opening outwards
====  ==========  ==========================================================

The default ``num_classes=8`` uses the first eight; up to ten are available.
Generation is vectorised over samples (2000 clouds take well under a second)
and deterministic given ``seed``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import Data

from bottleneck.errors import BottleneckError

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "PART_NAMES",
    "make_dense_shapes",
    "make_shapes",
]

PART_NAMES: tuple[str, ...] = (
    "rod",
    "disk",
    "ring",
    "ball",
    "cube",
    "cross",
    "helix",
    "dumbbell",
    "cone",
    "bowl",
)
"""Every available part geometry, in class-index order."""

NUM_CLASSES = 8
"""Number of classes used by default."""

CLASS_NAMES: tuple[str, ...] = PART_NAMES[:NUM_CLASSES]
"""Names of the default classes (the first :data:`NUM_CLASSES` part geometries)."""

_BODY_TYPES = 3
_PART_SCALE = (0.5, 0.7)  # times the body's mean half-extent (parts fit the unit ball)
_PART_GAP = (
    0.1  # clearance between the body surface and the part's bounding sphere, times its scale
)
_ATTACH_CAP = math.radians(30.0)  # the part is mounted within this angle of the body's +z axis
_TILT = math.radians(15.0)  # rotate=True: spin about z, then tilt by at most this angle


# --------------------------------------------------------------------------- helpers


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def _unit_vectors(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    v = torch.randn((*shape, 3), generator=gen)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _box_surface(half: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points uniform on the surface of boxes with half-extents ``half`` [b, 3]."""
    b = half.shape[0]
    # Face pairs orthogonal to x, y, z have areas proportional to h_y h_z, h_x h_z, h_x h_y.
    areas = torch.stack(
        [half[:, 1] * half[:, 2], half[:, 0] * half[:, 2], half[:, 0] * half[:, 1]], dim=-1
    )
    axis = torch.multinomial(areas, n, replacement=True, generator=gen)  # [b, n]
    pts = (torch.rand((b, n, 3), generator=gen) * 2 - 1) * half[:, None, :]
    sign = torch.randint(0, 2, (b, n), generator=gen).float() * 2 - 1
    face = half[:, None, :].expand(b, n, 3).gather(2, axis[..., None]).squeeze(-1) * sign
    return pts.scatter(2, axis[..., None], face[..., None])


def _ellipsoid_surface(half: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points on the surface of ellipsoids with semi-axes ``half`` [b, 3]."""
    return _unit_vectors((half.shape[0], n), gen) * half[:, None, :]


def _cylinder_surface(half: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points on closed cylinders along z.

    The radius is the mean of ``half[:, :2]`` and the half-height ``half[:, 2]``.
    """
    b = half.shape[0]
    r = half[:, :2].mean(-1)
    side_area = 2 * math.pi * r * 2 * half[:, 2]
    cap_area = 2 * math.pi * r * r
    p_side = (side_area / (side_area + cap_area))[:, None]
    on_side = torch.rand((b, n), generator=gen) < p_side
    theta = torch.rand((b, n), generator=gen) * 2 * math.pi
    rho = torch.where(on_side, torch.ones(b, n), torch.rand((b, n), generator=gen).sqrt())
    sign = torch.randint(0, 2, (b, n), generator=gen).float() * 2 - 1
    z = torch.where(on_side, torch.rand((b, n), generator=gen) * 2 - 1, sign)
    return torch.stack(
        [
            rho * theta.cos() * r[:, None],
            rho * theta.sin() * r[:, None],
            z * half[:, None, 2],
        ],
        dim=-1,
    )


def _cap_directions(b: int, cap: float, gen: torch.Generator) -> Tensor:
    """``b`` unit vectors uniform on the spherical cap within ``cap`` radians of +z."""
    cos_t = 1 - torch.rand((b,), generator=gen) * (1 - math.cos(cap))
    sin_t = (1 - cos_t**2).clamp_min(0).sqrt()
    phi = torch.rand((b,), generator=gen) * 2 * math.pi
    return torch.stack([sin_t * phi.cos(), sin_t * phi.sin(), cos_t], dim=-1)


def _axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices [b, 3, 3] about unit ``axis`` [b, 3] by ``angle`` [b] (Rodrigues)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3) + s * k + (1 - c) * (k @ k)


def _align_z(u: Tensor) -> Tensor:
    """Rotations [b, 3, 3] taking +z to the unit vectors ``u`` [b, 3] (about the axis z x u)."""
    axis = torch.stack([-u[:, 1], u[:, 0], torch.zeros_like(u[:, 0])], dim=-1)
    sin = axis.norm(dim=-1)
    fallback = torch.tensor([1.0, 0.0, 0.0]).expand_as(axis)
    axis = torch.where(sin[:, None] > 1e-6, axis / sin.clamp_min(1e-12)[:, None], fallback)
    return _axis_angle(axis, torch.atan2(sin, u[:, 2]))


def _upright_rotations(b: int, tilt: float, gen: torch.Generator) -> Tensor:
    """Uniform spin about z, then a tilt of at most ``tilt`` radians about a horizontal axis."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand(b, 3)
    spin = _axis_angle(z, torch.rand((b,), generator=gen) * 2 * math.pi)
    phi = torch.rand((b,), generator=gen) * 2 * math.pi
    horizontal = torch.stack([phi.cos(), phi.sin(), torch.zeros(b)], dim=-1)
    return _axis_angle(horizontal, torch.rand((b,), generator=gen) * tilt) @ spin


def _surface_distance(body: Tensor, half: Tensor, u: Tensor) -> Tensor:
    """Distance from the centre to the body surface along unit directions ``u`` [b, 3]."""
    eps = 1e-9
    ellipsoid = 1.0 / ((u / half) ** 2).sum(-1).sqrt()
    box = (half / u.abs().clamp_min(eps)).min(-1).values
    r = half[:, :2].mean(-1)
    cylinder = torch.minimum(
        r / u[:, :2].norm(dim=-1).clamp_min(eps), half[:, 2] / u[:, 2].abs().clamp_min(eps)
    )
    return torch.where(body == 0, ellipsoid, torch.where(body == 1, box, cylinder))


def _solid_ball(b: int, n: int, radius: float, gen: torch.Generator) -> Tensor:
    d = _unit_vectors((b, n), gen)
    return d * (torch.rand((b, n, 1), generator=gen) ** (1.0 / 3.0)) * radius


def _rod(b: int, n: int, gen: torch.Generator, thickness: float = 0.03) -> Tensor:
    """A thin rod of length 2 along x."""
    pts = torch.randn((b, n, 3), generator=gen) * thickness
    pts[..., 0] = torch.rand((b, n), generator=gen) * 2 - 1
    return pts


def _part(kind: int, b: int, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points of ``b`` canonical parts of geometry ``kind`` (within the unit ball)."""
    if kind == 0:  # rod, standing along z
        return _rod(b, n, gen)[..., [2, 1, 0]]
    if kind == 1:  # disk
        rho = torch.rand((b, n), generator=gen).sqrt()
        theta = torch.rand((b, n), generator=gen) * 2 * math.pi
        z = torch.randn((b, n), generator=gen) * 0.02
        return torch.stack([rho * theta.cos(), rho * theta.sin(), z], dim=-1)
    if kind == 2:  # ring (torus)
        big, small = 0.88, 0.1
        u = torch.rand((b, n), generator=gen) * 2 * math.pi
        v = torch.rand((b, n), generator=gen) * 2 * math.pi
        w = big + small * v.cos()
        return torch.stack([w * u.cos(), w * u.sin(), small * v.sin()], dim=-1)
    if kind == 3:  # solid ball
        return _solid_ball(b, n, 0.8, gen)
    if kind == 4:  # cube shell
        half = torch.full((b, 3), 1.0 / math.sqrt(3.0))
        return _box_surface(half, n, gen)
    if kind == 5:  # cross: rod along x or, for half of the points, along y
        pts = _rod(b, n, gen)
        swap = torch.rand((b, n), generator=gen) < 0.5
        return torch.where(swap[..., None], pts[..., [1, 0, 2]], pts)
    if kind == 6:  # helix
        t = torch.rand((b, n), generator=gen)
        angle = t * 3 * 2 * math.pi
        pts = torch.stack([0.45 * angle.cos(), 0.45 * angle.sin(), 1.76 * t - 0.88], dim=-1)
        return pts + torch.randn((b, n, 3), generator=gen) * 0.02
    if kind == 7:  # dumbbell
        pts = _solid_ball(b, n, 0.3, gen)
        side = torch.randint(0, 2, (b, n), generator=gen).float() * 1.4 - 0.7
        pts[..., 0] += side
        return pts
    if kind == 8:  # cone (lateral surface), density proportional to the radius
        h = torch.rand((b, n), generator=gen).sqrt()
        theta = torch.rand((b, n), generator=gen) * 2 * math.pi
        rho = 0.68 * h
        return torch.stack([rho * theta.cos(), rho * theta.sin(), 0.72 - 1.44 * h], dim=-1)
    if kind == 9:  # bowl (hemisphere shell)
        d = _unit_vectors((b, n), gen) * 0.88
        d[..., 2] = -d[..., 2].abs()
        return d + torch.tensor([0.0, 0.0, 0.44])
    raise AssertionError(kind)


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise BottleneckError(f"{name}: {message}")


def _generate(
    counts: Tensor,
    *,
    num_classes: int,
    part_fraction: tuple[float, float],
    rotate: bool,
    jitter: float,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense clouds padded to ``counts.max()`` points.

    Returns ``pos`` [b, m, 3], ``labels`` [b], ``gt`` [b, m] and ``valid`` [b, m];
    the valid points of each sample come first, in random order.
    """
    b = counts.numel()
    m = int(counts.max())
    labels = (torch.arange(b) % num_classes)[torch.randperm(b, generator=gen)]

    # Body: type, half-extents and surface points, independent of the label.
    body = torch.randint(0, _BODY_TYPES, (b,), generator=gen)
    half = _uniform((b, 3), 0.5, 1.0, gen)
    pts = torch.empty((b, m, 3))
    for kind, sampler in enumerate((_ellipsoid_surface, _box_surface, _cylinder_surface)):
        idx = (body == kind).nonzero().squeeze(1)
        if idx.numel():
            pts[idx] = sampler(half[idx], m, gen)

    # Part: canonical geometry by label, random orientation and scale, placed outside the body.
    part = torch.empty((b, m, 3))
    for kind in range(num_classes):
        idx = (labels == kind).nonzero().squeeze(1)
        if idx.numel():
            part[idx] = _part(kind, idx.numel(), m, gen)
    scale = _uniform((b,), *_PART_SCALE, gen) * half.mean(-1)
    # Mount each part on the body like a fixture: its canonical +z axis along the mounting
    # direction u, a random spin about that axis, its bounding sphere just off the surface.
    u = _cap_directions(b, _ATTACH_CAP, gen)
    z = torch.tensor([0.0, 0.0, 1.0]).expand(b, 3)
    spin = _axis_angle(z, torch.rand((b,), generator=gen) * 2 * math.pi)
    rot = _align_z(u) @ spin
    part = part @ rot.transpose(1, 2) * scale[:, None, None]
    dist = _surface_distance(body, half, u) + scale * (1.0 + _PART_GAP)
    anchor = u * dist[:, None]  # centre of the part's bounding sphere (radius ``scale``)
    part = part + anchor[:, None, :]

    # Slots [0, n_part) hold part points, [n_part, n) body points, [n, m) padding.
    frac = _uniform((b,), *part_fraction, gen)
    n_part = (frac * counts).round().long().clamp(1, None).minimum(counts - 1).clamp_min(0)
    slot = torch.arange(m)[None, :]
    gt = slot < n_part[:, None]
    valid = slot < counts[:, None]
    pos = torch.where(gt[..., None], part, pts)

    # Centre and scale to the unit ball using only label-independent quantities -- the
    # body's points and the part's bounding sphere, not the part's points -- so that
    # the normalised body does not reveal how the part's points are spread.
    # The centre is the cloud's mean up to the part's shape: the body is centred on 0.
    centre = ((n_part / counts)[:, None] * anchor)[:, None, :]
    pos = (pos - centre) * valid[..., None]
    body_radius = pos.norm(dim=-1).masked_fill(gt | ~valid, 0.0).amax(dim=1)
    part_radius = (anchor - centre[:, 0]).norm(dim=-1) + scale
    radius = torch.maximum(body_radius, part_radius).clamp_min(1e-12)
    pos = pos / radius[:, None, None]
    if rotate:
        pos = pos @ _upright_rotations(b, _TILT, gen).transpose(1, 2)
    if jitter > 0:
        pos = pos + torch.randn((b, m, 3), generator=gen) * jitter

    # Shuffle the valid points of each sample, keeping padding at the end.
    keys = torch.rand((b, m), generator=gen).masked_fill(~valid, 2.0)
    order = keys.argsort(dim=1)
    pos = pos.gather(1, order[..., None].expand(b, m, 3))
    gt = gt.gather(1, order)
    return pos.float(), labels, gt, valid.gather(1, order)


def _validate(
    num_samples: int,
    num_classes: int,
    part_fraction: tuple[float, float],
    jitter: float,
) -> None:
    _check(
        "num_samples",
        isinstance(num_samples, int) and num_samples >= 0,
        f"expected an int >= 0, got {num_samples!r}",
    )
    _check(
        "num_classes",
        isinstance(num_classes, int) and 1 <= num_classes <= len(PART_NAMES),
        f"expected an int in [1, {len(PART_NAMES)}], got {num_classes!r}",
    )
    lo, hi = part_fraction
    _check(
        "part_fraction",
        0.0 < lo <= hi < 1.0,
        f"expected 0 < low <= high < 1, got {part_fraction!r}",
    )
    _check("jitter", jitter >= 0.0, f"expected >= 0, got {jitter!r}")


# --------------------------------------------------------------------------- public API


def make_shapes(
    num_samples: int,
    *,
    num_classes: int = NUM_CLASSES,
    min_points: int = 256,
    max_points: int = 512,
    part_fraction: tuple[float, float] = (0.2, 0.3),
    rotate: bool = True,
    jitter: float = 0.01,
    seed: int = 0,
) -> list[Data]:
    """Generate ``num_samples`` labelled point clouds with ragged point counts.

    Each sample is a :class:`~torch_geometric.data.Data` with ``pos`` [n, 3]
    (float32), ``y`` (long, shape [1]) and ``gt`` [n] (bool, True on the points
    of the discriminative part), where ``n`` is uniform in
    ``[min_points, max_points]``. Labels are balanced (each class appears
    ``num_samples // num_classes`` or one more times) and shuffled. The clouds
    are centred, scaled into the unit ball, rotated upright (uniform spin about
    z, tilt up to 15 degrees) when ``rotate`` and jittered by ``N(0, jitter^2)``;
    see the module docstring for the bodies and the parts. The same ``seed``
    gives the same samples.

    Learnability: a :class:`~bottleneck_pointcloud.models.PointNet` (hidden=64)
    trained on 2000 clouds of 128-256 points for 12 epochs (batch 32, Adam, lr
    3e-3 with cosine decay) reaches 95-98% test accuracy in under a minute on two
    CPU cores; a larger ``part_fraction`` makes the task easier.
    """
    _validate(num_samples, num_classes, part_fraction, jitter)
    _check(
        "min_points/max_points",
        2 <= min_points <= max_points,
        f"expected 2 <= min_points <= max_points, got {min_points} and {max_points}",
    )
    if num_samples == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_points, max_points + 1, (num_samples,), generator=gen)
    pos, labels, gt, _ = _generate(
        counts,
        num_classes=num_classes,
        part_fraction=part_fraction,
        rotate=rotate,
        jitter=jitter,
        gen=gen,
    )
    return [
        Data(pos=pos[i, :n].clone(), y=labels[i : i + 1].clone(), gt=gt[i, :n].clone())
        for i, n in enumerate(counts.tolist())
    ]


def make_dense_shapes(
    num_samples: int,
    num_points: int = 512,
    *,
    num_classes: int = NUM_CLASSES,
    part_fraction: tuple[float, float] = (0.2, 0.3),
    rotate: bool = True,
    jitter: float = 0.01,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate ``num_samples`` clouds of exactly ``num_points`` points each.

    Returns ``pos`` [B, N, 3] float32, ``labels`` [B] long and ``gt`` [B, N]
    bool. Same shapes and options as :func:`make_shapes`.
    """
    _validate(num_samples, num_classes, part_fraction, jitter)
    _check(
        "num_points",
        isinstance(num_points, int) and num_points >= 2,
        f"expected an int >= 2, got {num_points!r}",
    )
    if num_samples == 0:
        return (
            torch.empty(0, num_points, 3),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, num_points, dtype=torch.bool),
        )
    gen = torch.Generator().manual_seed(seed)
    counts = torch.full((num_samples,), num_points, dtype=torch.long)
    pos, labels, gt, _ = _generate(
        counts,
        num_classes=num_classes,
        part_fraction=part_fraction,
        rotate=rotate,
        jitter=jitter,
        gen=gen,
    )
    return pos.contiguous(), labels, gt.contiguous()
