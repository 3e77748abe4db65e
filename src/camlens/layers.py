"""A model's layers with their output shapes, and how each output reads as a map.

:func:`describe_layers` runs the model once on a probe input with a forward hook on every module
(under ``no_grad``; every hook is removed, also on error) and reports, in module order, each
layer's output shape, its layout for camlens (``spatial``, ``channels_last``, ``tokens``, or none)
and whether it is the layer camlens picks when ``layer=None``. The command line's ``camlens layers``
prints it; other front ends can show it too.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    >>> [(i.name, i.shape, i.layout, i.automatic) for i in describe_layers(net, torch.zeros(1, 3, 8, 8))]
    [('0', (1, 4, 6, 6), 'spatial', False), ('1', (1, 4, 6, 6), 'spatial', True), ('2', (1, 4, 1, 1), None, False), ('3', (1, 4), None, False)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LayerInfo", "describe_layers"]


@dataclass(frozen=True)
class LayerInfo:
    """One module of a model.

    Attributes:
        name: its dotted name.
        kind: its class name (the scripted class for TorchScript modules).
        shape: its output shape on the probe, or the output's type name when not a tensor.
        layout: how its output reads as a map (``"spatial"``, ``"channels_last"``, ``"tokens"``),
            or ``None`` when it does not (or has a single position).
        automatic: the layer camlens explains when no layer is given.
    """

    name: str
    kind: str
    shape: tuple[int, ...] | str
    layout: str | None
    automatic: bool


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


def _layout(shape: tuple[int, ...] | str, x: Tensor, model: nn.Module, name: str) -> str | None:
    if not isinstance(shape, tuple):
        return None
    from camlens.reshape import infer_layout

    try:
        layout = infer_layout(shape, tuple(x.shape), model=model, name=name)
    except Exception:
        return None
    kind = str(layout.kind)
    positions = (
        shape[1:-1] if kind == "channels_last" else shape[2:] if kind == "spatial" else shape[1:2]
    )
    return kind if math.prod(positions) > 1 else None


def describe_layers(model: nn.Module, x: Tensor) -> list[LayerInfo]:
    """Every module that ran on ``x``, in module order (see the module docstring).

    Args:
        model: the model.
        x: a probe input such as ``torch.zeros(1, 3, H, W)`` on the model's device.

    Raises:
        ModelError: the model fails on ``x`` (pass its input size).
    """
    from camlens.capture import find_default_layer
    from camlens.methods import ModelError

    shapes: dict[str, tuple[int, ...] | str] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            shapes[name] = tuple(t.shape) if t is not None else type(out).__name__

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise ModelError(
            f"the model failed on a zero input of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{msg}); pass its input size with --size"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    try:
        auto: str | None = find_default_layer(model, x)
    except ValueError:
        auto = None
    out = []
    for name, module in model.named_modules():
        if name not in shapes:
            continue
        kind = getattr(module, "original_name", None) or type(module).__name__
        out.append(
            LayerInfo(
                name, str(kind), shapes[name], _layout(shapes[name], x, model, name), name == auto
            )
        )
    return out
