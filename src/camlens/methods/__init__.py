"""Method classes and the registry ``METHODS`` (name or alias -> class).

Every module of this package is imported here, so a method registers itself with
``@register(name, aliases=...)`` in its own file and nothing else needs to list it.
"""

# ruff: noqa: I001
from __future__ import annotations

import importlib
import pkgutil

# The order of these imports is the order of METHODS, as users see it listed.
from camlens.methods.gradient import GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM, LayerCAM
from camlens.methods.activation import CAM, EigenCAM
from camlens.methods.perturbation import ScoreCAM, SSCAM, ISCAM, AblationCAM
from camlens.methods.recipro import ReciproCAM
from camlens.methods.finer import FinerCAM
from camlens.methods.baseline import RandomCAM
from camlens.methods.sess import SESS
from camlens.methods.guided import GuidedBackprop, GuidedGradCAM
from camlens.methods.base import BaseCAM, MapContext, ModelError
from camlens.methods.registry import METHODS, get_method, register

__all__ = [
    "CAM",
    "ISCAM",
    "METHODS",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "BaseCAM",
    "EigenCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "MapContext",
    "ModelError",
    "RandomCAM",
    "ReciproCAM",
    "ScoreCAM",
    "XGradCAM",
    "get_method",
    "register",
]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
