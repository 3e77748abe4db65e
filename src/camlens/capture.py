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
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camlens.reshape import infer_layout

__all__ = [
    "CaptureError",
    "LayerCapture",
    "find_default_layer",
    "find_last_spatial_layer",
    "resolve_layers",
]

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


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


@dataclass(frozen=True)
class _Event:
    index: int
    name: str
    kind: str  # "start" of an attention module, or the layout of a module's output
    norm: bool = False


def find_default_layer(model: nn.Module, x: Tensor) -> str:
    """The layer camlens explains when ``layer=None``.

    One forward of the first sample (all of ``x`` in training mode) under ``no_grad`` records, in the
    order their forwards finish, the modules whose output has a spatial reading (see
    :func:`camlens.reshape.infer_layout`) with more than one position: convolutional ``(B, K, *s)``,
    channels-last ``(B, *s, K)`` or transformer tokens ``(B, N, K)`` whose grid can be inferred.
    Modules inside attention modules (attention maps are not feature maps) are left out. Then:

    1. **Backbone + head models** (torchvision detection and segmentation models, and any model with
       a ``backbone`` child): only layers inside ``backbone.body`` (FPN backbones) or else inside
       ``backbone`` count, since what follows is a task head whose output is the prediction itself:
       ``backbone.body.layer4`` for Faster R-CNN / RetinaNet / FCOS with a ResNet,
       ``backbone.layer4`` for DeepLabV3 / FCN with a ResNet.
    2. **Convolutional and channels-last models**: the last such layer; the container that finishes
       last wins (``layer4`` of a ResNet, ``features`` of a MobileNet, ``permute`` — the final norm as
       ``(B, C, H, W)`` — of torchvision's Swin, ``norm`` of timm's Swin).
    3. **Token models** (the last such layer outputs tokens): the norm (``LayerNorm``/``RMSNorm``)
       that finishes last before the last attention module starts, i.e. the input norm of the last
       transformer block: ``encoder.layers[-1].ln_1`` of torchvision's ViT, ``blocks[-1].norm1`` of
       timm's ViT / DeiT, the last layer's ``layernorm_before`` of Hugging Face's ViT. Its patch
       tokens still reach the class token through the last attention; after it, in class-token
       models, they no longer affect the output and their gradients are zero. Without a norm (or
       without an attention module) the last token layer is used.

    Raises:
        ValueError: no module of the model outputs anything spatial; pass ``layer=`` (and ``reshape=``).
    """
    attention = [n for n, m in model.named_modules() if n and _is_attention(m)]

    def inside_attention(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in attention)

    probe = x if model.training else x[:1]
    events: list[_Event] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        if _is_attention(module):

            def pre_hook(_m: nn.Module, _i: Any, name: str = name) -> None:
                events.append(_Event(len(events), name, "start"))

            handles.append(module.register_forward_pre_hook(pre_hook))
        if inside_attention(name):
            continue

        def hook(m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            t, _ = _first_tensor(output)
            if t is None:
                return
            try:
                layout = infer_layout(
                    tuple(t.shape), tuple(probe.shape), model=model, name=name, module=m
                )
            except ValueError:
                return
            shape = tuple(t.shape)
            positions = {
                "spatial": shape[2:],
                "channels_last": shape[1:-1],
                "tokens": layout.grid,
            }[layout.kind]
            if len(positions) == probe.ndim - 2 and math.prod(positions) > 1:
                events.append(_Event(len(events), name, layout.kind, _is_norm(m)))

        handles.append(module.register_forward_hook(hook))
    with _hooks(handles), torch.no_grad():
        model(probe)
    outputs = [e for e in events if e.kind != "start"]
    for prefix in ("backbone.body.", "backbone."):
        inside = [e for e in outputs if e.name.startswith(prefix)]
        if inside:
            outputs = inside
            break
    if not outputs:
        raise ValueError(
            f"no layer of {type(model).__name__} outputs a spatial map or a token grid for an input of "
            f"shape {tuple(x.shape)}; pass layer= explicitly (see `camlens layers`), and reshape= if "
            "its output is not (B, K, *spatial)"
        )
    last = outputs[-1]
    if last.kind != "tokens":
        return last.name
    starts = [e.index for e in events if e.kind == "start"]
    before = [e for e in outputs if e.kind == "tokens" and (not starts or e.index < starts[-1])]
    norms = [e for e in before if e.norm]
    if starts and norms:
        return norms[-1].name
    return (before or outputs)[-1].name


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
                    stacklevel=5,
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
