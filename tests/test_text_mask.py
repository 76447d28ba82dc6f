"""The mask on text: token units, insertion at the embedding, sparse re-packing, bad input."""

from __future__ import annotations

import pytest
import torch
from token_batches import VOCAB, token_batch
from torch import nn

import bottleneck
from bottleneck.errors import BottleneckError
from bottleneck_text.adapter import TextModality, find_embedding
from bottleneck_text.models import BiLSTMClassifier, make_bert


class IdsOnly(nn.Module):
    """A user's model that takes only ``input_ids`` (no attention mask, no HF API)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(input_ids).mean(1))


class EmbedsOnly(nn.Module):
    """A user's model that takes ``inputs_embeds`` and an attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 2)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).float()
        return self.head((inputs_embeds * weights).sum(1) / weights.sum(1))


def tiny_bert():
    return make_bert(VOCAB, 2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16)


def test_units_are_real_tokens_without_specials_and_join_neighbours() -> None:
    masked = bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text", special_ids=[2, 3])
    units = masked.adapter().to_units(token_batch())
    assert units.counts().tolist() == [6, 3, 1]  # padding and [CLS]/[SEP] are not units
    src, dst = units.edge_index
    assert (units.batch[src] == units.batch[dst]).all()
    assert ((units.pos[src] - units.pos[dst]).abs() == 1).all()
    everything = bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text", special_ids=[2, 3], mask_special=True)
    assert everything.adapter().to_units(token_batch()).counts().tolist() == [8, 5, 3]


def test_embedding_is_found_on_hf_models_plain_modules_or_by_name() -> None:
    bert = tiny_bert()
    assert find_embedding(bert) is bert.get_input_embeddings()
    model = IdsOnly()
    assert find_embedding(model) is model.tokens
    assert find_embedding(bert, "bert.embeddings.word_embeddings") is bert.get_input_embeddings()
    with pytest.raises(BottleneckError, match="names no module"):
        find_embedding(model, "encoder")
    with pytest.raises(BottleneckError, match="has no input embedding"):
        find_embedding(EmbedsOnly())


@pytest.mark.parametrize("make", [BiLSTMClassifier, IdsOnly, tiny_bert])
def test_gradients_reach_mask_and_model(make) -> None:
    model = make(VOCAB, 2) if make is BiLSTMClassifier else make()
    masked = bottleneck.attach(model, "text", keep=0.3, special_ids=[2, 3])
    inputs = token_batch() if not isinstance(model, IdsOnly) else token_batch()["input_ids"]
    out = masked(inputs)
    logits = out.output.logits if hasattr(out.output, "logits") else out.output
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])) + out.ib_loss).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in masked.mask.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in masked.model.parameters())


def test_learned_placeholder_starts_at_the_mask_embedding() -> None:
    model = BiLSTMClassifier(VOCAB, 2)
    assert bottleneck.attach(model, "text").baseline == "remove"  # it takes an attention mask
    masked = bottleneck.attach(model, "text", placeholder_id=4, baseline="learned")
    assert torch.equal(masked.baseline_state.value.detach(), model.embed.weight[4].detach())


def test_closed_tokens_take_the_placeholder_at_the_embedding_output() -> None:
    model = IdsOnly()
    masked = bottleneck.attach(model, "text", baseline="zero")
    seen = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    adapter = masked.adapter()
    inputs = token_batch()["input_ids"]
    units = adapter.to_units(inputs)
    gates = torch.zeros(units.num_units)
    adapter.call_model(model, adapter.apply_gates(inputs, units, gates, "zero"))
    assert seen[-1].abs().max() == 0  # every token replaced by the zero vector


def test_inputs_embeds_models_are_masked_on_their_embeddings() -> None:
    model = EmbedsOnly()
    embeds = torch.randn(3, 8, 16)
    inputs = {"inputs_embeds": embeds, "attention_mask": token_batch()["attention_mask"]}
    masked = bottleneck.attach(model, "text", embedding="head", baseline="zero", keep=0.5)
    out = masked(inputs)
    assert out.output.shape == (3, 2) and out.units.counts().tolist() == [8, 5, 3]


def test_bert_sparse_path_repacks_shorter_sequences_and_matches_training() -> None:
    bert = tiny_bert()
    masked = bottleneck.attach(bert, "text", keep=0.5, special_ids=[2, 3]).eval()
    assert masked.baseline == "remove"
    lengths: list[int] = []
    bert.bert.encoder.layer[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    inputs = token_batch()
    sparse = masked.sparse(inputs, keep=0.5)
    assert lengths == [2 + 3]  # [CLS] + ceil(0.5 * 6) units + [SEP] of the longest row
    assert sparse.inputs.input_ids.shape[1] == 5
    adapter = masked.adapter()
    hidden = adapter.apply_gates(inputs, sparse.units, sparse.kept.float(), "remove")  # what training sees
    with torch.no_grad():
        dense = adapter.call_model(bert, hidden)
    assert lengths[-1] == 8
    assert torch.allclose(sparse.output.logits, dense.logits, atol=1e-4)


def test_ids_only_model_runs_sparse() -> None:
    masked = bottleneck.attach(IdsOnly(), "text", keep=0.5).eval()
    out = masked.sparse(token_batch()["input_ids"], keep=0.5)
    assert out.output.shape == (3, 2)
    assert out.inputs.input_ids.shape[1] == 4  # ceil(0.5 * 8) tokens in the longest row


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": torch.tensor([[2, 7, 3], [0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])},
         r"sequences \[1\] are all padding"),
        (torch.tensor([[2, 7, VOCAB + 3]]), rf"must lie in \[0, {VOCAB}\).*up to {VOCAB + 3}|to {VOCAB + 3}"),
        (torch.tensor([[2.0, 7.0, 3.0]]), "must be integer token ids"),
        ({"input_ids": torch.tensor([[2, 7, 3]]), "attention_mask": torch.tensor([[1, 1]])},
         r"attention_mask must be \[B, L\] = \[1, 3\]"),
        (torch.zeros(0, 4, dtype=torch.long), "empty text batch"),
        ("a sentence", "text inputs must be input_ids"),
    ],
)
def test_bad_text_inputs_raise_the_library_error(inputs, message: str) -> None:
    masked = bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text")
    with pytest.raises(BottleneckError, match=message):
        masked(inputs)


def test_sequences_of_only_special_tokens_have_nothing_to_mask() -> None:
    masked = bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text", special_ids=[2, 3])
    with pytest.raises(BottleneckError, match="hold only special tokens"):
        masked(torch.tensor([[2, 3]]))


def test_text_options_are_checked() -> None:
    with pytest.raises(BottleneckError, match="text modality options are"):
        bottleneck.attach(BiLSTMClassifier(VOCAB, 2), "text", patch_size=4)
    assert isinstance(bottleneck.plugins.get_modality("text"), TextModality)


def test_a_tokenizers_batch_encoding_goes_straight_in() -> None:
    from bottleneck_text.data import build_tokenizer

    texts = ["a good movie", "a really bad plot indeed"]
    tokenizer = build_tokenizer(texts * 4)
    encoding = tokenizer(texts, padding=True, return_tensors="pt")
    bert = make_bert(len(tokenizer), 2, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_position=16)
    masked = bottleneck.attach(bert, "text", special_ids=tokenizer.all_special_ids,
                               placeholder_id=tokenizer.mask_token_id, baseline="learned")
    out = masked(encoding)
    assert out.units.counts().tolist() == [3, 5]
    weight = bert.get_input_embeddings().weight
    assert torch.equal(masked.baseline_state.value.detach(), weight[tokenizer.mask_token_id].detach())
