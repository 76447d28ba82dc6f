"""The mask at a hidden layer of point-cloud and text models (``attach(model, where=LAYER)``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from token_batches import VOCAB, token_batch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck_pointcloud.models import DGCNN, PointNet
from bottleneck_text.models import BiLSTMClassifier, make_bert


def clouds(sizes=(30, 20), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g)) for n in sizes])


def pointnet() -> nn.Module:
    torch.manual_seed(0)
    return PointNet(3, hidden=16)


def bilstm() -> nn.Module:
    torch.manual_seed(0)
    return BiLSTMClassifier(VOCAB, 2, embed_dim=16, hidden=16)


def bert() -> nn.Module:
    torch.manual_seed(0)
    model = make_bert(VOCAB, 2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16)
    for module in model.modules():  # BERT's init (std 0.02) barely moves the logits
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.3)
    return model


# (name, model factory, modality, layer, inputs, modality options)
CASES = {
    "pointnet": (pointnet, "pointcloud", "point_mlp", clouds, {}),
    "dgcnn": (lambda: DGCNN(3, k=4, hidden=8), "pointcloud", "convs.2", clouds, {}),
    "pointnet_dense": (pointnet, "pointcloud", "point_mlp", lambda: torch.randn(2, 25, 3), {}),
    "bilstm": (bilstm, "text", "token_features", token_batch, {"special_ids": [2, 3]}),
    "bert_layer": (bert, "text", "bert.encoder.layer.0", token_batch, {"special_ids": [2, 3]}),
    "bert_encoder": (bert, "text", "bert.encoder", token_batch, {}),  # returns a ModelOutput; the logits read CLS
}


def logits(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.logits


def first(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    return output[0]


def capture(model: nn.Module, layer: str, call) -> Any:
    """The output of ``layer`` in one call of ``call()``."""
    seen: list[Any] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return seen[0]


def force_gates(masked: bottleneck.MaskedModel, open_: bool) -> None:
    """Make every deterministic gate exactly 1 (``open_``) or 0: the scorer outputs a constant."""
    head = masked.mask.scorer.head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(50.0 if open_ else -50.0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_gradients_and_explain(case: str) -> None:
    factory, modality, layer, make_inputs, options = CASES[case]
    inputs = make_inputs()
    masked = bottleneck.attach(factory(), modality, where=layer, **options)
    input_units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    out = masked(inputs)
    assert out.gates.shape == (input_units.num_units,)  # one gate per input unit
    assert torch.equal(out.units.batch, input_units.batch)
    assert out.units.edge_index is not None  # smoothness needs the unit graph in training
    (logits(out.output).sum() + out.ib_loss).backward()
    grads = [p.grad for p in masked.mask.scorer.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    explanation = masked.explain(inputs)
    assert explanation.relevance.shape == (input_units.num_units,)
    assert torch.isfinite(explanation.relevance).all()
    assert explanation.gates.shape == (input_units.num_units,)
    with pytest.raises(BottleneckError, match="sits at layer"):
        masked.sparse(inputs)


@pytest.mark.parametrize("case", ["pointnet", "dgcnn", "bilstm", "bert_layer", "bert_encoder"])
def test_closed_gates_apply_the_baseline_and_open_gates_change_nothing(case: str) -> None:
    factory, modality, layer, make_inputs, options = CASES[case]
    inputs = make_inputs()
    masked = bottleneck.attach(factory(), modality, where=layer, **options).eval()
    adapter = masked.adapter(inputs)
    with torch.no_grad():
        plain = logits(adapter.call_model(masked.model, inputs))

    force_gates(masked, open_=True)
    with torch.no_grad():
        out = masked(inputs)
    assert (out.gates == 1).all()
    torch.testing.assert_close(logits(out.output), plain, rtol=0, atol=0)

    # all closed: exactly the model with that layer's per-unit outputs replaced by zero
    force_gates(masked, open_=False)
    with torch.no_grad():
        out = masked(inputs)
    assert (out.gates == 0).all()
    units = adapter.to_units(inputs, with_graph=False)

    def zero_units(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = first(output).clone()
        if modality == "text":
            hidden[units.meta["rows"], units.meta["cols"]] = 0.0
        else:
            hidden.zero_()
        return hidden if isinstance(output, Tensor) else output.__class__(**{**output, next(iter(output)): hidden})

    handle = masked.model.get_submodule(layer).register_forward_hook(zero_units)
    try:
        with torch.no_grad():
            expected = logits(adapter.call_model(masked.model, inputs))
    finally:
        handle.remove()
    torch.testing.assert_close(logits(out.output), expected, rtol=0, atol=0)
    assert (logits(out.output) - plain).abs().max() > 1e-4  # and that is a different output


def test_pointcloud_hidden_baselines() -> None:
    inputs = clouds()
    masked = bottleneck.attach(pointnet(), "pointcloud", where="point_mlp", baseline="centroid").eval()
    adapter = masked.adapter(inputs)
    units_in = adapter.to_units(inputs, with_graph=False)
    features = capture(masked.model, "point_mlp", lambda: masked.model(inputs))
    hidden = adapter.hidden_to_units(features, with_graph=True, inputs=units_in)
    assert hidden.num_units == 50 and hidden.edge_index is not None  # kNN graph of the input points
    assert torch.equal(hidden.meta["features"], features)
    gates = torch.ones(50)
    gates[:5] = 0.0
    gates[30:32] = 0.25
    for baseline in ("zero", "remove"):
        out = adapter.apply_hidden_gates(features, hidden, gates, baseline)
        assert torch.equal(out[5:30], features[5:30]) and (out[:5] == 0).all()
        torch.testing.assert_close(out[30:32], 0.25 * features[30:32])
    out = adapter.apply_hidden_gates(features, hidden, gates, "centroid")
    means = torch.stack([features[:30].mean(0), features[30:].mean(0)])
    torch.testing.assert_close(out[:5], means[0].expand(5, -1))
    torch.testing.assert_close(out[30:32], 0.25 * features[30:32] + 0.75 * means[1])
    assert torch.equal(out[5:30], features[5:30])
    with pytest.raises(BottleneckError, match="baseline at a hidden point-cloud layer"):
        adapter.apply_hidden_gates(features, hidden, gates, "blur")
    # dense [B, n, F] hidden features of dense inputs keep their shape
    dense_inputs = torch.randn(2, 10, 3)
    dense_units = adapter.to_units(dense_inputs, with_graph=False)
    dense_features = torch.rand(2, 10, 4)
    hidden = adapter.hidden_to_units(dense_features, with_graph=False, inputs=dense_units)
    out = adapter.apply_hidden_gates(dense_features, hidden, torch.zeros(20), "zero")
    assert out.shape == (2, 10, 4) and (out == 0).all()


def test_text_hidden_gates_leave_padding_and_special_tokens_alone() -> None:
    inputs = token_batch()
    masked = bottleneck.attach(bert(), "text", where="bert.encoder.layer.1", special_ids=[2, 3], baseline="learned")
    adapter = masked.adapter(inputs)
    units_in = adapter.to_units(inputs, with_graph=False)
    assert units_in.counts().tolist() == [6, 3, 1]
    features = torch.randn(3, 8, 32)
    hidden = adapter.hidden_to_units((features, "extra"), with_graph=False, inputs=units_in)
    assert hidden.num_units == 10 and torch.equal(hidden.meta["features"], features[units_in.meta["rows"], units_in.meta["cols"]])
    out = adapter.apply_hidden_gates((features, "extra"), hidden, torch.zeros(10), "zero")
    assert isinstance(out, tuple) and out[1] == "extra"  # the layer's output structure is kept
    is_unit = units_in.meta["units_mask"]
    assert (out[0][is_unit] == 0).all() and torch.equal(out[0][~is_unit], features[~is_unit])
    learned = adapter.apply_hidden_gates(features, hidden, torch.zeros(10), "learned", state=masked.baseline_state)
    torch.testing.assert_close(learned[is_unit], masked.baseline_state().expand(10, -1))
    assert torch.equal(adapter.apply_hidden_gates(features, hidden, torch.ones(10), "learned",
                                                  state=masked.baseline_state), features)


def test_bilstm_token_features_sit_at_the_input_positions() -> None:
    model = bilstm().eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    gapped = capture(model, "token_features", lambda: model(ids, torch.tensor([[1, 0, 1, 0, 1]])))
    compact = capture(model, "token_features", lambda: model(torch.tensor([[3, 5, 7]])))
    assert gapped.shape == (1, 5, 32)
    torch.testing.assert_close(gapped[0, [0, 2, 4]], compact[0])
    assert (gapped[0, [1, 3]] == 0).all()


def test_layers_that_are_not_per_unit_raise() -> None:
    masked = bottleneck.attach(pointnet(), "pointcloud", where="classifier.lins.0")  # after the global pool
    with pytest.raises(BottleneckError, match="one feature vector per input point.*after the global pooling"):
        masked(clouds())
    masked = bottleneck.attach(bilstm(), "text", where="head")
    with pytest.raises(BottleneckError, match="one vector per input token"):
        masked(token_batch())
    masked = bottleneck.attach(bert(), "text", where="bert.pooler")
    with pytest.raises(BottleneckError, match="one vector per input token"):
        masked(token_batch())
    # the learned placeholder has the embedding's width, the BiLSTM's tokens twice the LSTM width
    masked = bottleneck.attach(bilstm(), "text", where="token_features", baseline="learned")
    with pytest.raises(BottleneckError, match="use baseline='zero'"):
        masked(token_batch())


def test_explain_stops_the_model_after_the_masked_layer() -> None:
    """An explanation at a hidden layer runs the model only up to that layer, and is unchanged by it."""
    model = pointnet()
    masked = bottleneck.attach(model, "pointcloud", mode="explain", where="point_mlp")
    inputs = clouds()
    calls: list[str] = []
    handle = model.classifier.register_forward_hook(lambda m, a, o: calls.append("classifier"))
    try:
        explanation = masked.explain(inputs)
    finally:
        handle.remove()
    assert calls == []
    masked.eval()
    with torch.no_grad():
        adapter = masked.adapter(inputs)
        output, hidden, result = masked._run_with_hidden_mask(adapter, inputs)  # the full forward
    assert output is not None
    units = adapter.to_units(inputs, with_graph=False)
    expected = adapter.relevance_to_input(result.relevance, hidden, units)
    assert torch.allclose(explanation.relevance, expected)


def test_a_hidden_layer_with_nan_features_is_refused_not_masked_silently() -> None:
    """Inputs are checked by the adapter; a hidden layer's features are not inputs. A model whose
    weights went NaN used to give NaN gates and relevance at ``layer2`` without a word."""
    from bottleneck_image.models import SmallResNet

    net = SmallResNet(4, width=8)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    masked = bottleneck.attach(net, "image", where="layer2")
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(BottleneckError, match="NaN or Inf .* check the model's weights and normalisation"):
        masked(images)
    with pytest.raises(BottleneckError, match="NaN or Inf"):
        masked.explain(images)
