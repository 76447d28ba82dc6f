"""Point clouds as units: PyG ``Data``/``Batch`` (pos, optional x, batch) or dense ``[B, N, 3]``.

Units are points; the unit graph is the kNN graph on coordinates. Baselines:

* ``remove`` (default) — points whose gate is exactly 0 are removed from the
  cloud; the others move towards the sample centroid by ``1 - gate`` (hard
  concrete gates are almost all exactly 0 or 1, and exactly so at inference),
  so training sees what sparse inference sees. On dense tensors,
  which cannot be ragged, removed points sit at the centroid. Gates that are
  never exactly 0 (``concrete``) remove nothing: use ``centroid`` with them.
* ``centroid`` — every point is blended towards its sample's centroid.
* ``zero`` — coordinates are scaled by the gate (PointMask's released code).

Hidden insertion (``attach(model, "pointcloud", where="point_mlp")``) masks a
layer whose output holds one feature vector per input point: ``[N, F]`` in the
order of the input points (PyG models; a dense model's flattened ``[B * n, F]``)
or ``[B, n, F]`` for dense ``[B, n, 3]`` inputs. PointNet's ``point_mlp`` and
DGCNN's ``convs.0`` to ``convs.2`` and ``point_mlp`` qualify; a layer after the
global pool (``[B, F]``) does not. Units are the input points (same batch, same
kNN graph); their scorer features are the layer's features, scaled to unit RMS
per sample, plus the normalised coordinates. Nothing can be removed in the
middle of a network, so at a hidden layer the baselines are:

* ``zero`` (also what ``remove``, the default, means there) — features are
  scaled by the gate. Where the features are non-negative (after a ReLU) and
  go straight into a global max pool (PointNet's and DGCNN's ``point_mlp``),
  the pool then sees exactly the open points, as if the closed ones had been
  removed from that layer on (as long as a sample keeps one point open).
* ``centroid`` — features are blended towards their sample's mean feature
  vector (the centroid in feature space, as the input ``centroid`` baseline
  blends coordinates towards the centroid of the cloud).

Relevance at the hidden layer is relevance of the input points (identity map).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data.data import BaseData
from torch_geometric.utils import to_dense_batch

from bottleneck.errors import BottleneckError, describe
from bottleneck.modality import Modality
from bottleneck.neighbors import serial_knn_graph
from bottleneck.segment import broadcast, compact, segment_mean
from bottleneck.units import Units, batch_from_counts, counts_to_ptr

#: Neighbours per point in the unit graph used for smoothness. The graph is the
#: serialised approximate kNN (:func:`~bottleneck.neighbors.serial_knn_graph`): a smoothness
#: prior needs near points linked, not the exact k nearest, and the exact graph cost a
#: quarter of a small PointNet's training step (25 ms against 10 ms on 32 clouds of
#: 128-256 points, 2 CPU cores).
GRAPH_K = 8
#: Baselines understood at a hidden layer (``remove`` means ``zero`` there).
HIDDEN_BASELINES = ("remove", "zero", "centroid")


def _check_coordinates(pos: Any, what: str) -> Tensor:
    if not isinstance(pos, Tensor):
        raise BottleneckError(f"{what} must be a float tensor of coordinates (got {describe(pos)})")
    if not pos.is_floating_point():
        raise BottleneckError(f"{what} must be a floating-point tensor (got {describe(pos)})")
    # a sum is finite only if every term is (NaN and Inf carry through); a finite cloud whose
    # sum overflows falls through to the exact check: 5 instead of 40 us on 6k points
    if not bool(pos.sum().isfinite()) and not bool(torch.isfinite(pos).all()):
        bad = int((~torch.isfinite(pos)).any(-1).sum())
        raise BottleneckError(f"{what} holds NaN or Inf coordinates ({bad} points); clean the cloud first")
    return pos


def _check_batch(batch: Tensor, num_points: int, num_samples: int | None) -> tuple[Tensor, int]:
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_points:
        raise BottleneckError(
            f"batch vector must be a [N] long tensor with N={num_points} points (got {describe(batch)})"
        )
    if batch.dtype != torch.long:
        raise BottleneckError(f"batch vector must be torch.long (got {describe(batch)})")
    first = last = -1
    descending = skipped = False
    if batch.numel() > 1:  # one host sync for every check: a sorted vector's ends are its min and max
        fewest, most = torch.aminmax(batch[1:] - batch[:-1])  # a step down is unsorted, above 1 skips a sample
        first, last, low, high = torch.stack([batch[0], batch[-1], fewest, most]).tolist()
        descending, skipped = low < 0, high > 1
    elif batch.numel():
        first = last = int(batch[0])
    if batch.numel() and (first < 0 or descending):
        raise BottleneckError("batch vector must be sorted and non-negative (PyG convention)")
    inferred = last + 1
    if num_samples is None:
        num_samples = inferred
    elif inferred > num_samples:
        raise BottleneckError(
            f"batch vector names sample {inferred - 1} but the batch has {num_samples} samples"
        )
    if skipped or first > 0 or inferred < num_samples:  # some sample id has no points
        counts = torch.bincount(batch, minlength=num_samples)
        empty = (counts == 0).nonzero().view(-1)[:5].tolist()
        raise BottleneckError(f"empty point cloud: samples {empty} have 0 points (every cloud needs >= 1)")
    return batch, num_samples


class PointCloudModality(Modality):
    """Adapter for point-cloud classifiers (PyG models or dense ``[B, N, 3]`` models)."""

    name = "pointcloud"
    baselines = ("remove", "centroid", "zero")

    def __init__(self, normalise: bool = True) -> None:
        #: scorer features are each cloud's points centred on its centroid and scaled by its
        #: radius; with ``normalise=False`` they are the raw coordinates, so one point's
        #: features do not depend on the others (needed where added points, such as a bias
        #: cue, must not shift every other point's features and through them its gate)
        self.normalise = bool(normalise)

    def configure(self, model: nn.Module, **options: Any) -> PointCloudModality:
        unknown = sorted(set(options) - {"normalise"})
        if unknown:
            raise BottleneckError(f"point-cloud modality options are ['normalise'] (got unknown {unknown})")
        return PointCloudModality(**options) if options else self

    def accepts(self, inputs: Any) -> bool:
        if isinstance(inputs, BaseData):
            return getattr(inputs, "pos", None) is not None
        return isinstance(inputs, Tensor) and inputs.dim() == 3 and inputs.shape[-1] == 3 and inputs.is_floating_point()

    # -- inputs -> units ------------------------------------------------------
    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        if isinstance(inputs, BaseData):
            pos = getattr(inputs, "pos", None)
            if pos is None:
                raise BottleneckError("point-cloud Data needs .pos with [N, 3] coordinates (got none)")
            pos = _check_coordinates(pos, "Data.pos")
            if pos.dim() != 2 or pos.shape[1] != 3:
                raise BottleneckError(f"Data.pos must be [N, 3] (got {describe(pos)})")
            if pos.shape[0] == 0:
                raise BottleneckError("empty point cloud: Data.pos has 0 points")
            batch = getattr(inputs, "batch", None)
            declared = getattr(inputs, "num_graphs", None) if batch is not None else 1
            if batch is None:
                batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
            batch, num_samples = _check_batch(batch, pos.shape[0], declared)
            extra = getattr(inputs, "x", None)
            if extra is not None:
                extra = _check_coordinates(extra, "Data.x")
                if extra.dim() != 2 or extra.shape[0] != pos.shape[0]:
                    raise BottleneckError(f"Data.x must be [N, F] with N={pos.shape[0]} (got {describe(extra)})")
            counts = torch.bincount(batch, minlength=num_samples)
            kind = "pyg"
        elif isinstance(inputs, Tensor):
            if inputs.dim() != 3 or inputs.shape[-1] != 3:
                raise BottleneckError(f"dense point clouds must be [B, N, 3] (got {describe(inputs)})")
            _check_coordinates(inputs, "point cloud tensor")
            num_samples, num_points = inputs.shape[:2]
            if num_samples == 0 or num_points == 0:
                raise BottleneckError(f"empty point cloud: got {describe(inputs)}")
            pos = inputs.reshape(-1, 3)
            counts = torch.full((num_samples,), num_points, device=pos.device)
            batch = batch_from_counts(counts)
            extra, kind = None, "dense"
        else:
            raise BottleneckError(
                f"point clouds must be a PyG Data/Batch or a [B, N, 3] tensor (got {describe(inputs)})"
            )
        centroid = segment_mean(pos.detach(), batch, num_samples, counts)
        centred = pos.detach() - broadcast(centroid, batch)
        radius = segment_mean(centred.pow(2).sum(-1), batch, num_samples, counts).sqrt().clamp(min=1e-6)
        features = centred / broadcast(radius, batch).unsqueeze(-1) if self.normalise else pos.detach()
        if extra is not None:
            features = torch.cat([features, extra.detach().to(features.dtype)], dim=-1)
        edge_index = serial_knn_graph(pos.detach(), GRAPH_K, batch) if with_graph else None
        return Units(
            x=features, batch=batch, num_samples=num_samples, pos=pos, edge_index=edge_index,
            meta={"kind": kind, "centroid": centroid},
        )

    # -- gates -> inputs ------------------------------------------------------
    def apply_gates(self, inputs: Any, units: Units, gates: Tensor, baseline: str) -> Any:
        self.check_baseline(baseline)
        pos, gate = units.pos, gates.unsqueeze(-1).to(units.pos.dtype)
        if baseline == "zero":
            new_pos = gate * pos
        else:
            new_pos = gate * pos + (1.0 - gate) * broadcast(units.meta["centroid"], units.batch)
        if units.meta["kind"] == "dense":
            return new_pos.view_as(inputs)
        data = copy.copy(inputs)
        data.pos = new_pos
        if getattr(inputs, "x", None) is not None:
            data.x = gate * inputs.x
        if baseline == "remove":
            keep = gates > 0
            keep |= _first_of_each(keep, units)
            return self._subset(data, units, keep)
        return data

    def drop_units(self, inputs: Any, units: Units, keep: Tensor) -> Any:
        if units.meta["kind"] == "dense":
            dense, valid = to_dense_batch(units.pos[keep], units.batch[keep], batch_size=units.num_samples)
            # pad short clouds with copies of their first kept point: max/sum-free models
            # and max pooling see exactly the kept set
            return torch.where(valid.unsqueeze(-1), dense, dense[:, :1])
        return self._subset(inputs, units, keep)

    def _subset(self, data: BaseData, units: Units, keep: Tensor) -> BaseData:
        """A shallow copy of ``data`` holding only the kept points, with batch/ptr rebuilt."""
        edge_index = getattr(data, "edge_index", None)
        has_edges = isinstance(edge_index, Tensor)
        index, new_batch, remap = compact(keep, units.batch, units.num_samples, with_remap=has_edges)
        out = copy.copy(data)
        valid_edges = None
        if has_edges and remap is not None:
            mapped = remap[edge_index]
            valid_edges = (mapped >= 0).all(0)
            out.edge_index = mapped[:, valid_edges]
        for key in list(data.keys()):
            value = data[key]
            if key in ("batch", "ptr", "edge_index") or not isinstance(value, Tensor) or value.dim() == 0:
                continue
            if value.shape[0] == units.num_units and data.is_node_attr(key):
                out[key] = value.index_select(0, index)
            elif valid_edges is not None and data.is_edge_attr(key):
                out[key] = value[valid_edges]
        if getattr(data, "batch", None) is not None:
            out.batch = new_batch
            if getattr(data, "ptr", None) is not None:
                out.ptr = counts_to_ptr(torch.bincount(new_batch, minlength=units.num_samples))
        return out

    # -- hidden-layer insertion -----------------------------------------------
    def hidden_to_units(self, features: Any, *, with_graph: bool = True, inputs: Units | None = None) -> Units:
        if inputs is None:
            raise BottleneckError("hidden insertion on point clouds needs the input units (inputs=)")
        flat = _per_point(features, inputs)
        values = flat.detach()
        # hidden features have arbitrary scale: the scorer sees them at unit RMS per sample
        scale = segment_mean(values.pow(2).mean(-1), inputs.batch, inputs.num_samples).sqrt().clamp(min=1e-6)
        edge_index = inputs.edge_index
        if with_graph and edge_index is None:
            edge_index = serial_knn_graph(inputs.pos.detach(), GRAPH_K, inputs.batch)
        return Units(
            x=torch.cat([values / scale[inputs.batch, None], inputs.x[:, :3].to(values.dtype)], dim=-1),
            batch=inputs.batch, num_samples=inputs.num_samples, pos=inputs.pos,
            edge_index=edge_index if with_graph else None,
            meta={"kind": "hidden", "features": values},
        )

    def apply_hidden_gates(self, features: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        if baseline not in HIDDEN_BASELINES:
            raise BottleneckError(
                f"baseline at a hidden point-cloud layer must be one of {list(HIDDEN_BASELINES)} "
                f"(got {baseline!r})"
            )
        flat = features.reshape(units.num_units, -1)
        gate = gates.to(flat.dtype).unsqueeze(-1)
        if baseline == "centroid":
            mean = broadcast(segment_mean(flat, units.batch, units.num_samples), units.batch)
            gated = gate * flat + (1.0 - gate) * mean
        else:
            gated = gate * flat
        return gated.view(features.shape)

    def relevance_to_input(self, values: Tensor, hidden: Units, inputs: Units) -> Tensor:
        if values.shape[0] != inputs.num_units:
            raise BottleneckError(
                f"expected one value per input point ({inputs.num_units}), got {describe(values)}"
            )
        return values

    # -- pictures -------------------------------------------------------------
    def render(self, inputs: Any, units: Units, relevance: Tensor, out_dir: Path, **options: Any) -> list[Path]:
        """One PNG per cloud (up to ``max_samples``, default 8), coloured by relevance.

        :param options: ``max_samples``, ``prefix`` (file name start, default ``"cloud"``),
            ``gt`` (``[N]`` bool ground truth; taken from ``inputs.gt`` when present).
        """
        from .render import render_cloud

        max_samples = int(options.get("max_samples", 8))
        prefix = str(options.get("prefix", "cloud"))
        gt = options.get("gt", getattr(inputs, "gt", None) if isinstance(inputs, BaseData) else None)
        pos = units.pos.detach().cpu()
        counts = units.counts().tolist()
        pieces = zip(pos.split(counts), relevance.split(counts), strict=True)
        gts = gt.detach().cpu().split(counts) if gt is not None else [None] * len(counts)
        paths = []
        for i, ((cloud, rel), truth) in enumerate(zip(pieces, gts, strict=True)):
            if i >= max_samples:
                break
            paths.append(render_cloud(cloud, rel, out_dir / f"{prefix}_{i:03d}.png", title=f"sample {i}", gt=truth))
        return paths


def _per_point(features: Any, inputs: Units) -> Tensor:
    """A hidden layer's output as ``[N, F]``, one row per input point, or a clear error."""
    n, b = inputs.num_units, inputs.num_samples
    if isinstance(features, Tensor) and features.is_floating_point():
        if features.dim() == 2 and features.shape[0] == n:
            return features
        if features.dim() == 3 and features.shape[0] * features.shape[1] == n and features.shape[0] == b:
            return features.reshape(n, -1)
    hint = ""
    if isinstance(features, Tensor) and features.dim() >= 1 and features.shape[0] == b and features.dim() == 2:
        hint = " (one vector per cloud: the layer comes after the global pooling)"
    raise BottleneckError(
        "hidden insertion on a point-cloud model needs a layer whose output holds one feature vector "
        f"per input point: [N, F] with N={n} points, or [B, n, F] for dense inputs "
        f"(got {describe(features)}){hint}; name a per-point layer before the global pooling"
    )


def _first_of_each(keep: Tensor, units: Units) -> Tensor:
    """``[N]`` bool marking each sample's first unit where that sample would keep none."""
    kept_counts = torch.bincount(units.batch[keep], minlength=units.num_samples)
    first = units.ptr()[:-1]
    out = torch.zeros_like(keep)
    out[first[kept_counts == 0]] = True
    return out
