"""From an upload to the model's input and back: the crop the model saw, and overlays on the original.

``geometry`` is where the model's input lies in the original image, in original pixels:
``{"box": [x0, y0, x1, y1], "input_size": [H, W]}``. A plain resize sees the whole image; a resize of the
shorter side followed by a centre crop sees the central box. The page draws maps into that box, and
greys the rest out as unexplained; the overlay PNGs do the same.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camlens.models import Preprocess

__all__ = ["overlay_png", "prepare"]


def prepare(pre: Preprocess, image: Any) -> tuple[Tensor, dict[str, Any] | None]:
    """The model's view of ``image`` ``(3, H, W)`` in ``[0, 1]``, and its geometry (``None`` when a
    library transform does the resizing and the box is not known)."""
    rgb = image.convert("RGB")
    view = pre.view(rgb)
    h, w = pre.size
    if pre.transform is not None:
        return view, None
    if pre.resize is None:
        box = [0.0, 0.0, float(rgb.width), float(rgb.height)]
    else:
        scale = pre.resize / min(rgb.size)
        rw, rh = max(w, round(rgb.width * scale)), max(h, round(rgb.height * scale))
        left, top = (rw - w) // 2, (rh - h) // 2
        sx, sy = rgb.width / rw, rgb.height / rh
        box = [left * sx, top * sy, (left + w) * sx, (top + h) * sy]
    return view, {"box": box, "input_size": [h, w]}


def _jet(values: np.ndarray) -> np.ndarray:
    """``(..., )`` values in ``[0, 1]`` as ``(..., 3)`` uint8 RGB with matplotlib's jet."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay_png(
    image: Any,
    cam_map: Tensor,
    geometry: dict[str, Any] | None,
    max_side: int = 1600,
    alpha: float = 0.5,
) -> bytes:
    """PNG bytes of the map blended on the original image (scaled down to ``max_side``).

    Args:
        image: the original PIL image.
        cam_map: ``(H, W)`` map in ``[0, 1]`` at the model's input resolution.
        geometry: from :func:`prepare`; ``None`` draws on the whole image.
        max_side: the longest side of the PNG.
        alpha: weight of the heat map inside the box.
    """
    from PIL import Image

    rgb = image.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        rgb = rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
            Image.Resampling.BILINEAR,
        )
    base = np.asarray(rgb, dtype=np.float32)
    if geometry is None:
        x0, y0, x1, y1 = 0, 0, rgb.width, rgb.height
    else:
        bx = [v * scale for v in geometry["box"]]
        x0, y0 = max(0, round(bx[0])), max(0, round(bx[1]))
        x1, y1 = min(rgb.width, round(bx[2])), min(rgb.height, round(bx[3]))
    out = base * 0.45  # outside the box: the model did not see it
    if x1 > x0 and y1 > y0:
        m = torch.nn.functional.interpolate(
            cam_map[None, None].float(),
            size=(y1 - y0, x1 - x0),
            mode="bilinear",
            align_corners=False,
        )
        heat = _jet(m[0, 0].clamp(0, 1).numpy()).astype(np.float32)
        out[y0:y1, x0:x1] = (1 - alpha) * base[y0:y1, x0:x1] + alpha * heat
    buf = io.BytesIO()
    Image.fromarray(out.round().clip(0, 255).astype(np.uint8)).save(
        buf, format="PNG", optimize=False
    )
    return buf.getvalue()
