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
from camlens.methods.gradient import GradCAMElementWise, EigenGradCAM, ShapleyCAM
from camlens.methods.gradient import SmoothGradCAMPlusPlus, RefineCAM
from camlens.methods.activation import CAM, EigenCAM, KPCACAM, FEM
from camlens.methods.perturbation import ScoreCAM, AblationCAM
from camlens.methods.guided import GuidedBackprop, GuidedGradCAM
from camlens.methods.fullgrad import FullGrad
from camlens.methods.transformer import LeGrad
from camlens.methods.base import BaseCAM, MapContext, ModelError
from camlens.methods.registry import METHODS, get_method, register

__all__ = [
    "CAM",
    "FEM",
    "KPCACAM",
    "METHODS",
    "AblationCAM",
    "BaseCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LeGrad",
    "MapContext",
    "ModelError",
    "RefineCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "get_method",
    "register",
]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
