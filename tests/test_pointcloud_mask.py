"""The mask on point clouds: attach, gates, sparse removal, equivariance, save/load, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_max_pool

import bottleneck
from bottleneck.errors import BottleneckError


class CountingNet(nn.Module):
    """A small PyG-style classifier that records how many points it receives."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, classes)
        self.seen: list[int] = []

    def forward(self, data):
        self.seen.append(int(data.pos.shape[0]))
        batch = data.batch if data.batch is not None else torch.zeros(data.pos.shape[0], dtype=torch.long)
        return self.head(global_max_pool(self.mlp(data.pos), batch, size=int(batch.max()) + 1))


def clouds(sizes=(40, 25, 60), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    data = [Data(pos=torch.randn(n, 3, generator=g), y=torch.tensor([i % 3])) for i, n in enumerate(sizes)]
    return Batch.from_data_list(data)


def test_attach_returns_output_gates_and_loss(device) -> None:
    net = CountingNet().to(device)
    masked = bottleneck.attach(net, keep=0.3).to(device)
    batch = clouds().to(device)
    out = masked(batch)
    assert masked.modality_name == "pointcloud"  # detected from the PyG Batch
    assert out.output.shape == (3, 3)
    assert out.gates.shape == (125,) and out.relevance.shape == (125,)
    assert ((out.gates >= 0) & (out.gates <= 1)).all()
    assert out.ib_loss.dim() == 0 and torch.isfinite(out.ib_loss)
    assert set(out.terms) >= {"rate", "keep_penalty", "smoothness", "multiplier", "keep_rate"}


def test_gradients_reach_mask_and_model(device) -> None:
    net = CountingNet().to(device)
    masked = bottleneck.attach(net, keep=0.3, smooth_weight=0.1).to(device)
    out = masked(clouds().to(device))
    loss = nn.functional.cross_entropy(out.output, torch.tensor([0, 1, 2], device=device)) + out.ib_loss
    loss.backward()
    for name, parameter in masked.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in masked.mask.parameters())


def test_sparse_path_really_removes_points() -> None:
    net = CountingNet()
    masked = bottleneck.attach(net, "pointcloud", keep=0.3)
    batch = clouds((40, 25, 60))
    masked(batch)
    net.seen.clear()
    result = masked.sparse(batch, keep=0.3)
    expected = [12, 8, 18]  # ceil(0.3 * n) per cloud
    assert result.kept_counts.tolist() == expected
    assert net.seen == [sum(expected)]
    assert result.inputs.batch.tolist() == sum(([i] * k for i, k in enumerate(expected)), [])
    assert result.inputs.ptr.tolist() == [0, 12, 20, 38]
    assert result.output.shape == (3, 3)


def test_sparse_path_keeps_only_the_edges_between_kept_points() -> None:
    """A cloud with its own graph (``edge_index`` and an edge attribute): the reduced input keeps
    exactly the edges whose two ends were kept, renumbered, with their attributes."""
    from bottleneck.neighbors import knn_graph

    batch = clouds((20, 30))
    batch.edge_index = knn_graph(batch.pos, 4, batch.batch)
    batch.edge_weight = torch.arange(batch.edge_index.shape[1], dtype=torch.float)
    masked = bottleneck.attach(CountingNet(), "pointcloud", keep=0.5)
    masked(batch)
    result = masked.sparse(batch, keep=0.5)
    kept = result.kept.nonzero().view(-1)
    both = result.kept[batch.edge_index].all(0)
    assert 0 < int(both.sum()) < batch.edge_index.shape[1]
    new_id = torch.full((batch.pos.shape[0],), -1)
    new_id[kept] = torch.arange(kept.numel())
    assert torch.equal(result.inputs.edge_index, new_id[batch.edge_index[:, both]])
    assert torch.equal(result.inputs.edge_weight, batch.edge_weight[both])
    assert torch.equal(result.inputs.pos, batch.pos[kept])


def test_remove_baseline_drops_closed_points_in_training() -> None:
    net = CountingNet()
    masked = bottleneck.attach(net, "pointcloud", keep=0.3, init_open=0.3)
    masked.train()
    torch.manual_seed(0)
    out = masked(clouds())
    open_per_cloud = torch.bincount(out.units.batch[out.gates > 0], minlength=3).clamp(min=1)
    assert net.seen[-1] == int(open_per_cloud.sum()) < 125


def test_dense_inputs_and_sparse_padding() -> None:
    seen = []

    class Dense(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.max(dim=1).values

    masked = bottleneck.attach(Dense(), keep=0.25)
    x = torch.randn(4, 20, 3)
    assert masked(x).output.shape == (4, 3)
    result = masked.sparse(x, keep=0.25)
    assert seen[-1] == (4, 5, 3)
    assert result.output.shape == (4, 3)


def test_permuting_points_permutes_the_mask() -> None:
    torch.manual_seed(0)
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    data = Data(pos=torch.randn(50, 3))
    masked(data)
    perm = torch.randperm(50)
    first = masked.explain(data).relevance
    second = masked.explain(Data(pos=data.pos[perm])).relevance
    assert torch.allclose(first[perm], second, atol=1e-6)


def test_any_number_of_points() -> None:
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    for n in (1, 7, 3000):
        explanation = masked.explain(Data(pos=torch.randn(n, 3)))
        assert explanation.relevance.shape == (n,)


def test_explanation_dense_and_per_sample() -> None:
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    explanation = masked.explain(clouds((5, 3)))
    dense, valid = explanation.to_dense()
    assert dense.shape == (2, 5) and valid.sum() == 8
    assert [t.numel() for t in explanation.per_sample()] == [5, 3]


def test_save_and_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    masked = bottleneck.attach(CountingNet(), keep=0.2, gate="gaussian")
    batch = clouds()
    masked(batch)
    with torch.no_grad():
        masked.mask.constraint.multiplier.fill_(1.5)
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors", include_model=True)
    assert path.read_bytes()[:8]  # a file was written
    restored = bottleneck.load(path, CountingNet())
    assert restored.modality_name == "pointcloud" and restored.keep == 0.2
    assert restored.mask.constraint.multiplier.item() == 1.5
    assert torch.equal(masked.explain(batch).relevance, restored.explain(batch).relevance)
    assert torch.equal(masked.sparse(batch).output, restored.sparse(batch).output)


def test_loading_a_non_mask_file_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(BottleneckError, match="not a bottleneck mask file"):
        bottleneck.load(tmp_path / "other.safetensors", CountingNet())
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(BottleneckError, match="not a bottleneck mask file \\(not safetensors"):
        bottleneck.load(tmp_path / "text.safetensors", CountingNet())
    with pytest.raises(BottleneckError, match="no mask file at .*missing.safetensors"):
        bottleneck.load(tmp_path / "missing.safetensors", CountingNet())
    with pytest.raises(BottleneckError, match="no mask file at .* \\(a folder\\)"):
        bottleneck.load(tmp_path, CountingNet())


def test_saving_a_mask_that_has_seen_no_input_is_refused(tmp_path) -> None:
    """The scorer takes its input width from the first inputs: before them it has no weights to save."""
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    with pytest.raises(BottleneckError, match="call the masked model on inputs once before saving: .*scorer"):
        bottleneck.save_mask(masked, tmp_path / "mask.safetensors")
    assert not (tmp_path / "mask.safetensors").exists()


def test_a_file_that_does_not_fit_says_what_differs(tmp_path) -> None:
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    masked(clouds())
    path = bottleneck.save_mask(masked, tmp_path / "mask.safetensors", include_model=True)
    other = nn.Sequential(nn.Linear(3, 8))  # another model: its weights are not the file's
    with pytest.raises(BottleneckError, match=r"does not fit the Sequential given: 2 of its entries are not in "
                                              r"the file \(first: 0.bias, 0.weight\); 6 entries of the file .*"
                                              r"load_model=False"):
        bottleneck.load(path, other)
    wider = bottleneck.attach(CountingNet(), "pointcloud", hidden=32)
    wider(clouds())
    with pytest.raises(BottleneckError, match=r"does not fit the mask: \d+ entries have another shape \(first: "
                                              r"scorer.encode.0.bias \(64,\) in the file, \(32,\) here"):
        bottleneck.load_mask(wider, path)
    kept = bottleneck.attach(CountingNet(), "pointcloud")
    kept(clouds())
    own = {k: v.clone() for k, v in kept.model.state_dict().items()}
    bottleneck.load_mask(kept, path, load_model=False)  # the mask alone, the model keeps its weights
    assert all(torch.equal(own[k], v) for k, v in kept.model.state_dict().items())
    assert torch.equal(kept.explain(clouds()).relevance, masked.explain(clouds()).relevance)


# -- bad input --------------------------------------------------------------------

@pytest.fixture
def masked():
    return bottleneck.attach(CountingNet(), "pointcloud")


def test_empty_cloud(masked) -> None:
    with pytest.raises(BottleneckError, match="empty point cloud.*0 points"):
        masked(Data(pos=torch.zeros(0, 3)))
    with pytest.raises(BottleneckError, match="empty point cloud"):
        masked(torch.zeros(2, 0, 3))


def test_empty_sample_inside_a_batch(masked) -> None:
    data = Data(pos=torch.randn(4, 3), batch=torch.tensor([0, 0, 2, 2]))
    with pytest.raises(BottleneckError, match=r"samples \[1\] have 0 points"):
        masked(data)


@pytest.mark.parametrize(("batch", "num_graphs", "message"), [
    ([1, 1, 2, 2], 3, r"samples \[0\] have 0 points"),  # the first sample empty
    ([0, 0, 1, 1], 3, r"samples \[2\] have 0 points"),  # the last sample empty
    ([0, 1, 0, 1], 2, "sorted and non-negative"),
    ([-1, 0, 0, 1], 2, "sorted and non-negative"),
    ([0, 0, 1, 3], 2, "names sample 3 but the batch has 2 samples"),
])
def test_bad_batch_vectors_say_what_is_wrong(masked, batch, num_graphs, message) -> None:
    data = Batch.from_data_list([Data(pos=torch.randn(2, 3)) for _ in range(2)])
    data.pos, data.batch = torch.randn(4, 3), torch.tensor(batch)
    data._num_graphs = num_graphs
    with pytest.raises(BottleneckError, match=message):
        masked(data)


def test_one_point_batches(masked) -> None:
    """A batch vector of one point has no steps to check: its one id still decides."""
    single = Batch.from_data_list([Data(pos=torch.randn(1, 3))])
    assert masked.adapter(single).to_units(single, with_graph=False).num_samples == 1
    single.batch, single._num_graphs = torch.tensor([1]), 2
    with pytest.raises(BottleneckError, match=r"samples \[0\] have 0 points"):
        masked(single)
    single.batch, single._num_graphs = torch.tensor([-1]), 1
    with pytest.raises(BottleneckError, match="sorted and non-negative"):
        masked(single)


def test_float64_clouds_are_refused_unless_the_model_is_float64_too() -> None:
    """Coordinates from NumPy are float64: the mask says so instead of failing in torch's linear."""
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    cloud = clouds()
    cloud.pos = cloud.pos.double()
    message = r"mask's weights are torch.float32 but the inputs give unit features of torch.float64"
    for call in (masked, masked.explain, lambda c: masked.sparse(c, keep=0.25)):
        with pytest.raises(BottleneckError, match=message):
            call(cloud)
    masked.double()
    assert masked(cloud).output.dtype == torch.float64
    assert masked.sparse(cloud, keep=0.25).kept_counts.tolist() == [10, 7, 15]


def test_nan_coordinates(masked) -> None:
    pos = torch.randn(10, 3)
    pos[3, 1] = float("nan")
    with pytest.raises(BottleneckError, match="NaN or Inf coordinates \\(1 points\\)"):
        masked(Data(pos=pos))
    with pytest.raises(BottleneckError, match="NaN or Inf"):
        masked(torch.full((1, 4, 3), float("inf")))
    pos[3, 1] = float("-inf")
    with pytest.raises(BottleneckError, match="NaN or Inf coordinates \\(1 points\\)"):
        masked(Data(pos=pos))


def test_finite_coordinates_whose_sum_overflows_are_accepted(masked) -> None:
    """The finiteness check sums the coordinates first; a finite cloud whose sum overflows
    float32 (two points at 3e38) takes the exact check and passes."""
    pos = torch.randn(10, 3)
    pos[:2] = 3e38
    assert not bool(pos.sum().isfinite())
    units = masked.adapter(Data(pos=pos)).to_units(Data(pos=pos), with_graph=False)
    assert units.num_units == 10


def test_batch_vector_that_does_not_match(masked) -> None:
    with pytest.raises(BottleneckError, match=r"batch vector must be a \[N\] long tensor with N=10 points"):
        masked(Data(pos=torch.randn(10, 3), batch=torch.zeros(9, dtype=torch.long)))
    with pytest.raises(BottleneckError, match="sorted"):
        masked(Data(pos=torch.randn(3, 3), batch=torch.tensor([1, 0, 0])))
    with pytest.raises(BottleneckError, match="torch.long"):
        masked(Data(pos=torch.randn(3, 3), batch=torch.zeros(3)))


def test_wrong_shapes(masked) -> None:
    with pytest.raises(BottleneckError, match=r"Data.pos must be \[N, 3\]"):
        masked(Data(pos=torch.randn(10, 2)))
    with pytest.raises(BottleneckError, match="floating-point"):
        masked(Data(pos=torch.ones(10, 3, dtype=torch.long)))


def test_unknown_modality() -> None:
    with pytest.raises(BottleneckError, match="unknown modality 'pointclouds'; registered modalities: .*pointcloud"):
        bottleneck.attach(CountingNet(), "pointclouds")
    masked = bottleneck.attach(CountingNet())
    with pytest.raises(BottleneckError, match="cannot detect the modality of Tensor of shape \\(2, 7\\)"):
        masked(torch.randn(2, 7))


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.01, 2])
def test_keep_out_of_range(keep) -> None:
    with pytest.raises(BottleneckError, match=r"keep must be a fraction in \(0, 1\]"):
        bottleneck.attach(CountingNet(), "pointcloud", keep=keep)
    masked = bottleneck.attach(CountingNet(), "pointcloud")
    with pytest.raises(BottleneckError, match=r"keep must be a fraction in \(0, 1\]"):
        masked.sparse(clouds(), keep=keep)


def test_bad_configuration_names_the_choices() -> None:
    with pytest.raises(BottleneckError, match="mode must be one of \\['joint', 'explain'\\] \\(got 'jointly'\\)"):
        bottleneck.attach(CountingNet(), mode="jointly")
    with pytest.raises(BottleneckError, match="baseline for modality 'pointcloud' must be one of"):
        bottleneck.attach(CountingNet(), "pointcloud", baseline="mean")
    with pytest.raises(BottleneckError, match="needs a torch.nn.Module"):
        bottleneck.attach(lambda x: x)


def test_explain_mode_freezes_the_model() -> None:
    net = CountingNet()
    masked = bottleneck.attach(net, "pointcloud", mode="explain")
    masked.train()
    assert not net.training
    out = masked(clouds())
    assert "faithfulness" in out.terms
    out.ib_loss.backward()
    assert all(p.grad is None for p in net.parameters())
    assert any(p.grad is not None for p in masked.mask.parameters())


def test_raw_coordinate_features_do_not_move_when_points_are_added() -> None:
    import torch
    from torch_geometric.data import Data

    from bottleneck.errors import BottleneckError
    from bottleneck_pointcloud.adapter import PointCloudModality

    cloud = Data(pos=torch.randn(20, 3))
    grown = Data(pos=torch.cat([cloud.pos, torch.full((4, 3), 3.0)]))  # a cluster far out
    centred, raw = PointCloudModality(), PointCloudModality().configure(torch.nn.Linear(3, 2), normalise=False)
    assert torch.equal(raw.to_units(grown, with_graph=False).x[:20], cloud.pos)
    moved = centred.to_units(grown, with_graph=False).x[:20] - centred.to_units(cloud, with_graph=False).x
    assert moved.abs().max() > 0.1  # centring on the centroid lets the extra points shift every feature
    with pytest.raises(BottleneckError, match="point-cloud modality options are \\['normalise'\\]"):
        PointCloudModality().configure(torch.nn.Linear(3, 2), centre=False)
