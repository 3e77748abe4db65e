"""Method classes and the registry ``METHODS`` (name or alias -> class)."""

from __future__ import annotations

from typing import Any

from camlens.methods.activation import CAM, EigenCAM
from camlens.methods.base import BaseCAM, MapContext, ModelError
from camlens.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from camlens.methods.guided import GuidedBackprop, GuidedGradCAM
from camlens.methods.perturbation import AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "METHODS",
    "AblationCAM",
    "BaseCAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "MapContext",
    "ModelError",
    "ScoreCAM",
    "XGradCAM",
    "get_method",
    "register",
]

#: Canonical name -> class, in the order methods are listed to users.
METHODS: dict[str, type[Any]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Any]) -> type[Any]:
    """Add a method class to :data:`METHODS` under its ``name`` (and its ``aliases`` for lookup)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    for a in (cls.name, *cls.aliases):
        _ALIASES[a.lower()] = cls.name
    return cls


def get_method(name: str) -> type[Any]:
    """The method class for a name or alias (case-insensitive).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]


for _cls in (
    CAM,
    GradCAM,
    HiResCAM,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenCAM,
    ScoreCAM,
    AblationCAM,
    GuidedBackprop,
    GuidedGradCAM,
):
    register(_cls)
