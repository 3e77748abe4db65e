"""``torchscript:FILE``: a TorchScript file, wrapped so that its layers can be hooked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """The scripted model (the file holds its weights; ``"none"`` changes nothing)."""
    import torch

    from camlens.models.preprocess import from_attributes
    from camlens.models.weights import apply_state_dict, is_no_weights, load_state_dict_file

    p = Path(name)
    if not p.is_file():
        raise FileNotFoundError(
            f"TorchScript file not found: {name!r}; check the path after torchscript:"
        )
    try:
        sm = torch.jit.load(str(p), map_location=device)
    except Exception as exc:
        raise ValueError(
            f"{name!r} is not a TorchScript file ({type(exc).__name__}: {' '.join(str(exc).split())[:150]}); "
            "save one with torch.jit.save(torch.jit.script(model), path)"
        ) from exc
    if weights is not None and not is_no_weights(weights):
        apply_state_dict(sm, load_state_dict_file(weights), f"torchscript:{name}", weights)
    pre, classes = from_attributes(sm, "TorchScript attributes")
    desc = "in the file" if weights is None or is_no_weights(weights) else weights
    return Built(sm.eval(), pre, classes, desc)


SOURCE = ModelSource(
    kind="torchscript",
    syntax="torchscript:FILE",
    summary="a TorchScript file (torch.jit.save); its layers are made hookable",
    load=load,
    order=40,
)
