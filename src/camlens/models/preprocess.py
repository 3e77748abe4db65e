"""How an image becomes a model's input: resize, centre crop and normalisation, with their geometry.

:class:`Preprocess` reproduces the evaluation transforms of torchvision's weights (resize the
shorter side, centre crop) and of timm's data configs (``crop_pct``, ``crop_mode`` ``center`` and
``squash``) exactly, pixel for pixel, and reports where the crop lies in the original
(:class:`camlens.images.Geometry`), so that maps can be drawn back on the full photo.

torch and Pillow are imported by the methods that use them, not with this module.

Example:
    >>> pre = Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256)
    >>> pre.describe()
    'resize shorter side to 256, centre crop to 224x224; mean 0.485,0.456,0.406; std 0.229,0.224,0.225'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from camlens.images import Geometry

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

__all__ = [
    "DEFAULT_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocess",
    "as_preprocess",
    "from_attributes",
    "parse_mean_std",
    "parse_size",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224

_RESAMPLE = {
    "nearest": 0,
    "lanczos": 1,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
}


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the model's input.

    :meth:`prepare` resizes (and centre-crops or pads) the image to what the model sees, as a
    ``(3, H, W)`` tensor in ``[0, 1]``, and returns where that view lies in the original;
    :meth:`normalize` then applies ``(x - mean) / std``.

    The resize and crop follow torchvision's ``Resize`` and ``CenterCrop`` exactly: a shorter side
    ``s`` turns an image of ``(h, w)``, ``w <= h``, into ``(int(s * h / w), s)``; the crop starts at
    ``int(round((size_r - size_c) / 2))``; a crop larger than the image pads it with zeros
    (``(d // 2, (d + 1) // 2)`` on either side).

    Attributes:
        size: ``(H, W)`` of the model's input.
        mean: per-channel mean subtracted after scaling to ``[0, 1]`` (``None``: none).
        std: per-channel divisor (``None``: none).
        resize: an int: the shorter side the image is resized to before a centre crop to ``size``;
            ``(h, w)``: the size it is resized to (aspect ratio not kept) before a centre crop;
            ``None``: resized straight to ``size`` (no crop, aspect ratio not kept).
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"``, ``"lanczos"``, ``"box"`` or
            ``"hamming"`` (Pillow's filters, which antialias when shrinking).
        transform: a callable PIL image -> ``(3, H, W)`` tensor in ``[0, 1]`` that replaces the
            resize and crop (a library's own transform without its normalisation); its geometry is
            unknown, so maps cannot be drawn on the original.
        source: where these settings come from, for messages.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    transform: Callable[[Any], Tensor] | None = field(default=None, compare=False)
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (H, W) with positive sides, got {self.size}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(_RESAMPLE)}"
            )

    # ---- geometry -----------------------------------------------------------------------------
    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """``(Hr, Wr)`` the whole image is resized to, for an original of ``(H0, W0)``."""
        h0, w0 = original_size
        if self.resize is None:
            return self.size
        if isinstance(self.resize, tuple):
            return (int(self.resize[0]), int(self.resize[1]))
        s = int(self.resize)
        if w0 <= h0:
            return (int(s * h0 / w0), s)
        return (s, int(s * w0 / h0))

    def geometry(self, original_size: tuple[int, int]) -> Geometry | None:
        """Where the input lies in an original of ``(H0, W0)`` (``None`` for a library transform)."""
        if self.transform is not None:
            return None
        hr, wr = self.resized_size(original_size)
        h, w = self.size
        return Geometry.from_resize_crop(
            original_size, (hr, wr), (_crop_start(hr, h), _crop_start(wr, w)), (h, w)
        )

    # ---- images -------------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> tuple[Tensor, Geometry | None]:
        """The image as the model sees it, and where that lies in the image.

        Args:
            image: a PIL image (converted to RGB).

        Returns:
            ``(view, geometry)``: ``(3, H, W)`` float32 in ``[0, 1]`` before normalisation, and the
            :class:`~camlens.images.Geometry` (``None`` with a library ``transform``).
        """
        import numpy as np
        import torch

        image = image.convert("RGB")
        if self.transform is not None:
            out = self.transform(image)
            if not isinstance(out, torch.Tensor):
                out = torch.as_tensor(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1)
            return out.float().clamp(0, 1).contiguous(), None
        original = (image.height, image.width)
        hr, wr = self.resized_size(original)
        if (wr, hr) != image.size:
            image = image.resize((wr, hr), _RESAMPLE[self.interpolation])
        h, w = self.size
        top, left = _crop_start(hr, h), _crop_start(wr, w)
        if (top, left, h, w) != (0, 0, hr, wr):
            image = image.crop((left, top, left + w, top + h))  # zeros outside: padding
        arr = np.asarray(image, dtype=np.float32) / 255.0
        # contiguous: a permuted HWC array is channels-last in memory, on which CPU convolutions of
        # a contiguous model run several times slower
        view = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        geo = Geometry.from_resize_crop(original, (hr, wr), (top, left), (h, w))
        return view, geo

    def view(self, image: Image.Image) -> Tensor:
        """The image as the model sees it: ``(3, H, W)`` float32 in ``[0, 1]``, before normalisation."""
        return self.prepare(image)[0]

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` on a ``(B, C, H, W)`` batch in ``[0, 1]`` (a new tensor)."""
        import torch

        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x

    def describe(self) -> str:
        """One line: resize, crop, mean and std, and where they come from."""
        h, w = self.size
        if self.transform is not None:
            how = f"library transform to {h}x{w}"
        elif self.resize is None:
            how = f"resize to {h}x{w}"
        elif isinstance(self.resize, tuple):
            how = f"resize to {self.resize[0]}x{self.resize[1]}, centre crop to {h}x{w}"
        else:
            how = f"resize shorter side to {self.resize}, centre crop to {h}x{w}"
        parts = [how]
        if self.mean is not None:
            parts.append("mean " + ",".join(f"{v:g}" for v in self.mean))
        if self.std is not None:
            parts.append("std " + ",".join(f"{v:g}" for v in self.std))
        src = f" ({self.source})" if self.source else ""
        return "; ".join(parts) + src

    # ---- other libraries' descriptions ------------------------------------------------------------
    @classmethod
    def from_torchvision(cls, transforms: Any, source: str = "") -> Preprocess:
        """From a torchvision weights' ``transforms()`` preset (``ImageClassification``).

        Example:
            >>> from types import SimpleNamespace  # the attributes of ResNet50_Weights.DEFAULT.transforms()
            >>> preset = SimpleNamespace(crop_size=[224], resize_size=[232], mean=[0.485, 0.456, 0.406],
            ...                          std=[0.229, 0.224, 0.225], interpolation="bilinear")
            >>> Preprocess.from_torchvision(preset).describe()
            'resize shorter side to 232, centre crop to 224x224; mean 0.485,0.456,0.406; std 0.229,0.224,0.225 (torchvision SimpleNamespace)'
        """
        crop = list(getattr(transforms, "crop_size", [DEFAULT_SIZE]))
        resize = list(getattr(transforms, "resize_size", [256]))
        interp = getattr(transforms, "interpolation", "bilinear")
        interp = str(getattr(interp, "value", interp))
        return cls(
            (int(crop[0]), int(crop[-1])),
            tuple(float(v) for v in getattr(transforms, "mean", IMAGENET_MEAN)),
            tuple(float(v) for v in getattr(transforms, "std", IMAGENET_STD)),
            resize=int(resize[0]) if len(resize) == 1 else (int(resize[0]), int(resize[1])),
            interpolation=interp if interp in _RESAMPLE else "bilinear",
            source=source or f"torchvision {type(transforms).__name__}",
        )

    @classmethod
    def from_timm_config(
        cls,
        config: Mapping[str, Any],
        source: str = "timm data config",
        fallback: Callable[[Any], Tensor] | None = None,
    ) -> Preprocess:
        """From a timm data config (``timm.data.resolve_data_config({}, model=model)``).

        ``crop_mode`` ``"center"`` (square inputs) and ``"squash"`` are reproduced exactly: the
        scale size is ``floor(size / crop_pct)``. Other modes (``"border"``, or ``"center"`` with a
        non-square input) need timm's own transform: pass it as ``fallback`` (without its
        ``Normalize``); its geometry is then unknown.

        Raises:
            ValueError: a mode that is not reproduced and no ``fallback``.
        """
        _, h, w = (int(v) for v in config["input_size"])
        crop_pct = float(config.get("crop_pct") or 0.875)
        mode = str(config.get("crop_mode") or "center")
        interp = str(config.get("interpolation") or "bilinear")
        interp = interp if interp in _RESAMPLE else "bilinear"
        mean = tuple(float(v) for v in config.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in config.get("std", IMAGENET_STD))
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        resize: int | tuple[int, int] | None
        if mode == "squash":
            resize = scale
        elif mode == "center" and scale[0] == scale[1]:
            resize = scale[0]
        elif fallback is not None:
            return cls((h, w), mean, std, interpolation=interp, transform=fallback, source=source)
        else:
            raise ValueError(
                f"timm crop_mode {mode!r} with input {h}x{w} is not reproduced; pass timm's transform "
                "as fallback"
            )
        return cls((h, w), mean, std, resize=resize, interpolation=interp, source=source)


def _crop_start(resized: int, crop: int) -> int:
    """torchvision ``center_crop``'s offset along one axis (negative: that much zero padding)."""
    if crop > resized:
        return -((crop - resized) // 2)
    return round((resized - crop) / 2.0)


def as_preprocess(obj: Any) -> Preprocess:
    """Turn what a user has at hand into a :class:`Preprocess`.

    Accepts a :class:`Preprocess`, anything with a ``preprocess`` attribute that is one (a
    :class:`~camlens.models.LoadedModel`), a torchvision weights' ``transforms()`` preset, or a timm
    data config dict.

    Raises:
        TypeError: anything else.
    """
    if isinstance(obj, Preprocess):
        return obj
    inner = getattr(obj, "preprocess", None)
    if isinstance(inner, Preprocess):
        return inner
    if hasattr(obj, "crop_size") and hasattr(obj, "resize_size"):
        return Preprocess.from_torchvision(obj)
    if isinstance(obj, Mapping) and "input_size" in obj:
        return Preprocess.from_timm_config(obj)
    raise TypeError(
        f"cannot make a pre-processing from a {type(obj).__name__}; pass a camlens Preprocess "
        "(e.g. Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256)), a model from "
        "camlens.load_model, a torchvision weights.transforms() or a timm data config"
    )


def from_attributes(model: Any, source: str) -> tuple[Preprocess, list[str] | None]:
    """Pre-processing and class names from a model's own ``input_size``, ``mean``, ``std``, ``classes``.

    Without them: 224x224 (resized, not cropped) and the ImageNet mean and std.
    """
    size = getattr(model, "input_size", None)
    try:
        if isinstance(size, int):
            hw = (int(size), int(size))
        elif isinstance(size, Sequence) and len(size) in (2, 3):
            hw = (int(size[-2]), int(size[-1]))
        else:
            hw = (DEFAULT_SIZE, DEFAULT_SIZE)
    except (TypeError, ValueError):
        hw = (DEFAULT_SIZE, DEFAULT_SIZE)
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    ok = isinstance(mean, Sequence) and isinstance(std, Sequence) and len(mean) == len(std) == 3
    classes = getattr(model, "classes", None)
    names = (
        [str(c) for c in classes]
        if isinstance(classes, Sequence) and not isinstance(classes, str)
        else None
    )
    pre = Preprocess(
        hw,
        tuple(float(v) for v in mean) if ok else IMAGENET_MEAN,  # type: ignore[union-attr]
        tuple(float(v) for v in std) if ok else IMAGENET_STD,  # type: ignore[union-attr]
        source=source if ok else f"{source}; ImageNet mean/std",
    )
    return pre, names


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> ``(224, 224)``; ``"224x320"`` -> ``(224, 320)`` (height x width).

    Raises:
        ValueError: not one or two positive integers.
    """
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or any(n < 1 for n in nums):
        raise ValueError(
            f"size {text!r} is not understood; use SIZE (e.g. 224) or HxW (e.g. 224x320)"
        )
    return (nums[0], nums[-1])


def parse_mean_std(text: str, what: str) -> tuple[float, ...]:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` -> a tuple of 3 floats.

    Raises:
        ValueError: not one or three numbers (or a zero std).
    """
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(
            f"--{what} {text!r} is not understood; give one number or three separated by commas"
        )
    if what == "std" and any(v == 0 for v in vals):
        raise ValueError(f"--std {text!r} contains a zero; the image is divided by it")
    return vals
