"""From an upload to the model's input and back, through the library's one image path.

:meth:`camlens.models.Preprocess.prepare` gives the model's view and its
:class:`~camlens.images.Geometry` (where the input lies in the original); the answer's
``geometry`` is :meth:`Geometry.as_dict` (``original_size``, ``input_size``, ``box`` as
``left, top, right, bottom`` in original pixels), so the page draws each map into that box and greys
the rest out. Overlay PNGs are :func:`camlens.viz.overlay_on_original` with a legend, on a copy of the
original scaled down to the answer's size once per request (:func:`shrink`), whatever the number of maps.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from camlens.images import Geometry
from camlens.models import Preprocess

__all__ = ["overlay_png", "prepare", "shrink"]


def prepare(pre: Preprocess, image: Any) -> tuple[Tensor, Geometry | None]:
    """The model's view of ``image`` ``(3, H, W)`` in ``[0, 1]`` and its geometry (``None`` when a
    library transform does the resizing and the box is not known)."""
    return pre.prepare(image)


def shrink(image: Any, geometry: Geometry | None, max_side: int = 1600) -> Any:
    """The original the overlays are drawn on: RGB, scaled down so that its longest side is at most
    ``max_side`` (never up); ``None`` when the geometry is unknown (the overlays use the view)."""
    from camlens import viz

    if geometry is None:
        return None
    h0, w0 = geometry.original_size
    scale = min(1.0, max_side / max(h0, w0))
    return viz.shrink_original(image, (max(1, round(h0 * scale)), max(1, round(w0 * scale))))


def overlay_png(
    shrunk: Any,
    cam_map: Tensor,
    view: Tensor,
    geometry: Geometry | None,
    legend: Any,
) -> bytes:
    """PNG bytes of the map on the original image, with its legend.

    Args:
        shrunk: the original from :func:`shrink` (made once per image, shared by its maps).
        cam_map: ``(H, W)`` map in ``[0, 1]`` at the model's input resolution.
        view: the model's view ``(3, H, W)``, drawn on when the geometry is unknown.
        geometry: from :func:`prepare`.
        legend: a :class:`camlens.viz.Legend`.
    """
    from camlens import viz

    if geometry is None or shrunk is None:
        picture = viz.overlay(view, cam_map)
    else:
        size = (shrunk.height, shrunk.width)
        picture = viz.overlay_on_original(shrunk, cam_map, geometry, size=size)
    # zlib level 1: several times faster than the default, for an answer that is sent at once
    return viz.to_png_bytes(viz.with_legend(picture, legend), compress_level=1)
