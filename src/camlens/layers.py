"""A model's layers with their output shapes, and how each output reads as a map.

:func:`describe_layers` runs the model once on a probe input with a forward hook on every module
(under ``no_grad``, hooks owned by the call and removed, also on error) and reports, in module order, each
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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["LayerInfo", "describe_layers", "probing"]


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


@contextlib.contextmanager
def probing(x: Tensor) -> Iterator[None]:
    """Run probe forwards on ``x``: a model that fails on it raises one clear ``ModelError``.

    For front ends that look at a model before any image (its layers, its classes): an error raised
    by the model on the probe (a head sized for another input, say) becomes a
    :class:`~camlens.methods.ModelError` saying to pass the input size. camlens's own
    ``ValueError`` (no layer to explain, say) and a ``ModelError`` pass unchanged.

    Example:
        >>> import torch
        >>> with probing(torch.zeros(1, 3, 8, 8)):
        ...     torch.nn.Linear(5, 2)(torch.zeros(1, 3, 8, 8))
        Traceback (most recent call last):
        ...
        camlens.methods.base.ModelError: the model failed on an input of shape (1, 3, 8, 8) ...
    """
    from camlens.methods.base import ModelError, model_error

    try:
        yield
    except (ValueError, ModelError):
        raise
    except Exception as exc:
        raise model_error(x, exc, hint="pass its input size with --size") from exc


def describe_layers(model: nn.Module, x: Tensor) -> list[LayerInfo]:
    """Every module that ran on ``x``, in module order (see the module docstring).

    One forward, through :func:`camlens.capture.layer_table` (hooks owned by this call, so it is safe
    while other threads run the model); the automatic layer comes from the same forward.

    Args:
        model: the model.
        x: a probe input such as ``torch.zeros(1, 3, H, W)`` on the model's device.

    Raises:
        ModelError: the model fails on ``x`` (pass its input size).
    """
    from camlens.capture import layer_table

    with probing(x):
        rows, auto = layer_table(model, x)
    by_name = {name: (shape, layout) for name, shape, layout in rows}
    out = []
    for name, module in model.named_modules():
        if name not in by_name:
            continue
        shape, layout = by_name[name]
        kind = getattr(module, "original_name", None) or type(module).__name__
        out.append(LayerInfo(name, str(kind), shape, layout, name == auto))
    return out
