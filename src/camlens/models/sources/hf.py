"""``hf:NAME``: a Hugging Face image classifier (a hub id or a local folder) and its image processor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch

    from camlens.models.preprocess import Preprocess


def _preprocess(tf: Any, name: str, model: Any) -> Preprocess:
    from camlens.models.preprocess import DEFAULT_SIZE, Preprocess

    size = getattr(getattr(model, "config", None), "image_size", DEFAULT_SIZE)
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
    return Preprocess((h, w), mean, std, resize=resize, source=source)


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """The model with its pretrained weights, a state dict, or none (``"none"``: from its config)."""
    from camlens.models.sources._util import import_optional
    from camlens.models.weights import (
        apply_state_dict,
        download_error,
        hub_offline_if_unreachable,
        is_no_weights,
        load_state_dict_file,
    )

    if not Path(name).is_dir():
        hub_offline_if_unreachable()
    tf = import_optional("transformers", "hf")
    spec = f"hf:{name}"
    try:
        if weights is None:
            model = tf.AutoModelForImageClassification.from_pretrained(name)
        else:
            config = tf.AutoConfig.from_pretrained(name)
            model = tf.AutoModelForImageClassification.from_config(config)
    except Exception as exc:
        if weights is None:
            raise download_error(spec, exc) from exc
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"could not get the configuration of {spec} ({type(exc).__name__}: {msg}); --weights needs "
            "the architecture too: pass a local folder written by save_pretrained as hf:FOLDER"
        ) from exc
    if weights is None:
        desc = "pretrained"
    elif is_no_weights(weights):
        desc = "random (--weights none)"
    else:
        apply_state_dict(model, load_state_dict_file(weights), spec, weights)
        desc = weights
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    classes = [
        str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(len(id2label))
    ] or None
    return Built(model, _preprocess(tf, name, model), classes, desc)


SOURCE = ModelSource(
    kind="hf",
    syntax="hf:NAME",
    summary="a Hugging Face image classifier (hub id or local folder) and its image processor",
    load=load,
    order=30,
)
