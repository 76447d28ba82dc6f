"""The text plugin's reference models and token removal (pack_kept / forward_packed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bottleneck.errors import BottleneckError

try:
    import bottleneck_text  # noqa: F401
except ImportError:  # not installed yet: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from bottleneck_text.models import BiLSTMClassifier, make_bert  # noqa: E402
from bottleneck_text.shorten import (  # noqa: E402
    Packed,
    accepts_position_ids,
    forward_packed,
    pack_kept,
)

V = 50  # vocabulary of the tiny models


def tiny_bert(attn: str = "sdpa", num_classes: int = 3, std: float = 0.3) -> nn.Module:
    """A 2-layer BERT of width 32 in eval mode, seeded.

    Linear and embedding weights are redrawn with std ``std``: at BERT's own
    init (std 0.02) the logits are ~0.02 and hiding tokens moves them by ~1e-4,
    too little for a 1e-4 tolerance to tell right from wrong.
    """
    torch.manual_seed(0)
    model = make_bert(V, num_classes, hidden_size=32, num_heads=4, intermediate_size=64)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
    model.config._attn_implementation = attn
    return model.eval()


def tiny_lstm(num_classes: int = 3) -> BiLSTMClassifier:
    torch.manual_seed(0)
    return BiLSTMClassifier(V, num_classes, embed_dim=16, hidden=16).eval()


def batch(lengths: list[int], total: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Right-padded ids [B, total] (pad 0) and long mask; row i has ``lengths[i]`` real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), total), generator=g)
    mask = (torch.arange(total) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids * mask, mask


def random_kept(mask: Tensor, p: float = 0.4, seed: int = 2) -> Tensor:
    """Bool like ``mask``: each token kept with probability ``p``; the first token always."""
    g = torch.Generator().manual_seed(seed)
    kept = torch.rand(mask.shape, generator=g) < p
    kept[:, 0] = True
    return kept


def loop_pack(ids: Tensor, mask: Tensor, kept: Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """Reference packing with a Python loop: kept ids and their positions per row."""
    rows, positions = [], []
    for i in range(ids.shape[0]):
        where = [j for j in range(ids.shape[1]) if kept[i, j] and mask[i, j]]
        rows.append([int(ids[i, j]) for j in where])
        positions.append(where)
    return rows, positions


def record_lengths(model: nn.Module) -> tuple[list[int], Any]:
    """Sequence lengths seen by the first BERT layer, and the hook handle."""
    lengths: list[int] = []
    layer = model.bert.encoder.layer[0]

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        lengths.append(hidden.shape[1])

    return lengths, layer.register_forward_pre_hook(hook, with_kwargs=True)


# --------------------------------------------------------------------------- BiLSTM


def test_bilstm_shapes_and_layers() -> None:
    model = tiny_lstm(num_classes=4)
    ids, mask = batch([5, 3, 7], 7)
    assert model(ids, mask).shape == (3, 4)
    assert model(ids).shape == (3, 4)  # no mask: every token real
    assert model.get_input_embeddings() is model.embed
    assert isinstance(model.embed, nn.Embedding) and model.embed.padding_idx == 0
    assert model.lstm.bidirectional and model.head.in_features == 4 * 16
    model(ids, mask).sum().backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0


def test_bilstm_padding_invariance() -> None:
    model = tiny_lstm()
    ids, mask = batch([6, 2, 4], 6)
    ref = model(ids, mask)
    more_ids = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    more_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(more_ids, more_mask), ref, atol=1e-6, rtol=1e-6)
    # garbage ids under the padding do not matter either
    noisy = more_ids.masked_fill(more_mask == 0, 7)
    torch.testing.assert_close(model(noisy, more_mask.bool()), ref, atol=1e-6, rtol=1e-6)
    # each row alone, unpadded, gives the same logits as in the batch
    rows = [model(ids[i : i + 1, : int(mask[i].sum())]) for i in range(3)]
    torch.testing.assert_close(torch.cat(rows), ref, atol=1e-6, rtol=1e-6)


def test_bilstm_inputs_embeds_equals_ids() -> None:
    model = tiny_lstm()
    ids, mask = batch([5, 3], 5)
    embeds = model.embed(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask), model(ids, mask))
    # inputs_embeds wins over input_ids: embed is skipped
    torch.testing.assert_close(model(ids.flip(1), mask, inputs_embeds=embeds), model(ids, mask))


def test_bilstm_masked_tokens_are_removed() -> None:
    model = tiny_lstm()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    hidden = torch.tensor([[1, 0, 1, 0, 1]])
    torch.testing.assert_close(model(ids, hidden), model(torch.tensor([[3, 5, 7]])))


def test_bilstm_bad_input() -> None:
    model = tiny_lstm()
    with pytest.raises(BottleneckError, match="integer tensor of shape"):
        model(torch.rand(2, 5))
    with pytest.raises(BottleneckError, match="neither"):
        model()
    with pytest.raises(BottleneckError, match=r"\[B, L, 16\]"):
        model(inputs_embeds=torch.rand(2, 5, 8))
    with pytest.raises(BottleneckError, match=r"\[2, 5\]"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(BottleneckError, match=r"rows \[1\]"):
        model(torch.ones(2, 5, dtype=torch.long), torch.tensor([[1, 1, 0, 0, 0], [0] * 5]))
    with pytest.raises(BottleneckError, match="pad_id"):
        BiLSTMClassifier(5, 2, pad_id=5)


# --------------------------------------------------------------------------- BERT


def test_make_bert_logits_and_config() -> None:
    model = make_bert(V, 4, hidden_size=32, num_heads=4, intermediate_size=64, max_position=16)
    config = model.config
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0
    assert config._attn_implementation == "sdpa"
    assert (config.num_hidden_layers, config.max_position_embeddings, config.pad_token_id) == (
        2,
        16,
        0,
    )
    ids, mask = batch([16, 9], 16)
    assert model.eval()(ids, attention_mask=mask).logits.shape == (2, 4)
    with pytest.raises(BottleneckError, match="multiple of num_heads"):
        make_bert(V, 2, hidden_size=30, num_heads=4)


# --------------------------------------------------------------------------- pack_kept


def test_pack_kept_hand_made(device: torch.device) -> None:
    ids = torch.tensor([[101, 11, 12, 13, 14, 0], [101, 21, 22, 0, 0, 0]], device=device)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], device=device)
    kept = torch.tensor(
        [[True, False, True, False, True, True], [True, True, False, True, True, True]],
        device=device,
    )  # the last True of row 0 and the Trues past 22 in row 1 are padding: not kept
    packed = pack_kept(ids, mask, kept)
    assert isinstance(packed, Packed)
    assert packed.input_ids.tolist() == [[101, 12, 14], [101, 21, 0]]
    assert packed.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert packed.position_ids.tolist() == [[0, 2, 4], [0, 1, 0]]
    assert packed.index.tolist() == [[0, 2, 4], [0, 1, 0]]
    assert packed.lengths.tolist() == [3, 2]
    assert packed.attention_mask.dtype == mask.dtype
    assert packed.index.dtype == packed.position_ids.dtype == torch.long
    assert all(t.device.type == device.type for t in vars(packed).values())


def test_pack_kept_mask_variants() -> None:
    ids = torch.tensor([[5, 6, 7, 8]], dtype=torch.int32)
    kept = torch.tensor([[False, True, False, True]])
    packed = pack_kept(ids, None, kept)  # no mask: all real
    assert packed.input_ids.tolist() == [[6, 8]] and packed.input_ids.dtype == torch.int32
    assert packed.attention_mask.dtype == torch.long and packed.position_ids.tolist() == [[1, 3]]
    bool_mask = torch.tensor([[True, True, True, False]])
    packed = pack_kept(ids, bool_mask, kept)
    assert packed.input_ids.tolist() == [[6]] and packed.attention_mask.dtype == torch.bool


def test_pack_kept_matches_loop() -> None:
    ids, mask = batch([20, 13, 1, 17, 8], 20, seed=5)
    kept = random_kept(mask, p=0.5, seed=6)
    packed = pack_kept(ids, mask, kept)
    rows, positions = loop_pack(ids, mask, kept)
    assert packed.input_ids.shape[1] == max(len(r) for r in rows)
    for i, (row, where) in enumerate(zip(rows, positions, strict=True)):
        n = len(row)
        assert packed.input_ids[i, :n].tolist() == row
        assert packed.position_ids[i, :n].tolist() == where
        assert (packed.attention_mask[i, :n] == 1).all()
        assert (packed.attention_mask[i, n:] == 0).all()
        assert (packed.input_ids[i, n:] == 0).all() and (packed.index[i, n:] == 0).all()
    torch.testing.assert_close(
        ids.gather(1, packed.index) * packed.attention_mask, packed.input_ids
    )


def test_pack_kept_errors() -> None:
    ids, mask = batch([4, 4], 4)
    kept = torch.ones(2, 4, dtype=torch.bool)
    nothing = kept.clone()
    nothing[1] = False
    with pytest.raises(BottleneckError, match=r"rows \[1\] keep none"):
        pack_kept(ids, mask, nothing)
    only_padding = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    with pytest.raises(BottleneckError, match=r"rows \[0, 1\] keep none"):
        pack_kept(ids, only_padding, ~only_padding.bool())
    with pytest.raises(BottleneckError, match=r"bool tensor of shape \[B, L\] = \[2, 4\]"):
        pack_kept(ids, mask, kept.long())
    with pytest.raises(BottleneckError, match=r"\[2, 4\].*shape \(2, 3\)"):
        pack_kept(ids, mask, kept[:, :3])
    with pytest.raises(BottleneckError, match="attention_mask"):
        pack_kept(ids, mask[:1], kept)
    with pytest.raises(BottleneckError, match="attention_mask"):
        pack_kept(ids, mask.float(), kept)
    with pytest.raises(BottleneckError, match="input_ids as an integer"):
        pack_kept(ids.float(), mask, kept)
    with pytest.raises(BottleneckError, match="input_ids as an integer"):
        pack_kept(ids[0], mask[0], kept[0])


# --------------------------------------------------------------------------- forward_packed


class Wrapper(nn.Module):
    """A user's module holding a BERT; forwards keyword arguments."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.backbone = bert

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        return self.backbone(input_ids, **kwargs).logits


def test_accepts_position_ids() -> None:
    assert accepts_position_ids(tiny_bert())
    assert not accepts_position_ids(tiny_lstm())
    assert accepts_position_ids(Wrapper(tiny_bert()))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_all_equals_plain_call(attn: str) -> None:
    model = tiny_bert(attn)
    ids, mask = batch([12, 7, 3], 16)  # 4 columns of padding only: packing drops them
    packed = pack_kept(ids, mask, torch.ones_like(mask, dtype=torch.bool))
    assert packed.input_ids.shape == (3, 12)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(forward_packed(model, packed).logits, plain, atol=1e-5, rtol=0)
        # all rows full: the packed batch is the input itself
        full = torch.ones_like(mask)
        packed = pack_kept(ids, full, torch.ones_like(mask, dtype=torch.bool))
        assert torch.equal(packed.input_ids, ids)
        torch.testing.assert_close(
            forward_packed(model, packed).logits,
            model(ids, attention_mask=full).logits,
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_packed_equals_attention_masked(attn: str, p: float) -> None:
    model = tiny_bert(attn)
    ids, mask = batch([24, 17, 9, 24, 2], 24, seed=3)
    kept = random_kept(mask, p=p, seed=int(10 * p))
    packed = pack_kept(ids, mask, kept)
    with torch.no_grad():
        masked = model(ids, attention_mask=mask * kept).logits
        dense = model(ids, attention_mask=mask).logits
        out = forward_packed(model, packed).logits
        shifted = forward_packed(model, packed, use_position_ids=False).logits
    torch.testing.assert_close(out, masked, atol=1e-4, rtol=0)
    # the test can fail: hiding tokens and forgetting positions both move the logits
    assert (masked - dense).abs().max() > 1e-2
    assert (shifted - masked).abs().max() > 1e-2


def test_wrapper_gets_position_ids() -> None:
    model = tiny_bert()
    ids, mask = batch([10, 6], 10)
    kept = random_kept(mask, seed=4)
    with torch.no_grad():
        masked = model(ids, attention_mask=mask * kept).logits
        out = forward_packed(Wrapper(model), pack_kept(ids, mask, kept))
    torch.testing.assert_close(out, masked, atol=1e-4, rtol=0)


def test_lstm_packed_equals_attention_masked() -> None:
    model = tiny_lstm()
    ids, mask = batch([15, 11, 4], 15)
    kept = random_kept(mask, p=0.5)
    with torch.no_grad():
        out = forward_packed(model, pack_kept(ids, mask, kept))
        masked = model(ids, mask * kept)
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=0)


def test_encoder_sees_only_kept_tokens() -> None:
    model = tiny_bert()
    ids, mask = batch([32, 32, 20], 32)
    g = torch.Generator().manual_seed(0)
    kept = torch.zeros(3, 32, dtype=torch.bool)
    for i, k in enumerate([8, 5, 3]):
        kept[i, torch.randperm(32, generator=g)[:k]] = True
    kept[:, 0] = True
    lengths, handle = record_lengths(model)
    try:
        with torch.no_grad():
            forward_packed(model, pack_kept(ids, mask, kept))
            model(ids, attention_mask=mask)
    finally:
        handle.remove()
    assert lengths == [int((kept & mask.bool()).sum(1).max()), 32]


def test_forward_packed_errors() -> None:
    model = tiny_bert()
    ids, mask = batch([4], 4)
    packed = pack_kept(ids, mask, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(BottleneckError, match="Packed"):
        forward_packed(model, {"input_ids": ids})
    with pytest.raises(BottleneckError, match=r"\['attention_mask'\]"):
        forward_packed(model, packed, attention_mask=mask)
    with pytest.raises(TypeError):  # the BiLSTM has no position_ids: forcing it fails loudly
        forward_packed(tiny_lstm(), packed, use_position_ids=True)
