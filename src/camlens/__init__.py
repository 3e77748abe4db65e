"""camlens: class activation maps (Grad-CAM and its family) for any PyTorch model.

Every public name is imported on first use (PEP 562), so ``import camlens`` and the command line's
``--help`` do not wait for torch; ``camlens.GradCAM`` imports it.

Example:
    >>> import torch, torch.nn as nn, camlens
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 5)).eval()
    >>> res = camlens.GradCAM(net)(torch.rand(2, 3, 16, 16), target=3)
    >>> res.layer, tuple(res.maps.shape), res.targets.tolist()
    ('1', (2, 16, 16), [3, 3])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from camlens import concepts, maps, targets, viz
    from camlens.capture import (
        LayerCapture,
        find_default_layer,
        find_last_spatial_layer,
        resolve_layers,
    )
    from camlens.gallery import Gallery, show
    from camlens.images import Geometry, ImageBatch, load_image, load_images
    from camlens.methods import (
        CAM,
        METHODS,
        SESS,
        AblationCAM,
        BaseCAM,
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        GuidedBackprop,
        GuidedGradCAM,
        HiResCAM,
        LayerCAM,
        MapContext,
        ModelError,
        ScoreCAM,
        XGradCAM,
        get_method,
        register,
    )
    from camlens.models import LoadedModel, Preprocess, load_model
    from camlens.pipeline import Explanation, explain
    from camlens.result import CAMResult, CAMResults
    from camlens.viz import grid, overlay

#: public name -> the module that defines it (a name equal to its module's last part is the module)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
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
            "SESS",
            "ScoreCAM",
            "XGradCAM",
            "get_method",
            "register",
        ],
        "camlens.methods",
    ),
    **dict.fromkeys(
        ["LayerCapture", "find_default_layer", "find_last_spatial_layer", "resolve_layers"],
        "camlens.capture",
    ),
    **dict.fromkeys(["CAMResult", "CAMResults"], "camlens.result"),
    **dict.fromkeys(["Geometry", "ImageBatch", "load_image", "load_images"], "camlens.images"),
    **dict.fromkeys(["LoadedModel", "Preprocess", "load_model"], "camlens.models"),
    **dict.fromkeys(["Explanation", "explain"], "camlens.pipeline"),
    **dict.fromkeys(["Gallery", "show"], "camlens.gallery"),
    **dict.fromkeys(["grid", "overlay"], "camlens.viz"),
    "concepts": "camlens.concepts",
    "maps": "camlens.maps",
    "targets": "camlens.targets",
    "viz": "camlens.viz",
}

__all__ = [
    "CAM",
    "METHODS",
    "SESS",
    "AblationCAM",
    "BaseCAM",
    "CAMResult",
    "CAMResults",
    "EigenCAM",
    "Explanation",
    "Gallery",
    "Geometry",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "ImageBatch",
    "LayerCAM",
    "LayerCapture",
    "LoadedModel",
    "MapContext",
    "ModelError",
    "Preprocess",
    "ScoreCAM",
    "XGradCAM",
    "concepts",
    "explain",
    "find_default_layer",
    "find_last_spatial_layer",
    "get_method",
    "grid",
    "load_image",
    "load_images",
    "load_model",
    "maps",
    "overlay",
    "register",
    "resolve_layers",
    "show",
    "targets",
    "viz",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        # a method registered in its own file is camlens.<ClassName> without being listed here
        if name[:1].isupper():
            from camlens.methods import METHODS

            for cls in METHODS.values():
                if cls.__name__ == name:
                    globals()[name] = cls
                    return cls
        raise AttributeError(f"module 'camlens' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"camlens.{name}" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
