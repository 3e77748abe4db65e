"""Fast internal forwards of whole inputs, for methods that run the model hundreds of times.

Score-CAM and its variants run the model once per channel (and per noise sample or integration
step). On the CPU, two things make those forwards much cheaper without changing their results:

* an **inference-optimised copy** of the model: ``torch.fx``'s
  :func:`~torch.fx.experimental.optimization.optimize_for_inference` folds each batch norm into the
  convolution before it, drops dropout and runs the convolutions in oneDNN's blocked layout. It needs
  a model that fx can trace, in eval mode, with float32 parameters on the CPU. The copy is built from
  a deep copy (the user's model is never changed), kept per model while its module tree, the
  versions of its parameters and buffers and its mode are unchanged, and on every call checked
  against the live model: it must reproduce the model's own output on the call's input
  (:func:`camlens.methods._head.reproduces`), or it is not used. It holds a second copy of the
  weights while the model lives.
* otherwise, **channels-last** inputs (oneDNN's preferred layout for convolutions) on the CPU, unless
  the model refuses that layout (then its own).

:func:`internal_forward` chooses once per call; :attr:`Forward.used` says what was used
(``"optimized"``, ``"channels-last"`` or ``"model"``); Score-CAM reports it in
``result.details["forward"]``.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from camlens._structure import structure_key
from camlens.methods._head import reproduces
from camlens.methods.base import MapContext, ModelError

__all__ = ["MIN_POSITIONS", "MIN_ROWS", "Forward", "internal_forward"]

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module | Exception]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def _state(model: nn.Module) -> tuple[Any, ...]:
    """Changes when a submodule is replaced, a parameter or buffer is changed in place, or the mode."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (
        structure_key(model),
        tuple((id(t), t._version) for t in tensors),
        model.training,
    )


def _eligible(model: nn.Module, x: Tensor) -> bool:
    if model.training or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    return all(
        t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
        for t in tensors
    )


def _optimized(model: nn.Module) -> nn.Module:
    """The model's inference-optimised copy, built once per state; raises where fx cannot build it."""
    from torch.fx.experimental.optimization import optimize_for_inference

    state = _state(model)
    with _LOCK:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == state:
            known = hit[1]
        else:
            try:
                known = optimize_for_inference(model)
            except Exception as e:  # not traceable, an op fx cannot fold, ...
                known = e
            _CACHE[model] = (state, known)
    if isinstance(known, Exception):
        raise known
    return known


class Forward:
    """A method's internal forward of whole inputs: ``forward(x) -> output``.

    Runs with capture paused and under inference mode; a failure of the model is a ModelError.
    ``used`` says how it runs (``"optimized"``, ``"channels-last"`` or ``"model"``).
    """

    def __init__(self, model: nn.Module, ctx: MapContext, used: str) -> None:
        self._model = model
        self._ctx = ctx
        self.used = used
        self._layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(ctx.x.ndim)
        self._accepted = False

    def __call__(self, x: Tensor) -> Any:
        if self.used == "optimized":
            return self._ctx.run(self._model, x.contiguous())
        if self.used == "model" or self._layout is None:
            return self._ctx.run(self._model, x)
        try:
            out = self._ctx.run(self._model, x.contiguous(memory_format=self._layout))
        except ModelError:
            if self._accepted:
                raise  # the layout worked before: this is a failure of the model itself
            out = self._ctx.run(self._model, x.contiguous())  # raises if the model fails anyway
            self.used = "model"  # the model refuses channels-last inputs
            return out
        self._accepted = True
        return out


#: The optimised copy is tried only for inputs of at least this many positions and for at least
#: this many perturbed inputs per call: oneDNN's per-call set-up costs more than it saves on small
#: images and short runs (a 16x16 toy model runs slower on it).
MIN_POSITIONS = 64 * 64
MIN_ROWS = 64


def internal_forward(
    model: nn.Module, ctx: MapContext, *, optimize: bool = True, rows: int | None = None
) -> Forward:
    """The fastest faithful way to run ``model`` on perturbed copies of the call's inputs.

    Decided once per call (kept in ``ctx.scratch``); see the module docstring.

    Args:
        model: the model being explained.
        ctx: the call's context (its input and output are the check of an optimised copy).
        optimize: try the inference-optimised copy first, when the work is large enough to pay
            for it: inputs of at least :data:`MIN_POSITIONS` positions and ``rows`` (the number of
            perturbed inputs the call will run) of at least :data:`MIN_ROWS`.
        rows: how many perturbed inputs the call will run (``None``: many).
    """
    large = math.prod(ctx.x.shape[2:]) >= MIN_POSITIONS and (rows is None or rows >= MIN_ROWS)
    key = f"internal-forward:{optimize and large}"
    if key not in ctx.scratch:
        ctx.scratch[key] = _choose(model, ctx, optimize and large)
    forward: Forward = ctx.scratch[key]
    return forward


def _choose(model: nn.Module, ctx: MapContext, optimize: bool) -> Forward:
    if optimize and _eligible(model, ctx.x):
        try:
            fast = _optimized(model)
            ok = reproduces(ctx.run(fast, ctx.x.contiguous()), ctx)
        except Exception:
            ok = False
        if ok:
            return Forward(fast, ctx, "optimized")
    cpu = ctx.x.device.type == "cpu" and ctx.x.ndim in (4, 5)
    return Forward(model, ctx, "channels-last" if cpu else "model")
