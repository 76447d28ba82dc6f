"""Embedded text data (no download): planted-evidence sentiment, digit counting, offline tokenizers.

Every corpus is a :class:`TextSet`: plain space-separated sentences, integer labels,
and optional *word-level* evidence -- one bool per word of ``text.split()``, True
for the words that decide the label. :func:`encode` and :func:`word_evidence_to_tokens`
carry that evidence to token level for any fast tokenizer.

Planted sentiment (:func:`make_planted_sentiment`)
--------------------------------------------------

A binary, sentiment-like task (class 0 ``negative``, class 1 ``positive``) whose
label is decided by a few planted words and nothing else. Each sentence has a
length drawn uniformly from ``[min_words, max_words]`` and is made of three kinds
of words, all drawn uniformly with replacement from disjoint vocabularies:

* ``U{num_evidence}`` **evidence** words (both ends inclusive), all from the
  lexicon of the sentence's class: :data:`POSITIVE_WORDS` or :data:`NEGATIVE_WORDS`
  (20 each). They are the only words that depend on the label.
* ``U{num_distractors}`` **distractor** words from :data:`DISTRACTOR_WORDS` (20
  intensifiers and film words such as ``really``, ``totally``, ``plot``): they look
  like they matter for a review but are drawn independently of the label.
* **filler** words from :data:`FILLER_WORDS` (200 plain function words, nouns,
  verbs and colourless adjectives) for the rest of the sentence.

Evidence and distractor words go to uniformly random, distinct positions. The
length, the number of evidence words, the number and place of distractors and every
filler word are drawn the same way for both classes (the random draws never depend
on the label), so a model can only solve the task by reading the evidence words,
which is what an explanation should point at: ``evidence`` marks exactly them.
Labels are balanced (alternating, then shuffled).

Counting (:func:`make_counting`)
--------------------------------

The toy task of DiffMask (De Cao et al., 2020): a sequence of digit words
``"0"`` .. ``"9"`` drawn uniformly, of length uniform in ``length``; the label is 1
iff digit ``a`` occurs more often than digit ``b``. Sequences with as many ``a`` as
``b`` are redrawn, so there are no ties. Labels are balanced: each sample gets a
target label first, and a sequence with the wrong label has every ``a`` and ``b``
swapped -- a bijection between the two classes, so each class is uniform over its
tie-free sequences. ``evidence`` marks every occurrence of ``a`` and ``b`` (the words
that must be counted; the other digits are irrelevant).

Tokenizers (:func:`build_tokenizer`)
------------------------------------

A WordPiece (or word-level) tokenizer built *offline* from the corpus with the
``tokenizers`` library, wrapped in :class:`transformers.PreTrainedTokenizerFast`. The
WordPiece vocabulary is learned here by the same BPE-merge algorithm as the
``tokenizers`` WordPiece trainer, with ties broken alphabetically, because that
trainer gives a different vocabulary from run to run (huggingface/tokenizers#1794);
so the same texts always give the same token ids. Special tokens have fixed ids -- ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3,
``[MASK]`` 4 -- and every sequence is encoded as ``[CLS] ... [SEP]``. The
pre-tokenizer splits on whitespace only, so the tokenizer's word ids are exactly the
indices into ``text.split()``, which is how word evidence maps to tokens.

Generation is deterministic given ``seed`` (a private :class:`torch.Generator`; the
global RNG is never touched); 4000 sentences take a fraction of a second.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from bottleneck.errors import BottleneckError, describe

__all__ = [
    "DIGIT_WORDS",
    "DISTRACTOR_WORDS",
    "FILLER_WORDS",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "SENTIMENT_CLASS_NAMES",
    "SPECIAL_TOKENS",
    "TextSet",
    "build_tokenizer",
    "encode",
    "make_counting",
    "make_planted_sentiment",
    "word_evidence_to_tokens",
]

# --------------------------------------------------------------------------- vocabularies

POSITIVE_WORDS: tuple[str, ...] = (
    "good", "great", "excellent", "wonderful", "superb",
    "brilliant", "delightful", "enjoyable", "charming", "lovely",
    "fantastic", "amazing", "beautiful", "pleasant", "terrific",
    "splendid", "marvelous", "outstanding", "moving", "memorable",
)  # fmt: skip
"""Evidence lexicon of class 1 (``positive``)."""

NEGATIVE_WORDS: tuple[str, ...] = (
    "bad", "awful", "terrible", "boring", "dull",
    "poor", "horrible", "dreadful", "mediocre", "tedious",
    "weak", "bland", "clumsy", "painful", "disappointing",
    "lousy", "messy", "annoying", "pointless", "forgettable",
)  # fmt: skip
"""Evidence lexicon of class 0 (``negative``)."""

DISTRACTOR_WORDS: tuple[str, ...] = (
    "very", "really", "quite", "totally", "absolutely",
    "truly", "extremely", "incredibly", "honestly", "simply",
    "rather", "somewhat", "movie", "film", "plot",
    "story", "acting", "ending", "scene", "characters",
)  # fmt: skip
"""Review-flavoured words drawn independently of the label (they look relevant, are not)."""

FILLER_WORDS: tuple[str, ...] = (
    # function words (60)
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on",
    "at", "by", "for", "with", "from", "about", "after", "before", "during", "into",
    "over", "under", "between", "through", "this", "that", "these", "those", "it", "its",
    "he", "she", "they", "we", "you", "his", "her", "their", "our", "was",
    "is", "are", "were", "be", "been", "has", "had", "have", "then", "when",
    "where", "while", "there", "here", "some", "each", "other", "one", "two", "three",
    # nouns (80)
    "man", "woman", "city", "house", "street", "car", "train", "table", "chair", "window",
    "door", "room", "book", "letter", "phone", "road", "river", "village", "morning", "evening",
    "night", "day", "week", "year", "hour", "minute", "summer", "winter", "dog", "cat",
    "horse", "bird", "tree", "garden", "kitchen", "office", "school", "teacher", "student",
    "doctor", "friend", "family", "brother", "sister", "mother", "father", "child", "name",
    "town", "country", "island", "ship", "boat", "bridge", "station", "shop", "market",
    "coffee", "bread", "water", "paper", "box", "bag", "coat", "hat", "shoe", "clock", "lamp",
    "wall", "floor", "roof", "camera", "radio", "map", "ticket", "bus", "farm", "field",
    "hill", "lake",
    # verbs (40)
    "walks", "opens", "closes", "carries", "finds", "meets", "takes", "gives", "says", "sees",
    "looks", "turns", "waits", "leaves", "arrives", "returns", "sits", "stands", "writes",
    "reads", "calls", "asks", "answers", "brings", "holds", "puts", "starts", "stops",
    "follows", "crosses", "enters", "buys", "sells", "cooks", "drives", "paints", "builds",
    "counts", "watches", "visits",
    # colourless adjectives and adverbs (20)
    "red", "blue", "green", "yellow", "small", "large", "old", "new", "tall", "short",
    "wooden", "square", "round", "empty", "early", "late", "north", "south", "today", "again",
)  # fmt: skip
"""Neutral words that fill the rest of each planted-sentiment sentence."""

SENTIMENT_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
"""Class names of :func:`make_planted_sentiment` (class 0, class 1)."""

DIGIT_WORDS: tuple[str, ...] = tuple(str(d) for d in range(10))
"""The words of :func:`make_counting` sequences."""

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Special tokens of :func:`build_tokenizer`; a token's id is its index here (``[PAD]`` is 0)."""

_PREFIX = "##"  # WordPiece continuation prefix
_MAX_ROUNDS = 1000  # redraw rounds for tied counting sequences before giving up


# --------------------------------------------------------------------------- the set


@dataclass
class TextSet:
    """Sentences with labels, optional word-level evidence and class names.

    ``texts`` are space-separated sentences, ``labels`` ``[N]`` long, ``evidence``
    one list of bools per sentence with one entry per word of ``text.split()`` (True
    for the words that decide the label), or None when the data has none.
    """

    texts: list[str]
    labels: Tensor
    evidence: list[list[bool]] | None
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.texts, list) or not all(isinstance(t, str) for t in self.texts):
            raise BottleneckError(
                f"TextSet: expected texts a list of strings, got {describe(self.texts)}"
            )
        n = len(self.texts)
        if (
            not isinstance(self.labels, Tensor)
            or self.labels.shape != (n,)
            or self.labels.dtype != torch.long
        ):
            raise BottleneckError(
                f"TextSet: expected labels of shape ({n},) and dtype torch.int64, "
                f"got {describe(self.labels)}"
            )
        if self.evidence is not None:
            if not isinstance(self.evidence, list) or len(self.evidence) != n:
                raise BottleneckError(
                    f"TextSet: expected evidence a list of {n} lists of bools or None, "
                    f"got {describe(self.evidence)}"
                )
            for i, (text, ev) in enumerate(zip(self.texts, self.evidence, strict=True)):
                words = len(text.split())
                if not isinstance(ev, list) or len(ev) != words:
                    raise BottleneckError(
                        f"TextSet: evidence[{i}] must hold one bool per word of text {i} "
                        f"({words} words), got {describe(ev)}"
                    )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> TextSet:
        """A new set of the selected sentences (an int selects a set of one).

        ``index`` is an int, a slice, a list of ints, or a long or bool tensor.
        """
        if isinstance(index, bool):
            raise BottleneckError(f"TextSet: cannot index with {index!r}")
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        elif isinstance(index, Tensor):
            if index.dtype == torch.bool:
                if index.shape != (len(self),):
                    raise BottleneckError(
                        f"TextSet: expected a bool index of shape ({len(self)},), "
                        f"got {describe(index)}"
                    )
                rows = index.nonzero().squeeze(1).tolist()
            elif not index.dtype.is_floating_point and index.dim() <= 1:
                rows = index.reshape(-1).tolist()
            else:
                raise BottleneckError(
                    f"TextSet: expected a 1-d integer or bool index, got {describe(index)}"
                )
        elif isinstance(index, Sequence) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in index
        ):
            rows = list(index)
        else:
            raise BottleneckError(
                "TextSet: expected an int, a slice, a list of ints or a tensor index, "
                f"got {describe(index)}"
            )
        n = len(self)
        if any(not -n <= r < n for r in rows):
            raise BottleneckError(f"TextSet: index out of range for a set of {n} in {rows!r}")
        rows = [r % n for r in rows]
        return TextSet(
            texts=[self.texts[r] for r in rows],
            labels=self.labels[torch.tensor(rows, dtype=torch.long)],
            evidence=None if self.evidence is None else [list(self.evidence[r]) for r in rows],
            class_names=list(self.class_names),
            name=self.name,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)

    def loader(
        self,
        tok: Any,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        max_length: int = 64,
    ) -> DataLoader:
        """A DataLoader of dicts ``{"input_ids", "attention_mask", "labels"}``.

        Each batch is tokenised by ``tok`` and padded to its own longest sentence
        (truncated to ``max_length`` tokens); shuffling is seeded by ``seed``. The
        dict's ``"labels"`` entry is what :func:`bottleneck.train.fit` splits off as
        targets; the rest are the model's keyword inputs. Evidence is not included
        (use :func:`encode` for it).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise BottleneckError(
                f"TextSet.loader: expected a positive integer batch_size, got {batch_size!r}"
            )
        _check_max_length(max_length, "TextSet.loader")
        indices = range(len(self))
        sampler = (
            RandomSampler(indices, generator=torch.Generator().manual_seed(int(seed)))
            if shuffle
            else SequentialSampler(indices)
        )
        collate = _Collate(tok, self.texts, self.labels, max_length)
        return DataLoader(indices, batch_size=batch_size, sampler=sampler, collate_fn=collate)


class _Collate:
    """Tokenise and pad one batch of sentence indices (a class, so it pickles for workers)."""

    def __init__(self, tok: Any, texts: list[str], labels: Tensor, max_length: int) -> None:
        self.tok, self.texts, self.labels, self.max_length = tok, texts, labels, max_length

    def __call__(self, rows: list[int]) -> dict[str, Tensor]:
        enc = self.tok(
            [self.texts[r] for r in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": self.labels[torch.tensor(rows, dtype=torch.long)],
        }


# --------------------------------------------------------------------------- generators


def _check_int(value: object, what: str, low: int, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= low:
        return value
    raise BottleneckError(f"{where}: expected {what} an integer >= {low}, got {value!r}")


def _check_range(value: object, what: str, low: int, where: str) -> tuple[int, int]:
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and low <= value[0] <= value[1]
    ):
        return int(value[0]), int(value[1])
    raise BottleneckError(
        f"{where}: expected {what} an inclusive range (low, high) of integers with "
        f"{low} <= low <= high, got {value!r}"
    )


def _check_max_length(value: object, where: str) -> None:
    # [CLS] and [SEP] take two positions, so at least one word must fit
    _check_int(value, "max_length", 3, where)


def _balanced_labels(n: int, gen: torch.Generator) -> Tensor:
    return (torch.arange(n) % 2)[torch.randperm(n, generator=gen)]


def make_planted_sentiment(
    num_samples: int,
    *,
    min_words: int = 12,
    max_words: int = 40,
    num_evidence: tuple[int, int] = (1, 3),
    num_distractors: tuple[int, int] = (1, 4),
    seed: int = 0,
) -> TextSet:
    """``num_samples`` sentences whose label is decided by a few planted sentiment words.

    See the module docstring for the design. ``num_evidence`` and ``num_distractors``
    are inclusive ``(low, high)`` ranges of per-sentence counts; every sentence has
    room for both (``min_words`` must be at least the sum of their highs). ``evidence``
    marks exactly the planted words. Deterministic given ``seed``.
    """
    where = "make_planted_sentiment"
    n = _check_int(num_samples, "num_samples", 1, where)
    e_lo, e_hi = _check_range(num_evidence, "num_evidence", 1, where)
    d_lo, d_hi = _check_range(num_distractors, "num_distractors", 0, where)
    lo = _check_int(min_words, "min_words", max(1, e_hi + d_hi), where)
    hi = _check_int(max_words, "max_words", lo, where)

    gen = torch.Generator().manual_seed(int(seed))
    labels = _balanced_labels(n, gen)
    length = torch.randint(lo, hi + 1, (n,), generator=gen)
    n_ev = torch.randint(e_lo, e_hi + 1, (n,), generator=gen)
    n_dis = torch.randint(d_lo, d_hi + 1, (n,), generator=gen)
    # a random permutation of each sentence's positions: its first n_ev entries hold the
    # evidence, the next n_dis the distractors (padding positions sort last)
    slot = torch.arange(hi)[None, :]
    keys = torch.rand(n, hi, generator=gen).masked_fill_(slot >= length[:, None], 2.0)
    rank = keys.argsort(1).argsort(1)  # rank of each position in the permutation
    is_ev = rank < n_ev[:, None]
    is_dis = (rank >= n_ev[:, None]) & (rank < (n_ev + n_dis)[:, None])
    # word draws for every position and kind, label-independent in number and range
    filler = torch.randint(0, len(FILLER_WORDS), (n, hi), generator=gen)
    dis = torch.randint(0, len(DISTRACTOR_WORDS), (n, hi), generator=gen)
    ev = torch.randint(0, len(POSITIVE_WORDS), (n, hi), generator=gen)

    lexicons = (NEGATIVE_WORDS, POSITIVE_WORDS)
    texts: list[str] = []
    evidence: list[list[bool]] = []
    for i, (lab, m) in enumerate(zip(labels.tolist(), length.tolist(), strict=True)):
        lexicon = lexicons[lab]
        e_row, d_row = is_ev[i, :m].tolist(), is_dis[i, :m].tolist()
        f_ids, d_ids, e_ids = filler[i, :m].tolist(), dis[i, :m].tolist(), ev[i, :m].tolist()
        words = [
            lexicon[e_ids[j]]
            if e_row[j]
            else DISTRACTOR_WORDS[d_ids[j]]
            if d_row[j]
            else FILLER_WORDS[f_ids[j]]
            for j in range(m)
        ]
        texts.append(" ".join(words))
        evidence.append(e_row)
    return TextSet(
        texts=texts,
        labels=labels.long(),
        evidence=evidence,
        class_names=list(SENTIMENT_CLASS_NAMES),
        name="planted-sentiment",
    )


def _digit(value: object, what: str) -> int:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text in DIGIT_WORDS:
        return int(text)
    raise BottleneckError(f"make_counting: expected {what} a digit '0' .. '9', got {value!r}")


def make_counting(
    num_samples: int,
    *,
    a: str = "3",
    b: str = "7",
    length: tuple[int, int] = (10, 30),
    seed: int = 0,
) -> TextSet:
    """``num_samples`` digit sequences labelled 1 iff digit ``a`` occurs more often than ``b``.

    See the module docstring for the design. ``length`` is an inclusive ``(low, high)``
    range of sequence lengths (in words). No sequence has as many ``a`` as ``b``;
    labels are balanced; ``evidence`` marks every ``a`` and every ``b``.
    Deterministic given ``seed``. ``a`` and ``b`` may also be given as ints.
    """
    where = "make_counting"
    n = _check_int(num_samples, "num_samples", 1, where)
    da, db = _digit(a, "a"), _digit(b, "b")
    if da == db:
        raise BottleneckError(f"make_counting: expected two different digits, got {a!r} twice")
    lo, hi = _check_range(length, "length", 1, where)

    gen = torch.Generator().manual_seed(int(seed))
    labels = _balanced_labels(n, gen)
    slot = torch.arange(hi)[None, :]
    seq = torch.empty(n, hi, dtype=torch.long)
    size = torch.empty(n, dtype=torch.long)
    todo = torch.ones(n, dtype=torch.bool)
    for _ in range(_MAX_ROUNDS):
        k = int(todo.sum())
        if k == 0:
            break
        size[todo] = torch.randint(lo, hi + 1, (k,), generator=gen)
        seq[todo] = torch.randint(0, 10, (k, hi), generator=gen)
        valid = slot < size[:, None]
        tie = ((seq == da) & valid).sum(1) == ((seq == db) & valid).sum(1)
        todo = tie
    else:
        raise BottleneckError(  # pragma: no cover - only for tiny lengths and bad luck
            f"make_counting: could not draw tie-free sequences after {_MAX_ROUNDS} rounds; "
            f"use longer sequences (got length={length!r})"
        )
    valid = slot < size[:, None]
    more_a = ((seq == da) & valid).sum(1) > ((seq == db) & valid).sum(1)
    # swapping every a and b turns one class into the other: flip the sequences whose
    # class is not the sample's target label
    flip = more_a != labels.bool()
    is_a, is_b = seq == da, seq == db
    seq = torch.where(flip[:, None] & is_a, db, torch.where(flip[:, None] & is_b, da, seq))

    texts: list[str] = []
    evidence: list[list[bool]] = []
    for row, m in zip(seq.tolist(), size.tolist(), strict=True):
        texts.append(" ".join(DIGIT_WORDS[d] for d in row[:m]))
        evidence.append([d in (da, db) for d in row[:m]])
    return TextSet(
        texts=texts,
        labels=labels.long(),
        evidence=evidence,
        class_names=[f"more {DIGIT_WORDS[db]}", f"more {DIGIT_WORDS[da]}"],
        name="counting",
    )


# --------------------------------------------------------------------------- tokenizers


def _word_counts(
    texts: Sequence[str], normalizer: Any, pre_tokenizer: Any
) -> list[tuple[str, int]]:
    """Words of ``texts`` as the tokenizer sees them, with counts, most frequent first
    (ties alphabetical)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))


def _pairs(pieces: list[str]) -> list[tuple[str, str]]:
    return list(zip(pieces[:-1], pieces[1:], strict=True))


def _learn_wordpiece(words: list[tuple[str, int]], vocab_size: int) -> list[str]:
    """A WordPiece vocabulary (without specials) learned by BPE merges, as the
    ``tokenizers`` WordPiece trainer does, with ties broken alphabetically.

    The alphabet is every first character and every ``##``-prefixed later character;
    merges of the most frequent adjacent pair (weighted by word counts) are added
    until ``vocab_size`` tokens or no pair is left. Pair counts are updated
    incrementally (only the words holding the merged pair are re-counted) and the
    best pair comes from a lazy heap, so large corpora train in about a second.
    """
    pieces = [[w[0]] + [_PREFIX + c for c in w[1:]] for w, _ in words]
    freq = [c for _, c in words]
    vocab = sorted({p for ps in pieces for p in ps})
    known = set(vocab)
    pair_count: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, ps in enumerate(pieces):
        for pair in _pairs(ps):
            pair_count[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    # a lazy max-heap of (-count, pair): stale entries (count changed) are skipped
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, best = heapq.heappop(heap)
        if pair_count.get(best, 0) != -neg:
            continue
        a, b = best
        merged = a + b[len(_PREFIX) :]
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(best)):
            ps, out, j = pieces[i], [], 0
            for pair in _pairs(ps):  # remove this word's old pairs
                pair_count[pair] -= freq[i]
                touched.add(pair)
                if pair != best:
                    where[pair].discard(i)
            while j < len(ps):
                if j + 1 < len(ps) and ps[j] == a and ps[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(ps[j])
                    j += 1
            pieces[i] = out
            for pair in _pairs(out):  # add its new pairs
                pair_count[pair] += freq[i]
                touched.add(pair)
                where.setdefault(pair, set()).add(i)
        del pair_count[best]
        touched.discard(best)
        for pair in touched:
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], pair))
            else:
                del pair_count[pair]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


def build_tokenizer(texts: list[str], *, kind: str = "wordpiece", vocab_size: int = 1000) -> Any:
    """A fast tokenizer trained offline on ``texts`` (never downloads anything).

    ``kind="wordpiece"`` learns a WordPiece vocabulary (``##`` continuation prefix)
    by BPE merges, the algorithm of the ``tokenizers`` WordPiece trainer, but with
    ties broken alphabetically: that trainer is not deterministic (its ``##`` token
    ids, and so its tie-breaks, follow hash-map order; huggingface/tokenizers#1794).
    The alphabet is always kept whole, so the vocabulary may exceed a tiny
    ``vocab_size``; unknown characters make a word ``[UNK]``. ``kind="word"`` keeps the
    ``vocab_size - 5`` most frequent words (ties alphabetical); other words become
    ``[UNK]``. Text is lowercased and split on whitespace only (so word ids index
    ``text.split()``), and sequences are encoded as ``[CLS] ... [SEP]`` (pairs as
    ``[CLS] A [SEP] B [SEP]``) by the ``tokenizers`` library. Special token ids are
    fixed: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4; other ids
    follow the learned order.

    Returns a :class:`transformers.PreTrainedTokenizerFast` whose encodings hold
    ``input_ids`` and ``attention_mask`` (no ``token_type_ids``); padding is on the
    right. Deterministic given ``texts``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if (
        not isinstance(texts, Sequence)
        or isinstance(texts, str)
        or not texts
        or not all(isinstance(t, str) for t in texts)
    ):
        raise BottleneckError(
            f"build_tokenizer: expected texts a non-empty list of strings, got {describe(texts)}"
        )
    if kind not in ("wordpiece", "word"):
        raise BottleneckError(f"build_tokenizer: expected kind 'wordpiece' or 'word', got {kind!r}")
    _check_int(vocab_size, "vocab_size", len(SPECIAL_TOKENS) + 1, "build_tokenizer")

    normalizer, pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.WhitespaceSplit()
    words = _word_counts(texts, normalizer, pre_tokenizer)
    if not words:
        raise BottleneckError("build_tokenizer: expected texts with at least one word")
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    room = vocab_size - len(SPECIAL_TOKENS)
    if kind == "wordpiece":
        learned = _learn_wordpiece(words, room)
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(learned))}
        tokenizer = Tokenizer(
            models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix=_PREFIX)
        )
        tokenizer.decoder = decoders.WordPiece(prefix=_PREFIX)
    else:
        learned = [w for w, _ in words[:room]]
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(learned))}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.BertProcessing(
        (sep, SPECIAL_TOKENS.index(sep)), (cls, SPECIAL_TOKENS.index(cls))
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=unk,
        pad_token=pad,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        padding_side="right",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def word_evidence_to_tokens(encoding: Any, evidence: list[list[bool]]) -> Tensor:
    """Word-level ``evidence`` carried to the tokens of ``encoding``: ``[B, L]`` bool.

    ``encoding`` is the :class:`~transformers.BatchEncoding` of a fast tokenizer
    called on ``B`` single sentences (not pairs); ``L`` its (padded) length. A token
    is True iff it belongs to a word marked True (every piece of a split word is);
    special tokens and padding are False, and words cut off by truncation have no
    tokens. The tokenizer's word ids must index ``text.split()`` -- true for
    :func:`build_tokenizer` and for any whitespace or BERT pre-tokenizer on text
    without punctuation.
    """
    encodings = getattr(encoding, "encodings", None)
    if not encodings:
        raise BottleneckError(
            "word_evidence_to_tokens: expected the BatchEncoding of a fast tokenizer "
            f"(with word ids), got {describe(encoding)}"
        )
    if not isinstance(evidence, list) or len(evidence) != len(encodings):
        raise BottleneckError(
            f"word_evidence_to_tokens: expected evidence for {len(encodings)} sentences, "
            f"got {describe(evidence)}"
        )
    width = max(len(e.ids) for e in encodings)
    out = torch.zeros(len(encodings), width, dtype=torch.bool)
    for i, (enc, ev) in enumerate(zip(encodings, evidence, strict=True)):
        for t, (word, seq) in enumerate(zip(enc.word_ids, enc.sequence_ids, strict=True)):
            if word is None or seq != 0:
                continue
            if word >= len(ev):
                raise BottleneckError(
                    f"word_evidence_to_tokens: token {t} of sentence {i} belongs to word {word}, "
                    f"but its evidence has {len(ev)} words; the tokenizer must split words "
                    "on whitespace only"
                )
            out[i, t] = bool(ev[word])
    return out


def encode(tok: Any, data: TextSet, *, max_length: int = 64) -> dict[str, Tensor | None]:
    """The whole ``data`` tokenised by ``tok`` at once, padded to its longest sentence.

    Returns ``input_ids`` and ``attention_mask`` ``[N, L]`` long, ``labels`` ``[N]``
    and ``evidence`` ``[N, L]`` bool (token level, see :func:`word_evidence_to_tokens`)
    or None when ``data`` has none. Sentences longer than ``max_length`` tokens
    (specials included) are truncated, which can cut off evidence.
    """
    if not isinstance(data, TextSet):
        raise BottleneckError(f"encode: expected a TextSet, got {describe(data)}")
    _check_max_length(max_length, "encode")
    enc = tok(data.texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    evidence = None if data.evidence is None else word_evidence_to_tokens(enc, data.evidence)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": data.labels.clone(),
        "evidence": evidence,
    }
