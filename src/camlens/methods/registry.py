"""The registry of methods: ``@register(name, aliases=...)`` and ``METHODS``.

Adding a method is one file in :mod:`camlens.methods` whose class carries ``@register``; the package
imports every module in it, and the contract tests in ``tests/test_contract.py`` are generated from
:data:`METHODS`, so a new method is checked like every other one without touching any list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["METHODS", "get_method", "register"]

T = TypeVar("T", bound=type)

#: Canonical name -> class, in the order the methods were registered.
METHODS: dict[str, type[Any]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[T], T]:
    """Class decorator: add a method to :data:`METHODS` under ``name`` and its ``aliases``.

    Sets the class attributes ``name`` and ``aliases``. Names and aliases are matched without regard
    to case by :func:`get_method`.

    Raises:
        ValueError: the name or an alias is already taken by another class.

    Example:
        >>> from camlens.methods import BaseCAM
        >>> @register("doc-example", aliases=("doc-ex",))
        ... class DocExample(BaseCAM):
        ...     pass
        >>> get_method("DOC-EX") is DocExample, DocExample.name
        (True, 'doc-example')
        >>> _ = METHODS.pop("doc-example"); _ = _ALIASES.pop("doc-example"), _ALIASES.pop("doc-ex")
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a method needs a non-empty name, got {name!r}")
    keys = [name.lower(), *(a.lower() for a in aliases)]

    def decorate(cls: T) -> T:
        for key in keys:
            owner = _ALIASES.get(key)
            if owner is not None and METHODS[owner] is not cls:
                raise ValueError(
                    f"method name {key!r} of {cls.__name__} is already registered for "
                    f"{METHODS[owner].__name__}"
                )
        cls.name = name  # type: ignore[attr-defined]
        cls.aliases = tuple(aliases)  # type: ignore[attr-defined]
        METHODS[name] = cls
        for key in keys:
            _ALIASES[key] = name
        return cls

    return decorate


def get_method(name: str) -> type[Any]:
    """The method class for a name or alias (case-insensitive).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]
