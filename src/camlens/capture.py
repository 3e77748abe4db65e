"""Record activations (and gradients) at named layers, with hooks that live only inside a ``with``.

The fast path (see DESIGN.md): the forward starts with gradients off, so nothing before the first
captured layer is recorded by autograd. That layer's output is detached into a leaf that requires
grad, gradients are switched on for the rest of the forward, and the next module receives a *clone*
of the leaf, so an in-place op downstream (``ReLU(inplace=True)``) can neither corrupt the captured
activation nor fail on a leaf. ``torch.autograd.grad(score, activations)`` then differentiates only
the head after the layer and accumulates no parameter gradient. The caller's grad mode is restored on
exit and every hook is removed, also when the forward raises.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CaptureError", "LayerCapture", "find_last_spatial_layer", "resolve_layers"]

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


class CaptureError(ValueError):
    """A captured layer cannot be used (raised from inside the forward by a hook)."""


def _first_tensor(output: Any) -> tuple[Tensor | None, Callable[[Tensor], Any]]:
    """The tensor a layer outputs, and a function that rebuilds the output around a replacement.

    Layers of some libraries (Hugging Face blocks) return a tuple whose first element is the hidden
    state; the rest passes through untouched.
    """
    if isinstance(output, Tensor):
        return output, lambda t: t
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        rest = list(output[1:])
        kind = type(output)
        return output[0], lambda t: kind([t, *rest]) if kind in (tuple, list) else output
    return None, lambda t: output


def resolve_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Turn a layer spec (dotted name, module, or a list of them) into ``(name, module)`` pairs.

    Raises:
        ValueError: an unknown name (the message lists the closest names), a module that is not part of
            the model, or an empty list.
        TypeError: anything that is not a name or a module.
    """
    if layer is None:
        raise ValueError("resolve_layers needs a layer; use find_last_spatial_layer to choose one")
    specs = list(layer) if isinstance(layer, list | tuple) else [layer]
    if not specs:
        raise ValueError("layer=[] names no layer; pass a name such as 'layer4', a module, or None")
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    out: list[tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in named:
                close = difflib.get_close_matches(spec, [n for n in named if n], n=5, cutoff=0.4)
                hint = f" Closest names: {', '.join(repr(c) for c in close)}." if close else ""
                raise ValueError(
                    f"layer {spec!r} is not a submodule of {type(model).__name__}.{hint} "
                    f"List them with `camlens layers` or [n for n, _ in model.named_modules()]."
                )
            out.append((spec or type(model).__name__, named[spec]))
        elif isinstance(spec, nn.Module):
            if id(spec) not in by_id:
                raise ValueError(
                    f"the module {type(spec).__name__} passed as layer is not part of the model; "
                    "pass a submodule of the model you explain, or its dotted name"
                )
            out.append((by_id[id(spec)] or type(model).__name__, spec))
        else:
            raise TypeError(
                f"layer must be a dotted name, an nn.Module, a list of them or None, not {type(spec).__name__}"
            )
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"layer list names a layer twice: {names}")
    return out


@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def find_last_spatial_layer(
    model: nn.Module, x: Tensor, is_candidate: Callable[[Tensor], bool] | None = None
) -> str:
    """Name of the last module (in the order their forwards finish) whose output keeps spatial axes.

    A module qualifies when its output is a tensor ``(B, C, *spatial)`` with as many spatial axes as the
    input and more than one position. The container that finishes last wins (``layer4`` of a ResNet, not
    the ``relu`` inside its last block). One forward on the first sample is run under ``no_grad``.

    Raises:
        ValueError: no module of the model outputs a spatial tensor.
    """
    order: list[str] = []
    ok = is_candidate or (lambda t: t.ndim == x.ndim and t.shape[2:].numel() > 1)
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            t, _ = _first_tensor(output)
            if t is not None and ok(t):
                order.append(name)

        handles.append(module.register_forward_hook(hook))
    probe = x if model.training else x[:1]
    with _hooks(handles), torch.no_grad():
        model(probe)
    if not order:
        raise ValueError(
            f"no layer of {type(model).__name__} outputs a spatial map for an input of shape "
            f"{tuple(x.shape)}; pass layer= explicitly (see `camlens layers`)"
        )
    return order[-1]


class LayerCapture:
    """Context manager that records the outputs of ``layers`` during one forward.

    Args:
        layers: ``(name, module)`` pairs, e.g. from :func:`resolve_layers`.
        grad: set up the fast gradient path (leaf at the first captured layer). Without it the forward
            runs entirely without autograd and only activations are recorded.
        record_inputs: extra modules whose *input* is recorded (e.g. a classifier, to check CAM's head).

    Attributes:
        activations: name -> output of that layer on its last call (a leaf or part of the graph).
        inputs: name -> first positional input of each module in ``record_inputs``.
        calls: name -> how many times the layer ran.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        *,
        grad: bool = True,
        record_inputs: list[tuple[str, nn.Module]] | None = None,
    ) -> None:
        self.layers = layers
        self.grad = grad
        self.record_inputs = record_inputs or []
        self.activations: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._prev_grad = True

    def _make_hook(self, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            t, rebuild = _first_tensor(output)
            if t is None:
                raise CaptureError(
                    f"layer {name!r} outputs {type(output).__name__}, not a tensor; choose a layer whose "
                    "output is a tensor (or a tuple starting with one)"
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.grad:
                if not torch.is_grad_enabled() or not t.requires_grad:
                    # First captured layer: cut the graph here, differentiate only what follows.
                    act = t.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)
                else:
                    act = t  # already downstream of an earlier leaf: keep the graph connected
            else:
                act = t.detach()
            self.activations[name] = act
            return rebuild(act.clone())

        return hook

    def _make_input_hook(self, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, inputs: Any) -> None:
            if inputs and isinstance(inputs[0], Tensor):
                self.inputs[name] = inputs[0].detach()

        return hook

    def __enter__(self) -> LayerCapture:
        self._prev_grad = torch.is_grad_enabled()
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
            for name, module in self.record_inputs:
                self._handles.append(module.register_forward_pre_hook(self._make_input_hook(name)))
        except BaseException:
            self._remove()
            raise
        torch.set_grad_enabled(False)
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()
        torch.set_grad_enabled(self._prev_grad)

    def check_called(self) -> None:
        """Raise if a layer never ran; warn if one ran several times (its last call is explained)."""
        for name, _ in self.layers:
            n = self.calls.get(name, 0)
            if n == 0:
                raise ValueError(
                    f"layer {name!r} was not called during the forward pass; choose a layer on the path "
                    "from the input to the output (list them with `camlens layers`)"
                )
            if n > 1:
                warnings.warn(
                    f"layer {name!r} ran {n} times in one forward; camlens explains its last call",
                    stacklevel=4,
                )

    def gradients(self, score: Tensor, *, retain_graph: bool = False) -> dict[str, Tensor]:
        """Gradients of ``score.sum()`` with respect to each captured activation.

        Samples are independent in eval mode, so the gradient of the sum at sample ``b`` is the gradient
        of that sample's own score. A layer the score does not depend on gets zeros.
        """
        names = [n for n, _ in self.layers]
        acts = [self.activations[n] for n in names]
        if not score.requires_grad:
            raise ValueError(
                f"the target score does not depend on layer(s) {names}: the output is not computed from "
                "them, or the target callable detached it; choose a layer before the output"
            )
        with torch.enable_grad():
            grads = torch.autograd.grad(
                score.sum(), acts, retain_graph=retain_graph, allow_unused=True
            )
        return {
            n: (g if g is not None else torch.zeros_like(a))
            for n, a, g in zip(names, acts, grads, strict=True)
        }
