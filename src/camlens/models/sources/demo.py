"""``demo``: the bundled demo classifier (:mod:`camlens.demo`), offline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """The demo model with its bundled weights, a state dict, or random weights (``"none"``)."""
    from camlens import demo
    from camlens.models.preprocess import Preprocess
    from camlens.models.weights import apply_state_dict, is_no_weights, load_state_dict_file

    if weights is None:
        model = demo.load_model()
        desc = "bundled"
    elif is_no_weights(weights):
        model = demo.DemoNet()
        desc = "random (--weights none)"
    else:
        model = demo.DemoNet()
        sd = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_state_dict_file(weights).items()
        }
        apply_state_dict(model, sd, "the demo model (DemoNet)", weights)
        desc = weights
    size = int(getattr(model, "input_size", 96))
    pre = Preprocess((size, size), source="demo model (normalises inside)")
    return Built(model, pre, list(demo.CLASSES), desc)


SOURCE = ModelSource(
    kind="demo",
    syntax="demo",
    summary="the bundled demo model: 96x96 synthetic shapes, offline (the default)",
    load=load,
    order=0,
    bare=True,
)
