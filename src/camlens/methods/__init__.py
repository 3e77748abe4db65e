"""Method classes and the registry ``METHODS`` (name or alias -> class)."""

from __future__ import annotations

from camlens.methods.activation import CAM, EigenCAM
from camlens.methods.base import BaseCAM, MapContext, ModelError
from camlens.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

__all__ = [
    "CAM",
    "METHODS",
    "BaseCAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "MapContext",
    "ModelError",
    "XGradCAM",
    "get_method",
    "register",
]

#: Canonical name -> class, in the order methods are listed to users.
METHODS: dict[str, type[BaseCAM]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[BaseCAM]) -> type[BaseCAM]:
    """Add a method class to :data:`METHODS` under its ``name`` (and its ``aliases`` for lookup)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    for a in (cls.name, *cls.aliases):
        _ALIASES[a.lower()] = cls.name
    return cls


def get_method(name: str) -> type[BaseCAM]:
    """The method class for a name or alias (case-insensitive).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]


for _cls in (CAM, GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, EigenCAM):
    register(_cls)
