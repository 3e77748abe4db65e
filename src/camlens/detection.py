"""Drawing detections: boxes and labels on an image or on a CAM overlay.

Explaining a detection model takes a map per detected box (see :func:`camlens.targets.box_targets`);
:func:`draw_boxes` then marks each box on its overlay. Pillow is an optional dependency
(``pip install "camlens[viz]"``), imported when a function needs it.

Example:
    >>> import torch
    >>> img = draw_boxes(torch.zeros(3, 32, 48), torch.tensor([[4.0, 4.0, 20.0, 28.0]]), ["cat"],
    ...                  scores=[0.91])
    >>> img.size, img.getpixel((4, 26)) == PALETTE[0]  # the left edge
    ((48, 32), True)

A whole detection workflow, with random weights here::

    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=...).eval()
    detections = model(x)                                      # x: (1, 3, H, W) in [0, 1]
    targets = camlens.targets.box_targets(detections, score_threshold=0.5)
    results = camlens.GradCAM(model).for_targets(x, targets)   # one forward, one map per box
    images = [
        draw_boxes(r.overlay(x)[0], [t.box.tolist()], [t.label]) for r, t in zip(results, targets)
    ]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PALETTE", "draw_boxes"]

#: Box colours, picked by label (``PALETTE[label % len(PALETTE)]``) or, without labels, by box index.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as e:  # ragged lists and the like
        raise TypeError(
            f"{what} must be a tensor, an array or a list, not {type(values).__name__}"
        ) from e


def _label_text(label: Any, names: Sequence[str] | Mapping[int, str] | None) -> str:
    if names is None or isinstance(label, str):
        return str(label)
    key = int(label)
    if isinstance(names, Mapping):
        return str(names.get(key, key))
    return str(names[key]) if 0 <= key < len(names) else str(key)


def draw_boxes(
    image: Any,
    boxes: Any,
    labels: Sequence[Any] | torch.Tensor | np.ndarray | None = None,
    *,
    scores: Sequence[float] | torch.Tensor | np.ndarray | None = None,
    names: Sequence[str] | Mapping[int, str] | None = None,
    width: int = 2,
    colors: Sequence[tuple[int, int, int]] = PALETTE,
) -> Image.Image:
    """Draw boxes, with their labels and scores, on a copy of an image.

    Each box is a rectangle outline ``width`` pixels wide, drawn inwards from its edges; its caption
    (``"label"``, ``"label 0.93"`` with a score, or just the score) is written on a filled tag at the
    box's top-left corner (below the corner if the box touches the top of the image).

    Args:
        image: anything :func:`camlens.viz.to_pil` accepts: a PIL image (e.g. from
            ``CAMResult.overlay``), an ``(H, W, 3)`` array, or a ``(3, H, W)`` tensor in ``[0, 1]``.
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)`` in the image's pixels, e.g. a detection's
            ``"boxes"``.
        labels: ``N`` class indices or strings, or ``None``.
        scores: ``N`` scores shown after the labels, or ``None``.
        names: class names for integer labels: a sequence indexed by label or a mapping.
        width: outline width in pixels, at least 1.
        colors: RGB colours, picked by label (by box index without labels).

    Returns:
        An RGB PIL image of the input's size; the input is not modified.

    Raises:
        ValueError: ``boxes`` is not ``(N, 4)``, ``labels``/``scores`` do not have ``N`` entries, or
            ``width`` is below 1.
        ImportError: Pillow is not installed.
    """
    from camlens import viz

    try:
        from PIL import ImageDraw, ImageFont
    except ImportError as e:  # pragma: no cover - Pillow is a test dependency
        raise ImportError('draw_boxes needs Pillow; pip install "camlens[viz]"') from e
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if not colors:
        raise ValueError("colors is empty; pass at least one (r, g, b) colour")
    b = _as_array(boxes, "boxes").astype(np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(b.shape)}")
    n = b.shape[0]
    labs: list[Any] | None = None
    if labels is not None:
        labs = (
            list(labels)
            if isinstance(labels, list | tuple)
            else list(_as_array(labels, "labels").reshape(-1))
        )
    scs = None if scores is None else _as_array(scores, "scores").astype(np.float64).reshape(-1)
    for what, vals in (("labels", labs), ("scores", scs)):
        if vals is not None and len(vals) != n:
            raise ValueError(f"got {len(vals)} {what} for {n} boxes; pass one per box")

    img = viz.to_pil(image).copy()
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in b[i])
        label = None if labs is None else labs[i]
        key = i if label is None or isinstance(label, str) else int(label)
        color = tuple(colors[key % len(colors)])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        parts = [] if label is None else [_label_text(label, names)]
        if scs is not None:
            parts.append(f"{scs[i]:.2f}")
        if not parts:
            continue
        text = " ".join(parts)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1 + width
        draw.rectangle((x1, ty, x1 + tw, ty + th), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text(
            (x1 + 2 - left, ty + 2 - top),
            text,
            fill=(0, 0, 0) if luminance > 128 else (255, 255, 255),
            font=font,
        )
    return img
