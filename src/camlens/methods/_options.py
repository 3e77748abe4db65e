"""Checks of method options, shared so that every method accepts and refuses the same values.

Integers may be Python or numpy integers, numbers any real (``np.float32(0.5)`` included); ``bool``
is refused where a number is meant. A refused option raises :class:`OptionError`, which is both a
``ValueError`` and a ``TypeError``, so either ``except`` catches it, whichever fits the mistake.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["OptionError", "non_negative", "positive_int", "seed"]


class OptionError(ValueError, TypeError):
    """A method option of the wrong type or out of its range."""


def _why(what: str) -> str:
    return f" ({what})" if what else ""


def positive_int(name: str, value: Any, what: str = "", *, optional: bool = False) -> Any:
    """``value`` as an ``int >= 1`` (or ``None`` where ``optional``); :class:`OptionError` otherwise.

    Example:
        >>> positive_int("batch_size", 8)
        8
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        none = "None or " if optional else ""
        raise OptionError(f"{name} must be {none}an int >= 1{_why(what)}, got {value!r}")
    return int(value)


def non_negative(name: str, value: Any, what: str = "") -> float:
    """``value`` as a float ``>= 0``; :class:`OptionError` otherwise (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise OptionError(f"{name} must be a number >= 0{_why(what)}, got {value!r}")
    return float(value)


def seed(value: Any, *, optional: bool = False) -> Any:
    """A random seed: an int (or ``None`` where ``optional``); :class:`OptionError` otherwise."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"seed must be an int{' or None' if optional else ''}, not {value!r}")
    return int(value)
