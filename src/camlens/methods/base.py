"""The machinery every method shares: input checks, layer choice, capture, targets, post-processing.

A method states only its formula, as one of two hooks, each a call into :mod:`camlens.maps`:

* **channel-weight methods** (Grad-CAM, Grad-CAM++, XGrad-CAM, CAM, Score-CAM, Ablation-CAM) define
  :meth:`BaseCAM.weights` ``(acts, grads, ctx) -> (B, K)``; the terms are ``w_k A^k``;
* **element-wise methods** (HiResCAM, LayerCAM, Eigen-CAM, the input-space methods) define
  :meth:`BaseCAM.terms` ``(acts, grads, ctx) -> (B, K, *s)``.

Everything else happens here, once: the counterfactual (gradient methods differentiate ``-y^c``;
gradient-free methods negate their terms), the sum over channels or, with ``eigen_smooth``, their
first principal component, the ReLU, upsampling, normalisation, fusion of several layers and
test-time augmentation. Class attributes say what a method needs: ``needs_grad``, ``uses_target``,
``takes_layer``, ``input_space``, ``needs_hvp`` (second derivatives at the layer), ``spatial_dims``
(the numbers of spatial axes it is defined for) and ``model_kind`` (``"any"``, or ``"transformer"``
for methods that read attention).

**Beyond the layer's own gradient.** A method that needs more than ``G`` at its layer gets it from
the :class:`MapContext`: ``ctx.hvp`` (the Hessian-vector product ``H A`` at the layer, when
``needs_hvp``), ``ctx.gradients`` and ``ctx.observed`` (every activation its ``_observe`` recorded,
and the target's gradient at each: FullGrad's bias layers and input), and
``ctx.gradients_at(x')`` (activations and gradients of the same target at the layer for another
input: Smooth Grad-CAM++'s noisy copies).

**One call, one state.** Everything that belongs to a call (the capture, the activations, a verified
torch.fx split, ...) lives in that call's locals and its :class:`MapContext`; a method object holds
only its configuration, so one object may serve many threads at once. Nothing derived from the model
is trusted across calls without a check: layers are looked up by name on the live model at every call,
the automatic layer is chosen for each input shape and module tree
(:func:`camlens.capture.default_layer`).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camlens.capture import (
    CaptureError,
    LayerCapture,
    LayerSpec,
    default_layer,
    explicit_attention,
    layer_gradients,
    layer_gradients_and_hvp,
    paused,
    resolve_layers,
)
from camlens.maps import eigencam_map, input_saliency, normalize, product_fusion, upsample
from camlens.maps import resize as maps_resize
from camlens.reshape import ReshapeFn, to_spatial
from camlens.result import CAMResult, CAMResults
from camlens.targets import (
    ClassTarget,
    Resolved,
    TargetSpec,
    accepts_any_output,
    resolve,
    select_output,
    top_k_targets,
)

__all__ = ["BaseCAM", "MapContext", "ModelError", "Observation", "quiet"]

OutputSelector = str | int | Callable[[Any], Tensor] | None


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("camlens_quiet", default=False)


@contextmanager
def quiet() -> Iterator[None]:
    """Calls of methods inside this block do not warn about empty maps (in this thread or task only).

    For composite methods whose inner calls explain parts of an input (SESS's patches), where an
    empty map of a part is expected and says nothing about the result.
    """
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


class ModelError(RuntimeError):
    """The model itself failed to run on the input it was given."""


#: What :func:`model_error` tells the user to check when the caller has nothing more precise.
MODEL_HINT = "check that the input has the channels, size and dtype the model expects"


def model_error(x: Tensor, e: BaseException, hint: str | None = None) -> ModelError:
    """The one error camlens raises when the model fails on ``x`` (first forward or internal pass).

    Its message is one line: the model's own message on one line, cut at 200 characters, then
    ``hint`` (what to do; by default, check the input's channels, size and dtype).
    """
    msg = " ".join(str(e).split())[:200]
    return ModelError(
        f"the model failed on an input of shape {tuple(x.shape)} ({type(e).__name__}: {msg}); "
        + (hint or MODEL_HINT)
    )


def run_model(model: nn.Module, x: Tensor) -> Any:
    """``model(x)``, with any failure of the model reported as :class:`ModelError`."""
    try:
        return model(x)
    except CaptureError:
        raise
    except Exception as e:
        raise model_error(x, e) from e


@dataclass(frozen=True)
class Observation:
    """What the forward of one call saw: the output and the activations to explain.

    Attributes:
        output: what the model returned.
        activations: layer name -> the layer's output in its own layout; when gradients are needed,
            part of the autograd graph of ``output`` (the leaf of the fast path).
        inputs: module name -> input recorded for :meth:`BaseCAM._record_inputs`.
    """

    output: Any
    activations: dict[str, Tensor]
    inputs: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class MapContext:
    """What a method's formula may need beyond activations and gradients, for one layer and target.

    Attributes:
        x: the input batch.
        layer: the layer's name.
        target: the resolved target: ``(B,)`` scores and, for class targets, ``(B,)`` classes.
        spec: the target as the caller gave it (a callable target is needed again by perturbation
            methods).
        output: the model's selected output (the logits, for classifiers).
        activation: the layer's output in its own layout, detached (Ablation-CAM zeroes its channels).
        inputs: inputs recorded for :meth:`BaseCAM._record_inputs` (CAM's classifier).
        selector: the method's ``output=`` option.
        scratch: a dict that lives for this call only, shared by its targets and layers, where a method
            may keep what it computed once (Ablation-CAM's verified head). Never state on ``self``.
        details: what the result should report about how it was computed (``CAMResult.details``).
        counterfactual: the call explains ``-y^c`` (gradients are already those of the negated score).
        gradients: every gradient of this target's (signed) score that the call computed, by name, in
            each module's own layout: the layers' and those of anything else ``_observe`` recorded
            (FullGrad's bias layers, the input).
        observed: every activation ``_observe`` recorded, by name, in its own layout, detached.
        hvp: with ``needs_hvp``, the Hessian-vector product ``H A`` of the score at this layer,
            ``(B, K, *s)`` like ``acts`` (see :func:`camlens.capture.layer_gradients_and_hvp`).
        gradients_at: ``x' -> (acts, grads)``, both ``(B, K, *s)``: one more forward of the model on
            ``x'`` (same batch size) with the fast path at this layer, and the gradients of this
            call's target (the same classes, or the same callable; negated for a counterfactual).
            Capture of the call is not involved; a failure of the model is a ``ModelError``.
    """

    x: Tensor
    layer: str
    target: Resolved
    spec: Any
    output: Any
    activation: Tensor
    inputs: Mapping[str, Tensor]
    selector: OutputSelector
    scratch: dict[str, Any]
    details: dict[str, Any]
    counterfactual: bool = False
    gradients: Mapping[str, Tensor] = field(default_factory=dict)
    observed: Mapping[str, Tensor] = field(default_factory=dict)
    hvp: Tensor | None = None
    gradients_at: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None

    def run(self, model: nn.Module, x: Tensor) -> Any:
        """An internal forward: no capture records it, under inference mode, failures as ModelError."""
        with paused(), torch.inference_mode():
            return run_model(model, x)

    def sample_target(self, b: int) -> Callable[[Any], Tensor]:
        """The target of sample ``b`` as a callable on the output for a batch of copies of that sample."""
        if self.target.classes is not None:
            return ClassTarget(int(self.target.classes[b]))
        if not callable(self.spec):
            raise ValueError("this method needs class targets or a callable target")
        return self.spec  # documented: a callable target must score each row on its own

    def scores(self, output: Any, b: int) -> Tensor:
        """Sample ``b``'s target scored on each row of an internal forward's ``output``, ``(N,)`` float."""
        fn = self.sample_target(b)
        selected = select_output(output, self.selector, passthrough=accepts_any_output([fn]))
        return resolve(fn, selected).scores.float()

    def row_scores(self, output: Any, rows: Tensor, *, softmax: bool = False) -> Tensor:
        """Each row of an internal forward's ``output`` scored for the target of its own sample.

        Lets a method batch perturbed copies of *different* samples into one forward.

        Args:
            output: the model's output on ``N`` rows.
            rows: ``(N,)`` the sample of the call's batch that each row is a copy of.
            softmax: score class targets by their softmax probability instead of the logit (a
                callable target always scores the output as it is).

        Returns:
            ``(N,)`` float scores.
        """
        classes = self.target.classes
        if classes is None or accepts_any_output([self.spec]):
            if not callable(self.spec):
                raise ValueError("this method needs class targets or a callable target")
            selected = select_output(
                output, self.selector, passthrough=accepts_any_output([self.spec])
            )
            return resolve(self.spec, selected).scores.float()
        selected = select_output(output, self.selector)
        if not isinstance(selected, Tensor) or selected.ndim != 2:
            raise ValueError(
                f"class targets need (N, classes) scores, but the model's output gives {type(selected).__name__}"
            )
        scores = selected.float().softmax(dim=1) if softmax else selected.float()
        idx = classes.to(scores.device)[rows.to(scores.device)]
        return scores.gather(1, idx[:, None]).squeeze(1)


class BaseCAM:
    """Base of all class-activation-map methods.

    Args:
        model: any ``nn.Module``. It is used as it is: camlens never changes its mode, flags or
            parameters, and removes every hook it adds before returning.
        layer: the layer to explain: a dotted name (``"layer4"``), a module, a list of them (one map per
            layer, fused), or ``None`` to choose one for each input shape with
            :func:`camlens.capture.find_default_layer`: the last layer whose output keeps the input's
            spatial axes (``layer4`` of a ResNet), inside ``backbone`` for detection and segmentation
            models, and for transformers the norm before the last attention block
            (``blocks[-1].norm1`` of a timm ViT). Input-space methods (``takes_layer = False``) take
            no layer.
        output: which part of the model's output holds the scores, when it is not a plain tensor (a key,
            an index or a callable); ``None`` finds logits in tensors, dicts, tuples and HF outputs.
        fuse: how maps of several layers are combined: ``"mean"``, ``"max"`` or ``"product"`` (RefineCAM's
            refinement, :func:`camlens.maps.product_fusion`) of the normalised maps, rescaled to
            ``[0, 1]``.
        reshape: a callable ``(activation, input) -> (B, K, *spatial)`` for layers whose output layout
            camlens cannot infer (see :mod:`camlens.reshape`).

    Every keyword given to the constructor is kept (:attr:`options`), so :meth:`with_model` rebuilds
    the method exactly.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: gradients of the target score at the layer are computed (the fast path)
    needs_grad: ClassVar[bool] = True
    #: the map depends on the target (False for Eigen-CAM)
    uses_target: ClassVar[bool] = True
    #: the method explains a layer (False for guided backpropagation, which explains the input)
    takes_layer: ClassVar[bool] = True
    #: the terms have the input's channels; ``maps`` is their :func:`~camlens.maps.input_saliency`
    input_space: ClassVar[bool] = False
    #: the map is the first principal component of the terms, not their sum (Eigen-CAM)
    principal_component: ClassVar[bool] = False
    #: the Hessian-vector product ``H A`` at the layer is computed too (``ctx.hvp``; ShapleyCAM)
    needs_hvp: ClassVar[bool] = False
    #: the numbers of spatial axes of the inputs the method is defined for; others are refused
    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2, 3)
    #: the models it explains: ``"any"``, or ``"transformer"`` (needs attention blocks: LeGrad)
    model_kind: ClassVar[str] = "any"

    _init_options: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> BaseCAM:
        self = super().__new__(cls)
        # every constructor keyword exactly as given: with_model passes them on, none can be dropped
        self._init_options = {k: v for k, v in kwargs.items() if k != "layer"}
        return self

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        output: OutputSelector = None,
        fuse: str = "mean",
        reshape: ReshapeFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if fuse not in ("mean", "max", "product"):
            raise ValueError(f"fuse must be 'mean', 'max' or 'product', not {fuse!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError(
                f"reshape must be a callable (activation, input) -> (B, K, *spatial), not {reshape!r}"
            )
        if not self.takes_layer and (layer is not None or reshape is not None):
            raise ValueError(
                f"{type(self).__name__} explains the input itself and takes no layer or reshape; "
                "leave them out (layer=None)"
            )
        self.model = model
        self.output = output
        self.fuse = fuse
        self.reshape = reshape
        self._layer_names: list[str] | None = (
            None if layer is None else [n for n, _ in resolve_layers(model, layer)]
        )
        self._warned_train = False

    # ---- what subclasses state -------------------------------------------------------------------
    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        """Channel weights ``(B, K)`` from activations ``(B, K, *s)`` and gradients (channel-weight methods)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither weights() nor terms()")

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        """Per-channel terms ``(B, K, *s)``; by default ``weights(...)_k * A^k``."""
        from camlens.maps import channel_weighted

        return channel_weighted(acts, self.weights(acts, grads, ctx))

    def _objective(self, target: Resolved, output: Any, details: dict[str, Any]) -> Tensor:
        """The ``(B,)`` scores whose gradient a gradient method takes; by default the target's scores.

        A method that explains something other than the target's own score (Finer-CAM: the target's
        score minus that of similar classes) returns it here, computed from ``output`` (the selected
        output, part of the autograd graph), and may record its choices in ``details``. The result
        still reports the target's own ``scores``.
        """
        return target.scores

    def _record_inputs(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Modules whose inputs the capture should also record (CAM's classifier)."""
        return []

    def _observe(self, x: Tensor, layers: list[tuple[str, nn.Module]]) -> Observation:
        """One forward of ``x`` under a capture of ``layers`` (the fast path when gradients are needed)."""
        # second derivatives: attention computed step by step (fused kernels have no double backward)
        explicit = explicit_attention() if self.needs_hvp else contextlib.nullcontext()
        with (
            explicit,
            LayerCapture(
                layers, grad=self.needs_grad, record_inputs=self._record_inputs(layers)
            ) as cap,
        ):
            out = run_model(self.model, x)
            cap.check_called()
        return Observation(out, {n: cap.activations[n] for n, _ in layers}, dict(cap.inputs))

    # ---- public API ------------------------------------------------------------------------------
    @property
    def options(self) -> dict[str, Any]:
        """The constructor's keyword options as given (without ``model`` and ``layer``)."""
        return dict(self._init_options)

    @property
    def layer_names(self) -> list[str] | None:
        """Names of the layers given at construction; ``None`` when chosen per input (``layer=None``)."""
        return None if self._layer_names is None else list(self._layer_names)

    def with_model(self, model: nn.Module) -> BaseCAM:
        """The same method, layers and options on another model (e.g. a copy with other weights)."""
        return type(self)(model, layer=self.layer_names, **self._init_options)

    def __call__(
        self,
        x: Tensor,
        target: TargetSpec = None,
        *,
        counterfactual: bool = False,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> CAMResult:
        """Explain ``target`` for the batch ``x``.

        Args:
            x: ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, D, H, W)`` input on the model's device, with
                finite values.
            target: ``None`` (each sample's top class), an int (Python or numpy), one int per sample (a
                sequence, tensor or numpy array), or a callable ``output -> (B,)`` scores.
            counterfactual: explain ``-y^c`` (Selvaraju et al. 2017, sec. 5): regions whose removal
                would raise the target's score. Gradient methods differentiate the negated score;
                gradient-free methods negate their weights.
            aug_smooth: test-time augmentation: the map is averaged over horizontal flips and input
                scales (x0.875, x1, x1.125), each mapped back to the input's frame. Six passes.
            eigen_smooth: the map is the first principal component of the method's per-channel terms
                (e.g. ``alpha_k A^k``) instead of their sum, which suppresses noise.

        Returns:
            A :class:`~camlens.result.CAMResult`.
        """
        return self._explain(x, [target], counterfactual, aug_smooth, eigen_smooth)[0]

    def for_targets(
        self,
        x: Tensor,
        targets: str | Sequence[TargetSpec],
        *,
        counterfactual: bool = False,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        """Several targets for one batch with one forward pass; only the head is differentiated again.

        Args:
            targets: a list of target specs (each as in :meth:`__call__`), or ``"top-k"``: the k
                highest classes of each sample, in order.

        Returns:
            One :class:`~camlens.result.CAMResult` per target, equal to separate calls, in a
            :class:`~camlens.result.CAMResults` list (a notebook shows it as one grid).
        """
        if not isinstance(targets, str):
            targets = list(targets)
            if not targets:
                raise ValueError("targets is empty; pass at least one target")
        return CAMResults(self._explain(x, targets, counterfactual, aug_smooth, eigen_smooth))

    # ---- the pipeline ----------------------------------------------------------------------------
    _AUG_SCALES: ClassVar[tuple[float, ...]] = (1.0, 0.875, 1.125)

    def _explain(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        counterfactual: bool,
        aug_smooth: bool,
        eigen_smooth: bool,
    ) -> list[CAMResult]:
        x = self._check_input(x)
        self._check_call(counterfactual, eigen_smooth)
        with torch.inference_mode(False):
            base = self._run(x, targets, counterfactual=counterfactual, eigen_smooth=eigen_smooth)
            if aug_smooth:
                base = self._augment(x, targets, base, counterfactual, eigen_smooth)
        return base

    def _augment(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        base: list[CAMResult],
        counterfactual: bool,
        eigen_smooth: bool,
    ) -> list[CAMResult]:
        """Average ``base`` with the maps of flipped and rescaled inputs, mapped back to ``x``'s frame."""
        # The augmented passes explain the same classes as the plain pass (an argmax could change).
        specs = [
            r.targets if r.targets is not None else t
            for r, t in zip(base, _specs_like(targets, base), strict=True)
        ]
        size = x.shape[2:]
        map_sums = [r.maps.clone() for r in base]
        raw_sums = [r.raw.clone() for r in base]
        input_sums = [None if r.input_maps is None else r.input_maps.clone() for r in base]
        n = 1
        for flip in (False, True):
            for scale in self._AUG_SCALES:
                if not flip and scale == 1.0:
                    continue
                xa = x.flip(-1) if flip else x
                if scale != 1.0:
                    xa = upsample_input(xa, scale)
                runs = self._run(
                    xa, specs, counterfactual=counterfactual, eigen_smooth=eigen_smooth
                )
                for j, r in enumerate(runs):
                    m, raw, im = r.maps, r.raw, r.input_maps
                    if flip:
                        m, raw = m.flip(-1), raw.flip(-1)
                        im = None if im is None else im.flip(-1)
                    map_sums[j] += upsample(m, size)
                    raw_sums[j] += upsample(raw, raw_sums[j].shape[1:])
                    acc = input_sums[j]
                    if acc is not None and im is not None:
                        acc += upsample(im.flatten(0, 1), size).reshape(acc.shape)
                n += 1
        for j, r in enumerate(base):
            r.maps, r.raw = normalize(map_sums[j] / n), raw_sums[j] / n
            acc = input_sums[j]
            if acc is not None:
                r.input_maps = acc / n
            r.method += "+aug"
        return base

    def _check_input(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"x must be a torch.Tensor of shape (B, C, *spatial), not {type(x).__name__}"
            )
        if x.ndim not in (3, 4, 5):
            raise ValueError(
                f"x must be (B, C, L), (B, C, H, W) or (B, C, D, H, W); got shape {tuple(x.shape)} "
                "(add a batch axis with x.unsqueeze(0) for a single sample)"
            )
        if x.ndim - 2 not in self.spatial_dims:
            dims = " or ".join(f"{d}-D" for d in self.spatial_dims)
            raise ValueError(
                f"{type(self).__name__} is defined for {dims} inputs only; got an input of shape "
                f"{tuple(x.shape)} with {x.ndim - 2} spatial axes"
            )
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch")
        if x.is_floating_point() or x.is_complex():
            finite = torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(dim=1)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten().tolist()
                raise ValueError(
                    f"x has NaN or infinite values in sample(s) {bad[:20]}"
                    + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
                    + "; a map of such an input means nothing. Check the image decoding and "
                    "normalisation, or drop those samples"
                )
        return x

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        if counterfactual and not self.uses_target:
            raise ValueError(
                f"{type(self).__name__} does not use the target, so counterfactual=True has no meaning"
            )
        if eigen_smooth and self.input_space and not self.takes_layer:
            raise ValueError(
                f"{type(self).__name__} explains the input's channels; eigen_smooth needs the channels "
                "of a layer (use it with a layer method)"
            )

    def _layers(self, x: Tensor) -> list[tuple[str, nn.Module]]:
        """The layers to explain for this input, looked up on the live model."""
        names = self._layer_names
        if names is None:
            try:
                names = [default_layer(self.model, x)]
            except ValueError:
                raise
            except Exception as e:
                raise model_error(x, e) from e
        return resolve_layers(self.model, names)

    def _warn_training(self) -> None:
        if self.model.training and not self._warned_train:
            self._warned_train = True
            warnings.warn(
                f"{type(self.model).__name__} is in training mode: BatchNorm uses batch statistics (and "
                "updates its running ones) and Dropout is random, so maps differ from run to run; call "
                "model.eval() first unless this is intended",
                stacklevel=5,
            )

    def _to_spatial(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """A layer's output (or its gradient) as ``(B, K, *spatial)``; see :func:`camlens.reshape.to_spatial`."""
        if not self.takes_layer:
            return t
        return to_spatial(t, x, name=name, model=self.model, reshape=self.reshape)

    def _run(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        *,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        """One forward, then a map per target: the whole method on a checked input."""
        layers = [("input", self.model)] if not self.takes_layer else self._layers(x)
        self._warn_training()
        obs = self._observe(x, layers)
        # a callable target (e.g. BoxTarget) may read an output with no score tensor in it
        passthrough = not self.uses_target or accepts_any_output(targets)
        logits = select_output(obs.output, self.output, passthrough=passthrough)
        specs: list[Any] = top_k_targets(targets, logits) if isinstance(targets, str) else targets
        names = [n for n, _ in layers]
        acts = {n: self._to_spatial(n, obs.activations[n], x).detach().float() for n in names}
        scratch: dict[str, Any] = {}
        results = []
        observed = {n: a.detach() for n, a in obs.activations.items()}
        modules = dict(layers)
        for i, spec in enumerate(specs):
            resolved = self._resolve_target(spec, logits, batch=x.shape[0])
            grads: dict[str, Tensor] = {}
            g: dict[str, Tensor] = {}
            hvps: dict[str, Tensor] = {}
            details: dict[str, Any] = {}
            if self.needs_grad:
                score = self._objective(resolved, logits, details)
                score = -score if counterfactual else score
                retain = i < len(specs) - 1
                if self.needs_hvp:
                    g, hv = layer_gradients_and_hvp(score, obs.activations, retain_graph=retain)
                    hvps = {n: self._to_spatial(n, hv[n], x).float() for n in names}
                else:
                    g = layer_gradients(score, obs.activations, retain_graph=retain)
                grads = {n: self._to_spatial(n, g[n], x).float() for n in names}
            raws: dict[str, Tensor] = {}
            attributions: dict[str, Tensor] = {}
            with paused():
                for n in names:
                    ctx = MapContext(
                        x=x,
                        layer=n,
                        target=resolved,
                        spec=spec,
                        output=logits,
                        activation=obs.activations[n].detach(),
                        inputs=obs.inputs,
                        selector=self.output,
                        scratch=scratch,
                        details=details,
                        counterfactual=counterfactual,
                        gradients=g,
                        observed=observed,
                        hvp=hvps.get(n),
                        gradients_at=self._gradients_at(
                            n, modules[n], spec, resolved, counterfactual, x
                        ),
                    )
                    terms = self.terms(acts[n], grads.get(n), ctx)
                    if counterfactual and not self.needs_grad:
                        terms = -terms
                    if self.input_space and not self.takes_layer:
                        attributions[n] = terms
                        raws[n] = input_saliency(terms)
                    elif eigen_smooth or self.principal_component:
                        raws[n] = eigencam_map(terms).clamp(min=0)
                    else:
                        raws[n] = terms.sum(dim=1).clamp(min=0)
            res = self._result(
                x, raws, grads, resolved, counterfactual, eigen_smooth, attributions, details
            )
            res.logits = logits.detach() if isinstance(logits, Tensor) else None
            results.append(res)
        return results

    def _gradients_at(
        self,
        name: str,
        module: nn.Module,
        spec: TargetSpec,
        resolved: Resolved,
        counterfactual: bool,
        x: Tensor,
    ) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
        """``MapContext.gradients_at`` for layer ``name``: the target of this call on another input."""
        if not self.takes_layer or not self.needs_grad:
            return None
        classes = resolved.classes
        target: Any = ClassTarget(classes) if classes is not None else spec
        if not callable(target):
            return None

        def at(x2: Tensor) -> tuple[Tensor, Tensor]:
            if x2.shape != x.shape:
                raise ValueError(f"gradients_at needs an input of shape {tuple(x.shape)}")
            with LayerCapture([(name, module)], grad=True) as cap:
                out = run_model(self.model, x2)
            selected = select_output(out, self.output, passthrough=accepts_any_output([target]))
            score = resolve(target, selected).scores
            g = layer_gradients(-score if counterfactual else score, cap.activations)
            act = cap.activations[name].detach()
            return (
                self._to_spatial(name, act, x2).float(),
                self._to_spatial(name, g[name], x2).float(),
            )

        return at

    def _resolve_target(self, spec: TargetSpec, logits: Any, batch: int | None = None) -> Resolved:
        if (
            not self.uses_target
            and spec is None
            and not (isinstance(logits, Tensor) and logits.ndim == 2)
        ):
            b = batch if batch is not None else logits.shape[0]
            device = logits.device if isinstance(logits, Tensor) else None
            return Resolved(torch.full((b,), float("nan"), device=device), None)
        return resolve(spec, logits, batch=batch)

    def _label(self, counterfactual: bool, eigen_smooth: bool) -> str:
        return (
            self.name
            + ("(counterfactual)" if counterfactual else "")
            + ("+eigen" if eigen_smooth else "")
        )

    def _result(
        self,
        x: Tensor,
        raws: dict[str, Tensor],
        grads: dict[str, Tensor],
        target: Resolved,
        counterfactual: bool,
        eigen_smooth: bool,
        attributions: dict[str, Tensor],
        details: dict[str, Any],
    ) -> CAMResult:
        size = x.shape[2:]
        per_layer = {n: normalize(upsample(r, size)) for n, r in raws.items()}
        if len(per_layer) == 1:
            maps = next(iter(per_layer.values()))
        else:
            stack = torch.stack(list(per_layer.values()))
            if self.fuse == "product":
                fused = product_fusion(stack)
            else:
                fused = stack.mean(0) if self.fuse == "mean" else stack.amax(0)
            maps = normalize(fused)
        self._warn_empty(raws, grads)
        names = list(raws)
        return CAMResult(
            maps=maps.float(),
            raw=raws[names[-1]],
            scores=target.scores.detach(),
            targets=target.classes,
            layer="+".join(names),
            method=self._label(counterfactual, eigen_smooth),
            per_layer=per_layer if len(names) > 1 else {},
            raw_per_layer=raws if len(names) > 1 else {},
            input_maps=attributions[names[-1]].float() if attributions else None,
            details=dict(details),
        )

    def _warn_empty(self, raws: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        if _QUIET.get():
            return
        for n, r in raws.items():
            empty = r.reshape(r.shape[0], -1).amax(dim=1) <= 0
            if not bool(empty.any()):
                continue
            idx = empty.nonzero().flatten().tolist()
            g = grads.get(n)
            if g is not None and bool((g.reshape(g.shape[0], -1)[empty] == 0).all()):
                cause = (
                    "the gradient of the target score with respect to this layer is zero (the score does "
                    "not depend on it, or a saturated unit blocks the gradient)"
                )
            else:
                cause = (
                    "nothing at this layer has positive evidence for the target, so the ReLU removed "
                    "everything; try counterfactual=True, another layer, or another method"
                )
            warnings.warn(
                f"{self.name}: the map of layer {n!r} is all zero for samples {idx}: {cause}",
                stacklevel=6,
            )

    def __repr__(self) -> str:
        layer = "auto" if self._layer_names is None else "+".join(self._layer_names)
        opts = "".join(f", {k}={v!r}" for k, v in self._init_options.items())
        return f"{type(self).__name__}({type(self.model).__name__}, layer={layer!r}{opts})"


def _specs_like(targets: str | list[TargetSpec], base: list[CAMResult]) -> list[TargetSpec]:
    return [None] * len(base) if isinstance(targets, str) else list(targets)


def upsample_input(x: Tensor, scale: float) -> Tensor:
    """Resize a ``(B, C, *spatial)`` input by ``scale`` (linear interpolation of matching dimension)."""
    return maps_resize(x, [max(1, round(s * scale)) for s in x.shape[2:]])
