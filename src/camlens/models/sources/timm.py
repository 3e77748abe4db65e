"""``timm:NAME``: ``timm.create_model(NAME)`` with its data config's pre-processing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def _classes(timm: Any, model: Any) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        classes = [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:
        return None
    return classes if len(classes) == getattr(model, "num_classes", len(classes)) else None


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """The model with its pretrained weights, a state dict, or none (``"none"``)."""
    from camlens.models.preprocess import Preprocess
    from camlens.models.sources._util import close_names, import_optional
    from camlens.models.weights import (
        apply_state_dict,
        download_error,
        head_classes,
        hub_offline_if_unreachable,
        is_no_weights,
        load_state_dict_file,
    )

    if weights is None:
        hub_offline_if_unreachable()
    timm = import_optional("timm", "timm")
    if not timm.is_model(name):
        base = name.split(".")[0]
        raise ValueError(
            f"unknown timm model {name!r}.{close_names(base, timm.list_models())} List them with "
            "timm.list_models()"
        )
    spec = f"timm:{name}"
    if weights is None:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise download_error(spec, exc) from exc
        desc = "pretrained"
    elif is_no_weights(weights):
        model = timm.create_model(name, pretrained=False)
        desc = "random (--weights none)"
    else:
        sd = load_state_dict_file(weights)
        model = timm.create_model(name, pretrained=False)
        n = head_classes(model, sd)
        if n is not None:
            model = timm.create_model(name, pretrained=False, num_classes=n)
        apply_state_dict(model, sd, spec, weights)
        desc = weights
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    steps = [
        s
        for s in getattr(create_transform(**cfg), "transforms", [])
        if type(s).__name__ != "Normalize"
    ]

    def library_transform(image: Any) -> Tensor:
        for s in steps:
            image = s(image)
        return image

    pre = Preprocess.from_timm_config(
        cfg, source="timm resolve_data_config", fallback=library_transform
    )
    return Built(model, pre, _classes(timm, model), desc)


SOURCE = ModelSource(
    kind="timm",
    syntax="timm:NAME",
    summary="timm.create_model(NAME); pre-processing from its data config",
    load=load,
    order=20,
)
