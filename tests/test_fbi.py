"""FBI feature-norm relevance (``bottleneck.fbi.feature_norm``) on every modality."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_max_pool

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck.fbi import feature_norm
from bottleneck_image.models import SmallResNet
from bottleneck_pointcloud.models import PointNet
from bottleneck_text.models import BiLSTMClassifier, make_bert

VOCAB = 50


class PerPointMax(nn.Module):
    """Per-point Linear, then a global max pool: FBI's norms are those of ``lin``'s outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, data):
        return self.head(global_max_pool(self.lin(data.pos), data.batch))


def clouds(sizes=(30, 20), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g)) for n in sizes])


def text() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(8) < torch.tensor([8, 5, 3]).unsqueeze(1)).long()
    return {"input_ids": torch.randint(1, VOCAB, (3, 8), generator=g) * mask, "attention_mask": mask}


def test_hand_made_point_model_gives_exact_feature_norms() -> None:
    torch.manual_seed(0)
    model = PerPointMax()
    masked = bottleneck.attach(model, "pointcloud")
    inputs = clouds()
    relevance = feature_norm(masked, inputs, layer="lin")
    expected = model.lin(inputs.pos).detach().norm(dim=-1)
    assert relevance.shape == (50,)
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)
    # class-agnostic: the target changes nothing
    torch.testing.assert_close(feature_norm(masked, inputs, torch.tensor([1, 0]), layer="lin"), relevance)


CASES = {
    "pointnet": (lambda: PointNet(3, hidden=16), "pointcloud", "point_mlp", clouds, {}),
    "resnet": (lambda: SmallResNet(3, width=8), "image", "layer3", lambda: torch.rand(2, 3, 32, 32), {}),
    "bilstm": (lambda: BiLSTMClassifier(VOCAB, 2, embed_dim=16, hidden=16), "text", "token_features", text, {}),
    "bert": (
        lambda: make_bert(VOCAB, 2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16),
        "text", "bert.encoder.layer.1", text, {"special_ids": [2, 3]},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_relevance_per_input_unit_on_every_modality(case: str) -> None:
    factory, modality, layer, make_inputs, options = CASES[case]
    torch.manual_seed(0)
    model = factory().train()
    masked = bottleneck.attach(model, modality, **options)
    inputs = make_inputs()
    units = masked.adapter(inputs).to_units(inputs, with_graph=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    relevance = feature_norm(masked, inputs, layer=layer)
    assert relevance.shape == (units.num_units,)
    assert torch.isfinite(relevance).all() and (relevance >= 0).all() and relevance.max() > 0
    assert model.training  # the training flag is restored
    for key, value in model.state_dict().items():  # ran in eval mode: BatchNorm statistics untouched
        assert torch.equal(value, state[key]), key


def test_bad_layers_raise() -> None:
    masked = bottleneck.attach(PerPointMax(), "pointcloud")
    with pytest.raises(BottleneckError, match="names no layer of PerPointMax; its layers are: 'lin', 'head'"):
        feature_norm(masked, clouds(), layer="point_mlp")
    with pytest.raises(BottleneckError, match=r"feature_norm\(layer='head'\).*one feature vector per input point"):
        feature_norm(masked, clouds(), layer="head")  # after the pooling
    with pytest.raises(BottleneckError, match="masked model"):
        feature_norm(PerPointMax(), clouds(), layer="lin")
