"""Embedded text data (planted sentiment, digit counting), offline tokenizers and encoding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bottleneck.errors import BottleneckError
from bottleneck_text.data import (
    DIGIT_WORDS,
    DISTRACTOR_WORDS,
    FILLER_WORDS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SENTIMENT_CLASS_NAMES,
    SPECIAL_TOKENS,
    TextSet,
    build_tokenizer,
    encode,
    make_counting,
    make_planted_sentiment,
    word_evidence_to_tokens,
)

_LEXICONS = (set(NEGATIVE_WORDS), set(POSITIVE_WORDS))


@pytest.fixture(scope="module")
def sentiment() -> TextSet:
    return make_planted_sentiment(2000, seed=1)


@pytest.fixture(scope="module")
def counting() -> TextSet:
    return make_counting(2000, seed=1)


@pytest.fixture(scope="module")
def tok(sentiment: TextSet):
    return build_tokenizer(sentiment.texts)


# --------------------------------------------------------------------------- vocabularies


def test_vocabularies_sizes_and_disjoint() -> None:
    vocabs = [FILLER_WORDS, DISTRACTOR_WORDS, POSITIVE_WORDS, NEGATIVE_WORDS]
    assert [len(v) for v in vocabs] == [200, 20, 20, 20]
    words = [w for v in vocabs for w in v]
    assert len(set(words)) == len(words)  # no word in two vocabularies, no duplicates
    assert all(w.isalpha() and w.islower() for w in words)
    assert SENTIMENT_CLASS_NAMES == ("negative", "positive")


# --------------------------------------------------------------------------- planted sentiment


def test_sentiment_deterministic_by_seed() -> None:
    a, b = make_planted_sentiment(64, seed=3), make_planted_sentiment(64, seed=3)
    c = make_planted_sentiment(64, seed=4)
    assert a.texts == b.texts and a.evidence == b.evidence and torch.equal(a.labels, b.labels)
    assert a.texts != c.texts
    state = torch.random.get_rng_state()
    make_planted_sentiment(8, seed=0)
    make_counting(8, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_sentiment_fields_balance_and_lengths(sentiment: TextSet) -> None:
    assert len(sentiment) == 2000 and sentiment.name == "planted-sentiment"
    assert sentiment.labels.dtype == torch.long and sentiment.num_classes == 2
    assert sentiment.labels.sum().item() == 1000
    assert make_planted_sentiment(7).labels.sum().item() in (3, 4)
    lengths = [len(t.split()) for t in sentiment.texts]
    assert min(lengths) == 12 and max(lengths) == 40
    short = make_planted_sentiment(50, min_words=5, max_words=5, num_distractors=(0, 2), seed=2)
    assert {len(t.split()) for t in short.texts} == {5}


def test_sentiment_evidence_marks_exactly_the_planted_words(sentiment: TextSet) -> None:
    assert sentiment.evidence is not None
    counts = Counter()
    for text, ev, label in zip(
        sentiment.texts, sentiment.evidence, sentiment.labels.tolist(), strict=True
    ):
        words = text.split()
        assert len(ev) == len(words)
        own, other = _LEXICONS[label], _LEXICONS[1 - label]
        for word, marked in zip(words, ev, strict=True):
            assert marked == (word in own), (text, word)
            assert word not in other
        counts[sum(ev)] += 1
    assert set(counts) == {1, 2, 3}


def test_sentiment_distractors_independent_of_label(sentiment: TextSet) -> None:
    distractors = set(DISTRACTOR_WORDS)
    per_label: list[Counter] = [Counter(), Counter()]
    num = [[], []]
    length = [[], []]
    for text, label in zip(sentiment.texts, sentiment.labels.tolist(), strict=True):
        d = [w for w in text.split() if w in distractors]
        per_label[label].update(d)
        num[label].append(len(d))
        length[label].append(len(text.split()))
    assert {n for ns in num for n in ns} == {1, 2, 3, 4}
    for values in (num, length):
        means = [sum(v) / len(v) for v in values]
        assert abs(means[0] - means[1]) < 0.1 * max(means), means
    # every distractor word is used about equally often in both classes: the chi-square
    # statistic of the word x class table (19 degrees of freedom) stays below its 99.9 %
    # quantile 43.8 (the data is seeded, so this is a fixed check, not a flaky one)
    totals = [sum(c.values()) for c in per_label]
    chi2 = 0.0
    for word in DISTRACTOR_WORDS:
        row = per_label[0][word] + per_label[1][word]
        for label in (0, 1):
            expected = row * totals[label] / sum(totals)
            chi2 += (per_label[label][word] - expected) ** 2 / expected
    assert chi2 < 43.8, chi2


def test_sentiment_evidence_positions_spread(sentiment: TextSet) -> None:
    first = [ev.index(True) for ev in sentiment.evidence]
    last = [len(ev) - 1 - ev[::-1].index(True) for ev in sentiment.evidence]
    assert min(first) == 0 and max(last) >= 39


def test_sentiment_no_distractors() -> None:
    data = make_planted_sentiment(100, num_distractors=(0, 0), num_evidence=(2, 2))
    assert not any(w in DISTRACTOR_WORDS for t in data.texts for w in t.split())
    assert all(sum(ev) == 2 for ev in data.evidence)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_samples": 0},
        {"min_words": 3},  # less than max evidence + max distractors (3 + 4)
        {"max_words": 10},  # below min_words
        {"num_evidence": (0, 2)},
        {"num_evidence": (3, 1)},
        {"num_distractors": (-1, 2)},
        {"num_distractors": 2},
    ],
)
def test_sentiment_rejects_bad_arguments(kwargs: dict) -> None:
    kwargs = {"num_samples": 10, **kwargs}
    with pytest.raises(BottleneckError):
        make_planted_sentiment(**kwargs)


# --------------------------------------------------------------------------- counting


def test_counting_labels_correct_balanced_no_ties(counting: TextSet) -> None:
    assert counting.name == "counting" and counting.class_names == ["more 7", "more 3"]
    assert counting.labels.sum().item() == 1000
    lengths = set()
    for text, ev, label in zip(
        counting.texts, counting.evidence, counting.labels.tolist(), strict=True
    ):
        words = text.split()
        lengths.add(len(words))
        assert set(words) <= set(DIGIT_WORDS)
        na, nb = words.count("3"), words.count("7")
        assert na != nb
        assert label == int(na > nb)
        assert ev == [w in ("3", "7") for w in words]
    assert min(lengths) == 10 and max(lengths) == 30


def test_counting_deterministic_and_other_digits() -> None:
    a, b = make_counting(50, seed=5), make_counting(50, seed=5)
    assert a.texts == b.texts and torch.equal(a.labels, b.labels)
    assert a.texts != make_counting(50, seed=6).texts
    data = make_counting(200, a=0, b="1", length=(3, 5), seed=2)
    assert data.class_names == ["more 1", "more 0"]
    for text, label in zip(data.texts, data.labels.tolist(), strict=True):
        words = text.split()
        assert 3 <= len(words) <= 5 and label == int(words.count("0") > words.count("1"))


@pytest.mark.parametrize(
    "kwargs",
    [{"a": "3", "b": "3"}, {"a": "x"}, {"b": 12}, {"length": (0, 5)}, {"length": (5, 4)}],
)
def test_counting_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(BottleneckError):
        make_counting(10, **kwargs)


# --------------------------------------------------------------------------- TextSet


def test_textset_indexing(sentiment: TextSet) -> None:
    small = sentiment[:10]
    assert isinstance(small, TextSet) and len(small) == 10
    assert small.texts == sentiment.texts[:10] and small.evidence == sentiment.evidence[:10]
    one = sentiment[3]
    assert len(one) == 1 and one.texts == [sentiment.texts[3]]
    assert sentiment[-1].texts == [sentiment.texts[-1]]
    picked = sentiment[[5, 1, 5]]
    assert picked.texts == [sentiment.texts[i] for i in (5, 1, 5)]
    assert torch.equal(picked.labels, sentiment.labels[[5, 1, 5]])
    by_tensor = sentiment[torch.tensor([2, 0])]
    assert by_tensor.texts == [sentiment.texts[2], sentiment.texts[0]]
    mask = sentiment.labels == 1
    pos = sentiment[mask]
    assert len(pos) == 1000 and bool((pos.labels == 1).all())
    assert pos.class_names == sentiment.class_names and pos.name == sentiment.name
    with pytest.raises(BottleneckError):
        sentiment[[len(sentiment)]]


def test_textset_rejects_bad_fields() -> None:
    with pytest.raises(BottleneckError, match="labels"):
        TextSet(["a b"], torch.zeros(2, dtype=torch.long), None, ["x", "y"], "t")
    with pytest.raises(BottleneckError, match="labels"):
        TextSet(["a b"], torch.zeros(1), None, ["x", "y"], "t")
    with pytest.raises(BottleneckError, match="evidence"):
        TextSet(["a b"], torch.zeros(1, dtype=torch.long), [[True]], ["x", "y"], "t")
    with pytest.raises(BottleneckError, match="texts"):
        TextSet("a b", torch.zeros(1, dtype=torch.long), None, ["x", "y"], "t")


# --------------------------------------------------------------------------- tokenizers


def test_tokenizer_special_tokens_and_round_trip(sentiment: TextSet, tok) -> None:
    assert tok.is_fast
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 1, 2)
    assert (tok.sep_token_id, tok.mask_token_id) == (3, 4)
    assert tok.mask_token == "[MASK]" and tok.pad_token == "[PAD]"
    texts = sentiment.texts[:8]
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    ids, att = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == att.shape and ids.dtype == torch.long
    lengths = att.sum(1)
    assert int(lengths.max()) == ids.shape[1]
    for row, n, text in zip(ids, lengths.tolist(), texts, strict=True):
        assert row[0] == tok.cls_token_id and row[n - 1] == tok.sep_token_id
        assert bool((row[n:] == 0).all()) and bool((row[1 : n - 1] > 4).all())
        assert tok.decode(row, skip_special_tokens=True) == text
    # every corpus word is a single in-vocabulary token at the default vocab size
    vocab = tok.get_vocab()
    assert all(w in vocab for t in sentiment.texts for w in t.split())
    assert tok.convert_ids_to_tokens(tok("@@ %%")["input_ids"]) == [
        "[CLS]",
        "[UNK]",
        "[UNK]",
        "[SEP]",
    ]


def test_tokenizer_deterministic_and_word_level(sentiment: TextSet) -> None:
    texts = sentiment.texts[:300]
    a, b = build_tokenizer(texts), build_tokenizer(texts)
    assert a.get_vocab() == b.get_vocab()
    word = build_tokenizer(texts, kind="word")
    vocab = word.get_vocab()
    assert len(vocab) == len(SPECIAL_TOKENS) + len({w for t in texts for w in t.split()})
    assert word.mask_token_id == 4 and word.pad_token_id == 0
    enc = word(texts[:4], padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] == max(len(t.split()) for t in texts[:4]) + 2
    assert len(build_tokenizer(texts, kind="word", vocab_size=20)) == 20


def _naive_wordpiece(words: list[tuple[str, int]], size: int) -> list[str]:
    """Reference BPE learner: recount every pair after every merge."""
    pieces = [[w[0]] + ["##" + c for c in w[1:]] for w, _ in words]
    vocab = sorted({p for ps in pieces for p in ps})
    while len(vocab) < size:
        counts: Counter = Counter()
        for ps, (_, f) in zip(pieces, words, strict=True):
            for pair in zip(ps[:-1], ps[1:], strict=True):
                counts[pair] += f
        if not counts:
            break
        a, b = min(counts.items(), key=lambda pc: (-pc[1], pc[0]))[0]
        merged, new = a + b[2:], []
        for ps in pieces:
            out, j = [], 0
            while j < len(ps):
                if j + 1 < len(ps) and (ps[j], ps[j + 1]) == (a, b):
                    out.append(merged)
                    j += 2
                else:
                    out.append(ps[j])
                    j += 1
            new.append(out)
        pieces = new
        if merged not in vocab:
            vocab.append(merged)
    return vocab


@pytest.mark.parametrize("size", [60, 150, 400, 2000])
def test_wordpiece_learner_matches_naive_reference(sentiment: TextSet, size: int) -> None:
    texts = sentiment.texts[:100]
    counts = Counter(w for t in texts for w in t.split())
    words = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    expected = _naive_wordpiece(words, size - len(SPECIAL_TOKENS))
    vocab = build_tokenizer(texts, vocab_size=size).get_vocab()
    assert sorted(vocab, key=vocab.get) == list(SPECIAL_TOKENS) + expected


def test_special_tokens_in_text_are_kept(tok) -> None:
    ids = tok("Good [MASK] great")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "good", "[MASK]", "great", "[SEP]"]


def test_tokenizer_rejects_bad_arguments() -> None:
    with pytest.raises(BottleneckError, match="texts"):
        build_tokenizer([])
    with pytest.raises(BottleneckError, match="texts"):
        build_tokenizer("a b c")
    with pytest.raises(BottleneckError, match="kind"):
        build_tokenizer(["a b"], kind="bpe")
    with pytest.raises(BottleneckError, match="vocab_size"):
        build_tokenizer(["a b"], vocab_size=3)


# --------------------------------------------------------------------------- evidence alignment


def _check_alignment(tok, data: TextSet, token_ev: torch.Tensor, enc) -> None:
    for i in range(len(data)):
        word_ids = enc.word_ids(i)
        assert token_ev.shape[1] == len(word_ids)
        for t, w in enumerate(word_ids):
            expected = w is not None and data.evidence[i][w]
            assert bool(token_ev[i, t]) == expected
        # every word marked True has all its tokens True, and at least one token
        for w, marked in enumerate(data.evidence[i]):
            toks = [t for t, wi in enumerate(word_ids) if wi == w]
            assert toks, (i, w)
            assert all(bool(token_ev[i, t]) == marked for t in toks)


def test_word_evidence_to_tokens_with_split_words(sentiment: TextSet) -> None:
    # a tiny vocabulary splits most words into several WordPiece tokens
    small = build_tokenizer(sentiment.texts[:200], vocab_size=60)
    data = sentiment[:16]
    enc = small(data.texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    assert enc["input_ids"].shape[1] > 42  # words really are split
    token_ev = word_evidence_to_tokens(enc, data.evidence)
    assert token_ev.dtype == torch.bool and token_ev.shape == enc["input_ids"].shape
    assert not token_ev[:, 0].any()  # [CLS]
    assert not (token_ev & (enc["attention_mask"] == 0)).any()  # padding
    assert not (token_ev & (enc["input_ids"] == small.sep_token_id)).any()
    _check_alignment(small, data, token_ev, enc)


def test_word_evidence_to_tokens_word_level_with_unknown_words(sentiment: TextSet) -> None:
    word = build_tokenizer(sentiment.texts[:50], kind="word", vocab_size=40)
    data = sentiment[:16]
    enc = word(data.texts, padding=True, return_tensors="pt")
    assert (enc["input_ids"] == word.unk_token_id).any()  # rare words are [UNK]
    token_ev = word_evidence_to_tokens(enc, data.evidence)
    assert token_ev.sum(1).tolist() == [sum(ev) for ev in data.evidence]
    _check_alignment(word, data, token_ev, enc)


def test_word_evidence_to_tokens_rejects_mismatch(sentiment: TextSet, tok) -> None:
    enc = tok(sentiment.texts[:2], padding=True, return_tensors="pt")
    with pytest.raises(BottleneckError, match="evidence"):
        word_evidence_to_tokens(enc, sentiment.evidence[:1])
    with pytest.raises(BottleneckError, match="whitespace"):
        word_evidence_to_tokens(enc, [[True], [False]])
    with pytest.raises(BottleneckError, match="fast tokenizer"):
        word_evidence_to_tokens({"input_ids": enc["input_ids"]}, sentiment.evidence[:2])


def test_encode_sentiment_and_counting(sentiment: TextSet, counting: TextSet, tok) -> None:
    data = sentiment[:64]
    out = encode(tok, data)
    assert set(out) == {"input_ids", "attention_mask", "labels", "evidence"}
    n, width = out["input_ids"].shape
    assert n == 64 and width <= 42 and out["evidence"].shape == (n, width)
    assert torch.equal(out["labels"], data.labels)
    # one whole token per word: token evidence counts equal word evidence counts
    assert out["evidence"].sum(1).tolist() == [sum(ev) for ev in data.evidence]
    enc = tok(data.texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    _check_alignment(tok, data, out["evidence"], enc)

    ctok = build_tokenizer(counting.texts)
    assert len(ctok) == len(SPECIAL_TOKENS) + 10
    cout = encode(ctok, counting[:32])
    marked = cout["input_ids"][cout["evidence"]]
    digit_ids = {ctok.convert_tokens_to_ids("3"), ctok.convert_tokens_to_ids("7")}
    assert set(marked.tolist()) == digit_ids
    assert cout["evidence"].sum().item() == sum(sum(ev) for ev in counting.evidence[:32])

    none = TextSet(data.texts[:3], data.labels[:3], None, ["n", "p"], "plain")
    assert encode(tok, none)["evidence"] is None
    truncated = encode(tok, data, max_length=8)
    assert truncated["input_ids"].shape[1] == 8 and truncated["evidence"].shape[1] == 8


# --------------------------------------------------------------------------- loader


def test_loader_batches(sentiment: TextSet, tok) -> None:
    data = sentiment[:70]
    batches = list(data.loader(tok, batch_size=32))
    assert [len(b["labels"]) for b in batches] == [32, 32, 6]
    for i, batch in enumerate(batches):
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        ids, att = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == att.shape and ids.shape[0] == len(batch["labels"])
        assert int(att.sum(1).max()) == ids.shape[1]  # padded to the batch's longest
        assert torch.equal(batch["labels"], data.labels[32 * i : 32 * (i + 1)])
    first = batches[0]
    ref = tok(data.texts[:32], padding=True, return_tensors="pt")
    assert torch.equal(first["input_ids"], ref["input_ids"])

    shuffled = [b["labels"] for b in data.loader(tok, batch_size=16, shuffle=True, seed=1)]
    again = [b["labels"] for b in data.loader(tok, batch_size=16, shuffle=True, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(shuffled, again, strict=True))
    assert sorted(torch.cat(shuffled).tolist()) == sorted(data.labels.tolist())
    short = next(iter(data.loader(tok, batch_size=4, max_length=5)))
    assert short["input_ids"].shape == (4, 5)
    with pytest.raises(BottleneckError, match="batch_size"):
        data.loader(tok, batch_size=0)
