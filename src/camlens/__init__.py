"""camlens: class activation maps (Grad-CAM and its family) for any PyTorch model.

Example:
    >>> import torch, torch.nn as nn, camlens
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 5)).eval()
    >>> res = camlens.GradCAM(net)(torch.rand(2, 3, 16, 16), target=3)
    >>> res.layer, tuple(res.maps.shape), res.targets.tolist()
    ('1', (2, 16, 16), [3, 3])
"""

from __future__ import annotations

from typing import Any

from camlens import concepts, maps, targets
from camlens.capture import (
    LayerCapture,
    find_default_layer,
    find_last_spatial_layer,
    resolve_layers,
)
from camlens.methods import (
    CAM,
    ISCAM,
    METHODS,
    SESS,
    SSCAM,
    AblationCAM,
    BaseCAM,
    EigenCAM,
    FinerCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ModelError,
    RandomCAM,
    ReciproCAM,
    ScoreCAM,
    XGradCAM,
    get_method,
)
from camlens.result import CAMResult

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "ISCAM",
    "METHODS",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "BaseCAM",
    "CAMResult",
    "EigenCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LayerCapture",
    "ModelError",
    "RandomCAM",
    "ReciproCAM",
    "ScoreCAM",
    "XGradCAM",
    "concepts",
    "find_default_layer",
    "find_last_spatial_layer",
    "get_method",
    "grid",
    "maps",
    "overlay",
    "resolve_layers",
    "targets",
]


def __getattr__(name: str) -> Any:
    # Pillow and matplotlib are optional: import the drawing helpers only when asked for.
    if name in ("overlay", "grid"):
        from camlens import viz

        return getattr(viz, name)
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")
