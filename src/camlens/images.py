"""Photos in, model inputs out, and the geometry that links the two.

A photograph becomes a model input through a resize, a crop and a normalisation. A map is honest
only when it is drawn back through the same geometry, on the photo the person knows, at its own
resolution. This module holds that path; the command line, notebooks and other front ends share it.

* :func:`load_image` opens one image (a path, bytes, a file object, a PIL image or an array) as an
  upright 8-bit RGB PIL image: EXIF orientation applied, 16-bit and float images scaled (not
  saturated), palette transparency resolved, a size limit against decompression bombs, and only the
  formats of :data:`IMAGE_FORMATS` (PNG, JPEG, WebP, BMP, TIFF, GIF) opened.
* :class:`Geometry` records which rectangle of the original the model's input shows;
  :meth:`Geometry.place` puts an input-resolution map back onto the original's pixel grid.
* :func:`load_images` turns sources into an :class:`ImageBatch`: the normalised batch for the
  model, the views (what the model saw, in ``[0, 1]``), the full-resolution originals and one
  :class:`Geometry` per image.
* :func:`read_image` is the decoding core of :func:`load_image` for files and bytes, safe to call
  from several threads at once (the web server decodes uploads with it).
* :func:`find_images` and :func:`probe_image` list folders and check files cheaply, before any work.

Only the standard library is imported with this module; Pillow, numpy and torch are imported by the
functions that need them.

Example:
    >>> g = Geometry.from_resize_crop((300, 451), (256, 384), (16, 80), (224, 224))
    >>> [round(v, 2) for v in g.box]  # the centre square of the photo, in its own pixels
    [93.96, 18.75, 357.04, 281.25]
    >>> round(g.explained_fraction, 3)
    0.51
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from camlens.models.preprocess import Preprocess

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "IMAGE_FORMATS_TEXT",
    "IMAGE_SUFFIXES",
    "Geometry",
    "ImageBatch",
    "ImageSource",
    "ImageTooLargeError",
    "find_images",
    "load_image",
    "load_images",
    "probe_image",
    "read_image",
]

#: The only image formats camlens opens (Pillow's format names), for files, bytes and uploads alike.
#: Pillow knows many more; some hand the data to other programs (EPS runs Ghostscript), so every other
#: format is refused before any of its code sees the data.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

#: :data:`IMAGE_FORMATS` as messages name them: ``"PNG, JPEG, WebP, BMP, TIFF or GIF"``.
IMAGE_FORMATS_TEXT: str = (
    ", ".join("WebP" if f == "WEBP" else f for f in IMAGE_FORMATS[:-1]) + " or " + IMAGE_FORMATS[-1]
)

#: File name endings treated as images when a folder is listed (files named explicitly may have any);
#: each is a format of :data:`IMAGE_FORMATS`.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

#: Largest image (width x height) opened by default: Pillow's own decompression-bomb threshold.
DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3

ImageSource: TypeAlias = (
    "str | os.PathLike[str] | bytes | Image.Image | np.ndarray | torch.Tensor | Any"
)
"""What :func:`load_image` accepts: a path, encoded bytes, a binary file object, a PIL image, an
``(H, W[, C])`` array or a ``(C, H, W)`` tensor."""

_NOT_AN_IMAGE = f"is not an image file camlens reads; pass {IMAGE_FORMATS_TEXT} images"
_PIL_LOCK = threading.Lock()


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the limit (a guard against decompression bombs).

    Attributes:
        size: ``(width, height)`` the file declares, when known.
        limit: the limit in pixels.
    """

    def __init__(self, name: str, size: tuple[int, int] | None, pixels: int, limit: int) -> None:
        what = f"{size[0]}x{size[1]} = " if size else ""
        super().__init__(
            f"{name} declares {what}{pixels / 1e6:.1f} million pixels, more than the limit of "
            f"{limit / 1e6:.1f} million (a guard against decompression bombs); if you trust the file, "
            f"raise the limit with --max-pixels {pixels} (max_pixels={pixels} in Python)"
        )
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where a model's input lies in the original image.

    Coordinates are continuous pixel coordinates of the upright original: pixel ``(row i, column j)``
    covers ``[j, j + 1) x [i, i + 1)``. The input of ``input_size`` shows the rectangle ``box`` of the
    original, resampled: input pixel ``u`` (column) lies at ``x = left + (u + 0.5) * (right - left) / W``.
    A box that reaches beyond the original means the input was padded there.

    Attributes:
        original_size: ``(H0, W0)`` of the upright original.
        input_size: ``(H, W)`` of the model's input.
        box: ``(left, top, right, bottom)``: the part of the original the input shows.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        h0, w0 = self.original_size
        h, w = self.input_size
        left, top, right, bottom = self.box
        if min(h0, w0, h, w) < 1:
            raise ValueError(
                f"sizes must be positive, got original {self.original_size}, input {self.input_size}"
            )
        if not (right > left and bottom > top) or not all(math.isfinite(v) for v in self.box):
            raise ValueError(
                f"box must be (left, top, right, bottom) with right > left, bottom > top; got {self.box}"
            )

    @classmethod
    def identity(cls, height: int, width: int) -> Geometry:
        """The input is the original itself (no resize, no crop)."""
        return cls((height, width), (height, width), (0.0, 0.0, float(width), float(height)))

    @classmethod
    def from_resize_crop(
        cls,
        original_size: tuple[int, int],
        resized_size: tuple[int, int],
        crop_origin: tuple[int, int],
        input_size: tuple[int, int],
    ) -> Geometry:
        """The geometry of "resize the whole image, then crop (or pad) a window".

        Args:
            original_size: ``(H0, W0)``.
            resized_size: ``(Hr, Wr)`` the whole image was resized to.
            crop_origin: ``(top, left)`` of the window in the resized image (negative: padding).
            input_size: ``(H, W)`` of the window.
        """
        h0, w0 = original_size
        hr, wr = resized_size
        top, left = crop_origin
        h, w = input_size
        sx, sy = w0 / wr, h0 / hr
        return cls(
            (int(h0), int(w0)),
            (int(h), int(w)),
            (left * sx, top * sy, (left + w) * sx, (top + h) * sy),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """The inverse of :meth:`as_dict`."""
        h0, w0 = data["original_size"]
        h, w = data["input_size"]
        box = tuple(float(v) for v in data["box"])
        return cls((int(h0), int(w0)), (int(h), int(w)), (box[0], box[1], box[2], box[3]))

    def as_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON and ``.npz`` files."""
        return {
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "box": list(self.box),
        }

    @property
    def covers_whole_image(self) -> bool:
        """The input shows the whole original and nothing else (a plain resize)."""
        h0, w0 = self.original_size
        return all(
            math.isclose(a, b, abs_tol=1e-6) for a, b in zip(self.box, (0, 0, w0, h0), strict=True)
        )

    @property
    def explained_fraction(self) -> float:
        """The share of the original's area that the input shows (1.0 for a plain resize)."""
        h0, w0 = self.original_size
        left, top, right, bottom = self.box
        iw = max(0.0, min(right, w0) - max(left, 0.0))
        ih = max(0.0, min(bottom, h0) - max(top, 0.0))
        return iw * ih / (w0 * h0)

    def to_original(self, u: float, v: float) -> tuple[float, float]:
        """Input coordinates ``(u, v)`` (column, row; continuous) -> original ``(x, y)``."""
        left, top, right, bottom = self.box
        h, w = self.input_size
        return left + u * (right - left) / w, top + v * (bottom - top) / h

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """Original coordinates ``(x, y)`` -> input ``(u, v)`` (the inverse of :meth:`to_original`)."""
        left, top, right, bottom = self.box
        h, w = self.input_size
        return (x - left) * w / (right - left), (y - top) * h / (bottom - top)

    def describe(self) -> str:
        """One line, e.g. ``"the model saw 300x300 px of the 451x300 original (66%)"``."""
        h0, w0 = self.original_size
        if self.covers_whole_image:
            h, w = self.input_size
            return f"the whole {w0}x{h0} original, resized to {w}x{h}"
        left, top, right, bottom = self.box
        iw = min(right, w0) - max(left, 0.0)
        ih = min(bottom, h0) - max(top, 0.0)
        return (
            f"the model saw {iw:.0f}x{ih:.0f} px of the {w0}x{h0} original "
            f"({100 * self.explained_fraction:.0f}%)"
        )

    def place(
        self, cam_map: Any, size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Put an input-resolution map onto the original's pixel grid.

        Each output pixel's centre is mapped into the input (through the box) and the map is read
        there by bilinear interpolation with ``align_corners=False`` semantics (edge values repeat),
        as ``torch.nn.functional.interpolate`` does. The map is not renormalised.

        Args:
            cam_map: ``(H, W)`` map (array or tensor) at :attr:`input_size`.
            size: ``(Ho, Wo)`` of the output grid, which covers the whole original (default:
                :attr:`original_size`; smaller for a reduced copy).

        Returns:
            ``(values, inside)``: ``(Ho, Wo)`` float32 map values (0 outside the box) and a boolean
            mask of the pixels the model's input covered.

        Raises:
            ValueError: the map is not ``input_size``.
        """
        import numpy as np

        m = _as_float_array(cam_map)
        if tuple(m.shape) != tuple(self.input_size):
            raise ValueError(
                f"the map is {tuple(m.shape)} but the geometry's input is {self.input_size}; pass the "
                "map at the input's resolution (a row of CAMResult.maps)"
            )
        ho, wo = size or self.original_size
        h0, w0 = self.original_size
        left, top, right, bottom = self.box
        h, w = self.input_size
        # output pixel centres in original coordinates, then in input coordinates
        x = (np.arange(wo, dtype=np.float64) + 0.5) * (w0 / wo)
        y = (np.arange(ho, dtype=np.float64) + 0.5) * (h0 / ho)
        u = (x - left) * (w / (right - left)) - 0.5
        v = (y - top) * (h / (bottom - top)) - 0.5
        inside_x = (x >= left) & (x < right)
        inside_y = (y >= top) & (y < bottom)
        cols = _linear_weights(u, w)
        rows = _linear_weights(v, h)
        # separable bilinear interpolation: first along columns, then along rows
        tmp = m[:, cols[0]] * cols[2] + m[:, cols[1]] * (1.0 - cols[2])
        out = tmp[rows[0], :] * rows[2][:, None] + tmp[rows[1], :] * (1.0 - rows[2][:, None])
        inside = inside_y[:, None] & inside_x[None, :]
        out = np.where(inside, out, 0.0).astype(np.float32)
        return out, inside

    def scaled_to(self, size: tuple[int, int]) -> Geometry:
        """The same geometry for a copy of the original resized to ``size`` ``(H, W)``."""
        h0, w0 = self.original_size
        h, w = size
        sx, sy = w / w0, h / h0
        left, top, right, bottom = self.box
        return Geometry((h, w), self.input_size, (left * sx, top * sy, right * sx, bottom * sy))


def _as_float_array(x: Any) -> np.ndarray:
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor on any device
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"a map must be (H, W), got shape {tuple(arr.shape)}")
    return arr


def _linear_weights(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``i0, i1`` and the weight of ``i0`` for linear interpolation at ``pos`` in ``0..n-1``."""
    import numpy as np

    p = np.clip(pos, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = p - i0
    return i0, i1, (1.0 - frac).astype(np.float32)


# --------------------------------------------------------------------------- one image


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency of the extras
        raise ImportError('reading images needs Pillow: pip install "camlens[viz]"') from exc
    return Image


def _source_name(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return repr(str(source))
    return f"the {type(source).__name__} image"


def _broken(name: str, exc: BaseException) -> ValueError:
    """The one error for an image whose format is allowed but whose data cannot be decoded."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return ValueError(
        f"{name} could not be decoded: it is truncated or corrupt ({detail}); check that the file "
        "is complete"
    )


@contextlib.contextmanager
def _opened(source: Any, max_pixels: int | None, name: str) -> Iterator[Image.Image]:
    """Open a path, bytes or file object with Pillow, checking the size limit on the header.

    Only the formats of :data:`IMAGE_FORMATS` are tried; any other is "not an image file". The
    warnings module is not touched (see :func:`read_image`).
    """
    Image = _pil()
    from PIL import UnidentifiedImageError

    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"no such image file: {str(p)!r}; check the path")
        fp: Any = p
    elif isinstance(source, bytes | bytearray | memoryview):
        fp = io.BytesIO(bytes(source))
    else:
        fp = source
    try:
        try:
            im = Image.open(fp, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            # Pillow refused on the header alone; read the header without its guard, so that
            # the message can give the size and our own limit (which the caller may raise) applies
            if hasattr(fp, "seek"):
                fp.seek(0)
            with _PIL_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
                try:
                    im = Image.open(fp, formats=IMAGE_FORMATS)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ValueError(f"{name} {_NOT_AN_IMAGE}") from None
    except PermissionError:
        raise
    except Exception as exc:  # a header so broken that Pillow fails in its own way
        raise _broken(name, exc) from exc
    try:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(name, (w, h), w * h, max_pixels)
        yield im
    finally:
        im.close()


def _load_pixels(im: Image.Image, name: str, max_pixels: int | None) -> None:
    """Decode an opened image whole, so that a truncated file fails here, not in a later step."""
    Image = _pil()
    w, h = im.size
    try:
        im.load()
    except Image.DecompressionBombError:  # pragma: no cover - checked on the header already
        raise ImageTooLargeError(name, (w, h), w * h, max_pixels or 0) from None
    except Exception as exc:
        raise _broken(name, exc) from exc


def read_image(
    source: str | os.PathLike[str] | bytes | Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode a file, encoded bytes or a binary file object into an upright 8-bit RGB PIL image.

    The one decoding path of :func:`load_image` and of the web server's uploads: open (only the
    formats of :data:`IMAGE_FORMATS`), check the pixel count on the header before decoding anything,
    decode the whole image, apply its EXIF orientation, and scale 16-bit and float images to 8 bits
    (see :func:`_to_rgb8`).

    It does not touch the ``warnings`` module (``warnings.catch_warnings`` is not thread-safe), so
    threads may call it at once; Pillow's ``DecompressionBombWarning`` for an image over
    ``PIL.Image.MAX_IMAGE_PIXELS`` but within ``max_pixels`` is left to the caller
    (:func:`load_image` silences it).

    Args:
        source: a path, encoded image bytes or a binary file object.
        max_pixels: refuse images whose header declares more than this many pixels (``None``: no
            limit).
        name: how messages name the image (default: the path, or "the bytes image").

    Raises:
        FileNotFoundError: a path that does not exist.
        ImageTooLargeError: more pixels than ``max_pixels`` (a ``ValueError``).
        ValueError: not an image of :data:`IMAGE_FORMATS`, or a truncated or corrupt file.
    """
    from PIL import ImageOps

    name = name or _source_name(source)
    with _opened(source, max_pixels, name) as im:
        _load_pixels(im, name, max_pixels)
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception as exc:  # EXIF data too broken to read
            raise _broken(name, exc) from exc
        return _to_rgb8(upright if upright is not None else im)


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, scaled rather than clipped.

    * 16-bit grey (``I;16*``) and 32-bit integer (``I``, read as 16-bit data) -> ``value / 257``;
    * float (``F``): values in ``[0, 1]`` x 255, in ``[0, 255]`` as they are, else min-max scaled;
    * palette images with transparency go through RGBA; alpha is dropped, as
      ``Image.convert("RGB")`` (what torchvision and timm loaders use) does;
    * every other mode: ``Image.convert("RGB")``.
    """
    Image = _pil()
    import numpy as np

    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(np.clip(arr, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        else:
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        grey = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in im.info:
        return im.convert("RGBA").convert("RGB")
    if mode == "RGB":
        return im.copy()
    return im.convert("RGB")


def _from_array(source: Any) -> Image.Image:
    """An ``(H, W)``/``(H, W, C)`` array or a ``(C, H, W)`` tensor -> RGB PIL image (16-bit scaled)."""
    import numpy as np

    if hasattr(source, "detach"):  # a torch tensor: reuse viz's checked conversion
        from camlens import viz

        return viz.to_pil(source)
    arr = np.asarray(source)
    if arr.dtype == np.uint16:
        arr = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    from camlens import viz

    return viz.to_pil(arr)


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as an upright 8-bit RGB PIL image, fully read (files are closed).

    Args:
        source: a path, encoded image bytes, a binary file object, a PIL image, an ``(H, W)`` /
            ``(H, W, 3|4)`` array (uint8, uint16 or float in ``[0, 1]``) or a ``(C, H, W)`` tensor
            in ``[0, 1]``.
        max_pixels: refuse images whose header declares more than this many pixels (``None``: no
            limit). The default is Pillow's decompression-bomb threshold, about 89.5 million.

    Returns:
        An RGB ``PIL.Image.Image``; EXIF orientation applied; 16-bit and float images scaled to
        8 bits (see :func:`_to_rgb8`).

    Raises:
        FileNotFoundError: a path that does not exist.
        ImageTooLargeError: more pixels than ``max_pixels`` (a ``ValueError``).
        ValueError: not an image of :data:`IMAGE_FORMATS`, or a truncated or corrupt file.
        TypeError: a source of another type.
    """
    Image = _pil()
    if isinstance(source, Image.Image):
        from PIL import ImageOps

        w, h = source.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError("the PIL image", (w, h), w * h, max_pixels)
        upright = ImageOps.exif_transpose(source)
        return _to_rgb8(upright if upright is not None else source)
    if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(
        source, "read"
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            return read_image(source, max_pixels=max_pixels)
    if hasattr(source, "shape"):
        return _from_array(source)
    raise TypeError(
        f"cannot load an image from a {type(source).__name__}; pass a path, bytes, a file object, a PIL "
        "image, an (H, W[, C]) array or a (C, H, W) tensor"
    )


def probe_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Check cheaply (the header only) that a file is an image camlens opens, within the size limit.

    Returns:
        ``(width, height)`` as stored (before any EXIF rotation).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageTooLargeError: more pixels than ``max_pixels``.
        ValueError: the file is not an image of :data:`IMAGE_FORMATS`.
    """
    Image = _pil()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
        with _opened(path, max_pixels, _source_name(path)) as im:
            w, h = im.size
            return int(w), int(h)


def find_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a list of image files.

    A folder contributes its files whose names end in one of :data:`IMAGE_SUFFIXES` (not recursive,
    sorted by name); a file named explicitly is taken as it is (it is checked when it is loaded).
    Duplicates are dropped, the first occurrence kept.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no path was given, or a folder holds no image.
    """
    if not paths:
        raise ValueError("no input given; pass image files or folders")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"folder {str(p)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                    "pass image files or a folder with images"
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {str(p)!r}; check the path")
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- batches


@dataclass
class ImageBatch:
    """Images ready for a model, with what is needed to draw maps back on the originals.

    Attributes:
        x: ``(B, 3, H, W)`` the normalised model input, on the requested device.
        views: ``(B, 3, H, W)`` float32 in ``[0, 1]`` on the CPU: what the model saw, before
            normalisation.
        originals: the ``B`` upright RGB originals at full resolution.
        geometry: per image, where the input lies in the original (``None`` when a library
            transform of unknown geometry made the view).
        names: per image, a display name (the file name for paths).
        preprocess: the pre-processing that made ``x``.
    """

    x: torch.Tensor
    views: torch.Tensor
    originals: list[Image.Image]
    geometry: list[Geometry | None]
    names: list[str]
    preprocess: Preprocess
    sources: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.originals)

    def to(self, device: Any) -> ImageBatch:
        """The same batch with ``x`` on ``device``."""
        return ImageBatch(
            self.x.to(device),
            self.views,
            self.originals,
            self.geometry,
            self.names,
            self.preprocess,
            self.sources,
        )

    def __repr__(self) -> str:
        return f"ImageBatch({len(self)} images, x={tuple(self.x.shape)}, names={self.names[:4]}" + (
            "...)" if len(self) > 4 else ")"
        )


def _display_name(source: Any, i: int) -> str:
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    return f"image {i}"


def load_images(
    images: ImageSource | Sequence[ImageSource],
    preprocess: Any,
    *,
    device: Any = None,
    names: Sequence[str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageBatch:
    """Load images into a model's input batch, keeping each one's original and geometry.

    Args:
        images: one source or a sequence of sources (see :func:`load_image`).
        preprocess: how images become the model's input: a
            :class:`~camlens.models.preprocess.Preprocess`, a
            :class:`~camlens.models.LoadedModel`, a torchvision weights' ``transforms()`` preset or
            a timm data config (``timm.data.resolve_data_config(model=...)``).
        device: where ``x`` goes (default: the CPU).
        names: display names (default: file names, or ``"image i"``).
        max_pixels: the size limit of :func:`load_image`.

    Returns:
        An :class:`ImageBatch`.

    Raises:
        ValueError, FileNotFoundError, TypeError: as :func:`load_image`; also an empty list, or
            ``names`` of another length.

    Example:
        >>> import numpy as np
        >>> from camlens.models import Preprocess
        >>> pre = Preprocess((4, 4), resize=4)  # shorter side to 4, centre crop 4x4
        >>> batch = load_images([np.zeros((6, 12, 3), np.uint8)], pre)
        >>> tuple(batch.x.shape), batch.geometry[0].box
        ((1, 3, 4, 4), (3.0, 0.0, 9.0, 6.0))
    """
    import torch

    from camlens.models.preprocess import as_preprocess

    pre = as_preprocess(preprocess)
    Image = _pil()
    single = isinstance(images, str | os.PathLike | bytes | Image.Image) or (
        hasattr(images, "shape") and len(getattr(images, "shape", ())) in (2, 3)
    )
    sources: list[Any] = [images] if single else list(images)  # type: ignore[arg-type]
    if not sources:
        raise ValueError("no image given; pass at least one")
    if names is not None and len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} images; pass one per image")
    originals, views, geometry = [], [], []
    for s in sources:
        im = load_image(s, max_pixels=max_pixels)
        view, geo = pre.prepare(im)
        originals.append(im)
        views.append(view)
        geometry.append(geo)
    v = torch.stack(views)
    x = pre.normalize(v)
    if device is not None:
        x = x.to(device)
    shown = (
        list(names) if names is not None else [_display_name(s, i) for i, s in enumerate(sources)]
    )
    return ImageBatch(x, v, originals, geometry, shown, pre, sources)
