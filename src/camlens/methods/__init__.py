"""Method classes and the registry ``METHODS`` (name or alias -> class).

Every module of this package is imported here, so a method registers itself with
``@register(name, aliases=...)`` in its own file and nothing else needs to list it. Modules are
imported in :data:`MODULE_ORDER`, then the others by name, and within a module in the order of its
classes: that is the order of :data:`METHODS`, as users see it listed. :mod:`camlens._catalog` reads
the same order (and the same decorators) from the source, without importing torch.
"""

from __future__ import annotations

import importlib
import pkgutil

#: Modules whose methods are listed first, in this order (a literal: :mod:`camlens._catalog` reads it).
MODULE_ORDER = (
    "gradient",
    "activation",
    "perturbation",
    "recipro",
    "finer",
    "guided",
    "fullgrad",
    "transformer",
    "baseline",
)

for _name in (*MODULE_ORDER, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")

from camlens.methods.activation import CAM, FEM, KPCACAM, EigenCAM  # noqa: E402
from camlens.methods.base import BaseCAM, MapContext, ModelError  # noqa: E402
from camlens.methods.baseline import RandomCAM  # noqa: E402
from camlens.methods.finer import FinerCAM  # noqa: E402
from camlens.methods.fullgrad import FullGrad  # noqa: E402
from camlens.methods.gradient import (  # noqa: E402
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RefineCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from camlens.methods.guided import GuidedBackprop, GuidedGradCAM  # noqa: E402
from camlens.methods.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM  # noqa: E402
from camlens.methods.recipro import ReciproCAM  # noqa: E402
from camlens.methods.registry import METHODS, get_method, register  # noqa: E402
from camlens.methods.sess import SESS  # noqa: E402
from camlens.methods.transformer import LeGrad  # noqa: E402

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "MODULE_ORDER",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "BaseCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
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
    "RandomCAM",
    "ReciproCAM",
    "RefineCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "get_method",
    "register",
]
