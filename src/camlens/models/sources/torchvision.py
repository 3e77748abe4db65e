"""``torchvision:NAME``: ``torchvision.models.get_model(NAME)`` with its weights' transforms."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch


def _fetch(weights: Any) -> None:
    """Download a torchvision weights file into torch.hub's cache unless it is there.

    torch.hub's own loader prints a "Downloading" line before it knows whether the download works; this
    shows only the progress bar once bytes arrive, so an offline failure leaves just the error.
    """
    from urllib.parse import urlparse

    import torch

    url = str(weights.url)
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if dest.is_file():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), progress=sys.stderr.isatty())


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """The model with its default pretrained weights, a state dict, or none (``"none"``)."""
    from camlens.models.preprocess import DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from camlens.models.sources._util import close_names, import_optional
    from camlens.models.weights import (
        apply_state_dict,
        download_error,
        head_classes,
        is_no_weights,
        load_state_dict_file,
    )

    tv = import_optional("torchvision", "torchvision")
    models = tv.models
    known = models.list_models()
    if name not in known:
        raise ValueError(
            f"unknown torchvision model {name!r}.{close_names(name, known)} List them with "
            "torchvision.models.list_models()"
        )
    try:
        default = models.get_model_weights(name).DEFAULT
    except Exception:
        default = None
    classes = list(default.meta.get("categories") or []) or None if default is not None else None
    pre = Preprocess(
        (DEFAULT_SIZE, DEFAULT_SIZE),
        IMAGENET_MEAN,
        IMAGENET_STD,
        resize=256,
        source="ImageNet defaults",
    )
    if default is not None:
        pre = Preprocess.from_torchvision(
            default.transforms(), source=f"torchvision {default} transforms"
        )
    spec = f"torchvision:{name}"
    if is_no_weights(weights):
        return Built(models.get_model(name, weights=None), pre, classes, "random (--weights none)")
    if weights is None:
        if default is None:
            raise ValueError(
                f"{spec} has no pretrained weights in torchvision; pass a state dict with --weights FILE"
            )
        try:
            _fetch(default)
            model = models.get_model(name, weights=default)
        except Exception as exc:
            raise download_error(spec, exc) from exc
        return Built(model, pre, classes, str(default))
    sd = load_state_dict_file(weights)
    model = models.get_model(name, weights=None)
    n = head_classes(model, sd)
    if n is not None:  # fine-tuned weights with their own number of classes
        model = models.get_model(name, weights=None, num_classes=n)
        classes = None
    apply_state_dict(model, sd, spec, weights)
    return Built(model, pre, classes, weights)


SOURCE = ModelSource(
    kind="torchvision",
    syntax="torchvision:NAME",
    summary="torchvision.models.get_model(NAME); pre-processing from its weights' transforms",
    load=load,
    order=10,
)
