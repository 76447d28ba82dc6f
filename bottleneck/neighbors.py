"""Neighbourhoods on point coordinates: k-nearest neighbours and farthest point sampling.

Point-cloud models need a neighbourhood graph (to smooth masks, to pool scores)
and a subsample of well-spread points (to keep the number of units manageable).
``torch_cluster`` provides both as fast compiled kernels, but it is an optional
extra that is often hard to install, and ``torch_geometric``'s wrappers need
``pyg-lib`` or ``torch_cluster`` too. This module dispatches to ``torch_cluster``
when it imports and otherwise runs a pure-torch implementation that

* follows the PyG ``batch`` convention (``batch`` is a sorted ``[N]`` long tensor of
  sample ids, ``None`` meaning one sample), never pairing points of different samples;
* is memory-bounded: the brute-force distance matrix is built for a chunk of query
  rows at a time against only the candidate rows of the samples in that chunk, so
  100k points in one sample need ``~DEFAULT_BUDGET_BYTES`` of scratch memory, not an
  ``N x N`` matrix;
* is vectorised over samples (no Python loop over samples).

Every check on the inputs raises :class:`~bottleneck.errors.BottleneckError` saying
what was expected and what was given.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from .errors import BottleneckError, describe

try:  # optional compiled kernels, the ``cluster`` extra
    import torch_cluster as _torch_cluster
except ImportError:  # pragma: no cover - depends on the environment
    _torch_cluster = None

#: Whether ``torch_cluster`` imported; ``use_cluster=None`` dispatches to it when true.
HAS_TORCH_CLUSTER: bool = _torch_cluster is not None

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "HAS_TORCH_CLUSTER",
    "SampleLayout",
    "fps",
    "knn",
    "knn_graph",
    "knn_neighbours",
]

#: Memory budget of one chunk's distance matrix in the pure-torch kNN (64 MiB of
#: float32 distances). Peak scratch memory is a small multiple of it (the matrix, a
#: temporary of the same size and a boolean sample mask).
DEFAULT_BUDGET_BYTES: int = 64 * 2**20

#: On CPU the budget is further capped at this: chunks nearer the caches ran about
#: twice as fast (k=16 graph on 100k points, 16 cores: 7.1 s at 16 MiB, 16 s at
#: 64 MiB; much smaller chunks starve the threads and were slower again).
_CPU_BUDGET_BYTES: int = 16 * 2**20

#: Upper bound on query rows per chunk when the chunk size is chosen automatically,
#: per device type. With many small samples a chunk's candidate columns grow with
#: its rows (the union of its samples), and so do the wasted cross-sample
#: distances: on CPU, where every distance costs, a few hundred rows is fastest
#: (and keeps chunks nearer the cache); on accelerators, where each chunk's kernel
#: launches and host syncs cost more than its arithmetic, bigger chunks win.
_MAX_AUTO_ROWS: dict[str, int] = {"cpu": 256}
_MAX_AUTO_ROWS_ACCEL: int = 4096

#: Up to this many coordinates, distances are accumulated exactly, coordinate by
#: coordinate; above it, a centred matrix product is used (faster for wide inputs).
_EXACT_MAX_DIM: int = 8

_INSTALL_HINT = "pip install bottleneck-mask[cluster]"


# --------------------------------------------------------------------------- checks


def _check_points(value: Any, name: str) -> Tensor:
    """``value`` must be a finite ``[N, D]`` floating-point tensor with ``D >= 1``."""
    return _checked_points(value, name)[0]


def _checked_points(value: Any, name: str) -> tuple[Tensor, float]:
    """:func:`_check_points`, with the largest coordinate magnitude it had to compute anyway.

    The blocked search needs that bound (see :func:`_may_overflow`); taking it here
    spares a second pass over the points and a second host sync. The points come back
    detached: a search returns indices, which carry no gradient, and its distance
    kernels write into preallocated buffers (``out=``), which autograd refuses for
    points that require grad (features of a model being trained, say).
    """
    if not isinstance(value, Tensor):
        raise BottleneckError(
            f"{name} must be a torch.Tensor of shape [N, D] (float); got {describe(value)}"
        )
    if value.dim() != 2:
        raise BottleneckError(
            f"{name} must be 2-D [N, D] (one row of coordinates per point); got {describe(value)}"
        )
    if not value.is_floating_point():
        raise BottleneckError(
            f"{name} must have a floating-point dtype (e.g. torch.float32); got {describe(value)}"
        )
    if value.shape[1] < 1:
        raise BottleneckError(
            f"{name} must have at least one coordinate column; got {describe(value)}"
        )
    value = value.detach()
    if value.numel() == 0:
        return value, 0.0
    low, high = torch.stack(torch.aminmax(value)).tolist()  # NaN and Inf carry through: one pass, one sync
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise BottleneckError(
                f"{name} must be finite (no NaN/Inf coordinates); got {bad} non-finite "
                f"value(s) in {describe(value)}"
            )
    return value, max(-low, high)


def _check_batch(batch: Any, num_points: int, device: torch.device, name: str) -> Tensor | None:
    """``batch`` must be ``None`` or a sorted, non-negative ``[N]`` long tensor on ``device``."""
    if batch is None:
        return None
    if not isinstance(batch, Tensor):
        raise BottleneckError(
            f"{name} must be None or a torch.long tensor of shape [{num_points}]; got {describe(batch)}"
        )
    if batch.dim() != 1 or batch.shape[0] != num_points:
        raise BottleneckError(
            f"{name} must have shape [{num_points}] (one sample id per point); got {describe(batch)}"
        )
    if batch.dtype != torch.long:
        raise BottleneckError(f"{name} must have dtype torch.long; got {describe(batch)}")
    if batch.device != device:
        raise BottleneckError(
            f"{name} must be on the points' device {device}; got a tensor on {batch.device}"
        )
    if num_points > 0:
        if int(batch[0]) < 0:
            raise BottleneckError(
                f"{name} must hold non-negative sample ids; got min {int(batch.min())}"
            )
        if num_points > 1 and not bool((batch[1:] >= batch[:-1]).all()):
            first = int((batch[1:] < batch[:-1]).nonzero()[0, 0])
            raise BottleneckError(
                f"{name} must be sorted ascending (points of a sample contiguous, PyG convention); "
                f"got {name}[{first}]={int(batch[first])} > {name}[{first + 1}]={int(batch[first + 1])}"
            )
    return batch


def _check_k(k: Any) -> int:
    if isinstance(k, bool):
        raise BottleneckError(f"k must be an integer >= 1; got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise BottleneckError(f"k must be an integer >= 1; got {describe(k)}") from None
    if k < 1:
        raise BottleneckError(f"k must be an integer >= 1; got {k}")
    return k


def _check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise BottleneckError(f"chunk_size must be None or an integer >= 1; got {chunk_size!r}")
    return chunk_size


def _resolve_cluster(use_cluster: bool | None) -> bool:
    """``None`` -> use ``torch_cluster`` if it imported; ``True`` requires it."""
    if use_cluster is None:
        return HAS_TORCH_CLUSTER
    if use_cluster and not HAS_TORCH_CLUSTER:
        raise BottleneckError(
            "use_cluster=True needs torch_cluster, which is not installed; install the "
            f"'cluster' extra ({_INSTALL_HINT}) or pass use_cluster=None/False for pure torch"
        )
    return bool(use_cluster)


# ------------------------------------------------------------------------- helpers


def _chunk_rows(num_candidates: int, budget_bytes: int, element_size: int = 4) -> int:
    """Query rows per chunk so that a ``rows x num_candidates`` distance matrix fits the budget.

    ``max(1, budget_elems // num_candidates)``: at least one row, so a single query
    against more candidates than the budget holds still runs.
    """
    budget_elems = max(1, budget_bytes // max(1, element_size))
    return max(1, budget_elems // max(1, num_candidates))


def _ptr(batch: Tensor | None, num_points: int, num_samples: int) -> list[int]:
    """CSR offsets ``[B + 1]`` of a sorted batch vector, as a Python list."""
    if batch is None:
        counts = [num_points] + [0] * (num_samples - 1)
    else:
        counts = torch.bincount(batch, minlength=num_samples).tolist()
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    return ptr


def _plan_chunks(
    batch_y: list[int],
    ptr_x: list[int],
    budget_elems: int,
    chunk_size: int | None = None,
    max_rows: int = _MAX_AUTO_ROWS_ACCEL,
) -> list[tuple[int, int, int, int]]:
    """Split query rows into chunks ``(start, end, x_lo, x_hi)``.

    The candidates of rows ``start:end`` are the x-rows ``x_lo:x_hi`` of the samples
    those rows belong to (contiguous because batches are sorted). With
    ``chunk_size=None`` each chunk is the longest run of rows (at most ``max_rows``)
    with ``rows * candidates <= budget_elems`` (at least one row), found by bisection
    since that product only grows with the run; otherwise it has ``chunk_size`` rows.
    """
    m = len(batch_y)
    chunks: list[tuple[int, int, int, int]] = []
    s = 0
    while s < m:
        lo = ptr_x[batch_y[s]]
        if chunk_size is not None:
            e = min(m, s + chunk_size)
        else:

            def cost(end: int, s: int = s, lo: int = lo) -> int:
                return (end - s) * (ptr_x[batch_y[end - 1] + 1] - lo)

            # The first sample's candidates alone already bound the rows from above.
            first = ptr_x[batch_y[s] + 1] - lo
            e = min(m, s + max_rows, s + _chunk_rows(first, budget_elems, element_size=1))
            if cost(e) > budget_elems:
                good, bad = s + 1, e  # cost(good) may exceed the budget: one row always runs
                while bad - good > 1:
                    mid = (good + bad) // 2
                    if cost(mid) <= budget_elems:
                        good = mid
                    else:
                        bad = mid
                e = good
        chunks.append((s, e, lo, ptr_x[batch_y[e - 1] + 1]))
        s = e
    return chunks


def _sq_dists(y_t: Tensor, x_t: Tensor, buf: Tensor, tmp: Tensor | None) -> Tensor:
    """Squared distances ``[R, C]`` between coordinate-major ``y_t [D, R]`` and ``x_t [D, C]``.

    Written into the flat scratch ``buf`` (and ``tmp``), both of at least ``R * C``
    elements and reused across chunks: allocating fresh multi-MiB matrices per
    chunk let glibc's heap fragment and grow by tens of MiB per chunk on CPU.

    Low-dimensional inputs (points) are accumulated one coordinate at a time, which
    is exact up to rounding of differences; the ``|y|^2 - 2 y.x + |x|^2`` expansion
    would lose close-neighbour ordering to cancellation for coordinates far from
    the origin. Wide inputs use the expansion on centred coordinates (a matrix
    product is much faster than ``D`` passes); ``tmp`` is unused there.
    """
    d, r = y_t.shape
    c = x_t.shape[1]
    dist = buf[: r * c].view(r, c)
    if d <= _EXACT_MAX_DIM:
        torch.sub(y_t[0].unsqueeze(1), x_t[0].unsqueeze(0), out=dist)
        dist.square_()
        if d > 1:
            assert tmp is not None
            scratch = tmp[: r * c].view(r, c)
            for i in range(1, d):
                torch.sub(y_t[i].unsqueeze(1), x_t[i].unsqueeze(0), out=scratch)
                dist.addcmul_(scratch, scratch)
        return dist
    center = x_t.mean(dim=1, keepdim=True)
    yc = y_t - center
    xc = x_t - center
    torch.addmm((yc * yc).sum(0).unsqueeze(1), yc.t(), xc, alpha=-2.0, out=dist)
    dist.add_((xc * xc).sum(0).unsqueeze(0))
    return dist.clamp_min_(0.0)



def _block_dists(yg: Tensor, xg: Tensor, padding: Tensor, exclude_self: bool) -> Tensor:
    """Squared distances ``[G, ny, nx]`` within padded samples; padding (``[G, 1, nx]`` bool) and self pairs are ``inf``.

    Low-dimensional inputs are accumulated exactly, coordinate by coordinate; wide ones
    (centred per sample by the caller) by the matrix-product expansion (see :func:`_sq_dists`),
    with the squared norms taken once when the queries are the candidates.
    """
    dim = xg.shape[-1]
    if dim <= _EXACT_MAX_DIM:
        dist = (yg[:, :, None, 0] - xg[:, None, :, 0]).square_()
        for i in range(1, dim):
            dist.add_((yg[:, :, None, i] - xg[:, None, :, i]).square_())
    else:
        x_norms = xg.square().sum(-1)
        y_norms = x_norms if yg is xg else yg.square().sum(-1)
        dist = torch.baddbmm(
            y_norms.unsqueeze(2), yg, xg.transpose(1, 2), alpha=-2.0
        ).add_(x_norms.unsqueeze(1)).clamp_min_(0.0)
    dist.masked_fill_(padding, math.inf)
    if exclude_self:
        dist.diagonal(dim1=1, dim2=2).fill_(math.inf)
    return dist


def _may_overflow(magnitude: float, dim: int, dtype: torch.dtype) -> bool:
    """Whether squared distances between points of at most ``magnitude`` per coordinate may overflow.

    The expansion ``|y|^2 - 2 y.x + |x|^2`` of centred points is at most ``16 dim m^2``
    (differences of ``2 m`` per coordinate; centring at most doubles ``m``): a factor of 4
    to spare below the type's largest value. Only for coordinates beyond about 1e17
    (float32), whose distances are then taken in float64 (:func:`_distance_dtype`), and
    beyond about 1e150 (float64), where the search keeps only the finite ones.
    """
    return 64 * dim * magnitude * magnitude >= torch.finfo(dtype).max


#: The per-sample blocked kNN pads every sample to the largest one; it is used only
#: while that wastes at most this factor of distances over the exact per-sample work.
_BLOCK_MAX_WASTE: float = 4.0


@dataclass(frozen=True, eq=False)
class SampleLayout:
    """Where each point of a sorted batch vector sits when its samples are padded to ``[B, widest]`` blocks.

    The blocked kNN search (many small samples, each searched against its own points
    only) needs each sample's size and first point and each point's slot in its block.
    They depend on the batch vector alone, so a model that searches neighbours several
    times over the same points -- DGCNN: the coordinates, then each layer's features --
    builds the layout once per forward (:meth:`of`, which checks the batch vector) and
    passes it to :func:`knn_graph`, which then neither checks the batch vector again nor
    recounts the samples, with their host syncs. On the kept quarter of the bench's 32
    clouds, checks and bookkeeping were about 0.24 of a search's 0.85 ms (64-wide
    features, warm); sharing the layout over DGCNN's three searches took about 0.1 ms off
    the sparse call (9.1 to 9.0 ms, one process, alternating).

    Attributes:
        batch: the ``[N]`` sorted sample ids it was built from.
        num_samples: ``B``.
        counts: ``[B]`` points per sample.
        start: ``[B]`` index of each sample's first point.
        slot: ``[N]`` position of each point within its sample.
        widest, fewest: the largest and smallest sample (host ints).
        pairs: ``sum(counts ** 2)``, the distances an exact per-sample search computes.
    """

    batch: Tensor
    num_samples: int
    counts: Tensor
    start: Tensor
    slot: Tensor
    widest: int
    fewest: int
    pairs: int

    @classmethod
    def of(cls, batch: Tensor, num_samples: int | None = None) -> SampleLayout:
        """The layout of ``batch`` (sorted, non-negative ``[N]`` long sample ids), checked.

        ``num_samples`` counts trailing samples without points; by default the last id + 1.
        """
        if not isinstance(batch, Tensor) or batch.dim() != 1:
            raise BottleneckError(f"batch must be a 1-D torch.long tensor of sample ids; got {describe(batch)}")
        batch = _check_batch(batch, batch.shape[0], batch.device, "batch")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 0):
            raise BottleneckError(f"num_samples must be None or an integer >= 0; got {num_samples!r}")
        layout = _layout(batch, num_samples or 0)
        if num_samples is not None and layout.num_samples > num_samples:
            raise BottleneckError(
                f"batch names sample {layout.num_samples - 1} but num_samples is {num_samples}"
            )
        return layout

    @property
    def num_points(self) -> int:
        return self.batch.shape[0]

    # The blocked search's per-point and per-sample index tensors, built on first use and
    # kept with the layout: a model searching the same samples three times (DGCNN) builds
    # them once. With them and the neighbour table (:func:`knn_neighbours`), DGCNN's
    # sparse call on the bench's batch went from 8.48 to 8.27 ms (medians of 8 fresh
    # processes each, alternating with the previous code, 2 CPU cores).

    @cached_property
    def padded_row(self) -> Tensor:
        """``[N]``: each point's row in the ``[B * widest]`` table of the samples padded to one width."""
        return self.batch * self.widest + self.slot

    @cached_property
    def first_of_point(self) -> Tensor:
        """``[N, 1]``: the index of the first point of each point's sample."""
        return self.start.index_select(0, self.batch).unsqueeze(1)

    @cached_property
    def sizes(self) -> Tensor:
        """``[B, 1, 1]`` long: the points of each sample, at least 1 (what a sample's mean divides by)."""
        return self.counts.clamp(min=1).view(-1, 1, 1)

    @cached_property
    def padding(self) -> Tensor:
        """``[B, 1, widest]`` bool: the slots of each padded sample that hold no point."""
        return (torch.arange(self.widest, device=self.batch.device) >= self.counts[:, None]).unsqueeze(1)


def _layout(batch: Tensor, num_samples: int = 0) -> SampleLayout:
    """:class:`SampleLayout` of an already checked batch vector (one host sync)."""
    counts = torch.bincount(batch, minlength=num_samples)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.shape[0], device=batch.device) - start.index_select(0, batch)
    if counts.numel() == 0:
        widest = fewest = pairs = 0
    else:
        widest, fewest, pairs = torch.stack([counts.max(), counts.min(), counts.square().sum()]).tolist()
    return SampleLayout(batch, counts.numel(), counts, start, slot, int(widest), int(fewest), int(pairs))


def _check_layout(layout: Any, batch: Tensor | None, pos: Tensor) -> SampleLayout:
    """``layout`` must be a :class:`SampleLayout` of ``pos``'s points, built from ``batch`` when one is given."""
    if not isinstance(layout, SampleLayout):
        raise BottleneckError(f"layout must be a SampleLayout (SampleLayout.of(batch)); got {describe(layout)}")
    if layout.num_points != pos.shape[0] or layout.batch.device != pos.device:
        raise BottleneckError(
            f"layout describes {layout.num_points} points on {layout.batch.device}; "
            f"got pos {describe(pos)} on {pos.device}"
        )
    if batch is not None and batch is not layout.batch:
        raise BottleneckError(
            "batch and layout disagree: pass the batch vector the layout was built from (or batch=None)"
        )
    return layout


def _blocked_fits(layout_x: SampleLayout, layout_y: SampleLayout, budget_elems: int) -> bool:
    """Whether the blocked search pays: one sample's block fits the budget and padding wastes
    at most :data:`_BLOCK_MAX_WASTE` of the exact per-sample work."""
    nx, ny = layout_x.widest, layout_y.widest
    exact_work = layout_x.pairs if layout_y is layout_x else int((layout_x.counts * layout_y.counts).sum())
    return nx * ny <= budget_elems and layout_x.num_samples * nx * ny <= _BLOCK_MAX_WASTE * max(exact_work, 1)


def _picks_all_real(layout_x: SampleLayout, k: int, exclude_self: bool, magnitude: float, dim: int,
                    dtype: torch.dtype) -> bool:
    """Whether every query has at least ``k`` real candidates at a finite distance, so that each
    of its ``k`` picks is a real point of its sample (no validity mask needed)."""
    return layout_x.fewest - int(exclude_self) >= k and not _may_overflow(magnitude, dim, dtype)


def _padded(points: Tensor, layout: SampleLayout) -> Tensor:
    """``points`` ``[N, D]`` as ``[B, widest, D]`` blocks, one per sample, zero-padded."""
    dim = points.shape[1]
    table = points.new_zeros(layout.num_samples * layout.widest, dim).index_copy_(0, layout.padded_row, points)
    return table.view(layout.num_samples, layout.widest, dim)


def _padded_pair(x: Tensor, y: Tensor, layout_x: SampleLayout, layout_y: SampleLayout,
                 exclude_self: bool) -> tuple[Tensor, Tensor]:
    """The candidates and the queries as padded blocks (the same tensor with ``exclude_self``),
    centred per sample for the matrix-product expansion when they are wide."""
    xs = _padded(x, layout_x)
    ys = xs if exclude_self else _padded(y, layout_y)
    if x.shape[1] > _EXACT_MAX_DIM:
        center = xs.sum(1, keepdim=True) / layout_x.sizes
        xs = xs - center
        ys = xs if exclude_self else ys - center
    return xs, ys


def _group_size(layout_x: SampleLayout, layout_y: SampleLayout, budget_elems: int) -> int:
    """Samples per batched distance matrix of at most ``budget_elems`` distances."""
    return max(1, budget_elems // (layout_x.widest * layout_y.widest))


def _blocked_table(xs: Tensor, ys: Tensor, k: int, layout_x: SampleLayout, layout_y: SampleLayout, group: int, *,
                   exclude_self: bool, nearest_first: bool) -> Tensor:
    """``[M, k]``: each query's ``k`` nearest candidates, as indices into ``x``, when every pick is real.

    Only the real query rows are searched and their picks are the neighbours, with no
    validity mask and no nonzero (the common case: samples larger than k; on 32 clouds
    of 32-64 points this was a third of the search, and the padded query rows a quarter
    of the top-k).
    """
    num_samples, nx, ny = layout_x.num_samples, layout_x.widest, layout_y.widest
    rows_all = layout_y.padded_row
    # each group's queries are a contiguous run of y (another sync, only for several groups)
    starts = None if group >= num_samples else [*layout_y.start.tolist(), layout_y.num_points]
    picks = []
    for g0 in range(0, num_samples, group):
        g1 = min(num_samples, g0 + group)
        xg = xs[g0:g1]
        yg = xg if ys is xs else ys[g0:g1]
        dist = _block_dists(yg, xg, layout_x.padding[g0:g1], exclude_self)
        rows = rows_all if starts is None else rows_all[starts[g0]:starts[g1]] - g0 * ny
        real = dist.view(-1, nx).index_select(0, rows)
        picks.append(torch.topk(real, k, dim=1, largest=False, sorted=nearest_first).indices)
    # each query's sample's first candidate
    first = layout_x.first_of_point if layout_y is layout_x else layout_x.start.index_select(0, layout_y.batch)[:, None]
    return (picks[0] if len(picks) == 1 else torch.cat(picks)).add_(first)


def _knn_blocked(
    x: Tensor,
    y: Tensor,
    k: int,
    layout_x: SampleLayout,
    layout_y: SampleLayout,
    *,
    exclude_self: bool,
    budget_elems: int,
    magnitude: float,
    nearest_first: bool = True,
) -> tuple[Tensor, Tensor] | None:
    """kNN on samples padded to ``[B, n, D]`` blocks, or ``None`` when that does not pay.

    Many small samples (a batch of point clouds of a few hundred points each) make the
    chunked search compute mostly cross-sample distances only to mask them: a chunk of
    256 query rows spans several samples. Here each sample's distances are computed
    against its own points only, for a group of samples at a time (one batched matrix
    of at most ``budget_elems`` distances), with padded slots masked. Used when one
    sample's block fits the budget and padding wastes at most :data:`_BLOCK_MAX_WASTE`.
    ``layout_y`` is ``layout_x`` when ``y`` is ``x``; ``magnitude`` bounds the
    coordinates of both (see :func:`_may_overflow`).
    """
    if not _blocked_fits(layout_x, layout_y, budget_elems):
        return None
    device = x.device
    xs, ys = _padded_pair(x, y, layout_x, layout_y, exclude_self)
    group = _group_size(layout_x, layout_y, budget_elems)
    if _picks_all_real(layout_x, k, exclude_self, magnitude, x.shape[1], x.dtype):
        nbr = _blocked_table(xs, ys, k, layout_x, layout_y, group, exclude_self=exclude_self,
                             nearest_first=nearest_first)
        centre = torch.arange(y.shape[0], device=device).unsqueeze(1).expand(-1, k)
        return centre.reshape(-1), nbr.view(-1)
    num_samples, ny = layout_x.num_samples, layout_y.widest
    ptr_x, ptr_y, counts_y = layout_x.start, layout_y.start, layout_y.counts
    kk = min(k, layout_x.widest)
    cols_y = torch.arange(ny, device=device)
    rows_out: list[Tensor] = []
    cols_out: list[Tensor] = []
    for g0 in range(0, num_samples, group):
        g1 = min(num_samples, g0 + group)
        xg = xs[g0:g1]
        yg = xg if ys is xs else ys[g0:g1]
        dist = _block_dists(yg, xg, layout_x.padding[g0:g1], exclude_self)
        best, idx = torch.topk(dist, kk, dim=2, largest=False, sorted=nearest_first)
        valid = torch.isfinite(best)
        valid &= (cols_y < counts_y[g0:g1, None]).unsqueeze(-1)
        # one nonzero for both ends of the edges: the query row follows from the flat position
        where = valid.view(-1).nonzero().squeeze(1)
        rows = (ptr_y[g0:g1, None] + cols_y).unsqueeze(-1).expand(-1, -1, kk)
        rows_out.append(rows.reshape(-1)[where])
        cols_out.append(idx.add_(ptr_x[g0:g1, None, None]).view(-1)[where])
    return torch.cat(rows_out), torch.cat(cols_out)


def _budget_elems(device: torch.device, dtype: torch.dtype, budget_bytes: int | None = None) -> int:
    """Distances per scratch matrix: ``budget_bytes``, by default :data:`DEFAULT_BUDGET_BYTES` (less on CPU)."""
    if budget_bytes is None:
        budget_bytes = DEFAULT_BUDGET_BYTES
        if device.type == "cpu":
            budget_bytes = min(budget_bytes, _CPU_BUDGET_BYTES)
    return max(1, budget_bytes // dtype.itemsize)


def _distance_dtype(dtype: torch.dtype, magnitude: float, dim: int, device: torch.device) -> torch.dtype:
    """What distances are accumulated in: at least single precision, and double where the squared
    distances of ``dim``-dimensional points of coordinates up to ``magnitude`` could overflow single
    (beyond about 1e17), so that such points still get their true neighbours (MPS has no double)."""
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    if dtype != torch.float64 and device.type != "mps" and _may_overflow(magnitude, dim, dtype):
        return torch.float64
    return dtype


def _knn_torch(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    *,
    chunk_size: int | None,
    magnitude: float,
    exclude_self: bool = False,
    budget_bytes: int | None = None,
    nearest_first: bool = True,
    layout: SampleLayout | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked brute-force kNN, as ``(query rows, neighbour rows)``; see :func:`knn`. ``exclude_self`` assumes ``x is y``.

    ``magnitude`` bounds the coordinates of ``x`` and ``y``; ``layout``, when given, is
    the checked layout of ``batch_x``, which is then ``batch_y`` too.
    """
    device = x.device
    n, m = x.shape[0], y.shape[0]
    empty = torch.empty(0, dtype=torch.long, device=device)
    if n == 0 or m == 0:
        return empty, empty

    dtype = _distance_dtype(torch.promote_types(x.dtype, y.dtype), magnitude, x.shape[1], device)
    overflow = _may_overflow(magnitude, x.shape[1], dtype)

    if layout is not None:
        num_samples = layout.num_samples
    else:
        num_samples = 1
        if batch_x is not None:
            num_samples = max(num_samples, int(batch_x[-1]) + 1)
        if batch_y is not None and batch_y is not batch_x:
            num_samples = max(num_samples, int(batch_y[-1]) + 1)
    budget_elems = _budget_elems(device, dtype, budget_bytes)
    if chunk_size is None and num_samples > 1:
        if layout is None:
            bx = batch_x if batch_x is not None else torch.zeros(n, dtype=torch.long, device=device)
            by = batch_y if batch_y is not None else torch.zeros(m, dtype=torch.long, device=device)
            layout = _layout(bx, num_samples)
            layout_y = layout if by is bx else _layout(by, num_samples)
        else:
            layout_y = layout
        blocked = _knn_blocked(
            x.to(dtype), y.to(dtype), k, layout, layout_y, exclude_self=exclude_self, budget_elems=budget_elems,
            magnitude=magnitude, nearest_first=nearest_first,
        )
        if blocked is not None:
            return blocked
    x_t = x.to(dtype).t().contiguous()  # [D, N]: contiguous per-coordinate slices
    y_t = x_t if exclude_self else y.to(dtype).t().contiguous()
    # Host-side plan of the chunked search (the blocked one above needs none of it).
    ptr_x = _ptr(batch_x, n, num_samples)
    by_list = [0] * m if batch_y is None else batch_y.tolist()
    max_rows = _MAX_AUTO_ROWS.get(device.type, _MAX_AUTO_ROWS_ACCEL)
    chunks = _plan_chunks(by_list, ptr_x, budget_elems, chunk_size, max_rows)

    # One set of scratch buffers, sized for the largest chunk, reused by every chunk.
    most = max((e - s) * (hi - lo) for s, e, lo, hi in chunks)
    buf = torch.empty(most, dtype=dtype, device=device)
    tmp = torch.empty_like(buf) if 1 < x.shape[1] <= _EXACT_MAX_DIM else None
    mask_buf: Tensor | None = None

    rows_out: list[Tensor] = []
    cols_out: list[Tensor] = []
    for s, e, lo, hi in chunks:
        c = hi - lo
        if c == 0:  # the chunk's samples have no candidates at all
            continue
        r = e - s
        dist = _sq_dists(y_t[:, s:e], x_t[:, lo:hi], buf, tmp)
        spans = by_list[s] != by_list[e - 1]
        if spans and batch_x is not None and batch_y is not None:
            if mask_buf is None:
                mask_buf = torch.empty(most, dtype=torch.bool, device=device)
            other = mask_buf[: r * c].view(r, c)
            torch.ne(batch_y[s:e].unsqueeze(1), batch_x[lo:hi].unsqueeze(0), out=other)
            dist.masked_fill_(other, math.inf)
        if exclude_self:
            local = torch.arange(r, device=device)
            dist[local, local + (s - lo)] = math.inf
        kk = min(k, c)
        best, idx = torch.topk(dist, kk, dim=1, largest=False, sorted=nearest_first)
        row = torch.arange(s, e, device=device).unsqueeze(1).expand(r, kk)
        col = idx + lo
        # Drop what the chunk's masks let through: other samples' points (for queries
        # whose sample has fewer than k candidates) and the query itself.
        keep: Tensor | None = None
        if spans:  # then batch_y is not None; batch_x None means every x is in sample 0
            bx = batch_x[col] if batch_x is not None else torch.zeros_like(col)
            keep = bx == batch_y[s:e].unsqueeze(1)
        if overflow:  # real distances may be inf too: only finite picks are neighbours (never self, at inf)
            finite = torch.isfinite(best)
            keep = finite if keep is None else keep & finite
        elif exclude_self and (spans or kk == c):  # self is inf: picked only among infs
            keep = col != row if keep is None else keep & (col != row)
        if keep is None:
            rows_out.append(row.reshape(-1))
            cols_out.append(col.reshape(-1))
        else:
            rows_out.append(row[keep])
            cols_out.append(col[keep])

    if not rows_out:
        return empty, empty
    return torch.cat(rows_out), torch.cat(cols_out)


# -------------------------------------------------------------------------- public


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    *,
    chunk_size: int | None = None,
    use_cluster: bool | None = None,
    nearest_first: bool = True,
) -> Tensor:
    """For each row of ``y``, the ``k`` nearest rows of ``x`` within the same sample.

    Same semantics as ``torch_cluster.knn``, so callers can switch freely. Needed to
    build neighbourhoods between two point sets (e.g. subsampled centres ``y`` and
    all points ``x``) without ever pairing points from different samples.

    :param x: ``[N, D]`` finite float candidate points.
    :param y: ``[M, D]`` finite float query points.
    :param k: neighbours per query, ``>= 1``. A query whose sample has fewer than
        ``k`` points in ``x`` gets only as many as exist.
    :param batch_x: ``[N]`` sorted long sample ids of ``x``, or ``None`` (one sample).
    :param batch_y: ``[M]`` sorted long sample ids of ``y``, or ``None`` (one sample).
    :param chunk_size: pure torch only: query rows per chunk. ``None`` picks it so each
        chunk's distance matrix stays under :data:`DEFAULT_BUDGET_BYTES` (16 MiB on
        CPU, which is faster there).
    :param use_cluster: ``None`` uses ``torch_cluster`` when installed, ``True``
        requires it, ``False`` forces pure torch.
    :param nearest_first: pure torch only: order each query's neighbours nearest first.
        ``False`` leaves them in any order, which skips a sort of each row's picks: for
        callers that aggregate neighbours without order (a max or a sum), such as
        DGCNN's EdgeConv.
    :returns: ``[2, E]`` long; row 0 indexes ``y``, row 1 indexes ``x``. In pure torch,
        rows are grouped by query in ascending order, nearest neighbour first
        (ties in any order) unless ``nearest_first`` is ``False``.
    :raises BottleneckError: on invalid inputs, or ``use_cluster=True`` without
        ``torch_cluster``.
    """
    x, magnitude_x = _checked_points(x, "x")
    y, magnitude_y = _checked_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise BottleneckError(
            f"x and y must have the same number of coordinates D; got x {describe(x)} "
            f"and y {describe(y)}"
        )
    if y.device != x.device:
        raise BottleneckError(f"x and y must be on the same device; got {x.device} and {y.device}")
    k = _check_k(k)
    batch_x = _check_batch(batch_x, x.shape[0], x.device, "batch_x")
    batch_y = _check_batch(batch_y, y.shape[0], y.device, "batch_y")
    chunk_size = _check_chunk_size(chunk_size)
    if _resolve_cluster(use_cluster):
        dtype = torch.promote_types(x.dtype, y.dtype)
        return _torch_cluster.knn(x.to(dtype), y.to(dtype), k, batch_x, batch_y)
    centre, nbr = _knn_torch(x, y, k, batch_x, batch_y, chunk_size=chunk_size,
                             magnitude=max(magnitude_x, magnitude_y), nearest_first=nearest_first)
    return torch.stack([centre, nbr])


def knn_graph(
    pos: Tensor,
    k: int,
    batch: Tensor | None = None,
    *,
    loop: bool = False,
    flow: str = "source_to_target",
    chunk_size: int | None = None,
    use_cluster: bool | None = None,
    nearest_first: bool = True,
    layout: SampleLayout | None = None,
) -> Tensor:
    """The k-nearest-neighbour graph of ``pos``, within samples.

    Same semantics as ``torch_cluster.knn_graph`` / ``torch_geometric.nn.knn_graph``:
    the unit graph a point-cloud plugin hands to the mask layer for smoothing and
    message passing.

    :param pos: ``[N, D]`` finite float coordinates.
    :param k: neighbours per point, ``>= 1``; a point whose sample has at most ``k``
        other points is linked to all of them.
    :param batch: ``[N]`` sorted long sample ids, or ``None`` (one sample).
    :param loop: whether a point may be its own neighbour. Without it, self pairs
        are removed by index, so duplicated coordinates still link to each other.
    :param flow: ``"source_to_target"`` (row 0 = neighbour ``j``, row 1 = centre
        ``i``) or ``"target_to_source"`` (row 0 = centre, row 1 = neighbour).
    :param chunk_size: pure torch only; see :func:`knn`.
    :param use_cluster: see :func:`knn`.
    :param nearest_first: see :func:`knn`.
    :param layout: pure torch only: :class:`SampleLayout` of ``batch`` (``SampleLayout.of(batch)``),
        for a caller that searches the same samples several times; ``batch`` may then be
        ``None`` or must be the vector the layout was built from.
    :returns: ``[2, E]`` long ``edge_index``, grouped by centre.
    :raises BottleneckError: on invalid inputs.
    """
    pos, magnitude = _checked_points(pos, "pos")
    k = _check_k(k)
    if layout is not None:
        batch = _check_layout(layout, batch, pos).batch
    else:
        batch = _check_batch(batch, pos.shape[0], pos.device, "batch")
    if flow not in ("source_to_target", "target_to_source"):
        raise BottleneckError(
            f"flow must be 'source_to_target' or 'target_to_source'; got {flow!r}"
        )
    chunk_size = _check_chunk_size(chunk_size)
    if _resolve_cluster(use_cluster):
        return _torch_cluster.knn_graph(pos, k, batch, loop=bool(loop), flow=flow)
    centre, nbr = _knn_torch(pos, pos, k, batch, batch, chunk_size=chunk_size, magnitude=magnitude,
                             exclude_self=not loop, nearest_first=nearest_first, layout=layout)
    return torch.stack([nbr, centre] if flow == "source_to_target" else [centre, nbr])


def knn_neighbours(
    pos: Tensor,
    k: int,
    batch: Tensor | None = None,
    *,
    layout: SampleLayout | None = None,
    nearest_first: bool = True,
) -> Tensor:
    """``[N, k]``: the ``k`` nearest other points of each point within its sample, as a table.

    The graph :func:`knn_graph` builds without loops when every sample has more than
    ``k`` points -- each point then has exactly ``k`` neighbours -- as the table of
    their indices, row ``i`` for point ``i``. A layer that gathers ``k`` neighbours per
    point (DGCNN's EdgeConv, ``NodeSplitEdgeConv(x, neighbours=table)``)
    reads it as it is: no ``[2, k N]`` edge index to build and split, no check that its
    centres come in groups of ``k``. Pure torch: ``torch_cluster`` returns edges, and a
    caller that prefers it uses :func:`knn_graph`.

    :param pos: ``[N, D]`` finite float coordinates.
    :param k: neighbours per point, ``>= 1``.
    :param batch: ``[N]`` sorted long sample ids, or ``None`` (one sample).
    :param layout: :class:`SampleLayout` of ``batch``, for a caller that searches the same
        samples several times (see :func:`knn_graph`).
    :param nearest_first: order each row nearest first; ``False`` leaves any order.
    :returns: ``[N, k]`` long indices into ``pos``; never a point itself (a duplicate of
        it may be), never a point of another sample.
    :raises BottleneckError: on invalid inputs, a sample with at most ``k`` points (use
        :func:`knn_graph`, which links them to all the others), or coordinates so large
        (beyond about 1e150) that their squared distances overflow even in float64.
    """
    pos, magnitude = _checked_points(pos, "pos")
    k = _check_k(k)
    num_points = pos.shape[0]
    if layout is not None:
        layout = _check_layout(layout, batch, pos)
    else:
        batch = _check_batch(batch, num_points, pos.device, "batch")
        layout = _layout(batch if batch is not None else pos.new_zeros(num_points, dtype=torch.long))
    if num_points == 0:
        return torch.empty(0, k, dtype=torch.long, device=pos.device)
    if layout.fewest <= k:
        raise BottleneckError(
            f"a neighbour table needs more than k={k} points in every sample; the smallest of the "
            f"{layout.num_samples} samples has {layout.fewest}: use knn_graph, which links the points "
            "of a small sample to all the others"
        )
    dtype = _distance_dtype(pos.dtype, magnitude, pos.shape[1], pos.device)
    if _may_overflow(magnitude, pos.shape[1], dtype):
        raise BottleneckError(
            f"pos {describe(pos)} has coordinates up to {magnitude:.3g}: their squared distances may "
            f"overflow {dtype}, so the {k} nearest points are not defined for every point; scale them down"
        )
    points = pos.to(dtype)
    budget = _budget_elems(pos.device, dtype)
    if layout.num_samples > 1 and _blocked_fits(layout, layout, budget):
        blocks, _ = _padded_pair(points, points, layout, layout, exclude_self=True)
        return _blocked_table(blocks, blocks, k, layout, layout, _group_size(layout, layout, budget),
                              exclude_self=True, nearest_first=nearest_first)
    # every sample has more than k points at finite distances: exactly k per point, grouped by point
    _, nbr = _knn_torch(points, points, k, layout.batch, layout.batch, chunk_size=None, magnitude=magnitude,
                        exclude_self=True, nearest_first=nearest_first, layout=layout)
    return nbr.view(num_points, k)


def fps(
    pos: Tensor,
    batch: Tensor | None = None,
    ratio: float = 0.5,
    *,
    random_start: bool = True,
    use_cluster: bool | None = None,
) -> Tensor:
    """Farthest point sampling: a well-spread subset of each sample's points.

    Greedily picks, per sample, the point farthest from all points picked so far,
    which covers the shape far better than a uniform random subset; used to choose
    centres for neighbourhoods and to cap the number of units. Same semantics as
    ``torch_cluster.fps``. All samples advance together: one iteration per picked
    point, each an ``O(N)`` update of a running min-distance vector and a segment max.

    :param pos: ``[N, D]`` finite float coordinates.
    :param batch: ``[N]`` sorted long sample ids, or ``None`` (one sample).
    :param ratio: fraction in ``(0, 1]``; sample ``i`` keeps ``ceil(ratio * n_i)`` points.
    :param random_start: start each sample at a random point (torch's global RNG);
        otherwise at its first point.
    :param use_cluster: see :func:`knn`.
    :returns: ``[S]`` long indices into ``pos``, grouped by sample in ascending
        order, each sample's in pick order; indices are distinct.
    :raises BottleneckError: on invalid inputs.
    """
    pos = _check_points(pos, "pos")
    batch = _check_batch(batch, pos.shape[0], pos.device, "batch")
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or not 0.0 < ratio <= 1.0
    ):
        raise BottleneckError(f"ratio must be a number in (0, 1]; got {ratio!r}")
    if _resolve_cluster(use_cluster):
        return _torch_cluster.fps(pos, batch, float(ratio), bool(random_start))

    device = pos.device
    n = pos.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    num_samples = int(batch[-1]) + 1
    counts = torch.bincount(batch, minlength=num_samples)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    num_pick = torch.ceil(counts.to(torch.float64) * float(ratio)).long().clamp_(max=counts)
    steps = int(num_pick.max())

    dtype = torch.float32 if pos.dtype in (torch.float16, torch.bfloat16) else pos.dtype
    p = pos.to(dtype)
    nonempty = counts > 0
    nonempty_ids = nonempty.nonzero().view(-1)  # index, not mask: no per-step device sync
    if random_start:
        offset = (torch.rand(num_samples, device=device) * counts).long()
        offset = torch.minimum(offset, (counts - 1).clamp_min(0))
    else:
        offset = torch.zeros_like(counts)
    current = torch.where(nonempty, ptr[:-1] + offset, 0)  # [B]; empty samples never count

    single = num_samples == 1
    arange = torch.arange(n, device=device)
    min_dist = torch.full((n,), math.inf, dtype=dtype, device=device)
    picks = torch.empty(steps, num_samples, dtype=torch.long, device=device)
    for t in range(steps):
        picks[t] = current
        if t + 1 == steps:
            break
        # Squared distance of every point to its own sample's latest pick.
        center = p.index_select(0, current if single else current.index_select(0, batch))
        d = (p - center).square_().sum(dim=1)
        torch.minimum(min_dist, d, out=min_dist)
        # Picked points sit at -1, below any distance, so they are never picked again,
        # not even when all remaining points duplicate picked coordinates.
        min_dist.index_fill_(0, current.index_select(0, nonempty_ids), -1.0)
        if single:
            current = min_dist.argmax().view(1)
            continue
        best = scatter(min_dist, batch, dim=0, dim_size=num_samples, reduce="max")
        candidate = torch.where(min_dist == best.index_select(0, batch), arange, n)
        current = scatter(candidate, batch, dim=0, dim_size=num_samples, reduce="min")
        current = torch.where(nonempty, current, 0)

    take = torch.arange(steps, device=device).unsqueeze(0) < num_pick.unsqueeze(1)  # [B, T]
    return picks.t()[take]


# ------------------------------------------------------------ serialised (approximate)

#: Bits per coordinate of the space-filling-curve keys (3 x 10 bits fit one int64
#: beside the sample id).
_CURVE_BITS: int = 10


def _spread_bits(v: Tensor) -> Tensor:
    """Insert two zero bits between the low 10 bits of ``v`` (Morton-code interleaving)."""
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def _take(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for a 1-d ``values`` (``index_select`` on the flat index: faster on CPU)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


#: :func:`_spread_bits` of every cell index, per device (:func:`_spread_table`).
_SPREAD_TABLES: dict[torch.device, Tensor] = {}


def _spread_table(device: torch.device) -> Tensor:
    """``[2**_CURVE_BITS]`` :func:`_spread_bits` of every cell index, made once per device.

    A point's three spread cells are then one gather, where spreading them took twelve
    tensor operations per coordinate and curve: on a GPU each is a kernel launch, and
    the small models' steps are bound by launches, not arithmetic.
    """
    table = _SPREAD_TABLES.get(device)
    if table is None:
        table = _spread_bits(torch.arange(2**_CURVE_BITS)).to(device)
        _SPREAD_TABLES[device] = table
    return table


def _curve_order(spread: Tensor, sample_key: Tensor, axes: tuple[int, int, int]) -> Tensor:
    """Permutation sorting points by (sample, Z-order key of the cells read in ``axes`` order).

    :param spread: ``[N, 3]`` spread cells (:func:`_spread_table` of each coordinate's cell).
    :param sample_key: ``[N]`` each point's sample id shifted above the key's ``3 * _CURVE_BITS`` bits.
    """
    key = spread[:, axes[0]] | (spread[:, axes[1]] << 1) | (spread[:, axes[2]] << 2)
    return torch.argsort(sample_key | key)


def serial_knn_graph(pos: Tensor, k: int, batch: Tensor | None = None, *, window: int | None = None) -> Tensor:
    """An approximate k-nearest-neighbour graph of 3-d points in ``O(N log N)`` time.

    Exact kNN costs a distance per pair of points of a sample and a top-k per
    point; for a smoothness prior on the mask that is most of a training step's
    overhead on a small model. Here the points are serialised along Z-order curves
    (as Point Transformer V3 serialises point clouds), read in two axis orders so
    that a neighbour split by one curve's cell boundary is near on the other; each
    point's candidates are the ``window`` points either side of it on each curve,
    and its ``k`` nearest candidates are its neighbours. No pair crosses samples,
    no point is its own neighbour, and a sample with at most ``k`` other points
    links each point to all of them when they fall in its windows.

    :param pos: ``[N, 3]`` finite float coordinates.
    :param k: neighbours per point, ``>= 1``.
    :param batch: ``[N]`` sorted long sample ids, or ``None`` (one sample).
    :param window: candidates per side per curve (default ``k // 2``: ``2k`` candidates in all).
    :returns: ``[2, E]`` long ``edge_index`` (row 0 = neighbour, row 1 = centre, as
        :func:`knn_graph`'s ``source_to_target``).
    """
    pos = _check_points(pos, "pos")
    k = _check_k(k)
    if pos.shape[1] != 3:
        raise BottleneckError(f"serial_knn_graph needs 3-d points [N, 3]; got {describe(pos)}")
    batch = _check_batch(batch, pos.shape[0], pos.device, "batch")
    window = max(1, k // 2) if window is None else _check_k(window)
    n, device = pos.shape[0], pos.device
    if n == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    num_samples = int(batch[-1]) + 1
    pts = pos.detach().float()
    low = scatter(pts, batch, 0, dim_size=num_samples, reduce="min")[batch]
    span = scatter(pts, batch, 0, dim_size=num_samples, reduce="max")[batch] - low
    scale = (2**_CURVE_BITS - 1) / span.amax(-1, keepdim=True).clamp(min=1e-12)
    cells = ((pts - low) * scale).long().clamp_(0, 2**_CURVE_BITS - 1)
    spread = _take(_spread_table(device), cells)
    sample_key = batch << (3 * _CURVE_BITS)
    positions = torch.arange(n, device=device)
    offsets = torch.cat([torch.arange(-window, 0, device=device), torch.arange(1, window + 1, device=device)])
    candidates, outside = [], []
    for axes in ((0, 1, 2), (2, 0, 1)):
        order = _curve_order(spread, sample_key, axes)
        rank = torch.empty_like(order)
        rank[order] = positions
        at = rank.unsqueeze(1) + offsets  # [N, 2w] positions on the curve
        outside.append((at < 0) | (at >= n))
        candidates.append(_take(order, at.clamp_(0, n - 1)))
    # a point near on both curves is a candidate once (the second curve's copy is dropped)
    repeated = (candidates[1].unsqueeze(2) == candidates[0].unsqueeze(1)).any(2)
    cand = torch.cat(candidates, dim=1)  # [N, 4w] candidate point ids
    coords = pts.t().contiguous()  # [3, N]: one gather per coordinate
    dist = (_take(coords[0], cand) - coords[0].unsqueeze(1)).square_()
    for axis in (1, 2):
        dist.add_((_take(coords[axis], cand) - coords[axis].unsqueeze(1)).square_())
    centre = positions.unsqueeze(1)
    invalid = torch.cat([outside[0], outside[1] | repeated], dim=1)
    invalid |= (_take(batch, cand) != batch.unsqueeze(1)) | (cand == centre)
    dist.masked_fill_(invalid, math.inf)
    kk = min(k, cand.shape[1])
    best, idx = torch.topk(dist, kk, dim=1, largest=False, sorted=True)
    nbr = cand.gather(1, idx)
    valid = torch.isfinite(best)
    return torch.stack([nbr[valid], centre.expand_as(nbr)[valid]])
