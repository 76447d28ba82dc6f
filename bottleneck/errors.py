"""The library's one exception type.

Every check on user input raises :class:`BottleneckError` with what was expected
and what was given, so callers can catch one type and users read one message
instead of a crash deep inside torch.
"""

from __future__ import annotations


class BottleneckError(ValueError):
    """Bad input, bad configuration or a broken plugin, explained in the message."""


class FaithfulnessWarning(UserWarning):
    """An explain-mode mask ended training outside its KL budget (its explanations drop evidence)."""


class CollapsedMaskWarning(UserWarning):
    """A trained mask scores every unit of a sample alike: top-k then keeps units by position."""


def describe(value: object) -> str:
    """A short description of ``value`` for error messages (type, shape, dtype)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(value).__name__} {value!r}"[:200]
