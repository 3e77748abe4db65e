"""Models named by a short spec string, with the pre-processing they expect.

Specs (what ``camlens --model`` accepts):

=========================  =======================================================================
``demo``                   the bundled demo classifier (:mod:`camlens.demo`), offline
``torchvision:NAME``       ``torchvision.models.get_model(NAME)``; pre-processing from the weights' transforms
``timm:NAME``              ``timm.create_model(NAME)``; pre-processing from ``resolve_data_config`` +
                           ``create_transform``
``hf:NAME``                ``transformers.AutoModelForImageClassification`` (a hub id or a local folder);
                           pre-processing from its ``AutoImageProcessor``
``torchscript:FILE``       ``torch.jit.load(FILE)``
``module:callable``        ``callable()`` from an importable module or a ``.py`` file; must return an
                           ``nn.Module`` (an ``nn.Module`` instance is used as it is)
=========================  =======================================================================

Pretrained weights of torchvision, timm and Hugging Face models come from the library's own download
(cached); offline, pass a local state dict with ``weights=``. Optional libraries are imported only when
their spec is used.

TorchScript runs its submodules in compiled code, where Python hooks never fire. :func:`load_model`
therefore wraps a TorchScript module so that each container's ``forward`` (its TorchScript code, which is
Python syntax) runs in Python and calls its children through ``nn.Module.__call__``; layers can then be
hooked like those of any module. A container whose code Python cannot run stays compiled (its children
are then not hookable), and the wrapper is checked against the compiled model on a probe input.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import operator
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "Preprocess",
    "load_model",
    "load_state_dict_file",
    "parse_mean_std",
    "parse_size",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_DEFAULT_SIZE = 224
_KINDS = ("demo", "torchvision", "timm", "hf", "torchscript")
SPEC_HELP = "demo, torchvision:NAME, timm:NAME, hf:NAME, torchscript:FILE or module:callable"


# --------------------------------------------------------------------------- pre-processing


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the model's input.

    :meth:`view` resizes (and centre-crops) the image to what the model sees, as a ``(3, H, W)`` tensor
    in ``[0, 1]`` (overlays are drawn on it, so they line up with the maps); :meth:`normalize` then
    applies ``(x - mean) / std``.

    Attributes:
        size: ``(H, W)`` of the model's input.
        mean: per-channel mean subtracted after scaling to ``[0, 1]`` (``None``: none).
        std: per-channel divisor (``None``: none).
        resize: shorter side the image is resized to before a centre crop to ``size``; ``None`` resizes
            straight to ``size`` (no crop, the aspect ratio is not kept).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        transform: a callable PIL image -> ``(3, H, W)`` tensor in ``[0, 1]`` that replaces the resize
            and crop (a library's own transform without its normalisation).
        source: where these settings come from, for messages.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    interpolation: str = "bilinear"
    transform: Callable[[Any], Tensor] | None = field(default=None, compare=False)
    source: str = ""

    def view(self, image: Any) -> Tensor:
        """The image as the model sees it: ``(3, H, W)`` float32 in ``[0, 1]``, before normalisation."""
        from PIL import Image

        image = image.convert("RGB")
        if self.transform is not None:
            out = self.transform(image)
            if not isinstance(out, Tensor):
                out = torch.as_tensor(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1)
            return out.float().clamp(0, 1)
        resample = {
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST,
        }.get(self.interpolation, Image.Resampling.BILINEAR)
        h, w = self.size
        if self.resize is None:
            image = image.resize((w, h), resample)
        else:
            scale = self.resize / min(image.size)
            new = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
            image = image.resize(new, resample)
            left, top = (image.width - w) // 2, (image.height - h) // 2
            image = image.crop((left, top, left + w, top + h))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` on a ``(B, C, H, W)`` batch in ``[0, 1]`` (a new tensor)."""
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x

    def describe(self) -> str:
        """One line: size, crop, mean and std."""
        h, w = self.size
        how = (
            "resize"
            if self.resize is None
            else f"resize shorter side to {self.resize}, centre crop"
        )
        if self.transform is not None:
            how = "library transform"
        parts = [f"{how} to {h}x{w}"]
        if self.mean is not None:
            parts.append("mean " + ",".join(f"{v:g}" for v in self.mean))
        if self.std is not None:
            parts.append("std " + ",".join(f"{v:g}" for v in self.std))
        src = f" ({self.source})" if self.source else ""
        return "; ".join(parts) + src


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


# --------------------------------------------------------------------------- loaded model


@dataclass
class LoadedModel:
    """A model ready to explain, with its pre-processing and class names.

    Attributes:
        model: the ``nn.Module`` in eval mode on ``device``.
        spec: the spec it was loaded from.
        preprocess: how images become its input.
        classes: class names by index, if known.
        device: where it runs.
        weights: a description of the weights used.
    """

    model: nn.Module
    spec: str
    preprocess: Preprocess
    classes: list[str] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    weights: str = ""

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (``"class 7"`` when names are unknown)."""
        if self.classes is not None and 0 <= index < len(self.classes):
            return str(self.classes[index])
        return f"class {index}"

    def class_index(self, name: str) -> int | None:
        """The index of a class by name (case-insensitive), or ``None``."""
        if self.classes is None:
            return None
        low = name.strip().lower()
        for i, c in enumerate(self.classes):
            if str(c).lower() == low:
                return i
        return None

    def dummy_input(self) -> Tensor:
        """A ``(1, 3, H, W)`` zero input of the model's input size on its device."""
        h, w = self.preprocess.size
        return torch.zeros(1, 3, h, w, device=self.device)


def _close(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f" Closest names: {', '.join(close)}." if close else ""


def _import_optional(name: str, spec_kind: str) -> Any:
    """Import an optional library, with an error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"--model {spec_kind}:NAME needs {name}: pip install {name} ({exc})"
        ) from exc
    except Exception as exc:  # a broken install (e.g. a torchvision built for another torch)
        raise ImportError(
            f"could not import {name} ({type(exc).__name__}: {exc}); is it built for this torch version?"
        ) from exc


# --------------------------------------------------------------------------- state dicts


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save(model.state_dict(), path)`` (on the CPU).

    Checkpoints that wrap it (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix (``DataParallel``) is removed; ``.safetensors`` files are read with safetensors.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {str(p)!r}; check the --weights path")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read weights from {str(p)!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "save them with torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(p)!r} holds a {type(obj).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    sizes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, sizes


def _head_classes(model: nn.Module, sd: Mapping[str, Tensor]) -> int | None:
    """The number of classes of ``sd`` when it differs from ``model`` only in the classifier's rows."""
    missing, unexpected, _ = _mismatch(model, sd)
    if missing or unexpected:
        return None
    own = model.state_dict()
    diff = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if not diff:
        return None
    rows = {int(sd[k].shape[0]) for k in diff}
    same_rest = all(tuple(sd[k].shape[1:]) == tuple(own[k].shape[1:]) for k in diff)
    return rows.pop() if len(rows) == 1 and same_rest and len(diff) <= 2 else None


def _apply_state_dict(model: nn.Module, sd: Mapping[str, Tensor], what: str, path: str) -> None:
    missing, unexpected, sizes = _mismatch(model, sd)
    if missing or unexpected or sizes:
        parts = []
        if sizes:
            parts.append(f"{len(sizes)} shape mismatch(es), e.g. {sizes[0]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise ValueError(
            f"weights {path!r} do not fit {what}: {'; '.join(parts)}; pass weights saved from this "
            "architecture (or the --model they were trained with)"
        )
    try:
        model.load_state_dict(dict(sd))
    except RuntimeError as exc:
        raise ValueError(
            f"weights {path!r} do not fit {what}: {' '.join(str(exc).split())[:300]}"
        ) from exc


def _download_error(spec: str, exc: Exception) -> ValueError:
    msg = " ".join(str(exc).split())[:200]
    return ValueError(
        f"could not get the pretrained weights of {spec} ({type(exc).__name__}: {msg}); they are downloaded "
        "on first use, which needs a network connection. Offline, pass a local state dict with --weights FILE"
    )


# --------------------------------------------------------------------------- per kind


def _load_demo(weights: str | None) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    from camlens import demo

    if weights is None:
        model = demo.load_model()
    else:
        model = demo.DemoNet()
        sd = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_state_dict_file(weights).items()
        }
        _apply_state_dict(model, sd, "the demo model (DemoNet)", weights)
    size = int(getattr(model, "input_size", 96))
    pre = Preprocess((size, size), source="demo model (normalises inside)")
    return model, pre, list(demo.CLASSES), weights or "bundled"


def _load_torchvision(
    name: str, weights: str | None
) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    tv = _import_optional("torchvision", "torchvision")
    models = tv.models
    known = models.list_models()
    if name not in known:
        raise ValueError(
            f"unknown torchvision model {name!r}.{_close(name, known)} List them with torchvision.models.list_models()"
        )
    try:
        wenum = models.get_model_weights(name)
        default = wenum.DEFAULT
    except Exception:
        default = None
    classes = list(default.meta.get("categories") or []) or None if default is not None else None
    pre = Preprocess(
        (_DEFAULT_SIZE, _DEFAULT_SIZE),
        IMAGENET_MEAN,
        IMAGENET_STD,
        resize=256,
        source="ImageNet defaults",
    )
    if default is not None:
        t = default.transforms()
        crop = list(getattr(t, "crop_size", [_DEFAULT_SIZE]))
        resize = list(getattr(t, "resize_size", [256]))
        interp = str(getattr(getattr(t, "interpolation", None), "value", "bilinear"))
        pre = Preprocess(
            (crop[0], crop[-1]),
            tuple(getattr(t, "mean", IMAGENET_MEAN)),
            tuple(getattr(t, "std", IMAGENET_STD)),
            resize=resize[0],
            interpolation=interp,
            source=f"torchvision {default} transforms",
        )
    spec = f"torchvision:{name}"
    if weights is None:
        if default is None:
            raise ValueError(
                f"{spec} has no pretrained weights in torchvision; pass a state dict with --weights FILE"
            )
        try:
            _fetch_torchvision_weights(default)
            model = models.get_model(name, weights=default)
        except Exception as exc:
            raise _download_error(spec, exc) from exc
        return model, pre, classes, str(default)
    sd = load_state_dict_file(weights)
    model = models.get_model(name, weights=None)
    n = _head_classes(model, sd)
    if n is not None:  # fine-tuned weights with their own number of classes
        model = models.get_model(name, weights=None, num_classes=n)
        classes = None
    _apply_state_dict(model, sd, spec, weights)
    return model, pre, classes, weights


def _fetch_torchvision_weights(weights: Any) -> None:
    """Download a torchvision weights file into torch.hub's cache unless it is there.

    torch.hub's own loader prints a "Downloading" line before it knows whether the download works; this
    shows only the progress bar once bytes arrive, so an offline failure leaves just the error.
    """
    from urllib.parse import urlparse

    url = str(weights.url)
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if dest.is_file():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), progress=sys.stderr.isatty())


def _hub_offline_if_unreachable(host: str = "huggingface.co") -> None:
    """Switch the Hugging Face hub to offline mode when it cannot be reached (checked once, 3 s).

    Offline, ``huggingface_hub`` retries every request for about a minute and logs each attempt; in
    offline mode it uses its cache at once and fails at once when a file is not there.
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE"):
        return
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def _load_timm(
    name: str, weights: str | None
) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    if weights is None:
        _hub_offline_if_unreachable()
    timm = _import_optional("timm", "timm")
    if not timm.is_model(name):
        base = name.split(".")[0]
        raise ValueError(
            f"unknown timm model {name!r}.{_close(base, timm.list_models())} List them with timm.list_models()"
        )
    spec = f"timm:{name}"
    if weights is None:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise _download_error(spec, exc) from exc
    else:
        sd = load_state_dict_file(weights)
        model = timm.create_model(name, pretrained=False)
        n = _head_classes(model, sd)
        if n is not None:
            model = timm.create_model(name, pretrained=False, num_classes=n)
        _apply_state_dict(model, sd, spec, weights)
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    tf = create_transform(**cfg)
    steps = [s for s in getattr(tf, "transforms", [tf]) if type(s).__name__ != "Normalize"]

    def view(image: Any) -> Tensor:
        for s in steps:
            image = s(image)
        return image

    _, h, w = cfg["input_size"]
    pre = Preprocess(
        (int(h), int(w)),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        transform=view,
        source="timm resolve_data_config + create_transform",
    )
    classes = None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            classes = [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:
        classes = None
    if classes is not None and len(classes) != getattr(model, "num_classes", len(classes)):
        classes = None
    return model, pre, classes, weights or "pretrained"


def _load_hf(name: str, weights: str | None) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    if not Path(name).is_dir():
        _hub_offline_if_unreachable()
    tf = _import_optional("transformers", "hf")
    spec = f"hf:{name}"
    try:
        if weights is None:
            model = tf.AutoModelForImageClassification.from_pretrained(name)
        else:
            config = tf.AutoConfig.from_pretrained(name)
            model = tf.AutoModelForImageClassification.from_config(config)
    except Exception as exc:
        if weights is None:
            raise _download_error(spec, exc) from exc
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"could not get the configuration of {spec} ({type(exc).__name__}: {msg}); --weights needs "
            "the architecture too: pass a local folder written by save_pretrained as hf:FOLDER"
        ) from exc
    if weights is not None:
        _apply_state_dict(model, load_state_dict_file(weights), spec, weights)
    size = getattr(getattr(model, "config", None), "image_size", _DEFAULT_SIZE)
    h = w = int(size if isinstance(size, int) else size[0])
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: int | None = None
    source = "config image_size, mean/std 0.5"
    try:
        proc = tf.AutoImageProcessor.from_pretrained(name)
        mean = tuple(getattr(proc, "image_mean", mean))
        std = tuple(getattr(proc, "image_std", std))
        sz = dict(getattr(proc, "size", {}) or {})
        crop = dict(getattr(proc, "crop_size", {}) or {})
        if getattr(proc, "do_center_crop", False) and crop.get("height"):
            h, w = int(crop["height"]), int(crop["width"])
            resize = int(sz.get("shortest_edge", max(h, w)))
        elif "height" in sz:
            h, w = int(sz["height"]), int(sz["width"])
        elif "shortest_edge" in sz:
            h = w = int(sz["shortest_edge"])
        source = f"{type(proc).__name__}"
    except Exception:
        pass
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    classes = [
        str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(len(id2label))
    ] or None
    return (
        model,
        Preprocess((h, w), mean, std, resize=resize, source=source),
        classes,
        weights or "pretrained",
    )


def _attr_preprocess(model: Any, source: str) -> tuple[Preprocess, list[str] | None]:
    """Pre-processing from a model's own ``input_size``, ``mean``, ``std`` and ``classes`` attributes."""
    size = getattr(model, "input_size", None)
    try:
        if isinstance(size, int):
            hw = (int(size), int(size))
        elif isinstance(size, Sequence) and len(size) in (2, 3):
            hw = (int(size[-2]), int(size[-1]))
        else:
            hw = (_DEFAULT_SIZE, _DEFAULT_SIZE)
    except (TypeError, ValueError):
        hw = (_DEFAULT_SIZE, _DEFAULT_SIZE)
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


def _load_module(
    spec: str, weights: str | None
) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise ValueError(f"model spec {spec!r} is not understood; use {SPEC_HELP}")
    if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise FileNotFoundError(f"no such Python file: {mod_name!r} (from --model {spec})")
        uniq = f"camlens_user_{abs(hash(str(path.resolve())))}"
        ispec = importlib.util.spec_from_file_location(uniq, path)
        if ispec is None or ispec.loader is None:
            raise ValueError(f"cannot import {mod_name!r} as a Python module")
        module = importlib.util.module_from_spec(ispec)
        sys.modules[uniq] = module
        ispec.loader.exec_module(module)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(
                0, os.getcwd()
            )  # like `python -m`: modules in the working folder import
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and mod_name.startswith(exc.name):
                raise ValueError(
                    f"unknown model {spec!r}: no module named {mod_name!r}; use {SPEC_HELP} "
                    "(module:callable needs the module on PYTHONPATH or a path to a .py file)"
                ) from exc
            raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise ValueError(
                f"module {mod_name!r} has no attribute {attr!r}.{_close(attr, public)}"
            )
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{spec} returned a {type(model).__name__}, not a torch.nn.Module; return the model"
        )
    if weights is not None:
        _apply_state_dict(model, load_state_dict_file(weights), spec, weights)
    pre, classes = _attr_preprocess(model, f"{spec} attributes")
    return model, pre, classes, weights or "as returned"


def _load_torchscript(
    file: str, weights: str | None, device: torch.device
) -> tuple[nn.Module, Preprocess, list[str] | None, str]:
    p = Path(file)
    if not p.is_file():
        raise FileNotFoundError(
            f"TorchScript file not found: {file!r}; check the path after torchscript:"
        )
    try:
        sm = torch.jit.load(str(p), map_location=device)
    except Exception as exc:
        raise ValueError(
            f"{file!r} is not a TorchScript file ({type(exc).__name__}: {' '.join(str(exc).split())[:150]}); "
            "save one with torch.jit.save(torch.jit.script(model), path)"
        ) from exc
    if weights is not None:
        _apply_state_dict(sm, load_state_dict_file(weights), f"torchscript:{file}", weights)
    pre, classes = _attr_preprocess(sm, "TorchScript attributes")
    sm.eval()
    return sm, pre, classes, weights or "in the file"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, name)``; kind is one of ``demo``, ``torchvision``, ``timm``,
    ``hf``, ``torchscript`` or ``module``.

    Raises:
        ValueError: a spec of no known form.
    """
    spec = spec.strip()
    if spec == "demo":
        return "demo", ""
    kind, sep, name = spec.partition(":")
    if sep and kind in _KINDS and kind != "demo":
        if not name:
            raise ValueError(f"model spec {spec!r} names no model; e.g. {kind}:resnet18")
        return kind, name
    if sep and name and kind:
        return "module", spec
    hint = ""
    if Path(spec).is_file():
        hint = f" (for a TorchScript file use torchscript:{spec}; for a state dict use --weights)"
    raise ValueError(f"unknown model {spec!r}{hint}; use {SPEC_HELP}")


def load_model(
    spec: str = "demo",
    weights: str | None = None,
    *,
    device: str | torch.device = "cpu",
    size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """Load a model from a spec (see the module docstring) in eval mode.

    Args:
        spec: the model spec.
        weights: a local state dict to load instead of the pretrained weights.
        device: where the model runs.
        size: ``(H, W)`` of the input, overriding the model's own.
        mean: normalisation mean, overriding the model's own.
        std: normalisation std, overriding the model's own.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ValueError: an unknown spec or model name, weights that do not fit, pretrained weights that
            cannot be downloaded.
        FileNotFoundError: a weights, TorchScript or Python file that does not exist.
        ImportError: the library the spec needs is missing or broken.
    """
    dev = torch.device(device)
    kind, name = parse_spec(spec)
    if kind == "demo":
        model, pre, classes, wdesc = _load_demo(weights)
    elif kind == "torchvision":
        model, pre, classes, wdesc = _load_torchvision(name, weights)
    elif kind == "timm":
        model, pre, classes, wdesc = _load_timm(name, weights)
    elif kind == "hf":
        model, pre, classes, wdesc = _load_hf(name, weights)
    elif kind == "torchscript":
        model, pre, classes, wdesc = _load_torchscript(name, weights, dev)
    else:
        model, pre, classes, wdesc = _load_module(name, weights)
    if size is not None or mean is not None or std is not None:
        pre = replace(
            pre,
            size=size or pre.size,
            resize=None if size is not None else pre.resize,
            transform=None if size is not None else pre.transform,
            mean=tuple(mean) if mean is not None else pre.mean,
            std=tuple(std) if std is not None else pre.std,
            source="command line" if size is not None else pre.source,
        )
    model = model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        model = script_to_hookable(model, torch.zeros(1, 3, *pre.size, device=dev))
    else:
        model = model.to(dev)
    return LoadedModel(model, spec, pre, classes, dev, wdesc)


# --------------------------------------------------------------------------- TorchScript


class _Fallback(Exception):
    """A wrapped container whose TorchScript code failed to run as Python."""

    def __init__(self, proxy: ScriptProxy) -> None:
        super().__init__(proxy)
        self.proxy = proxy


class _TorchNamespace:
    """``torch`` as TorchScript code sees it: ``torch.__is__`` and friends are Python operators."""

    _EXTRA: typing.ClassVar[dict[str, Any]] = {
        "__is__": operator.is_,
        "__isnot__": operator.is_not,
        "__not__": operator.not_,
        "len": len,
    }

    def __getattr__(self, name: str) -> Any:
        if name in self._EXTRA:
            return self._EXTRA[name]
        for where in (torch, torch._C._nn, torch.nn.functional):
            if hasattr(where, name):
                return getattr(where, name)
        return getattr(torch.ops.aten, name)


class _TorchRoot:
    """``__torch__.torch.nn.functional.relu`` in TorchScript code -> ``torch.nn.functional.relu``."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        path = (*self._path, name)
        if path[0] != "torch":
            raise AttributeError(f"__torch__.{'.'.join(path)} cannot run as Python")
        obj: Any = torch
        for part in path[1:]:
            if not hasattr(obj, part):
                return _TorchRoot(path)
            obj = getattr(obj, part)
        return obj


def _script_globals() -> dict[str, Any]:
    return {
        "torch": _TorchNamespace(),
        "__torch__": _TorchRoot(),
        "ops": torch.ops,
        "Tensor": Tensor,
        "List": list,
        "Dict": dict,
        "Tuple": tuple,
        "Optional": typing.Optional,
        "NoneType": type(None),
        "Device": torch.device,
        "math": math,
        "annotate": lambda _t, v: v,
        "unchecked_cast": lambda _t, v: v,
        "uninitialized": lambda _t: None,
        "isinstance": isinstance,
        "getattr": getattr,
    }


class _Callee:
    """What ``self.child`` is inside re-run TorchScript code: ``.forward`` goes through hooks.

    A traced module called several times gets methods ``forward1``, ``forward2``, ...; they too run
    through ``__call__`` (so hooks fire), with the method to use set for that one call.
    """

    def __init__(self, module: ScriptProxy) -> None:
        self._module = module
        self.forward = module.__call__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        module = self._module
        if name.startswith("forward") and module.python and module._method(name) is not None:

            def call(*args: Any, **kwargs: Any) -> Any:
                object.__setattr__(module, "_active", name)
                try:
                    return module(*args, **kwargs)
                finally:
                    object.__setattr__(module, "_active", "forward")

            return call
        return getattr(module._script, name)


class _SelfView:
    """``self`` inside re-run TorchScript code: children through hooks, methods re-run, rest from the script module."""

    def __init__(self, proxy: ScriptProxy) -> None:
        self._proxy = proxy

    def __getattr__(self, name: str) -> Any:
        proxy = self._proxy
        if name in proxy._modules:
            child = proxy._modules[name]
            assert isinstance(child, ScriptProxy)
            return _Callee(child)
        if name == "training":
            return proxy.training
        fn = proxy._method(name)
        if fn is not None:
            return lambda *a, **k: fn(self, *a, **k)
        return getattr(proxy._script, name)


class ScriptProxy(nn.Module):
    """A TorchScript module whose containers run their code in Python, so that hooks on children fire.

    The children are ``ScriptProxy`` objects under the same names, so layer names are those of the
    scripted model. Leaves (modules without children) run compiled. Parameters and buffers are the
    script module's own tensors.

    Args:
        script: a ``torch.jit.ScriptModule`` (``RecursiveScriptModule``).
    """

    _script: nn.Module
    _methods: dict[str, Callable[..., Any] | None]
    _active: str

    def __init__(self, script: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)
        object.__setattr__(self, "_methods", {})
        object.__setattr__(self, "_active", "forward")
        self.python = False
        for name, child in script.named_children():
            self.add_module(name, ScriptProxy(child))
        for name, p in script.named_parameters(recurse=False):
            self._parameters[name] = p
        for name, b in script.named_buffers(recurse=False):
            self._buffers[name] = b
        self.training = script.training
        # Traced submodules cannot be called from Python at all, so their leaves re-run too.
        if self._modules or isinstance(script, torch.jit.TracedModule):
            self.python = self._method("forward") is not None

    def _method(self, name: str) -> Callable[..., Any] | None:
        cache: dict[str, Callable[..., Any] | None] = self._methods
        if name in cache:
            return cache[name]
        fn = None
        script = self._script
        try:
            has = script._c._has_method(name)  # type: ignore[union-attr,operator]
        except Exception:
            has = False
        if has:
            try:
                code, consts = script._c._get_method(name).code_with_constants  # type: ignore[union-attr,operator]
                scope = _script_globals()
                scope["CONSTANTS"] = (
                    SimpleNamespace(**consts) if isinstance(consts, dict) else consts
                )
                exec(compile(code, f"<torchscript {type(script).__name__}.{name}>", "exec"), scope)
                fn = scope.get(name)
            except Exception:
                fn = None
        cache[name] = fn
        return fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        fn = self._method(self._active) if self.python else None
        if fn is None:
            if self._active != "forward":
                return getattr(self._script, self._active)(*args, **kwargs)
            return self._script(*args, **kwargs)
        try:
            return fn(_SelfView(self), *args, **kwargs)
        except _Fallback:
            raise
        except Exception as exc:
            raise _Fallback(self) from exc

    @property
    def original_name(self) -> str:
        """The class name of the scripted module (``Conv2d``, ``Sequential``, ...)."""
        return str(getattr(self._script, "original_name", "ScriptModule"))

    def extra_repr(self) -> str:
        return f"{self.original_name}, python={self.python}"


def script_to_hookable(script: nn.Module, probe: Tensor) -> nn.Module:
    """Wrap a TorchScript module in :class:`ScriptProxy` objects, checked on ``probe``.

    Containers whose code cannot run as Python are left compiled. When the wrapped model's output on
    ``probe`` differs from the compiled one, the module is returned unwrapped (hooks then fail with a
    clear error from the method).

    Raises:
        ModelError: the compiled model itself fails on ``probe`` (a wrong input size).
    """
    from camlens.methods import ModelError
    from camlens.targets import select_output

    proxy = ScriptProxy(script).eval()
    with torch.no_grad():
        try:
            expected = select_output(script(probe))
        except Exception as exc:
            raise ModelError(
                f"the TorchScript model failed on an input of shape {tuple(probe.shape)} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); pass its input size with --size"
            ) from exc
        for _ in range(sum(1 for _ in proxy.modules()) + 1):
            try:
                got = select_output(proxy(probe))
            except _Fallback as fb:
                fb.proxy.python = False
                continue
            except Exception:
                return script
            if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                return proxy
            return script
    return script
