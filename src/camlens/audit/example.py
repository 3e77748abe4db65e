"""Loading one example: the image as the model sees it, and its object mask in the same geometry.

:func:`load_example` is the only place where an audit decodes files. It uses
:func:`camlens.io.load_image` (EXIF rotation, any mode to RGB) and the model's
:class:`~camlens.models.Preprocess` (resize and crop). A mask image or a box is put through the very
same resize and crop, so it lines up with the maps. Swap this function to change how images are read:
both engines call it (and :func:`collate`), the local one from its decode threads and the Ray one from
its decode tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from camlens.audit.dataset import Item

__all__ = ["Example", "collate", "decode_batch", "load_example"]


@dataclass
class Example:
    """One loaded item.

    Attributes:
        item: what was loaded.
        view: ``(3, H, W)`` float32 in ``[0, 1]``, the image as the model sees it (before
            normalisation); ``None`` when loading failed.
        mask: ``(H, W)`` bool object mask in the view's geometry, or ``None``.
        error: why loading failed (one line), ``""`` when it did not.
    """

    item: Item
    view: np.ndarray | None
    mask: np.ndarray | None = None
    error: str = ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _mask_view(mask_rgb: Any, preprocess: Any) -> np.ndarray:
    """A white-on-black RGB mask image through ``preprocess.view``, thresholded at one half."""
    return np.asarray(preprocess.view(mask_rgb).mean(0) > 0.5)


def load_example(item: Item, preprocess: Any) -> Example:
    """Load an item: decode, resize and crop the image; transform its mask or box the same way.

    Never raises for a bad file: an unreadable image (or mask) gives an :class:`Example` with ``error``
    set, so that one broken file does not stop an audit.

    Args:
        item: the image and its optional mask path or box.
        preprocess: the model's :class:`~camlens.models.Preprocess` (``view`` gives ``(3, H, W)``).

    Returns:
        An :class:`Example`; ``mask`` is ``None`` when the item has neither mask nor box.
    """
    from PIL import Image, ImageDraw

    from camlens.images import load_image

    try:
        image = load_image(item.path)
        view = np.ascontiguousarray(preprocess.view(image).numpy(), dtype=np.float32)
    except Exception as exc:  # unreadable, truncated, missing: recorded, not raised
        return Example(item, None, None, _one_line(exc))
    mask = None
    try:
        if item.mask:
            m = load_image(item.mask)
            if m.size != image.size:
                raise ValueError(
                    f"mask {item.mask!r} is {m.size[0]}x{m.size[1]} but its image is "
                    f"{image.size[0]}x{image.size[1]}; masks must have the image's size"
                )
            mask = _mask_view(m, preprocess)
        elif item.box is not None:
            x0, y0, x1, y1 = item.box
            canvas = Image.new("RGB", image.size)
            ImageDraw.Draw(canvas).rectangle(
                (x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255)
            )  # PIL's rectangle includes its last pixel; the box's x1, y1 are exclusive
            mask = _mask_view(canvas, preprocess)
    except Exception as exc:
        return Example(item, None, None, f"mask: {_one_line(exc)}")
    return Example(item, view, mask)


def collate(examples: Sequence[Example], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Stack examples into the batch the per-batch function takes (a dict of numpy arrays).

    Args:
        examples: loaded examples, in order.
        size: ``(H, W)`` of the model's input (the shape of failed examples' placeholders).

    Returns:
        ``path`` (B,) object, ``label`` (B,) int64, ``view`` (B, 3, H, W) float32 (zeros where loading
        failed), ``mask`` (B, H, W) bool, ``has_mask`` (B,) bool, ``error`` (B,) object (``""`` if fine).
    """
    h, w = size
    b = len(examples)
    views = np.zeros((b, 3, h, w), dtype=np.float32)
    masks = np.zeros((b, h, w), dtype=bool)
    has_mask = np.zeros(b, dtype=bool)
    errors = np.empty(b, dtype=object)
    for i, ex in enumerate(examples):
        errors[i] = ex.error
        if ex.view is not None and not ex.error:
            if ex.view.shape != (3, h, w):
                errors[i] = (
                    f"the pre-processing gave shape {tuple(ex.view.shape)}, not (3, {h}, {w})"
                )
                continue
            views[i] = ex.view
            if ex.mask is not None:
                masks[i] = ex.mask
                has_mask[i] = True
    paths = np.empty(b, dtype=object)
    paths[:] = [ex.item.path for ex in examples]
    return {
        "path": paths,
        "label": np.array([ex.item.label for ex in examples], dtype=np.int64),
        "view": views,
        "mask": masks,
        "has_mask": has_mask,
        "error": errors,
    }


def decode_batch(batch: dict[str, Any], preprocess: Any) -> dict[str, np.ndarray]:
    """Load a batch of items given as columns (``path``, ``label``, ``mask``, ``box``) and collate it.

    This is the decode stage of the Ray engine (a ``map_batches`` task); the local engine loads the same
    items one by one with :func:`load_example` in threads and calls :func:`collate`.
    """
    paths = list(batch["path"])
    n = len(paths)
    labels = batch.get("label", np.full(n, -1))
    masks = batch.get("mask", [""] * n)
    boxes = batch.get("box", [None] * n)
    items = []
    for i in range(n):
        box = boxes[i]
        box_t = None
        if box is not None and len(box) == 4:
            box_t = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        items.append(Item(str(paths[i]), int(labels[i]), str(masks[i] or ""), box_t))
    return collate([load_example(it, preprocess) for it in items], tuple(preprocess.size))
