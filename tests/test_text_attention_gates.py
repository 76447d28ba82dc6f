"""``attention_gates``: a Hugging Face text model's token gates trained through the attention weights."""

from __future__ import annotations

import pytest
import torch
from token_batches import VOCAB, token_batch
from torch import nn

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck.key_bias_attention import GATE_FLOOR, gate_attention_bias
from bottleneck_text.adapter import ATTENTION_GATE_GRAD_BOUND
from bottleneck_text.models import BiLSTMClassifier, make_bert

SPECIAL = [2, 3]


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    return make_bert(VOCAB, 2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16)


def gated_logits(model: nn.Module, gates: torch.Tensor, **options) -> torch.Tensor:
    """The model's logits on :func:`batch` with these unit gates, as training calls it (``remove``)."""
    masked = bottleneck.attach(model, "text", special_ids=SPECIAL, **options)
    adapter = masked.adapter()
    inputs = token_batch((8, 6, 4))
    units = adapter.to_units(inputs)
    return adapter.call_model(model, adapter.apply_gates(inputs, units, gates, "remove")).logits


def test_gate_bias_is_the_log_weight_and_its_gradient_is_bounded_per_weight() -> None:
    weights = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]], requires_grad=True)
    bias = gate_attention_bias(weights, grad_bound=1.0)
    assert bias.shape == (2, 1, 1, 3) and bias.dtype == torch.float32
    assert torch.allclose(bias[:, 0, 0], torch.log(GATE_FLOOR + (1 - GATE_FLOOR) * weights.detach()))
    (bias.squeeze() * torch.tensor([[1.0, 1.0, 1.0], [-3.0, -3.0, 0.1]])).sum().backward()
    # exact gradients 1/(floor + w): 1/floor, 2, 1 and -3, -3/floor, 0.4 -> clamped to [-1, 1]
    assert torch.allclose(weights.grad, torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.4]]))
    exact = torch.tensor([[0.0, 0.5]], requires_grad=True)
    gate_attention_bias(exact).sum().backward()
    assert torch.isclose(exact.grad[0, 0], torch.tensor(1 / GATE_FLOOR))
    assert torch.isclose(exact.grad[0, 1], torch.tensor(2.0))


def test_attention_gates_keep_the_logits_and_give_closed_tokens_bounded_gradients() -> None:
    model = tiny_bert().train()  # dropout is 0: train mode is deterministic
    hard = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)  # 6 + 4 + 2 units
    closed = hard == 0
    gates = hard.clone().requires_grad_()
    logits = gated_logits(model, gates, attention_gates=True)
    (1e5 * logits[:, 0]).sum().backward()  # a steep loss: some gates' exact gradients exceed the bound
    hidden_gates = hard.clone().requires_grad_()
    hidden = gated_logits(model, hidden_gates)
    hidden[:, 0].sum().backward()
    assert torch.allclose(logits, hidden, atol=1e-5)  # the same function at 0/1 gates
    assert torch.equal(hidden_gates.grad[closed], torch.zeros(int(closed.sum())))  # hidden: no signal
    assert (gates.grad[closed] != 0).all()  # through the attention: what opening would do
    assert torch.isfinite(gates.grad).all() and gates.grad.abs().max() <= ATTENTION_GATE_GRAD_BOUND
    assert (gates.grad.abs() == ATTENTION_GATE_GRAD_BOUND).any()
    assert (gates.grad[~closed] != 0).any()


def test_attention_gates_train_mask_and_model_and_leave_inference_alone() -> None:
    model = tiny_bert()
    masked = bottleneck.attach(model, "text", special_ids=SPECIAL, gate="topk", keep=0.5, attention_gates=True)
    out = masked(token_batch((8, 6, 4)))
    (nn.functional.cross_entropy(out.output.logits, torch.tensor([0, 1, 0])) + out.ib_loss).backward()
    for part in (masked.mask, masked.model):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    masked.eval()
    plain = bottleneck.attach(tiny_bert(), "text", special_ids=SPECIAL, gate="topk", keep=0.5).eval()
    plain.load_state_dict(masked.state_dict())
    with torch.no_grad():  # no gradient wanted: the hidden-token path, as without the option
        assert torch.equal(masked(token_batch((8, 6, 4))).output.logits, plain(token_batch((8, 6, 4))).output.logits)
        assert torch.equal(masked.sparse(token_batch((8, 6, 4)), keep=0.5).output.logits, plain.sparse(token_batch((8, 6, 4)), keep=0.5).output.logits)
    assert model.config._attn_implementation == "sdpa"  # switched for the call only


def test_attention_gates_need_a_hugging_face_model_a_boolean_and_the_remove_baseline() -> None:
    with pytest.raises(BottleneckError, match="needs a Hugging Face model.*BiLSTMClassifier"):
        bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text", attention_gates=True)
    with pytest.raises(BottleneckError, match="attention_gates must be True or False"):
        bottleneck.attach(tiny_bert(), "text", attention_gates="yes")
    with pytest.raises(BottleneckError, match="attention_gates=True gates the attention of the remove baseline.*'zero'"):
        bottleneck.attach(tiny_bert(), "text", attention_gates=True, baseline="zero")



def test_attention_gradient_share_gives_a_share_of_the_texts_their_gate_gradient() -> None:
    """A one-layer BERT, three texts, share 1/3: one text's gates get a gradient, the others none."""
    torch.manual_seed(0)
    model = make_bert(VOCAB, 2, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position=16).train()
    hard = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)  # 6 + 4 + 2 units
    gates = hard.clone().requires_grad_()
    gated_logits(model, gates, attention_gates=True, attention_gradient_share=1 / 3)[:, 0].sum().backward()
    per_text = torch.stack([part.ne(0).any() for part in gates.grad.split([6, 4, 2])])
    assert int(per_text.sum()) == 1
    with pytest.raises(BottleneckError, match="attention_gradient_share applies to token gates.*attention_gates=True"):
        bottleneck.attach(tiny_bert(), "text", attention_gradient_share=0.5)
    with pytest.raises(BottleneckError, match="attention_gradient_share must be a fraction"):
        bottleneck.attach(tiny_bert(), "text", attention_gates=True, attention_gradient_share=0)


def test_attention_gates_refuse_fractional_gates() -> None:
    soft = torch.full((12,), 0.5, requires_grad=True)  # a scaled-down token can still be read
    with pytest.raises(BottleneckError, match="needs hard 0/1 gates in training.*fractional"):
        gated_logits(tiny_bert().train(), soft, attention_gates=True)
    with pytest.raises(BottleneckError, match="needs hard 0/1 gates"):  # hard-concrete samples fractions
        masked = bottleneck.attach(tiny_bert(), "text", special_ids=SPECIAL, attention_gates=True)
        masked.train()(token_batch((8, 6, 4)))
