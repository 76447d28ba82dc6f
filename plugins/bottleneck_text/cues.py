"""Text bias cue: a planted word, one per class, inserted at a random place in the sentence.

The cue plants *words* into sentences, before tokenisation: a tokenizer built
on the planted training text then has each cue word in its vocabulary, and the
cue's word-level flags carry to tokens like the planted evidence does
(:func:`~bottleneck_text.data.word_evidence_to_tokens`).
"""

from __future__ import annotations

from typing import Any

import torch

from bottleneck.cues import Cue, CueAssignment, Planted
from bottleneck.errors import BottleneckError, describe

from .data import TextSet

#: Made-up words that occur in none of the embedded corpora; word ``c`` is class ``c``'s cue.
CUE_WORDS: tuple[str, ...] = ("blork", "quazz", "frimb", "snorp", "glent", "vusk", "drave", "plim")


class PlantedWord(Cue):
    """Inserts the class's cue word at a uniformly random word position.

    Plants into a :class:`~bottleneck_text.data.TextSet` (its evidence lists grow by
    a ``False`` at the inserted place) or a list of sentences. Flags are
    ``[B, W_max]`` bool over the *words* of each planted sentence (``text.split()``).

    :param words: one cue word per class (default :data:`CUE_WORDS`).
    :param seed: seeds the insertion positions.
    """

    name = "token"
    modality = "text"

    def __init__(self, words: tuple[str, ...] = CUE_WORDS, seed: int = 0) -> None:
        if not words or any(not isinstance(w, str) or not w or " " in w for w in words):
            raise BottleneckError(f"cue words must be non-empty single words (got {words!r})")
        if len(set(words)) != len(words):
            raise BottleneckError(f"cue words must be distinct (got {words!r})")
        self.words, self.seed = tuple(words), seed

    def plant(self, inputs: Any, assignment: CueAssignment, num_classes: int) -> Planted:
        texts = inputs.texts if isinstance(inputs, TextSet) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BottleneckError(f"the token cue plants into a TextSet or a list of sentences (got {describe(inputs)})")
        if num_classes > len(self.words):
            raise BottleneckError(f"{num_classes} classes need {num_classes} cue words (have {len(self.words)})")
        if assignment.present.shape != (len(texts),):
            raise BottleneckError(
                f"cue assignment is for {assignment.present.numel()} samples, the data has {len(texts)}"
            )
        generator = torch.Generator().manual_seed(self.seed)
        evidence = inputs.evidence if isinstance(inputs, TextSet) else None
        new_texts, new_evidence, flags = [], [], []
        for i, (text, present, variant) in enumerate(
            zip(texts, assignment.present.tolist(), assignment.variant.tolist(), strict=True)
        ):
            words = text.split()
            marks = [False] * len(words)
            truth = list(evidence[i]) if evidence is not None else None
            if present:
                at = int(torch.randint(0, len(words) + 1, (1,), generator=generator))
                words.insert(at, self.words[variant])
                marks.insert(at, True)
                if truth is not None:
                    truth.insert(at, False)
            new_texts.append(" ".join(words))
            flags.append(marks)
            if truth is not None:
                new_evidence.append(truth)
        width = max((len(m) for m in flags), default=0)
        dense = torch.zeros(len(flags), width, dtype=torch.bool)
        for i, marks in enumerate(flags):
            dense[i, : len(marks)] = torch.tensor(marks, dtype=torch.bool)
        if isinstance(inputs, TextSet):
            planted: Any = TextSet(new_texts, inputs.labels.clone(), new_evidence if evidence is not None else None,
                                   list(inputs.class_names), f"{inputs.name}+{self.name}")
        else:
            planted = new_texts
        return Planted(planted, dense)
