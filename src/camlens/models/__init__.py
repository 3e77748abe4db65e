"""Models named by a short spec string, with the pre-processing they expect.

=========================  =======================================================================
``demo``                   the bundled demo classifier (:mod:`camlens.demo`), offline
``torchvision:NAME``       ``torchvision.models.get_model(NAME)``; pre-processing from the weights'
                           transforms
``timm:NAME``              ``timm.create_model(NAME)``; pre-processing from its data config
``hf:NAME``                ``transformers.AutoModelForImageClassification`` (a hub id or a local
                           folder); pre-processing from its ``AutoImageProcessor``
``torchscript:FILE``       ``torch.jit.load(FILE)``, wrapped so that its layers can be hooked
``module:callable``        ``callable()`` from an importable module or a ``.py`` file; must return
                           an ``nn.Module`` (an ``nn.Module`` instance is used as it is)
=========================  =======================================================================

The package is laid out so that each part changes alone:

* :mod:`~camlens.models.preprocess`: :class:`Preprocess` (resize, crop, normalisation, geometry);
* :mod:`~camlens.models.weights`: state-dict files, fitting, downloads, ``weights="none"``;
* :mod:`~camlens.models.registry` and :mod:`camlens.models.sources`: one module per source, found
  by looking (adding a source is adding a file);
* :mod:`~camlens.models.scripted`: the TorchScript wrapper.

Pretrained weights of torchvision, timm and Hugging Face models come from the library's own download
(cached); offline, pass a local state dict with ``weights=``, or ``weights="none"`` for the
architecture alone. This package imports torch only when a model is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from camlens.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    parse_mean_std,
    parse_size,
)
from camlens.models.registry import model_sources, parse_spec, spec_help
from camlens.models.weights import NO_WEIGHTS, is_no_weights

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from torch import Tensor, nn

    from camlens.models.scripted import ScriptProxy, script_to_hookable
    from camlens.models.weights import load_state_dict_file

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NO_WEIGHTS",
    "LoadedModel",
    "Preprocess",
    "ScriptProxy",
    "is_no_weights",
    "load_model",
    "load_state_dict_file",
    "model_sources",
    "parse_mean_std",
    "parse_size",
    "parse_spec",
    "resolve_device",
    "script_to_hookable",
    "spec_help",
]

_LAZY = {
    "ScriptProxy": "camlens.models.scripted",
    "script_to_hookable": "camlens.models.scripted",
    "load_state_dict_file": "camlens.models.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camlens.models' has no attribute {name!r}")


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@dataclass
class LoadedModel:
    """A model ready to explain, with its pre-processing and class names.

    Attributes:
        model: the ``nn.Module`` in eval mode on ``device``.
        spec: the spec it was loaded from (``"module"`` for a model passed in as an object).
        preprocess: how images become its input.
        classes: class names by index, if known.
        device: where it runs.
        weights: a description of the weights used.
    """

    model: nn.Module
    spec: str
    preprocess: Preprocess
    classes: list[str] | None = None
    device: torch.device = field(default_factory=_cpu)
    weights: str = ""

    @classmethod
    def wrap(
        cls,
        model: nn.Module,
        preprocess: Any = None,
        classes: Sequence[str] | None = None,
    ) -> LoadedModel:
        """A model object as it is (mode and device untouched), with a pre-processing.

        Args:
            model: the ``nn.Module``.
            preprocess: anything :func:`camlens.models.preprocess.as_preprocess` accepts; default:
                the model's own ``input_size``/``mean``/``std`` attributes, else 224x224 and the
                ImageNet mean and std.
            classes: class names (default: the model's ``classes`` attribute, if any).
        """
        from camlens.models.preprocess import as_preprocess, from_attributes

        own, own_classes = from_attributes(model, f"{type(model).__name__} attributes")
        pre = as_preprocess(preprocess) if preprocess is not None else own
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = _cpu()
        names = list(classes) if classes is not None else own_classes
        return cls(model, type(model).__name__, pre, names, device, "as given")

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
        import torch

        h, w = self.preprocess.size
        return torch.zeros(1, 3, h, w, device=self.device)


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
        weights: ``None`` for the source's default (pretrained, bundled, or in the file), ``"none"``
            for random weights (nothing is downloaded), or a local state-dict file.
        device: where the model runs.
        size: ``(H, W)`` of the input, overriding the model's own (the image is then resized to it,
            not cropped).
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
    kind, name = parse_spec(spec)  # an unknown spec fails before torch is imported
    import torch

    dev = torch.device(device)
    built = model_sources()[kind].load(name, weights, dev)
    pre = built.preprocess
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
    model = built.model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        from camlens.models.scripted import script_to_hookable

        model = script_to_hookable(model, torch.zeros(1, 3, *pre.size, device=dev))
    else:
        model = model.to(dev)
    return LoadedModel(model, spec, pre, built.classes, dev, built.weights)


def resolve_device(text: str) -> str:
    """A device name as given on a command line: ``"auto"`` is ``"cuda"`` when available, else
    ``"cpu"``; anything else is checked and returned.

    Raises:
        ValueError: not a device, or CUDA asked for where there is none.
    """
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text!r}: CUDA is not available here; use --device cpu")
    return str(dev)
