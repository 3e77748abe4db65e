"""How good is a map? The measures of the literature, batched, in torch, on the model's device.

Every metric returns a :class:`MetricResult`: ``per_sample`` (a ``(B,)`` tensor), ``summary`` (one
float, documented per metric; usually the mean of ``per_sample``), ``name``, ``details`` (curves,
boxes, intermediate scores) and ``higher_is_better``.

Localisation against ground truth (maps and masks ``(B, *spatial)`` of the same shape):
    :func:`pointing_game` (Zhang et al. 2016), :func:`energy_pointing_game` (Wang et al. 2020),
    :func:`box_localization` (Selvaraju et al. 2017), with :func:`boxes_from_masks`.

Faithfulness (model, ``x`` ``(B, C, *spatial)``, maps, target):
    :func:`deletion`, :func:`insertion` (Petsiuk et al. 2018), :func:`average_drop`,
    :func:`average_increase`, :func:`increase_in_confidence` (Chattopadhay et al. 2018), :func:`road`
    (Rong et al. 2022).

Sanity (Adebayo et al. 2018):
    :func:`randomization_test`, with :func:`spearman` and :func:`ssim`.

Example:
    >>> import torch, torch.nn as nn, camlens
    >>> from camlens import metrics
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 3)).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = camlens.GradCAM(net)(x, target=0).maps
    >>> masks = torch.zeros(2, 16, 16, dtype=torch.bool); masks[:, 4:12, 4:12] = True
    >>> pg = metrics.pointing_game(maps, masks)
    >>> tuple(pg.per_sample.shape), 0.0 <= pg.summary <= 1.0
    ((2,), True)
    >>> metrics.deletion(net, x, maps, target=0, steps=4).name
    'deletion'
"""

from __future__ import annotations

from camlens.metrics.faithfulness import (
    average_drop,
    average_increase,
    deletion,
    gaussian_blur,
    increase_in_confidence,
    insertion,
    linear_imputation_residual,
    noisy_linear_imputation,
    road,
)
from camlens.metrics.localization import (
    MetricResult,
    box_iou,
    box_localization,
    boxes_from_masks,
    boxes_to_masks,
    connected_components,
    dilate,
    energy_pointing_game,
    pointing_game,
)
from camlens.metrics.sanity import cascading_groups, randomization_test, spearman, ssim

__all__ = [
    "MetricResult",
    "average_drop",
    "average_increase",
    "box_iou",
    "box_localization",
    "boxes_from_masks",
    "boxes_to_masks",
    "cascading_groups",
    "connected_components",
    "deletion",
    "dilate",
    "energy_pointing_game",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "linear_imputation_residual",
    "noisy_linear_imputation",
    "pointing_game",
    "randomization_test",
    "road",
    "spearman",
    "ssim",
]
