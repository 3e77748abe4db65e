"""Rendering of class activation maps: overlays, heat maps, grids and PNG export.

Pillow and matplotlib are optional dependencies (``pip install "camlens[viz]"``); they are
imported lazily, inside the functions that need them, so ``import camlens`` works without them.
Only matplotlib's colour-map registry (``matplotlib.colormaps``) and its Agg backend (for the
1-D line plots) are used; the pyplot state machine is never touched.

Conventions:
    * Maps are in ``[0, 1]`` (a row of ``CAMResult.maps``); values outside are clipped and NaN
      is rejected.
    * Colourising: ``heat = colormap(map)[..., :3]`` (matplotlib's float RGBA, alpha dropped).
    * Blending, in 0..255 space, rounded half-to-even to uint8::

          out = (1 - alpha) * image + alpha * 255 * heat

      so ``alpha=0`` returns the image unchanged and ``alpha=1`` returns
      ``round(255 * colormap(map)[..., :3])``.
    * On the original photo (:func:`overlay_on_original`), pixels the model's input did not cover
      are "unexplained": shown in grey, ``round(0.45 * luma + 0.55 * 150)``, with a white line
      along the crop's edge.
    * Legends (:class:`Legend`, :func:`with_legend`) add a strip under an image: the method, layer,
      target class and score, and a colour bar that says what 0 and 1 mean.
"""

from __future__ import annotations

import base64
import difflib
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from PIL import Image

    from camlens.images import Geometry

__all__ = [
    "Legend",
    "colorbar",
    "css_gradient",
    "grid",
    "heatmap",
    "overlay",
    "overlay_1d",
    "overlay_3d",
    "overlay_on_original",
    "shrink_original",
    "thumbnail",
    "to_data_uri",
    "to_image_uri",
    "to_pil",
    "to_png_bytes",
    "with_legend",
]

ImageLike: TypeAlias = "Image.Image | np.ndarray | torch.Tensor"
"""Anything :func:`to_pil` accepts."""
MapLike: TypeAlias = "np.ndarray | torch.Tensor"
"""A CAM map as a numpy array or torch tensor (any device)."""

_INSTALL_HINT = 'install the optional visualisation dependencies with: pip install "camlens[viz]"'

_ACCEPTED_IMAGES = (
    "accepted images: a PIL image; a numpy array of shape (H, W), (H, W, 3) or (H, W, 4) "
    "with dtype uint8 in [0, 255] or float in [0, 1]; a torch tensor of shape (3, H, W), "
    "(1, H, W) or (H, W) with dtype float in [0, 1] or uint8 (any device)"
)

# Float images may overshoot [0, 1] slightly (e.g. after bicubic resizing); such values are
# clipped. Anything further out is almost certainly a 0..255 float image or a normalised
# (mean/std) tensor, which would render as garbage, so it is rejected.
_FLOAT_IMAGE_TOLERANCE = 0.1

_COMMON_COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "gray")

# Display constants for overlay_1d (inches / dpi of the Agg figure).
_PLOT_DPI = 100
_PLOT_WIDTH_IN = 8.0
_BAND_ALPHA = 0.6
# overlay_3d upscales small slices (nearest neighbour, integer factor) to at least this size.
_MIN_TILE_PX = 64


# --------------------------------------------------------------------------- lazy imports


def _pil_image() -> Any:
    """Return the ``PIL.Image`` module or raise an ImportError with the install hint."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"camlens.viz needs Pillow; {_INSTALL_HINT}") from exc
    return Image


def _pil_draw() -> tuple[Any, Any]:
    """Return the ``PIL.ImageDraw`` and ``PIL.ImageFont`` modules."""
    try:
        from PIL import ImageDraw, ImageFont
    except ImportError as exc:
        raise ImportError(f"camlens.viz needs Pillow; {_INSTALL_HINT}") from exc
    return ImageDraw, ImageFont


def _matplotlib() -> Any:
    """Return the ``matplotlib`` module or raise an ImportError with the install hint."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"camlens.viz needs matplotlib; {_INSTALL_HINT}") from exc
    return matplotlib


def _get_cmap(colormap: str) -> Colormap:
    """Look up a colour map by name in ``matplotlib.colormaps``.

    Raises:
        TypeError: ``colormap`` is not a string.
        ValueError: the name is not registered; the message lists a few valid names.
    """
    mpl = _matplotlib()
    if not isinstance(colormap, str):
        raise TypeError(f"colormap must be a matplotlib colour-map name, got {type(colormap)!r}")
    try:
        return mpl.colormaps[colormap]
    except KeyError:
        names = sorted(mpl.colormaps)
        close = difflib.get_close_matches(colormap, names, n=3)
        common = [n for n in _COMMON_COLORMAPS if n in mpl.colormaps]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown colormap {colormap!r}.{hint} Valid names include "
            f"{', '.join(map(repr, common))} (see matplotlib.colormaps for all "
            f"{len(names)})."
        ) from None


# --------------------------------------------------------------------------- conversions


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha)!r}")
    a = float(alpha)
    if not 0.0 <= a <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


def _tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detach, move to CPU and convert; float tensors become float64, uint8 stays uint8."""
    t = t.detach().cpu()
    if t.is_complex():
        raise TypeError(f"complex tensors are not supported (dtype {t.dtype})")
    if t.is_floating_point():
        return t.to(torch.float64).numpy()
    return t.numpy()


def _to_float_array(x: object, name: str) -> np.ndarray:
    """Turn a numpy array or torch tensor of real numbers into a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        arr = _tensor_to_numpy(x)
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x)!r}")
    if arr.dtype.kind not in "uif":
        raise TypeError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    return np.asarray(arr, dtype=np.float64)


def _map_to_numpy(cam_map: object, ndim: int, shape_doc: str) -> np.ndarray:
    """Validate a CAM map and return it as float64 with ``ndim`` dims, clipped to [0, 1].

    A single leading singleton dimension is squeezed, e.g. a ``(1, H, W)`` map is accepted
    where ``(H, W)`` is expected.
    """
    arr = _to_float_array(cam_map, "cam_map")
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"cam_map must have shape {shape_doc}, got {tuple(arr.shape)}")
    if np.isnan(arr).any():
        raise ValueError("cam_map contains NaN")
    return np.clip(arr, 0.0, 1.0)


def _resize(arr: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Resize a 1-, 2- or 3-D float array with (bi/tri)linear interpolation.

    ``align_corners=False``; downsampling in 2-D is antialiased. Inputs in [0, 1] stay in
    [0, 1] (all weights are non-negative).
    """
    if tuple(arr.shape) == tuple(size):
        return arr
    from camlens.maps import resize

    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    return np.clip(resize(t, size, antialias=True)[0, 0].numpy(), 0.0, 1.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round values in 0..255 half-to-even and cast to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _colorize(cam_map: np.ndarray, colormap: str) -> np.ndarray:
    """Return ``colormap(cam_map)[..., :3]`` as float64 in [0, 1]."""
    cmap = _get_cmap(colormap)
    return np.asarray(cmap(cam_map), dtype=np.float64)[..., :3]


def _numpy_image_to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/int/float -> (H, W, 3) uint8."""
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        extra = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            extra = " (channels-first arrays: transpose to (H, W, C) or pass a torch tensor)"
        raise ValueError(f"unsupported image shape {tuple(arr.shape)}{extra}; {_ACCEPTED_IMAGES}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(arr.shape)})")

    kind = arr.dtype.kind
    if kind == "u" and arr.dtype.itemsize == 1:
        u8 = arr
    elif kind in "ui":
        imin, imax = int(arr.min()), int(arr.max())
        if imin < 0 or imax > 255:
            raise ValueError(
                f"integer images must be in [0, 255], got range [{imin}, {imax}]; "
                f"{_ACCEPTED_IMAGES}"
            )
        u8 = arr.astype(np.uint8)
    elif kind == "f":
        f = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(f).all():
            raise ValueError("image contains NaN or infinite values")
        lo, hi = float(f.min()), float(f.max())
        tol = _FLOAT_IMAGE_TOLERANCE
        if lo < -tol or hi > 1.0 + tol:
            raise ValueError(
                f"float images must be in [0, 1], got range [{lo:.4g}, {hi:.4g}] (divide 0..255 "
                f"images by 255; undo mean/std normalisation first); {_ACCEPTED_IMAGES}"
            )
        u8 = _to_uint8(np.clip(f, 0.0, 1.0) * 255.0)
    else:
        raise TypeError(f"unsupported image dtype {arr.dtype}; {_ACCEPTED_IMAGES}")

    if u8.ndim == 2:
        u8 = u8[:, :, None]
    if u8.shape[2] == 1:
        u8 = np.repeat(u8, 3, axis=2)
    elif u8.shape[2] == 4:
        u8 = u8[:, :, :3]  # alpha channel is dropped, not composited
    return np.ascontiguousarray(u8)


def to_pil(image: ImageLike) -> Image.Image:
    """Convert an image to an RGB PIL image.

    Args:
        image: One of

            * a PIL image (any mode; converted with ``Image.convert("RGB")``);
            * a numpy array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha is dropped), with
              dtype uint8 in [0, 255] (other integer dtypes within [0, 255] are accepted too)
              or float in [0, 1];
            * a torch tensor ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)``, float in [0, 1] or
              uint8, on any device (it is detached and copied to the CPU).

            Float images are mapped to uint8 as ``round(255 * x)``; values up to 0.1 outside
            [0, 1] are clipped, anything further out raises.

    Returns:
        An RGB ``PIL.Image.Image`` of size ``(W, H)``; grey inputs are replicated to 3 channels.

    Raises:
        TypeError: unsupported input type or dtype.
        ValueError: unsupported shape, empty image, non-finite values or out-of-range values.
        ImportError: Pillow is not installed.
    """
    Image = _pil_image()
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.bool or image.is_complex():
            raise TypeError(f"unsupported image dtype {image.dtype}; {_ACCEPTED_IMAGES}")
        arr = _tensor_to_numpy(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = np.transpose(arr, (1, 2, 0))
        elif arr.ndim != 2:
            extra = " (drop the batch dimension)" if arr.ndim == 4 else ""
            raise ValueError(
                f"unsupported image tensor shape {tuple(arr.shape)}{extra}; {_ACCEPTED_IMAGES}"
            )
        return Image.fromarray(_numpy_image_to_uint8_rgb(arr))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_numpy_image_to_uint8_rgb(image))
    raise TypeError(f"unsupported image type {type(image)!r}; {_ACCEPTED_IMAGES}")


# --------------------------------------------------------------------------- 2-D


def heatmap(cam_map: MapLike, colormap: str = "jet") -> Image.Image:
    """Colourise a map on its own.

    Args:
        cam_map: ``(H, W)`` (or ``(1, H, W)``) map in [0, 1]; values outside are clipped.
        colormap: Name of a matplotlib colour map.

    Returns:
        RGB image of size ``(W, H)`` with pixels ``round(255 * colormap(map)[:3])``.

    Raises:
        ValueError: wrong shape, NaN in the map or unknown colour map.
        TypeError: the map is not an array/tensor of real numbers.
    """
    Image = _pil_image()
    m = _map_to_numpy(cam_map, 2, "(H, W)")
    return Image.fromarray(_to_uint8(_colorize(m, colormap) * 255.0))


def overlay(
    image: ImageLike, cam_map: MapLike, colormap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """Colourise a map and alpha-blend it on an image.

    The map is colourised as ``heat = colormap(map)[..., :3]`` and blended per pixel and
    channel as ``out = (1 - alpha) * image + alpha * heat`` (computed in 0..255 space and
    rounded to uint8), so ``alpha=0`` returns the image and ``alpha=1`` the heat map.

    Args:
        image: Anything :func:`to_pil` accepts; its size is ``(H, W)``.
        cam_map: ``(H', W')`` (or ``(1, H', W')``) map in [0, 1], e.g. a row of
            ``CAMResult.maps``. Values outside [0, 1] are clipped. If ``(H', W') != (H, W)``
            the map is resized bilinearly (``align_corners=False``, antialiased) to ``(H, W)``.
        colormap: Name of a matplotlib colour map (``matplotlib.colormaps[colormap]``).
        alpha: Weight of the heat map, in [0, 1].

    Returns:
        RGB image of size ``(W, H)``.

    Raises:
        ValueError: alpha outside [0, 1], NaN in the map, wrong map shape, unknown colour map,
            or an invalid image (see :func:`to_pil`).
        TypeError: unsupported image or map type.
    """
    a = _check_alpha(alpha)
    Image = _pil_image()
    img = np.asarray(to_pil(image), dtype=np.float64)  # (H, W, 3) in 0..255
    m = _map_to_numpy(cam_map, 2, "(H, W)")
    m = _resize(m, img.shape[:2])
    heat = _colorize(m, colormap) * 255.0
    return Image.fromarray(_to_uint8((1.0 - a) * img + a * heat))


# --------------------------------------------------------------------------- 1-D


def overlay_1d(signal: MapLike, cam_map: MapLike, colormap: str = "jet") -> Image.Image:
    """Plot a 1-D signal with its map drawn as a colour band behind it.

    One subplot per channel, sharing the x axis (sample index). The band is the map
    resampled linearly (``align_corners=False``) to the signal length and colourised with
    ``colormap``; it spans the full height of each subplot. Rendered with matplotlib's Agg
    backend (no pyplot).

    Args:
        signal: ``(L,)`` or ``(C, L)`` signal (any real values; NaN leaves gaps in the line).
        cam_map: ``(L',)`` (or ``(1, L')``) map in [0, 1]; values outside are clipped.
        colormap: Name of a matplotlib colour map.

    Returns:
        RGB image, 800 px wide; the height grows with the number of channels.

    Raises:
        ValueError: wrong shapes, NaN in the map or unknown colour map.
        TypeError: unsupported input types.
    """
    Image = _pil_image()
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sig = _to_float_array(signal, "signal")
    if sig.ndim == 1:
        sig = sig[None]
    if sig.ndim != 2:
        raise ValueError(f"signal must have shape (L,) or (C, L), got {tuple(sig.shape)}")
    n_ch, length = sig.shape
    m = _map_to_numpy(cam_map, 1, "(L,)")
    m = _resize(m, (length,))
    cmap = _get_cmap(colormap)

    ch_h = max(0.6, min(1.5, 12.0 / n_ch))
    fig = Figure(figsize=(_PLOT_WIDTH_IN, 0.5 + ch_h * n_ch), dpi=_PLOT_DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(n_ch, 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(length)
    for c, ax in enumerate(axes):
        y = sig[c]
        finite = y[np.isfinite(y)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        margin = 0.05 * (hi - lo)
        lo, hi = lo - margin, hi + margin
        ax.imshow(
            m[None, :],
            aspect="auto",
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            extent=(-0.5, length - 0.5, lo, hi),
            origin="lower",
            interpolation="nearest",
            alpha=_BAND_ALPHA,
        )
        ax.plot(x, y, color="black", linewidth=1.0)
        ax.set_xlim(-0.5, length - 0.5)
        ax.set_ylim(lo, hi)
        if n_ch > 1:
            ax.set_ylabel(f"ch {c}")
    axes[-1].set_xlabel("sample")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


# --------------------------------------------------------------------------- 3-D


def overlay_3d(
    volume: MapLike,
    cam_map: MapLike,
    colormap: str = "jet",
    alpha: float = 0.5,
    n_slices: int = 8,
    axis: int = 0,
) -> Image.Image:
    """Overlay a 3-D map on a volume as a grid of slices.

    The volume is reduced to ``(D, H, W)`` by the channel mean (if it has channels) and
    min-max scaled to [0, 1] over the whole volume (a constant volume becomes 0). The map is
    resampled trilinearly (``align_corners=False``) to ``(D, H, W)``. ``n_slices`` evenly
    spaced slices are taken along ``axis`` (the centres of ``n_slices`` equal segments:
    ``floor((i + 0.5) * S / n_slices)``; at most ``S``, the axis length) and each is rendered
    with :func:`overlay`; slices smaller than 64 px are then upscaled by an integer factor
    (nearest neighbour, so voxels stay visible as blocks) and the tiles are laid out with
    :func:`grid` (``ceil(sqrt(n))`` columns), each titled with its index, e.g. ``"d=12"``.

    Args:
        volume: ``(C, D, H, W)`` or ``(D, H, W)`` volume (any real values).
        cam_map: ``(D', H', W')`` (or ``(1, D', H', W')``) map in [0, 1].
        colormap: Name of a matplotlib colour map.
        alpha: Weight of the heat map, in [0, 1].
        n_slices: Number of slices to show (>= 1; capped at the axis length).
        axis: Spatial axis to slice along: 0 (D), 1 (H) or 2 (W); negative values count from
            the end.

    Returns:
        RGB image containing the slice grid.

    Raises:
        ValueError: wrong shapes, NaN, alpha outside [0, 1], bad ``n_slices``/``axis`` or
            unknown colour map.
        TypeError: unsupported input types.
    """
    a = _check_alpha(alpha)
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis <= 2:
        raise ValueError(f"axis must be 0, 1 or 2 (D, H, W), got {axis!r}")
    ax = int(axis) % 3
    _get_cmap(colormap)  # fail fast on a bad name

    vol = _to_float_array(volume, "volume")
    if vol.ndim == 4:
        vol = vol.mean(axis=0)
    if vol.ndim != 3:
        raise ValueError(f"volume must have shape (C, D, H, W) or (D, H, W), got {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or infinite values")
    lo, hi = float(vol.min()), float(vol.max())
    vol = (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)

    m = _map_to_numpy(cam_map, 3, "(D, H, W)")
    m = _resize(m, vol.shape)

    nearest = _pil_image().Resampling.NEAREST
    size = vol.shape[ax]
    n = min(int(n_slices), size)
    indices = ((np.arange(n) + 0.5) * size / n).astype(int)
    tiles = []
    titles = []
    for idx in indices:
        v_slice = np.take(vol, int(idx), axis=ax)
        m_slice = np.take(m, int(idx), axis=ax)
        tile = overlay(v_slice, m_slice, colormap=colormap, alpha=a)
        scale = math.ceil(_MIN_TILE_PX / min(tile.size))
        if scale > 1:
            tile = tile.resize((tile.width * scale, tile.height * scale), resample=nearest)
        tiles.append(tile)
        titles.append(f"{'DHW'[ax].lower()}={int(idx)}")
    return grid(tiles, titles=titles, ncols=math.ceil(math.sqrt(n)))


# --------------------------------------------------------------------------- grid


def _is_row(x: object) -> bool:
    return isinstance(x, (list, tuple))


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    """Shorten ``text`` with a trailing '...' until it fits in ``width`` pixels."""

    def text_w(s: str) -> int:
        left, _, right, _ = draw.textbbox((0, 0), s, font=font)
        return int(right - left)

    if text_w(text) <= width:
        return text
    while text and text_w(text + "...") > width:
        text = text[:-1]
    return text + "..." if text else ""


def grid(
    images: Sequence[ImageLike] | Sequence[Sequence[ImageLike]],
    titles: Sequence[str | None] | Sequence[Sequence[str | None]] | None = None,
    ncols: int | None = None,
    pad: int = 4,
    title_height: int | None = None,
) -> Image.Image:
    """Lay out images in a grid on a white background, with optional titles above each cell.

    All cells have the size of the largest image (max width x max height); smaller images are
    centred in their cell. The output size is::

        width  = ncols * cell_w + (ncols + 1) * pad
        height = nrows * (title_h + cell_h) + (nrows + 1) * pad

    where ``title_h`` is 0 without titles, else ``title_height`` (default: the height of the
    default font's text plus 4 px). Titles are drawn centred in black with
    ``ImageFont.load_default()`` and shortened with '...' when wider than the cell.

    Args:
        images: A flat sequence of images (anything :func:`to_pil` accepts), filled row by row
            into ``ncols`` columns, or a sequence of rows (lists/tuples), one grid row each.
        titles: One title (or None) per image: a flat sequence with one entry per image in
            order, or (for rows) a sequence of rows matching ``images``.
        ncols: Number of columns for a flat sequence (default ``ceil(sqrt(n))``). Must be None
            when ``images`` is given as rows (the rows define the layout).
        pad: Padding in pixels between cells and around the border (>= 0).
        title_height: Height in pixels of the title strip above each cell (>= 0).

    Returns:
        RGB image of the computed layout size.

    Raises:
        ValueError: no images, titles not matching the images, bad ``ncols``/``pad``/
            ``title_height``, or mixing rows and single images.
    """
    Image = _pil_image()
    ImageDraw, ImageFont = _pil_draw()

    items: list[Any] = list(cast(Sequence[Any], images))
    if not items:
        raise ValueError("grid needs at least one image")
    row_flags = [_is_row(x) for x in items]
    if any(row_flags) and not all(row_flags):
        raise ValueError("images must be a flat sequence of images or a sequence of rows, not both")
    as_rows = all(row_flags)

    if as_rows:
        if ncols is not None:
            raise ValueError("ncols must be None when images is given as a list of rows")
        rows: list[list[Any]] = [list(r) for r in items]
        if not any(rows):
            raise ValueError("grid needs at least one image")
        ncols_ = max(len(r) for r in rows)
    else:
        n = len(items)
        if ncols is None:
            ncols_ = math.ceil(math.sqrt(n))
        elif isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
            raise ValueError(f"ncols must be a positive integer or None, got {ncols!r}")
        else:
            ncols_ = min(int(ncols), n)
        rows = [items[i : i + ncols_] for i in range(0, n, ncols_)]

    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if title_height is not None and (
        isinstance(title_height, bool)
        or not isinstance(title_height, (int, np.integer))
        or title_height < 0
    ):
        raise ValueError(
            f"title_height must be a non-negative integer or None, got {title_height!r}"
        )

    n_total = sum(len(r) for r in rows)
    title_rows: list[list[str | None]] | None = None
    if titles is not None:
        tlist: list[Any] = list(titles)
        if as_rows and tlist and all(_is_row(t) for t in tlist):
            if [len(t) for t in tlist] != [len(r) for r in rows]:
                raise ValueError(
                    f"titles rows have lengths {[len(t) for t in tlist]}, "
                    f"images rows have lengths {[len(r) for r in rows]}"
                )
            title_rows = [list(t) for t in tlist]
        else:
            if len(tlist) != n_total:
                raise ValueError(f"got {len(tlist)} titles for {n_total} images; they must match")
            for t in tlist:
                if t is not None and not isinstance(t, str):
                    raise ValueError(f"titles must be strings or None, got {type(t)!r}")
            it = iter(tlist)
            title_rows = [[next(it) for _ in r] for r in rows]

    pil_rows = [[to_pil(x) for x in r] for r in rows]
    cell_w = max(im.width for r in pil_rows for im in r)
    cell_h = max(im.height for r in pil_rows for im in r)

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if title_rows is None:
        title_h = 0
    elif title_height is not None:
        title_h = int(title_height)
    else:
        title_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 4

    nrows = len(pil_rows)
    width = ncols_ * cell_w + (ncols_ + 1) * pad
    height = nrows * (title_h + cell_h) + (nrows + 1) * pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    for r, row in enumerate(pil_rows):
        y0 = pad + r * (title_h + cell_h + pad)
        for c, im in enumerate(row):
            x0 = pad + c * (cell_w + pad)
            canvas.paste(
                im, (x0 + (cell_w - im.width) // 2, y0 + title_h + (cell_h - im.height) // 2)
            )
            title = title_rows[r][c] if title_rows is not None else None
            if title and title_h > 0:
                text = _fit_text(draw, str(title), font, cell_w)
                if text:
                    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
                    tx = x0 + (cell_w - (right - left)) // 2 - left
                    ty = y0 + (title_h - (bottom - top)) // 2 - top
                    draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return canvas


# --------------------------------------------------------------------------- export


def to_png_bytes(image: ImageLike, compress_level: int = 6) -> bytes:
    """Encode an image as PNG.

    Args:
        image: A PIL image (saved in its own mode) or anything :func:`to_pil` accepts.
        compress_level: zlib's level, 0 to 9: Pillow's default 6; 1 encodes several times faster
            into a somewhat larger file (for answers sent at once, such as the web app's).

    Returns:
        The PNG file's bytes.
    """
    Image = _pil_image()
    if not isinstance(image, Image.Image):
        image = to_pil(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=int(compress_level))
    return buf.getvalue()


def to_data_uri(image: ImageLike) -> str:
    """Encode an image as a ``data:image/png;base64,...`` URI (for HTML reports, Jupyter).

    Args:
        image: A PIL image or anything :func:`to_pil` accepts.

    Returns:
        The data URI string.
    """
    return "data:image/png;base64," + base64.b64encode(to_png_bytes(image)).decode("ascii")


# --------------------------------------------------------------------------- colour maps as tables


def _lut(colormap: str) -> np.ndarray:
    """The colour map's table, ``(N, 3)`` float64 in ``[0, 1]`` (what ``cmap(x)`` indexes)."""
    cmap = _get_cmap(colormap)
    return np.asarray(cmap(np.arange(cmap.N)), dtype=np.float64)[:, :3]


def _lut_index(values: np.ndarray, n: int) -> np.ndarray:
    """Indices into an ``n``-entry table for values in ``[0, 1]``, as matplotlib computes them."""
    xa = np.clip(values.astype(np.float64), 0.0, 1.0) * n
    xa[xa == n] = n - 1
    return xa.astype(np.int64)


def colorbar(colormap: str = "jet", width: int = 256, height: int = 12) -> Image.Image:
    """A horizontal colour bar: 0 on the left, 1 on the right.

    Pixel column ``j`` shows ``colormap((j + 0.5) / width)``.

    Raises:
        ValueError: an unknown colour map or a size below 1.
    """
    if width < 1 or height < 1:
        raise ValueError(f"a colour bar needs a positive size, got {width}x{height}")
    Image = _pil_image()
    lut = _lut(colormap)
    values = (np.arange(width, dtype=np.float64) + 0.5) / width
    row = _to_uint8(lut[_lut_index(values, len(lut))] * 255.0)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width, 3))))


def css_gradient(colormap: str = "jet", stops: int = 17) -> str:
    """A CSS ``linear-gradient(to right, ...)`` that draws the colour map (for HTML colour bars).

    Example:
        >>> css_gradient("gray", stops=2)
        'linear-gradient(to right, #000000 0.0%, #ffffff 100.0%)'
    """
    lut = _lut(colormap)
    parts = []
    for i in range(stops):
        t = i / (stops - 1)
        r, g, b = _to_uint8(lut[_lut_index(np.array([t]), len(lut))][0] * 255.0)
        parts.append(f"#{r:02x}{g:02x}{b:02x} {100 * t:.1f}%")
    return f"linear-gradient(to right, {', '.join(parts)})"


# --------------------------------------------------------------------------- on the original photo

#: Pixels the model did not see: ``round(_GREY_KEEP * luma + (1 - _GREY_KEEP) * _GREY_LEVEL)``.
_GREY_KEEP = 0.45
_GREY_LEVEL = 150.0
_ROWS_PER_CHUNK_PIXELS = 1 << 20


def overlay_on_original(
    original: ImageLike,
    cam_map: MapLike,
    geometry: Geometry,
    colormap: str = "jet",
    alpha: float = 0.5,
    *,
    size: tuple[int, int] | None = None,
    outline: bool = True,
) -> Image.Image:
    """Draw an input-resolution map on the full original photo, where the model saw it.

    The map is placed through ``geometry`` (:meth:`camlens.images.Geometry.place`: bilinear, at each
    output pixel's centre). Inside the part the model saw, pixels are blended as in :func:`overlay`:
    ``(1 - alpha) * image + alpha * 255 * colormap(map)``. Outside it, nothing was explained: the
    photo is shown grey, ``round(0.45 * luma + 0.55 * 150)`` with ``luma = 0.299 R + 0.587 G +
    0.114 B``, and a white line (``max(1, min(H, W) // 400)`` px) marks the edge of the crop.

    Args:
        original: the original image (anything :func:`to_pil` accepts) of ``geometry.original_size``,
            or already at ``size`` (from :func:`shrink_original`, to resize once for several maps).
        cam_map: ``(H, W)`` map in ``[0, 1]`` at ``geometry.input_size`` (a row of ``CAMResult.maps``).
        geometry: where the model's input lies in the original.
        colormap: a matplotlib colour map name.
        alpha: weight of the heat map, in ``[0, 1]``.
        size: ``(H, W)`` of the output (default: the original's size); the original is resized
            (antialiased) and the map placed on that grid.
        outline: draw the crop's edge when the input does not cover the whole image.

    Returns:
        An RGB image of ``size`` (or the original's size).

    Raises:
        ValueError: a map or original whose size does not match ``geometry``, NaN in the map, alpha
            outside ``[0, 1]``, or an unknown colour map.
    """
    a = _check_alpha(alpha)
    Image = _pil_image()
    img = to_pil(original)
    h0, w0 = geometry.original_size
    ho, wo = size or (h0, w0)
    if img.size not in ((w0, h0), (wo, ho)):
        raise ValueError(
            f"the original is {img.width}x{img.height} but the geometry is for {w0}x{h0}; pass the "
            "image the batch was loaded from (ImageBatch.originals)"
        )
    m = _map_to_numpy(cam_map, 2, "(H, W)")
    img = _resized(img, (ho, wo))
    values, inside = geometry.place(m, (ho, wo))
    lut = _lut(colormap) * 255.0
    base = np.asarray(img)
    out = np.empty_like(base)
    step = max(1, _ROWS_PER_CHUNK_PIXELS // max(1, wo))
    for r0 in range(0, ho, step):
        rows = slice(r0, min(ho, r0 + step))
        px = base[rows].astype(np.float64)
        heat = lut[_lut_index(values[rows], len(lut))]
        blend = (1.0 - a) * px + a * heat
        luma = px @ np.array([0.299, 0.587, 0.114])
        grey = (_GREY_KEEP * luma + (1.0 - _GREY_KEEP) * _GREY_LEVEL)[..., None]
        out[rows] = _to_uint8(np.where(inside[rows][..., None], blend, grey))
    result = Image.fromarray(out)
    if outline and not geometry.covers_whole_image:
        _draw_box(result, geometry.scaled_to((ho, wo)).box)
    return result


def shrink_original(original: ImageLike, size: tuple[int, int]) -> Image.Image:
    """The original as :func:`overlay_on_original` draws on it at ``size`` ``(H, W)``: RGB, resized
    (antialiased) unless it is that size already. Pass it to several :func:`overlay_on_original`
    calls with the same ``size`` to resize a large photo once instead of once per map."""
    return _resized(to_pil(original), size)


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    Image = _pil_image()
    ho, wo = size
    if (wo, ho) != img.size:
        img = img.resize((wo, ho), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return img


def _draw_box(image: Image.Image, box: tuple[float, float, float, float]) -> None:
    """A white rectangle along ``box`` (clipped to the image), in place."""
    ImageDraw, _ = _pil_draw()
    w, h = image.size
    width = max(1, min(w, h) // 400)
    left, top, right, bottom = box
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(w - 1, round(right) - 1), min(h - 1, round(bottom) - 1)
    if x1 <= x0 or y1 <= y0:
        return
    ImageDraw.Draw(image).rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=width)


# --------------------------------------------------------------------------- legends

#: What the colours mean when every map is scaled on its own (camlens's default).
PER_IMAGE_SCALE = "normalised per image: 0 = lowest, 1 = highest value of this map"


def shared_scale_text(scope: str) -> str:
    """The scale line for maps scaled together, e.g. ``shared_scale_text("all 30 gradcam maps")``."""
    return f"shared scale: 0 = lowest, 1 = highest value over {scope}"


@dataclass(frozen=True)
class Legend:
    """What a map shows, written under it by :func:`with_legend` (and in HTML captions).

    Attributes:
        method: the method (``"gradcam"``).
        layer: the layer explained.
        target: the class explained, e.g. ``"tabby cat (281)"``.
        score: the score, e.g. ``"logit 9.31, p 0.83"``.
        scale: what 0 and 1 of the colour bar mean (:data:`PER_IMAGE_SCALE` by default).
        colormap: the colour map of the map.
    """

    method: str = ""
    layer: str = ""
    target: str = ""
    score: str = ""
    scale: str = PER_IMAGE_SCALE
    colormap: str = "jet"

    def title(self) -> str:
        """``"gradcam at layer4 · tabby cat (281) · score 9.31"`` (empty parts left out)."""
        head = f"{self.method} at {self.layer}" if self.method and self.layer else self.method
        return " · ".join(p for p in (head, self.target, self.score) if p)


@functools.lru_cache(maxsize=32)
def _font(size: int) -> Any:
    """Pillow's default font at ``size`` px (loaded once per size: loading costs milliseconds)."""
    _, ImageFont = _pil_draw()
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_width(draw: Any, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def with_legend(image: ImageLike, legend: Legend, *, min_width: int = 240) -> Image.Image:
    """The image with a legend strip under it: title line, colour bar from 0 to 1, scale line.

    The strip is as wide as the image (at least ``min_width``; a narrower image is centred on a
    white canvas) and its text grows with the width (11 to 40 px). The image's own pixels are not
    changed: they are the top ``H`` rows of the result (offset to the centre when widened).

    Args:
        image: the overlay (anything :func:`to_pil` accepts).
        legend: what to write.
        min_width: the narrowest strip, in pixels.

    Returns:
        An RGB image ``max(W, min_width)`` wide and taller than the image by the strip.
    """
    Image = _pil_image()
    ImageDraw, _ = _pil_draw()
    img = to_pil(image)
    w, h = img.size
    width = max(w, int(min_width))
    fs = max(11, min(40, round(width / 42)))
    font, small = _font(fs), _font(max(10, fs - 2))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 2
    small_line = int(probe.textbbox((0, 0), "Ag", font=small)[3]) + 2
    pad = max(4, fs // 2)
    bar_h = max(8, round(0.8 * fs))
    title_lines = _wrap(probe, legend.title(), font, width - 2 * pad, max_lines=2)
    scale_lines = _wrap(probe, legend.scale, small, width - 2 * pad, max_lines=2)
    strip = line * len(title_lines) + pad // 2 + bar_h + pad // 2
    strip += pad + small_line * len(scale_lines) + pad
    canvas = Image.new("RGB", (width, h + strip), (255, 255, 255))
    canvas.paste(img, ((width - w) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = h + pad
    for text in title_lines:
        draw.text((pad, y), text, fill=(20, 20, 20), font=font)
        y += line
    y += pad // 2
    lo_w, hi_w = _text_width(draw, "0", font), _text_width(draw, "1", font)
    x0 = pad + lo_w + pad // 2
    x1 = width - pad - hi_w - pad // 2
    if x1 - x0 >= 8:
        canvas.paste(colorbar(legend.colormap, x1 - x0, bar_h), (x0, y))
        text_y = y + (bar_h - line) // 2
        draw.text((pad, text_y), "0", fill=(20, 20, 20), font=font)
        draw.text((x1 + pad // 2, text_y), "1", fill=(20, 20, 20), font=font)
    y += bar_h + pad // 2
    for text in scale_lines:
        draw.text((pad, y), text, fill=(90, 90, 90), font=small)
        y += small_line
    return canvas


def _wrap(draw: Any, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap into at most ``max_lines`` lines; the last one is shortened to fit."""
    lines: list[str] = []
    words = text.split()
    current = ""
    for i, word in enumerate(words):
        trial = f"{current} {word}".strip()
        if current and _text_width(draw, trial, font) > width:
            if len(lines) == max_lines - 1:
                rest = " ".join([current, *words[i:]])
                return [*lines, _fit_text(draw, rest, font, width)]
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, _fit_text(draw, current, font, width)] if current else lines


# --------------------------------------------------------------------------- compressed images


def thumbnail(image: ImageLike, max_side: int = 256) -> Image.Image:
    """A copy whose longer side is at most ``max_side`` (antialiased; smaller images unchanged)."""
    Image = _pil_image()
    img = to_pil(image)
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def to_image_uri(image: ImageLike, format: str = "jpeg", quality: int = 82) -> str:
    """Encode an image as a ``data:`` URI: ``"jpeg"`` or ``"webp"`` (lossy, ``quality``) or ``"png"``.

    Raises:
        ValueError: another format.
    """
    fmt = format.lower()
    if fmt == "png":
        return to_data_uri(image)
    if fmt not in ("jpeg", "webp"):
        raise ValueError(f"format must be 'jpeg', 'webp' or 'png', got {format!r}")
    Image = _pil_image()
    img = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt.upper(), quality=int(quality))
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
