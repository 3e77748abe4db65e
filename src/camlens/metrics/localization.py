r"""Localisation against ground truth: pointing game, energy pointing game, the Grad-CAM box protocol.

Every function takes maps ``(B, *spatial)`` and ground truth of the same shape (or boxes), works on
the whole batch at once on the maps' device, and returns a :class:`MetricResult`. Samples without
ground truth (an empty mask or box) get ``NaN`` and are left out of the summary.

This module also holds :class:`MetricResult`, the one result type of every metric in
:mod:`camlens.metrics`, and the shape checks they share.

Example:
    >>> import torch
    >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool); masks[:, 2:5, 3:6] = True
    >>> pointing_game(masks.float(), masks, tolerance=0).per_sample
    tensor([1., 1.])
    >>> energy_pointing_game(masks.float(), masks).summary
    1.0
    >>> boxes_from_masks(masks)[0].tolist()   # (x0, y0, x1, y1), x1 and y1 exclusive
    [3, 2, 6, 5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MetricResult",
    "box_iou",
    "box_localization",
    "boxes_from_masks",
    "boxes_to_masks",
    "connected_components",
    "dilate",
    "energy_pointing_game",
    "pointing_game",
]


@dataclass(frozen=True)
class MetricResult:
    """What every metric of :mod:`camlens.metrics` returns.

    Attributes:
        name: the metric's name, e.g. ``"pointing_game"`` or ``"deletion"``.
        per_sample: ``(B,)`` float tensor on the input's device, one value per sample (``NaN`` where a
            sample has no ground truth).
        summary: one number for the batch; each metric's docstring says which (usually the mean of
            ``per_sample`` over the samples that are not ``NaN``).
        details: metric-specific extras (curves, boxes, IoUs, intermediate scores), documented per
            metric.
        higher_is_better: the direction of ``summary``; ``None`` where it depends on a setting.
    """

    name: str
    per_sample: Tensor
    summary: float
    details: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool | None = True

    def mean(self) -> float:
        """The mean of ``per_sample`` over the samples that are not ``NaN`` (``NaN`` if there are none)."""
        return _nanmean(self.per_sample)

    def __float__(self) -> float:
        return self.summary

    def __repr__(self) -> str:
        keys = ", ".join(self.details)
        return (
            f"MetricResult(name={self.name!r}, summary={self.summary:.4g}, "
            f"per_sample={tuple(self.per_sample.shape)}, details=[{keys}])"
        )


# ---- shared checks --------------------------------------------------------------------------------


def _nanmean(t: Tensor) -> float:
    t = t.detach().double()
    ok = ~torch.isnan(t)
    return float(t[ok].mean()) if bool(ok.any()) else float("nan")


def _check_maps(maps: Any, what: str = "maps") -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"{what} must be a torch.Tensor of shape (B, *spatial), not {type(maps).__name__}"
        )
    if maps.ndim < 2:
        raise ValueError(
            f"{what} must be (B, *spatial) with at least one spatial axis, got shape {tuple(maps.shape)}"
        )
    if maps.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch, shape {tuple(maps.shape)}")
    if maps.is_floating_point() and bool(torch.isnan(maps).any()):
        raise ValueError(f"{what} contains NaN")
    return maps


def _check_same_shape(maps: Tensor, other: Any, what: str = "masks") -> Tensor:
    """``other`` as a tensor on ``maps``' device; ``ValueError`` naming both shapes if they differ."""
    if not isinstance(other, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(other).__name__}")
    if tuple(other.shape) != tuple(maps.shape):
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} and {what} of shape {tuple(other.shape)} must have the same "
            f"shape (B, *spatial); upsample the maps to the {what}' size with camlens.maps.upsample"
        )
    return other.to(maps.device)


def _as_bool_mask(masks: Tensor) -> Tensor:
    return masks if masks.dtype == torch.bool else masks > 0.5


# ---- pointing games -----------------------------------------------------------------------------


def _ball_kernel(radius: float, ndim: int, device: torch.device) -> Tensor:
    """``(1, 1, *[2r+1] * ndim)`` float kernel, 1 where the offset's Euclidean norm is ``<= radius``."""
    r = math.floor(radius)
    ax = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    grids = torch.meshgrid(*([ax] * ndim), indexing="ij")
    d2 = torch.stack(grids).pow(2).sum(0)
    return (d2 <= radius * radius + 1e-9).float()[None, None]


def dilate(masks: Tensor, radius: float) -> Tensor:
    """Dilate boolean ``(B, *spatial)`` masks by a Euclidean ball (a disk in 2-D) of ``radius`` pixels.

    A pixel is in the result when some mask pixel lies within Euclidean distance ``radius`` of it.
    Done as one batched convolution with the ball as kernel.
    """
    if radius < 1:
        return masks.clone()
    ndim = masks.ndim - 1
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(ndim)
    if conv is None:
        raise ValueError(f"masks must have 1 to 3 spatial axes, got shape {tuple(masks.shape)}")
    k = _ball_kernel(radius, ndim, masks.device)
    pad = k.shape[-1] // 2
    out = conv(masks[:, None].float(), k, padding=pad)[:, 0]
    return out > 0.5


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 15) -> MetricResult:
    """Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop",
    https://arxiv.org/abs/1608.00507): a hit when the map's maximum falls on the object.

    A hit is counted when the location of the map's maximum is within ``tolerance`` pixels (Euclidean
    distance) of a ground-truth pixel; the paper uses 15 pixels. The mask is dilated by a disk of that
    radius in one batched convolution, and the maximum is looked up in it.

    Choices the paper leaves open:
        * Ties: when several pixels share the maximum value, the sample scores the *fraction* of them
          that are hits, i.e. the expected hit of a maximum chosen uniformly at random among the tied
          pixels. Without ties this is 0 or 1; a constant map scores the fraction of the image within
          ``tolerance`` of the object (the hit rate of a random guess).
        * Distances are measured between pixel centres; the disk is closed (distance ``<= tolerance``).
        * A sample with an empty mask has no answer: ``NaN``, left out of the summary (the paper only
          evaluates images that contain the class).

    Args:
        maps: ``(B, *spatial)`` maps (1 to 3 spatial axes), any real values.
        masks: ``(B, *spatial)`` ground truth, boolean (or 0/1), the same shape as ``maps``.
        tolerance: radius in pixels, ``>= 0``.

    Returns:
        :class:`MetricResult` ``"pointing_game"``: ``per_sample`` (B,) hits in ``[0, 1]``, ``summary`` the
        hit rate (mean over samples with a non-empty mask); ``details["argmax"]`` (B,) the flat index of
        the first maximum (raster order), ``details["valid"]`` (B,) bool, non-empty masks.

    Raises:
        ValueError: shapes differ (the message names both), or ``tolerance < 0``.

    Example:
        >>> m = torch.zeros(1, 5, 5); m[0, 0, 0] = 1.0
        >>> gt = torch.zeros(1, 5, 5, dtype=torch.bool); gt[0, 3, 3] = True
        >>> pointing_game(m, gt, tolerance=4).summary, pointing_game(m, gt, tolerance=5).summary
        (0.0, 1.0)
    """
    maps = _check_maps(maps)
    masks = _as_bool_mask(_check_same_shape(maps, masks))
    if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    b = maps.shape[0]
    flat = maps.detach().reshape(b, -1).float()
    is_max = flat == flat.max(dim=1, keepdim=True).values
    near = dilate(masks, float(tolerance)).reshape(b, -1)
    hits = (is_max & near).sum(1).float() / is_max.sum(1).float()
    valid = masks.reshape(b, -1).any(1)
    per = torch.where(valid, hits, torch.full_like(hits, float("nan")))
    details = {"argmax": flat.argmax(1), "valid": valid, "tolerance": float(tolerance)}
    return MetricResult("pointing_game", per, _nanmean(per), details)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> MetricResult:
    """Energy-based pointing game (Wang et al., CVPR-W 2020, "Score-CAM",
    https://arxiv.org/abs/1910.01279, sec. 4.2): the share of the map's energy inside the object.

    .. math:: \\text{proportion} = \\frac{\\sum_i M_i \\, \\mathbb{1}[i \\in \\text{gt}]}{\\sum_i M_i}

    Choices the paper leaves open:
        * The paper uses the ground-truth *bounding box*; here any mask is accepted. For the paper's
          variant pass ``boxes_to_masks(boxes, size)``.
        * Maps must be non-negative (CAM maps are, after their ReLU); a negative value raises.
        * A map that is all zero has no energy and scores 0.
        * A sample with an empty mask scores ``NaN`` and is left out of the summary.

    Args:
        maps: ``(B, *spatial)`` non-negative maps.
        masks: ``(B, *spatial)`` ground truth, boolean (or 0/1), the same shape.

    Returns:
        :class:`MetricResult` ``"energy_pointing_game"``: ``per_sample`` (B,) in ``[0, 1]``, ``summary``
        their mean over samples with a non-empty mask; ``details["valid"]``.

    Raises:
        ValueError: shapes differ (naming both) or a map has negative values.
    """
    maps = _check_maps(maps)
    masks = _as_bool_mask(_check_same_shape(maps, masks))
    b = maps.shape[0]
    flat = maps.detach().reshape(b, -1).double()
    if bool((flat < 0).any()):
        raise ValueError(
            "energy_pointing_game needs non-negative maps (apply a ReLU or camlens.maps.normalize)"
        )
    m = masks.reshape(b, -1)
    total = flat.sum(1)
    inside = (flat * m).sum(1)
    energy = torch.where(
        total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total)
    )
    valid = m.any(1)
    per = torch.where(valid, energy, torch.full_like(energy, float("nan"))).float()
    return MetricResult("energy_pointing_game", per, _nanmean(per), {"valid": valid})


# ---- boxes ----------------------------------------------------------------------------------------


def boxes_from_masks(masks: Tensor) -> Tensor:
    """The tight box around each ``(B, H, W)`` mask, as ``(B, 4)`` ``(x0, y0, x1, y1)`` long tensor.

    Pixel coordinates, ``x`` along the width and ``y`` along the height; ``x0, y0`` inclusive and
    ``x1, y1`` exclusive, so the box covers ``mask[y0:y1, x0:x1]`` and its area is
    ``(x1 - x0) * (y1 - y0)``. An empty mask gives ``(0, 0, 0, 0)``.

    Example:
        >>> m = torch.zeros(1, 4, 6, dtype=torch.bool); m[0, 1:3, 2:5] = True
        >>> boxes_from_masks(m).tolist()
        [[2, 1, 5, 3]]
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be (B, H, W), got {shape}")
    m = _as_bool_mask(masks)
    _, h, w = m.shape
    rows, cols = m.any(2), m.any(1)  # (B, H), (B, W)
    ys = torch.arange(h, device=m.device)
    xs = torch.arange(w, device=m.device)
    big = max(h, w) + 1
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1)
    empty = ~rows.any(1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes).long()


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, 4)`` ``(x0, y0, x1, y1)`` boxes (end exclusive) as ``(B, H, W)`` boolean masks.

    Example:
        >>> boxes_to_masks(torch.tensor([[1, 0, 3, 1]]), (2, 4)).int().tolist()
        [[[0, 1, 1, 0], [0, 0, 0, 0]]]
    """
    boxes = _check_boxes(boxes)
    h, w = (int(s) for s in size)
    ys = torch.arange(h, device=boxes.device)[None, :, None]
    xs = torch.arange(w, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def _check_boxes(boxes: Any) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a (B, 4) tensor of (x0, y0, x1, y1), got {shape}")
    return boxes


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of matching ``(B, 4)`` boxes ``(x0, y0, x1, y1)``, end exclusive.

    Two empty boxes have an IoU of 0.

    Example:
        >>> box_iou(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[1, 0, 3, 2]]))
        tensor([0.3333])
    """
    a, b = _check_boxes(a).float(), _check_boxes(b).float()
    if a.shape != b.shape:
        raise ValueError(
            f"boxes of shape {tuple(a.shape)} and {tuple(b.shape)} must have the same shape"
        )
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def connected_components(masks: Tensor, max_iter: int | None = None) -> Tensor:
    """Label the 8-connected components of boolean ``(B, H, W)`` masks, batched in torch.

    Each foreground pixel starts with its own label (its flat index + 1); labels then spread by a 3x3
    max-pool restricted to the foreground, alternated with pointer jumping (a pixel takes the label of
    the pixel its label names, which lies in the same component and holds a label at least as large),
    until nothing changes. Every component ends with the label ``1 + (flat index of its last pixel in
    raster order)``; the background is 0.

    Args:
        masks: ``(B, H, W)`` boolean.
        max_iter: safety bound on the iterations (default ``H * W``, which is never reached: each
            propagation step grows every label's reach by at least one pixel).

    Returns:
        ``(B, H, W)`` long labels.

    Example:
        >>> m = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 0, 1], [0, 0, 1], [0, 0, 0]]]).bool()
        >>> connected_components(m)[:, :2].tolist()   # diagonal neighbours connect (8-connectivity)
        [[[5, 0, 0], [0, 5, 0]], [[1, 0, 6], [0, 0, 6]]]
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be (B, H, W), got {shape}")
    m = _as_bool_mask(masks)
    b, h, w = m.shape
    n = h * w
    # float labels for max_pool (exact up to 2**24 pixels in float32, 2**53 in float64)
    dtype = torch.float32 if n < 2**24 else torch.float64
    idx = torch.arange(1, n + 1, device=m.device, dtype=dtype).reshape(1, h, w)
    lab = torch.where(m, idx, torch.zeros((), device=m.device, dtype=dtype))
    fg = m.reshape(b, -1)
    limit = n if max_iter is None else max_iter
    for _ in range(limit):
        new = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0] * m
        flat = new.reshape(b, -1)
        # pointer jumping: the pixel named by my label carries a label >= mine in my component
        ptr = (flat.long() - 1).clamp(min=0)
        jumped = torch.where(fg, flat.gather(1, ptr), flat)
        new = torch.maximum(flat, jumped).reshape(b, h, w)
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


def _largest_component(masks: Tensor) -> Tensor:
    """Boolean ``(B, H, W)``: the largest 8-connected component of each mask (empty if none).

    Ties between components of equal size go to the one whose last pixel (raster order) comes first.
    """
    b, h, w = masks.shape
    lab = connected_components(masks).reshape(b, -1)
    counts = torch.zeros(b, h * w + 1, device=masks.device, dtype=torch.long)
    counts.scatter_add_(1, lab, torch.ones_like(lab))
    counts[:, 0] = 0
    best = counts.argmax(1)
    return ((lab == best[:, None]) & (lab > 0)).reshape(b, h, w)


def box_localization(
    maps: Tensor, boxes: Tensor, threshold: float = 0.15, iou: float = 0.5
) -> MetricResult:
    """The box protocol of Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391,
    sec. 4.1 "Weakly-supervised localization").

    Each map is binarised at ``threshold`` times its maximum, a box is drawn around the largest connected
    segment, and the prediction is correct when its IoU with the ground-truth box is ``>= iou`` (0.5,
    the ILSVRC criterion the paper reports against).

    Choices the paper leaves open:
        * A pixel is kept when ``map >= threshold * max(map)`` (inclusive).
        * Connectivity is 8 (diagonal neighbours connect); components are found in torch, batched
          (:func:`connected_components`).
        * Ties in component size: the component whose last pixel in raster order comes first.
        * A map that is all zero (or all non-positive) has no segment: an empty predicted box
          ``(0, 0, 0, 0)``, IoU 0.
        * Only one box per image and per map: the ILSVRC top-5 protocol (five predicted classes, one map
          each) is left to the caller, which computes maps for the classes it wants.
        * A sample with an empty ground-truth box scores ``NaN`` and is left out of the summary.

    Boxes are ``(x0, y0, x1, y1)`` in pixel coordinates, ``x`` along the width, ``x0, y0`` inclusive
    and ``x1, y1`` exclusive (see :func:`boxes_from_masks`).

    Args:
        maps: ``(B, H, W)`` maps.
        boxes: the ground truth: ``(B, 4)`` boxes, or ``(B, H, W)`` masks, turned into boxes with
            :func:`boxes_from_masks`.
        threshold: fraction of each map's maximum, in ``(0, 1]``.
        iou: the IoU a box needs to count as correct.

    Returns:
        :class:`MetricResult` ``"box_localization"``: ``per_sample`` (B,) 1.0 correct / 0.0 wrong,
        ``summary`` the localisation accuracy; ``details["boxes"]`` (B, 4) predicted boxes,
        ``details["gt_boxes"]`` (B, 4), ``details["iou"]`` (B,), ``details["segments"]`` (B, H, W) the
        boolean largest segments.

    Raises:
        ValueError: maps that are not ``(B, H, W)``, ground truth of another shape (naming both), or a
            threshold outside ``(0, 1]``.
    """
    maps = _check_maps(maps)
    if maps.ndim != 3:
        raise ValueError(
            f"box_localization needs 2-D maps (B, H, W), got shape {tuple(maps.shape)}"
        )
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or not 0 < threshold <= 1
    ):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"boxes must be a (B, 4) tensor or (B, H, W) masks, not {type(boxes).__name__}"
        )
    if boxes.ndim == 2 and tuple(boxes.shape) == (maps.shape[0], 4):
        gt = boxes.to(maps.device).long()
    elif boxes.ndim == 3:
        gt = boxes_from_masks(_check_same_shape(maps, boxes, "ground-truth masks"))
    else:
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} need ground-truth boxes of shape ({maps.shape[0]}, 4) or "
            f"masks of shape {tuple(maps.shape)}, got {tuple(boxes.shape)}"
        )
    b = maps.shape[0]
    flat = maps.detach().reshape(b, -1).float()
    peak = flat.max(1).values
    binary = (flat >= threshold * peak[:, None]) & (peak[:, None] > 0)
    segments = _largest_component(binary.reshape(maps.shape))
    pred = boxes_from_masks(segments)
    ious = box_iou(pred, gt)
    correct = (ious >= iou).float()
    valid = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
    per = torch.where(valid, correct, torch.full_like(correct, float("nan")))
    details = {
        "boxes": pred,
        "gt_boxes": gt,
        "iou": ious,
        "segments": segments,
        "threshold": float(threshold),
    }
    return MetricResult("box_localization", per, _nanmean(per), details)
