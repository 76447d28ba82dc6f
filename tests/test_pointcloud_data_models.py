"""Procedural point-cloud data, the reference PointNet/DGCNN models and the renderer."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.nn import MLP, EdgeConv

from bottleneck.errors import BottleneckError
from bottleneck.neighbors import knn_graph, knn_neighbours
from bottleneck.segment import equal_segments
from bottleneck_pointcloud import models
from bottleneck_pointcloud.data import (
    CLASS_NAMES,
    NUM_CLASSES,
    PART_NAMES,
    make_dense_shapes,
    make_shapes,
)
from bottleneck_pointcloud.models import DGCNN, NodeSplitEdgeConv, PointNet, _mlp

# --------------------------------------------------------------------------- data


def test_class_names() -> None:
    assert len(CLASS_NAMES) == NUM_CLASSES == 8
    assert PART_NAMES[:NUM_CLASSES] == CLASS_NAMES
    assert len(set(PART_NAMES)) == len(PART_NAMES) >= 8


def test_shapes_deterministic_by_seed() -> None:
    a = make_shapes(12, seed=3)
    b = make_shapes(12, seed=3)
    c = make_shapes(12, seed=4)
    for da, db in zip(a, b, strict=True):
        assert torch.equal(da.pos, db.pos)
        assert torch.equal(da.y, db.y)
        assert torch.equal(da.gt, db.gt)
    assert any(
        da.pos.shape != dc.pos.shape or not torch.equal(da.pos, dc.pos)
        for da, dc in zip(a, c, strict=True)
    )


def test_shapes_fields_and_ranges() -> None:
    jitter = 0.01
    data = make_shapes(200, min_points=100, max_points=300, jitter=jitter, seed=0)
    counts = torch.tensor([d.num_nodes for d in data])
    assert counts.min() >= 100 and counts.max() <= 300
    assert counts.unique().numel() > 20  # point counts vary
    labels = torch.cat([d.y for d in data])
    assert set(labels.tolist()) == set(range(NUM_CLASSES))
    for d in data:
        n = d.pos.shape[0]
        assert d.pos.dtype == torch.float32 and d.pos.shape == (n, 3)
        assert d.y.dtype == torch.long and d.y.shape == (1,)
        assert d.gt.dtype == torch.bool and d.gt.shape == (n,)
        assert torch.isfinite(d.pos).all()
        assert d.pos.norm(dim=1).max() <= 1.0 + 6 * jitter
        frac = d.gt.float().mean().item()
        assert 0.2 - 1.0 / n <= frac <= 0.3 + 1.0 / n
        # The shuffled part points are spread through the cloud, not stacked at one end.
        idx = d.gt.nonzero().squeeze(1).float()
        assert idx.min() < n / 2 < idx.max()


def test_shapes_options() -> None:
    data = make_shapes(
        30, num_classes=10, part_fraction=(0.4, 0.5), rotate=False, jitter=0.0, seed=1
    )
    assert set(torch.cat([d.y for d in data]).tolist()) == set(range(10))
    for d in data:
        assert 0.5 < d.pos.norm(dim=1).max() <= 1.0 + 0.03  # parts' thin noise
        assert 0.4 - 1.0 / d.num_nodes <= d.gt.float().mean() <= 0.5 + 1.0 / d.num_nodes


def test_dense_shapes() -> None:
    pos, y, gt = make_dense_shapes(16, 64, seed=2)
    assert pos.shape == (16, 64, 3) and pos.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.long
    assert gt.shape == (16, 64) and gt.dtype == torch.bool
    assert set(y.tolist()) == set(range(NUM_CLASSES))
    pos2, y2, gt2 = make_dense_shapes(16, 64, seed=2)
    assert torch.equal(pos, pos2) and torch.equal(y, y2) and torch.equal(gt, gt2)


# --------------------------------------------------------------------------- models


def _ragged_batch(num: int = 5) -> Batch:
    return Batch.from_data_list(make_shapes(num, min_points=20, max_points=60, seed=5))


@pytest.mark.parametrize("model_cls", [PointNet, DGCNN])
def test_models_output_shape(model_cls: type) -> None:
    torch.manual_seed(0)
    model = (
        model_cls(NUM_CLASSES, hidden=16)
        if model_cls is PointNet
        else DGCNN(NUM_CLASSES, k=4, hidden=16)
    )
    batch = _ragged_batch()
    assert model(batch).shape == (5, NUM_CLASSES)
    assert model(torch.randn(3, 40, 3)).shape == (3, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        single = make_shapes(1, min_points=30, max_points=30, seed=0)[0]
        assert model(single).shape == (1, NUM_CLASSES)  # no batch vector: one sample
        assert model(torch.randn(50, 3)).shape == (1, NUM_CLASSES)
        one_point = Batch.from_data_list([single, single.subgraph(torch.tensor([0]))])
        assert model(one_point).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("model_cls", [PointNet, DGCNN])
def test_models_gradients_reach_all_parameters(model_cls: type) -> None:
    torch.manual_seed(0)
    model = (
        model_cls(NUM_CLASSES, hidden=16)
        if model_cls is PointNet
        else DGCNN(NUM_CLASSES, k=4, hidden=16)
    )
    batch = _ragged_batch(6)
    # The T-Net's last layer starts at zero (identity transform), which blocks the
    # gradient to the rest of the T-Net until one update has moved it.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dense_matches_batch() -> None:
    torch.manual_seed(0)
    pos, _, _ = make_dense_shapes(4, 32, seed=1)
    batch = Batch.from_data_list([make_shapes(1, seed=0)[0].__class__(pos=p) for p in pos])
    for model in (
        PointNet(NUM_CLASSES, hidden=16).eval(),
        DGCNN(NUM_CLASSES, k=4, hidden=16).eval(),
    ):
        with torch.no_grad():
            torch.testing.assert_close(model(pos), model(batch), rtol=1e-4, atol=1e-5)


def _assert_same_function(mlp: torch.nn.Module, x: torch.Tensor, split_call, reference_call) -> None:
    """``split_call`` and ``reference_call`` on ``x`` give the same outputs, input gradients and
    gradients of ``mlp``'s parameters (which both use)."""
    x_split, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_split, out_ref = split_call(x_split), reference_call(x_ref)
    weights = torch.randn_like(out_ref)
    mlp.zero_grad()
    (out_split * weights).sum().backward()
    grad_split = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    (out_ref * weights).sum().backward()
    torch.testing.assert_close(out_split, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_split.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(grad_split, [p.grad for p in mlp.parameters()], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels, plain_last", [([16, 32, 24], False), ([16, 24], True), ([16, 32, 24], True)])
def test_node_split_edge_conv_equals_edge_conv(
    training: bool, channels: list[int], plain_last: bool, shuffled: bool
) -> None:
    """Running the first layer per node changes the arithmetic, not the function or its gradients.

    The kNN graph gives every node 5 edges, grouped by target (the ``[N, k]`` view path);
    shuffled, the same edges are not grouped and take the scatter path.
    """
    torch.manual_seed(0)
    x = torch.randn(90, 8)
    batch = torch.arange(3).repeat_interleave(30)
    edge_index = knn_graph(x, 5, batch, loop=False)
    assert equal_segments(edge_index[1], 90) == 5
    if shuffled:
        edge_index = edge_index[:, torch.randperm(edge_index.shape[1])]
        assert equal_segments(edge_index[1], 90) is None
    mlp = _mlp(channels, plain_last=plain_last).train(training)
    split, reference = NodeSplitEdgeConv(mlp), EdgeConv(mlp, aggr="max")
    _assert_same_function(mlp, x, lambda v: split(v, edge_index), lambda v: reference(v, edge_index))


@pytest.mark.parametrize("isolated", [True, False])
@pytest.mark.parametrize("act_first", [False, True])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "gelu"])
def test_node_split_edge_conv_one_layer_eval_equals_edge_conv(act: str, act_first: bool, isolated: bool) -> None:
    """In eval a one-layer MLP with a monotone tail skips the per-edge arithmetic, same values.

    The norm's slopes have both signs (folded into the weights with the norm first; the
    min replaces the max where negative with the activation first). With ``isolated``
    node 7 has no incoming edge (EdgeConv gives it 0) and the scatter path runs;
    without, every node has 5 edges and the ``[N, k]`` view path runs. GELU is not
    monotone: it keeps the per-edge path and still matches.
    """
    torch.manual_seed(0)
    x = torch.randn(90, 8)
    batch = torch.arange(3).repeat_interleave(30)
    edge_index = knn_graph(x, 5, batch, loop=False)
    if isolated:
        edge_index = edge_index[:, edge_index[1] != 7]  # node 7 receives nothing
    mlp = MLP([16, 24], act=act, act_first=act_first, norm="batch_norm", plain_last=False)
    split, reference = NodeSplitEdgeConv(mlp), EdgeConv(mlp, aggr="max")
    split.train()
    split(torch.randn(90, 8), edge_index)  # running statistics that differ from the initial ones
    with torch.no_grad():
        mlp.norms[0].module.weight[::3] *= -1.5
    split.eval()
    assert split.fused_eval == (act != "gelu")
    with torch.no_grad():
        out_split, out_ref = split(x, edge_index), reference(x, edge_index)
    torch.testing.assert_close(out_split, out_ref, rtol=1e-5, atol=1e-5)
    if isolated:
        assert torch.all(out_split[7] == 0)
    assert (out_ref != 0).any()


@pytest.mark.parametrize("training", [True, False])
def test_node_split_edge_conv_takes_a_neighbour_table(training: bool) -> None:
    """``conv(x, neighbours=table)`` is EdgeConv on the edges ``(table[i, j], i)``: the same
    outputs and gradients, in training (BatchNorm over the edges) and in eval (the fused path)."""
    torch.manual_seed(0)
    x = torch.randn(90, 8)
    batch = torch.arange(3).repeat_interleave(30)
    table = knn_neighbours(x, 5, batch, nearest_first=False)
    edge_index = knn_graph(x, 5, batch, loop=False, nearest_first=False)
    mlp = _mlp([16, 24], plain_last=False)
    split, reference = NodeSplitEdgeConv(mlp), EdgeConv(mlp, aggr="max")
    split.train()
    split(torch.randn(90, 8), edge_index)  # running statistics that differ from the initial ones
    split.train(training)
    reference.train(training)
    _assert_same_function(mlp, x, lambda v: split(v, neighbours=table), lambda v: reference(v, edge_index))


def test_node_split_edge_conv_refuses_a_table_that_is_not_one() -> None:
    conv = NodeSplitEdgeConv(_mlp([16, 24], plain_last=False))
    x = torch.randn(10, 8)
    for bad in (torch.zeros(9, 3, dtype=torch.long), torch.zeros(10, 3), torch.zeros(30, dtype=torch.long),
                torch.zeros(10, 0, dtype=torch.long)):
        with pytest.raises(BottleneckError, match=r"torch.long \[N, k\] table with N = 10 rows"):
            conv(x, neighbours=bad)
    edge_index = torch.zeros(2, 3, dtype=torch.long)
    for edges, table in ((None, None), (edge_index, torch.zeros(10, 3, dtype=torch.long))):
        with pytest.raises(BottleneckError, match="edge_index or neighbours"):
            conv(x, edges, neighbours=table)


@pytest.mark.parametrize("training", [True, False])
def test_dgcnn_neighbour_tables_give_what_its_edges_give(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cloud has more than k points: DGCNN takes each layer's neighbours as a table (three
    searches, each conv called as a module, hooks and all), and its logits and gradients are
    those of the edge path it takes otherwise."""
    torch.manual_seed(0)
    model = DGCNN(NUM_CLASSES, k=4, hidden=16)
    batch = _ragged_batch(6)
    model(batch)  # running statistics that differ from the initial ones
    model.train(training)
    searches: list[str] = []
    table_search, graph_search = models.knn_neighbours, models.knn_graph
    monkeypatch.setattr(models, "knn_neighbours", lambda *a, **kw: searches.append("table") or table_search(*a, **kw))
    monkeypatch.setattr(models, "knn_graph", lambda *a, **kw: searches.append("edges") or graph_search(*a, **kw))

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in training
        out = model(batch)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    hooked: list[int] = []  # the convs run through their call: forward hooks see them (a mask at convs.2)
    for i, conv in enumerate(model.convs):
        conv.register_forward_hook(lambda module, args, out, i=i: hooked.append(i))
    with_tables = logits_and_grads()
    assert searches == ["table"] * 3 and hooked == [0, 1, 2]
    monkeypatch.setattr(models, "HAS_TORCH_CLUSTER", True)  # where torch_cluster is installed: edges
    with_edges = logits_and_grads()
    assert searches == ["table"] * 3 + ["edges"] * 3 and hooked == [0, 1, 2] * 2
    torch.testing.assert_close(with_tables[0], with_edges[0], rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(with_tables[1], with_edges[1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_dgcnn_takes_edges_when_a_cloud_has_at_most_k_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud of k points gives its points fewer than k neighbours: no table, the kNN graph."""
    torch.manual_seed(0)
    model = DGCNN(NUM_CLASSES, k=4, hidden=16).eval()
    small = Batch.from_data_list([*make_shapes(2, min_points=20, max_points=30, seed=1),
                                  *make_shapes(1, min_points=4, max_points=4, seed=2)])
    searches: list[str] = []
    graph_search = models.knn_graph
    monkeypatch.setattr(models, "knn_graph", lambda *a, **kw: searches.append("edges") or graph_search(*a, **kw))
    with torch.no_grad():
        assert torch.isfinite(model(small)).all()
    assert searches == ["edges"] * 3


def test_node_split_edge_conv_reuses_its_folded_weights_only_while_they_are_current() -> None:
    """Without autograd the folded eval weights are cached; an in-place change to a weight, new
    running statistics from training (the conv's, or its norm's alone), ``load_state_dict`` and
    ``.double()`` each fold again
    (the output always equals PyG's EdgeConv); with autograd the gradient reaches the weights."""
    import copy

    torch.manual_seed(0)
    x = torch.randn(60, 8)
    batch = torch.arange(2).repeat_interleave(30)
    edge_index = knn_graph(x, 5, batch, loop=False)
    mlp = MLP([16, 24], act="relu", norm="batch_norm", plain_last=False)
    split, reference = NodeSplitEdgeConv(mlp), EdgeConv(mlp, aggr="max")
    split.train()
    split(torch.randn(60, 8), edge_index)

    def check(inputs: torch.Tensor) -> torch.Tensor:
        split.eval()
        with torch.no_grad():
            out = split(inputs, edge_index)
            torch.testing.assert_close(out, reference(inputs, edge_index), rtol=1e-5, atol=1e-5)
        return out

    first = check(x)
    cached = split._folded[1]
    check(x)
    assert split._folded[1] is cached  # nothing changed: reused
    with torch.no_grad():
        mlp.lins[0].weight[:, 3] *= -2.0
    changed = check(x)
    assert split._folded[1] is not cached and not torch.allclose(changed, first)
    cached = split._folded[1]
    split.train()
    split(torch.randn(60, 8) * 3 + 1, edge_index)  # new running statistics
    check(x)
    assert split._folded[1] is not cached
    cached = split._folded[1]
    state = copy.deepcopy(split.state_dict())
    with torch.no_grad():
        state["nn.norms.0.module.weight"].mul_(0.5)
    split.load_state_dict(state)
    check(x)
    assert split._folded[1] is not cached
    cached = split._folded[1]
    mlp.norms[0].train()  # the norm alone trained, the conv left in eval mode
    mlp.norms[0](torch.randn(100, 24) * 2 - 1)
    check(x)
    assert split._folded[1] is not cached
    split.double()
    reference.double()
    assert check(x.double()).dtype == torch.float64
    assert split._folded is not None
    copied = copy.deepcopy(split)  # the cache is not copied (nor pickled): the copy folds its own
    assert copied._folded is None
    with torch.no_grad():
        torch.testing.assert_close(copied.eval()(x.double(), edge_index), check(x.double()))

    split.float()
    split.eval()
    split.zero_grad()
    split(x, edge_index).sum().backward()  # eval mode with autograd: folded in the graph
    assert mlp.lins[0].weight.grad is not None and mlp.lins[0].weight.grad.abs().sum() > 0
    assert mlp.norms[0].module.weight.grad is not None


def test_node_split_edge_conv_built_under_inference_mode_runs_without_the_cache() -> None:
    """Inference tensors carry no version counter: the weights are folded on every call."""
    with torch.inference_mode():
        torch.manual_seed(0)
        mlp = MLP([16, 24], act="relu", norm="batch_norm", plain_last=False)
        split, reference = NodeSplitEdgeConv(mlp), EdgeConv(mlp, aggr="max")
        split.eval()
        x = torch.randn(60, 8)
        edge_index = knn_graph(x, 5, torch.arange(2).repeat_interleave(30), loop=False)
        out = split(x, edge_index)
        assert split._folded is None
        torch.testing.assert_close(out, reference(x, edge_index), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 4 * 5 * 7, 2**30])
def test_neighbour_max_in_chunks_equals_one_gather(monkeypatch, chunk_bytes: int) -> None:
    """The row-chunked gather-and-max gives what one ``[N, k, H]`` gather gives, values and
    gradient: one row per chunk, 7 rows per chunk (30 rows: a short last chunk), and
    everything in one piece."""
    from bottleneck_pointcloud import models

    monkeypatch.setattr(models, "_GATHER_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    values = torch.randn(40, 5)
    neighbours = torch.randint(0, 40, (30, 3))
    expected = values[neighbours].amax(1)
    assert torch.equal(models._neighbour_max(values, neighbours), expected)
    # with a gradient to carry back (an explain-mode mask upstream of the frozen model)
    upstream = torch.randn(30, 5)
    one_gather, chunked = values.clone().requires_grad_(), values.clone().requires_grad_()
    one_gather[neighbours].amax(1).backward(upstream)
    out = models._neighbour_max(chunked, neighbours)
    assert torch.equal(out.detach(), expected)
    out.backward(upstream)
    torch.testing.assert_close(chunked.grad, one_gather.grad)  # a row in several chunks sums in another order


def test_dgcnn_eval_equals_the_same_network_with_pyg_edge_conv() -> None:
    """DGCNN's fused eval path is the paper's network: swap in PyG's EdgeConv, same logits."""
    import copy

    torch.manual_seed(0)
    model = DGCNN(NUM_CLASSES, k=4, hidden=16)
    batch = _ragged_batch(6)
    model(batch)  # running statistics that differ from the initial ones
    model.eval()
    assert all(conv.fused_eval for conv in model.convs)
    reference = copy.deepcopy(model)
    state = copy.deepcopy(model.state_dict())
    # EdgeConv re-initialises the MLP it is given: the trained state goes back in after
    reference.convs = torch.nn.ModuleList([EdgeConv(conv.nn, aggr="max") for conv in reference.convs])
    reference.load_state_dict(state)
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), reference(batch), rtol=1e-5, atol=1e-5)


def test_pointnet_permutation_invariant() -> None:
    torch.manual_seed(0)
    model = PointNet(NUM_CLASSES, hidden=16)
    model(_ragged_batch(8))  # one training step's batch statistics so eval differs from init
    model.eval()
    data = make_shapes(3, min_points=50, max_points=80, seed=7)
    perm = [d.__class__(pos=d.pos[torch.randperm(d.num_nodes)]) for d in data]
    with torch.no_grad():
        torch.testing.assert_close(
            model(Batch.from_data_list(data)),
            model(Batch.from_data_list(perm)),
            rtol=1e-4,
            atol=1e-5,
        )


def test_pointnet_extra_features() -> None:
    model = PointNet(4, in_channels=5, hidden=8)
    batch = _ragged_batch(3)
    batch.x = torch.randn(batch.num_nodes, 2)
    assert model(batch).shape == (3, 4)
    assert model(torch.randn(2, 10, 5)).shape == (2, 4)


# --------------------------------------------------------------------------- render


def test_render_cloud_and_grid(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bottleneck_pointcloud.render import render_cloud, render_grid

    d = make_shapes(2, min_points=40, max_points=60, seed=0)
    rel = torch.rand(d[0].num_nodes)
    out = render_cloud(d[0].pos, rel, tmp_path / "a.png", title="rod", gt=d[0].gt)
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = render_cloud(d[0].pos, rel, tmp_path / "sub" / "b.png")
    assert out.exists() and out.stat().st_size > 1000
    out = render_grid(
        [(x.pos, x.gt.float()) for x in d],
        tmp_path / "grid.png",
        titles=["a", "b"],
        gts=[x.gt for x in d],
    )
    assert out.exists() and out.stat().st_size > 1000


def test_render_rejects_bad_shapes(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bottleneck.errors import BottleneckError
    from bottleneck_pointcloud.render import render_cloud

    with pytest.raises(BottleneckError):
        render_cloud(torch.randn(10, 2), torch.rand(10), tmp_path / "x.png")
    with pytest.raises(BottleneckError):
        render_cloud(torch.randn(10, 3), torch.rand(9), tmp_path / "x.png")
