"""Record activations (and gradients) at named layers, with hooks that belong to one call.

**The fast path** (see DESIGN.md): the forward starts with gradients off, so nothing before the first
captured layer is recorded by autograd. That layer's output is detached into a leaf that requires
grad, gradients are switched on for the rest of the forward, and the next module receives a *clone*
of the leaf, so an in-place op downstream (``ReLU(inplace=True)``) can neither corrupt the captured
activation nor fail on a leaf. ``torch.autograd.grad(score, activations)`` then differentiates only
the head after the layer and accumulates no parameter gradient. The caller's grad mode is restored on
exit and every hook is removed, also when the forward raises.

**Calls own their hooks.** A hook lives on a module, which every thread running the model shares,
but a capture belongs to the call that opened it. Each ``with`` block opens a *scope*, held in a
:class:`contextvars.ContextVar`; its hooks act only while their scope is the active one of the
context they fire in, and otherwise return at once. Threads (and asyncio tasks) each have their own
context, so concurrent calls on one model, through one method object or several, record exactly
their own forward and never see each other's. A method's own extra forwards (Score-CAM's masked
inputs, Ablation-CAM's heads) run inside :func:`paused`, where no scope is active, so no capture
records them. Nothing blocks: two threads run their forwards at the same time (torch releases the
GIL inside its kernels); ``bench/bench_gradcam.py`` measures what that gives. A model whose forward
hands work to threads of its own (rare outside ``DataParallel``) is not seen by the hooks there.

**Beyond the layer's first gradient.** ``LayerCapture(full_graph=True)`` records autograd from an
input that requires grad instead of cutting the graph at the first layer (FullGrad's input and bias
gradients, LeGrad's attention in the first block); :func:`layer_gradients_and_hvp` adds the
Hessian-vector product at each layer (ShapleyCAM); :class:`AttentionCapture` records the attention
probabilities of transformer blocks, wherever and however they are computed (LeGrad); and
:func:`explicit_attention` computes fused attention step by step so that it can be differentiated
twice. All of them act only in the thread, and the capture scope, that opened them.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camlens._structure import structure_key
from camlens.reshape import infer_layout

__all__ = [
    "AttentionCapture",
    "CaptureError",
    "LayerCapture",
    "LayerInfo",
    "attention_blocks",
    "candidate_layers",
    "default_layer",
    "explicit_attention",
    "find_default_layer",
    "find_last_spatial_layer",
    "input_leaf",
    "layer_gradients",
    "layer_gradients_and_hvp",
    "layer_table",
    "owned_hooks",
    "paused",
    "resolve_layers",
    "structure_key",
    "substitute_output",
]

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


# ---- call-owned hooks --------------------------------------------------------------------------------

#: The scope whose hooks may act in the current context (thread or task); ``None``: no capture.
_ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "camlens_active_scope", default=None
)


class _Scope:
    """The identity of one ``with`` block that registered hooks."""

    __slots__ = ()


@contextmanager
def owned_hooks() -> Iterator[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Open a scope; yields ``own(hook)``, which wraps a hook to act only inside this scope.

    The wrapped hook returns ``None`` (no effect) when it fires in another thread, in another task, or
    while the scope is :func:`paused`. Register wrapped hooks only inside the ``with`` block, and
    remove them before it ends.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> seen = []
        >>> with owned_hooks() as own:
        ...     h = lin.register_forward_hook(own(lambda m, i, o: seen.append("in scope")))
        ...     _ = lin(torch.ones(1, 2))
        ...     with paused():
        ...         _ = lin(torch.ones(1, 2))   # an internal forward: the hook does nothing
        ...     h.remove()
        >>> seen
        ['in scope']
    """
    scope = _Scope()
    token = _ACTIVE.set(scope)
    try:
        yield lambda hook: _guard(scope, hook)
    finally:
        _ACTIVE.reset(token)


def _guard(scope: object, hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook``, acting only while ``scope`` is the active scope of the context it fires in."""

    def guarded(*args: Any) -> Any:
        if _ACTIVE.get() is not scope:
            return None
        return hook(*args)

    return guarded


@contextmanager
def joined_hooks() -> Iterator[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Like :func:`owned_hooks`, but joining the scope already active here if there is one.

    Two captures of one call (a :class:`LayerCapture` and an :class:`AttentionCapture`) must act in
    the same scope: an inner scope would silence the outer one's hooks. Outside any capture this
    opens a scope of its own.
    """
    scope = _ACTIVE.get()
    if scope is None:
        with owned_hooks() as own:
            yield own
    else:
        yield lambda hook: _guard(scope, hook)


@contextmanager
def paused() -> Iterator[None]:
    """Run forwards that no capture of this context may record (a method's internal passes)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextmanager
def _registered(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()


@contextmanager
def substitute_output(module: nn.Module, value: Tensor) -> Iterator[None]:
    """Replace ``module``'s output by ``value`` in the forwards of this block, in this context only.

    A tuple output (Hugging Face blocks) keeps its other elements. Other threads running the model
    meanwhile are not affected.
    """
    with owned_hooks() as own:

        def hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            _, rebuild = _first_tensor(output)
            return rebuild(value)

        handles = [module.register_forward_hook(own(hook))]
        with _registered(handles):
            yield


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
    probe = x if model.training else x[:1]
    with owned_hooks() as own:
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
                t, _ = _first_tensor(output)
                if t is not None and ok(t):
                    order.append(name)

            handles.append(module.register_forward_hook(own(hook)))
        with _registered(handles), torch.no_grad():
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
    kind: str  # "start" of an attention module, the layout of a module's output, or "other"
    norm: bool = False
    shape: tuple[int, ...] = ()
    type_name: str = ""  # the output's type when it is not a tensor


@dataclass(frozen=True)
class LayerInfo:
    """A layer whose output can be explained, as seen in one forward.

    Attributes:
        name: the dotted module name.
        shape: the output's shape for the probe input (batch of one in eval mode).
        kind: ``"spatial"`` ``(B, K, *s)``, ``"channels_last"`` ``(B, *s, K)`` or ``"tokens"``
            ``(B, N, K)`` with an inferred grid (see :func:`camlens.reshape.infer_layout`).
    """

    name: str
    shape: tuple[int, ...]
    kind: str


def _walk(model: nn.Module, x: Tensor, *, record_all: bool = False) -> list[_Event]:
    """One forward of ``x`` (its first sample in eval mode) recording, in the order they finish, the
    modules whose output has a spatial reading with more than one position, and the starts of
    attention modules. Modules inside attention modules are left out. With ``record_all``, every
    other module that ran is recorded too, as kind ``"other"``."""
    attention = [n for n, m in model.named_modules() if n and _is_attention(m)]

    def inside_attention(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in attention)

    probe = x if model.training else x[:1]
    events: list[_Event] = []

    def pre_hook(_m: nn.Module, _i: Any, name: str) -> None:
        events.append(_Event(len(events), name, "start"))

    def hook(m: nn.Module, output: Any, name: str) -> None:
        t, _ = _first_tensor(output)
        if t is None:
            if record_all:
                events.append(_Event(len(events), name, "other", False, (), type(output).__name__))
            return
        shape = tuple(t.shape)
        try:
            layout = infer_layout(shape, tuple(probe.shape), model=model, name=name, module=m)
        except ValueError:
            layout = None
        if layout is not None:
            positions = {
                "spatial": shape[2:],
                "channels_last": shape[1:-1],
                "tokens": layout.grid,
            }[layout.kind]
            if len(positions) == probe.ndim - 2 and math.prod(positions) > 1:
                events.append(_Event(len(events), name, layout.kind, _is_norm(m), shape))
                return
        if record_all:
            events.append(_Event(len(events), name, "other", False, shape))

    with owned_hooks() as own:
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            if _is_attention(module):
                handles.append(
                    module.register_forward_pre_hook(
                        own(lambda m, i, name=name: pre_hook(m, i, name))
                    )
                )
            if inside_attention(name) and not record_all:
                continue
            handles.append(
                module.register_forward_hook(own(lambda m, i, o, name=name: hook(m, o, name)))
            )
        with _registered(handles), torch.no_grad():
            model(probe)
    return events


def layer_table(
    model: nn.Module, x: Tensor
) -> tuple[list[tuple[str, tuple[int, ...] | str, str | None]], str | None]:
    """Every module that ran on ``x`` with its output shape (or type) and layout, and the default layer.

    One forward (hooks owned by this call). Each row is ``(name, shape, layout)`` where ``layout`` is
    ``"spatial"``, ``"channels_last"`` or ``"tokens"`` when the output reads as a map with more than
    one position, else ``None``; rows come in the order the modules finish (the last call of a module
    that runs several times). The default is :func:`find_default_layer`'s choice, or ``None`` when
    nothing is spatial.
    """
    events = _walk(model, x, record_all=True)
    rows: dict[str, tuple[str, tuple[int, ...] | str, str | None]] = {}
    for e in events:
        if e.kind == "start":
            continue
        rows.pop(e.name, None)
        layout = None if e.kind == "other" else e.kind
        rows[e.name] = (e.name, e.type_name or e.shape, layout)
    try:
        default: str | None = _choose_default(model, x, events)
    except ValueError:
        default = None
    return list(rows.values()), default


def candidate_layers(model: nn.Module, x: Tensor) -> list[LayerInfo]:
    """The layers of ``model`` that can be explained for inputs shaped like ``x``, in forward order.

    One forward of the first sample under ``no_grad`` (hooks owned by this call): every module
    outside attention modules whose output has a spatial reading with more than one position.
    A module called several times is listed once, where its last call finishes.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        >>> [(i.name, i.shape) for i in candidate_layers(net, torch.rand(1, 3, 8, 8))]
        [('0', (1, 4, 8, 8)), ('1', (1, 4, 8, 8))]
    """
    last: dict[str, _Event] = {}
    for e in _walk(model, x):
        if e.kind not in ("start", "other"):
            last.pop(e.name, None)
            last[e.name] = e
    return [LayerInfo(e.name, e.shape, e.kind) for e in last.values()]


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
    return _choose_default(model, x, _walk(model, x))


def _choose_default(model: nn.Module, x: Tensor, events: list[_Event]) -> str:
    """The rule of :func:`find_default_layer` applied to the events of one walk."""
    outputs = [e for e in events if e.kind not in ("start", "other")]
    attention = {e.name for e in events if e.kind == "start"}
    # attention maps are not feature maps: nothing inside an attention module counts
    outputs = [
        e for e in outputs if not any(e.name == a or e.name.startswith(a + ".") for a in attention)
    ]
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


_DEFAULTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)
_DEFAULTS_LOCK = threading.Lock()


def default_layer(model: nn.Module, x: Tensor) -> str:
    """:func:`find_default_layer` for this input's shape, remembered while the model is unchanged.

    The choice is cached per model under its :func:`structure_key`, the input's shape without the batch
    axis, its dtype and device, and the model's mode; an input of another shape, or a submodule added,
    removed or replaced, gets a fresh choice.
    """
    key = (structure_key(model), tuple(x.shape[1:]), x.dtype, x.device, model.training)
    with _DEFAULTS_LOCK:
        known = _DEFAULTS.get(model, {}).get(key)
    if known is not None:
        return known
    name = find_default_layer(model, x)
    with _DEFAULTS_LOCK:
        per_model = _DEFAULTS.setdefault(model, {})
        if len(per_model) > 64:  # many shapes or structures over time: forget the old ones
            per_model.clear()
        per_model[key] = name
    return name


class LayerCapture:
    """Context manager that records the outputs of ``layers`` during the forwards of its block.

    Its hooks belong to this block: forwards of the same model in other threads or tasks, and forwards
    run inside :func:`paused`, are not recorded (see the module docstring).

    Args:
        layers: ``(name, module)`` pairs, e.g. from :func:`resolve_layers`.
        grad: set up the fast gradient path (leaf at the first captured layer). Without it the forward
            runs entirely without autograd and only activations are recorded.
        record_inputs: extra modules whose *input* is recorded (e.g. a classifier, to check CAM's head).
        full_graph: with ``grad``, record autograd for the whole forward instead of cutting the graph
            at the first captured layer: the caller passes an input that requires grad, gradients are
            switched on for the whole block, and every captured output stays connected to the input.
            For methods that need gradients at the input or inside the first captured layer too
            (FullGrad's input-gradient, LeGrad's attention of the first block). Each captured output
            is still recorded before the next module sees it (that module gets a clone), so an
            in-place op downstream cannot change what is differentiated.

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
        full_graph: bool = False,
    ) -> None:
        self.layers = layers
        self.grad = grad
        self.full_graph = bool(full_graph and grad)
        self.record_inputs = record_inputs or []
        self.activations: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scope: Any = None
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
            if self.full_graph:
                act = t  # the whole forward is recorded: keep the graph from the input
            elif self.grad:
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
        self._scope = owned_hooks()
        own = self._scope.__enter__()
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(own(self._make_hook(name))))
            for name, module in self.record_inputs:
                self._handles.append(
                    module.register_forward_pre_hook(own(self._make_input_hook(name)))
                )
        except BaseException:
            self._close()
            raise
        torch.set_grad_enabled(self.full_graph)
        return self

    def _close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.__exit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        self._close()
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
        """Gradients of ``score.sum()`` with respect to each captured activation; see :func:`layer_gradients`."""
        return layer_gradients(
            score, {n: self.activations[n] for n, _ in self.layers}, retain_graph=retain_graph
        )


def input_leaf(x: Tensor, method: str) -> Tensor:
    """``x`` as a leaf that records its gradient: the input of a method that explains the input
    itself (guided backpropagation, FullGrad) or needs the whole graph from it (LeGrad).

    Raises:
        TypeError: ``x`` is not floating point (no gradient can flow to integer pixels).
    """
    if not x.is_floating_point():
        raise TypeError(
            f"{method} takes gradients with respect to the input, so it needs a floating-point "
            f"input; got {x.dtype}. Convert the images first, e.g. x.float() / 255 and the model's "
            "normalisation"
        )
    return x.detach().requires_grad_(True)


def _check_differentiable(score: Tensor, activations: dict[str, Tensor]) -> list[str]:
    """The layer names, after checking that ``score`` can be differentiated at all."""
    names = list(activations)
    if not score.requires_grad:
        raise ValueError(
            f"the target score does not depend on layer(s) {names}: the output is not computed from "
            "them, or the target callable detached it; choose a layer before the output"
        )
    return names


def layer_gradients(
    score: Tensor, activations: dict[str, Tensor], *, retain_graph: bool = False
) -> dict[str, Tensor]:
    """Gradients of ``score.sum()`` with respect to each activation, by ``torch.autograd.grad``.

    Samples are independent in eval mode, so the gradient of the sum at sample ``b`` is the gradient of
    that sample's own score. An activation the score does not depend on gets zeros. No parameter's
    ``.grad`` is touched.

    Raises:
        ValueError: the score does not depend on any of the activations.
    """
    names = _check_differentiable(score, activations)
    acts = [activations[n] for n in names]
    with torch.enable_grad():
        grads = torch.autograd.grad(score.sum(), acts, retain_graph=retain_graph, allow_unused=True)
    return {
        n: (g if g is not None else torch.zeros_like(a))
        for n, a, g in zip(names, acts, grads, strict=True)
    }


def layer_gradients_and_hvp(
    score: Tensor, activations: dict[str, Tensor], *, retain_graph: bool = False
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""Gradients ``G`` of ``score.sum()`` at each activation ``A``, and the Hessian-vector products ``H A``.

    .. math:: G = \frac{\partial y}{\partial A}, \qquad
              (H A)_i = \sum_j \frac{\partial^2 y}{\partial A_i \partial A_j} A_j
                      = \frac{\partial}{\partial A_i} \big(G \cdot \bar{A}\big)

    where ``\bar{A}`` is ``A`` held fixed. Double backward through the part of the graph after each
    activation only (on the fast path: the head after the layer). Each layer's product uses its own
    second derivatives (``H_{ll} A_l``), never cross-layer terms. Where ``G`` does not depend on ``A``
    (a head that is linear in the layer, e.g. the logits of GAP + linear, or a piecewise-linear
    ReLU head almost everywhere) the product is exactly zero.

    Raises:
        ValueError: the score does not depend on any of the activations.

    Example:
        >>> a = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> g, hv = layer_gradients_and_hvp((a**3).sum(1), {"a": a})
        >>> g["a"], hv["a"]   # 3 a^2 and 6 a * a
        (tensor([[ 3., 12.]]), tensor([[ 6., 24.]]))
    """
    names = _check_differentiable(score, activations)
    acts = [activations[n] for n in names]
    grads_out: dict[str, Tensor] = {}
    hvp_out: dict[str, Tensor] = {}
    with torch.enable_grad():
        grads = torch.autograd.grad(score.sum(), acts, create_graph=True, allow_unused=True)
        for i, (n, a, g) in enumerate(zip(names, acts, grads, strict=True)):
            if g is None:
                grads_out[n], hvp_out[n] = torch.zeros_like(a), torch.zeros_like(a)
                continue
            hv = None
            if g.requires_grad:
                keep = retain_graph or i < len(names) - 1
                (hv,) = torch.autograd.grad(
                    g, a, grad_outputs=a.detach(), retain_graph=keep, allow_unused=True
                )
            grads_out[n] = g.detach()
            hvp_out[n] = torch.zeros_like(a) if hv is None else hv.detach()
    return grads_out, hvp_out


# ---- attention probabilities -------------------------------------------------------------------


def attention_blocks(model: nn.Module) -> list[str]:
    """The transformer blocks of ``model``: the parents of its outermost attention modules, in order.

    An attention module is an ``nn.MultiheadAttention`` or a module whose class name contains
    "attention" (timm's ``Attention``, Hugging Face's ``ViTAttention``); one nested inside another
    counts once. Its parent is the block (``encoder.layers.encoder_layer_3`` of torchvision's ViT,
    ``blocks.3`` of timm's, ``vit.encoder.layer.3`` of Hugging Face's).

    Example:
        >>> block = nn.Module(); block.attn = nn.MultiheadAttention(4, 1)
        >>> net = nn.Sequential(nn.Linear(4, 4), block)
        >>> attention_blocks(net)
        ['1']
    """
    attention = [n for n, m in model.named_modules() if n and _is_attention(m)]
    outer = [a for a in attention if not any(a.startswith(b + ".") for b in attention if b != a)]
    blocks = [a.rpartition(".")[0] for a in outer]
    return [b for b in dict.fromkeys(blocks) if b]


_SOFTMAXES = {F.softmax, torch.softmax, Tensor.softmax}


def _explicit_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""``F.scaled_dot_product_attention`` computed step by step: the output and the probabilities.

    .. math:: P = \mathrm{softmax}\big(Q K^\top s + M\big), \qquad O = P V
    """
    if dropout_p > 0:
        raise ValueError(
            "attention dropout is active (dropout_p > 0, the model is in training mode?): the "
            "attention probabilities are random; call model.eval() first"
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * s
    n_q, n_k = query.shape[-2], key.shape[-2]
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    probs = logits.softmax(dim=-1)
    return probs @ value, probs


_MHA_PARAMS = inspect.signature(F.multi_head_attention_forward).parameters


def _mha_with_probabilities(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Tensor, Tensor | None], Tensor]:
    """``F.multi_head_attention_forward`` whose output is computed from the returned per-head weights.

    The functional returns its weights as a view that its own output does not use; the output is
    recomputed here as ``out_proj(P V)`` from exactly that tensor, so that gradients reach it. Returns
    ``((output, weights as the caller asked for them), P)`` with ``P`` ``(N, H, L, S)``.
    """
    bound = inspect.Signature(list(_MHA_PARAMS.values())).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if a["bias_k"] is not None or a["add_zero_attn"] or a["static_v"] is not None:
        raise ValueError(
            "nn.MultiheadAttention with add_bias_kv, add_zero_attn or static keys/values adds tokens "
            "that have no place on the image; its attention cannot be read as a map"
        )
    if a["training"] and a["dropout_p"] > 0:
        raise ValueError(
            "attention dropout is active (the model is in training mode): the attention "
            "probabilities are random; call model.eval() first"
        )
    call = dict(a)
    call.update(need_weights=True, average_attn_weights=False)
    _, probs = func(**call)
    value: Tensor = a["value"]
    e, heads = int(a["embed_dim_to_check"]), int(a["num_heads"])
    bias = a["in_proj_bias"]
    w_v = a["v_proj_weight"] if a["use_separate_proj_weight"] else a["in_proj_weight"][2 * e :]
    b_v = None if bias is None else bias[2 * e :]
    unbatched = value.dim() == 2
    if unbatched:
        value, probs = value.unsqueeze(1), probs.unsqueeze(0)
    v = F.linear(value, w_v, b_v)  # (S, N, E)
    s_len, n = v.shape[:2]
    v = v.reshape(s_len, n * heads, e // heads).transpose(0, 1)  # (N*H, S, E/H)
    l_len = probs.shape[-2]
    o = torch.bmm(probs.reshape(n * heads, l_len, s_len), v)  # (N*H, L, E/H)
    o = o.transpose(0, 1).reshape(l_len * n, e)
    out = F.linear(o, a["out_proj_weight"], a["out_proj_bias"]).view(l_len, n, e)
    if unbatched:
        out, probs = out.squeeze(1), probs.squeeze(0)
    if not a["need_weights"]:
        returned = None
    else:
        returned = probs.mean(dim=-3) if a["average_attn_weights"] else probs
    return (out, returned), probs


class _AttentionMode(TorchFunctionMode):
    """Sees every attention computation of this thread: inside a block of ``capture`` (recorded), or
    everywhere when there is no capture (computed step by step only)."""

    def __init__(self, capture: AttentionCapture | None) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        cap = self.capture
        block = cap.current_block() if cap is not None else None
        if cap is not None and block is None:
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            out, probs = _explicit_sdpa(*args, **kwargs)
            if cap is not None and block is not None:
                cap.record(block, probs)
            return out
        if func is F.multi_head_attention_forward:
            result, probs = _mha_with_probabilities(func, args, kwargs)
            if cap is not None and block is not None:
                cap.record(block, probs)
            return result
        out = func(*args, **kwargs)
        if (
            cap is not None
            and block is not None
            and func in _SOFTMAXES
            and isinstance(out, Tensor)
            and out.ndim >= 3
        ):
            cap.record(block, out)
        return out


@contextmanager
def explicit_attention() -> Iterator[None]:
    """Compute attention step by step in this thread, so that it can be differentiated twice.

    Fused attention kernels (``F.scaled_dot_product_attention``'s flash and memory-efficient CPU
    and CUDA kernels, and the fast path of ``nn.MultiheadAttention``) have no double backward. Inside
    this block, in this thread only, ``F.scaled_dot_product_attention`` is computed as
    ``softmax(Q K^T s + M) V`` and ``nn.MultiheadAttention`` from its explicit weights (as in
    :class:`AttentionCapture`); the results equal the kernels' up to rounding. The global backend
    flags are not touched, so other threads are not affected. Used for second derivatives
    (ShapleyCAM's Hessian-vector product).

    Example:
        >>> q = torch.rand(1, 2, 3, 4, requires_grad=True)
        >>> with explicit_attention():
        ...     out = F.scaled_dot_product_attention(q, q, q)
        >>> g = torch.autograd.grad(out.sum(), q, create_graph=True)[0]
        >>> torch.autograd.grad(g.sum(), q)[0].shape   # a second derivative
        torch.Size([1, 2, 3, 4])
    """
    with _AttentionMode(None):
        yield


class AttentionCapture:
    """Record the attention probabilities computed inside ``blocks`` during the forwards of its block.

    Attention is found where it is computed, not by module type. While one of the blocks runs (in the
    thread, and the capture scope, that opened this ``with``), a torch function mode sees:

    * ``F.scaled_dot_product_attention`` (timm's fused attention, Hugging Face's ``sdpa``): a fused
      kernel never materialises its probabilities, so the call is computed step by step,
      ``P = softmax(Q K^T s + M)``, ``O = P V`` (equal to the kernel up to rounding);
    * ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, torchvision's ViT): asked for its
      per-head weights, with its output recomputed from them;
    * any softmax over a tensor of three or more axes (explicit attention: timm with
      ``fused_attn=False``, Hugging Face's ``eager``): its output is recorded as it is.

    In every case the recorded probabilities are the tensor the block's output is computed from, so
    ``torch.autograd.grad(score, capture.attentions[name])`` is exact. Each block keeps the last
    probabilities it computed. The model is not modified; other threads, and forwards run
    :func:`paused`, are not affected. Attention dropout must be off (``model.eval()``).

    Use it together with a :class:`LayerCapture` with ``full_graph=True`` (or with gradients enabled
    from an input that requires grad), so that the attention is part of an autograd graph; entered
    inside that capture's ``with``, it joins its scope (:func:`joined_hooks`).

    Args:
        blocks: ``(name, module)`` pairs, e.g. from :func:`attention_blocks` and
            :func:`resolve_layers`.

    Attributes:
        attentions: name -> ``(B, H, N_q, N_k)`` probabilities (``(B * H, N_q, N_k)`` outputs are
            reshaped with the batch size of the block's input).
    """

    def __init__(self, blocks: list[tuple[str, nn.Module]]) -> None:
        self.blocks = blocks
        self.attentions: dict[str, Tensor] = {}
        self._stack: list[tuple[str, int]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scope: Any = None
        self._mode: _AttentionMode | None = None

    def current_block(self) -> str | None:
        """The block running now in this capture's forward, or ``None``."""
        return self._stack[-1][0] if self._stack else None

    def record(self, block: str, probs: Tensor) -> None:
        """Keep ``probs`` as ``block``'s attention, as ``(B, H, N_q, N_k)``."""
        batch = self._stack[-1][1] if self._stack else probs.shape[0]
        if probs.ndim == 3 and batch and probs.shape[0] % batch == 0:
            probs = probs.reshape(batch, -1, *probs.shape[1:])
        self.attentions[block] = probs

    def __enter__(self) -> AttentionCapture:
        self._scope = joined_hooks()
        own = self._scope.__enter__()
        try:
            for name, module in self.blocks:

                def enter(_m: nn.Module, args: Any, name: str = name) -> None:
                    t = next((a for a in args if isinstance(a, Tensor)), None)
                    self._stack.append((name, int(t.shape[0]) if t is not None and t.ndim else 0))

                def leave(_m: nn.Module, _i: Any, _o: Any) -> None:
                    if self._stack:
                        self._stack.pop()

                self._handles.append(module.register_forward_pre_hook(own(enter)))
                self._handles.append(module.register_forward_hook(own(leave)))
            self._mode = _AttentionMode(self)
            self._mode.__enter__()
        except BaseException:
            self._close()
            raise
        return self

    def _close(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.__exit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        self._close()

    def check_called(self) -> None:
        """Raise if a block computed no attention (its name, and what would work, in the message)."""
        missing = [n for n, _ in self.blocks if n not in self.attentions]
        if missing:
            raise ValueError(
                f"no attention probabilities were computed inside block(s) {missing}: camlens reads "
                "them from a softmax, F.scaled_dot_product_attention or nn.MultiheadAttention "
                "running inside the block; pass the transformer blocks (camlens.capture."
                "attention_blocks(model) lists them)"
            )
