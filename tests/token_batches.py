"""Small right-padded token batches for the text tests: ``[CLS]=2 ... [SEP]=3`` rows of given lengths."""

from __future__ import annotations

import torch

#: Vocabulary of the text tests' models; ids 0-4 are padding and special tokens.
VOCAB = 50


def token_batch(lengths: tuple[int, ...] = (8, 5, 3), *, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[len(lengths), max(lengths)]``: random words between [CLS] and [SEP], padded with 0."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, VOCAB, (length,), generator=g)
        ids[row, 0], ids[row, length - 1] = 2, 3
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}
