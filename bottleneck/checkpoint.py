"""``BestOnValidation``: keep the weights of the epoch that did best on held-out data.

A fine-tune that changes what the model sees (a mask budget falling to its target)
can end a few points below where it was some epochs earlier: one bad batch late in
training moves the weights, and the last epoch is not the best one. Selecting the
epoch on validation data (never the test data) is the usual remedy. Pass an
instance as ``fit(..., on_epoch=...)`` and call :meth:`BestOnValidation.restore`
afterwards. For a masked model it can score the sparse path at a fixed keep, which
is what sparse inference will run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError
from .train import evaluate

__all__ = ["BestOnValidation"]


class BestOnValidation:
    """``fit`` ``on_epoch`` callback that remembers the best epoch's weights by validation accuracy.

    :param model: the model ``fit`` trains (a plain model or a ``MaskedModel``).
    :param data: validation batches, in the form ``fit`` takes; not the test data.
    :param sparse_keep: score ``model.sparse(..., keep=sparse_keep)`` (masked models) instead
        of the model's own forward pass.
    :param start_epoch: first epoch (0-based) that may be selected; earlier ones are not
        evaluated (e.g. while a mask's budget is still falling to its target).
    :param device: where to evaluate (default: the model's device).

    Ties go to the later epoch (more training, same validation accuracy). The
    evaluations are in :attr:`scores` as ``(epoch, accuracy)``.
    """

    def __init__(self, model: nn.Module, data: Iterable[Any], *, sparse_keep: float | None = None,
                 start_epoch: int = 0, device: str | torch.device | None = None) -> None:
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise BottleneckError(f"start_epoch must be an integer >= 0 (got {start_epoch!r})")
        self.model, self.data = model, data
        self.sparse_keep, self.start_epoch, self.device = sparse_keep, start_epoch, device
        self.scores: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_accuracy = float("-inf")
        self._best_state: dict[str, Tensor] | None = None

    def __call__(self, epoch: int, means: dict[str, float]) -> None:
        """Evaluate after ``epoch`` and keep a copy of the weights if they are the best so far."""
        if epoch < self.start_epoch:
            return
        accuracy = evaluate(self.model, self.data, sparse=self.sparse_keep is not None,
                            sparse_keep=self.sparse_keep, device=self.device)["accuracy"]
        self.scores.append((epoch, accuracy))
        if accuracy >= self.best_accuracy:
            self.best_epoch, self.best_accuracy = epoch, accuracy
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> nn.Module:
        """Load the best epoch's weights into the model and return it."""
        if self._best_state is None:
            raise BottleneckError(
                f"no epoch was evaluated (start_epoch={self.start_epoch}, {len(self.scores)} evaluations): "
                "pass this object as fit(..., on_epoch=...) and train past start_epoch before restore()"
            )
        self.model.load_state_dict(self._best_state)
        return self.model

    def summary(self) -> dict[str, Any]:
        """The selected epoch (1-based, as ``fit`` prints it), its accuracy and every evaluation."""
        return {"best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
                "best_accuracy": self.best_accuracy if self.best_epoch is not None else None,
                "scores": {str(epoch + 1): acc for epoch, acc in self.scores}}
