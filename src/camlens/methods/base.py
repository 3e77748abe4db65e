"""The machinery every method shares: input checks, layer choice, capture, targets, post-processing.

A method states only what differs: :meth:`BaseCAM._terms` turns activations ``(B, K, *s)`` and
gradients into per-channel terms ``(B, K, *s)`` with a formula from :mod:`camlens.maps`; the map is
their sum over channels (or, with ``eigen_smooth``, their first principal component), then ReLU.
``needs_grad`` says whether gradients are computed at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camlens.capture import (
    CaptureError,
    LayerCapture,
    LayerSpec,
    find_default_layer,
    resolve_layers,
)
from camlens.maps import eigencam_map, normalize, upsample
from camlens.reshape import ReshapeFn, to_spatial
from camlens.result import CAMResult
from camlens.targets import (
    Resolved,
    TargetSpec,
    accepts_any_output,
    resolve,
    select_output,
    top_k_targets,
)

__all__ = ["BaseCAM", "MapContext", "ModelError"]

OutputSelector = str | int | Callable[[Any], Tensor] | None


@dataclass(frozen=True)
class MapContext:
    """What a method's ``_map`` may need beyond activations and gradients."""

    target: Resolved
    capture: LayerCapture
    layer: str
    counterfactual: bool
    x: Tensor
    spec: Any = None
    output: Any = None


class ModelError(RuntimeError):
    """The model itself failed to run on the input it was given."""


class BaseCAM:
    """Base of all class-activation-map methods.

    Args:
        model: any ``nn.Module``. It is used as it is: camlens never changes its mode, flags or
            parameters, and removes every hook it adds before returning.
        layer: the layer to explain: a dotted name (``"layer4"``), a module, a list of them (one map per
            layer, fused), or ``None`` to choose one with :func:`camlens.capture.find_default_layer`:
            the last layer whose output keeps the input's spatial axes (``layer4`` of a ResNet), inside
            ``backbone`` for detection and segmentation models, and for transformers the norm before
            the last attention block (``blocks[-1].norm1`` of a timm ViT).
        output: which part of the model's output holds the scores, when it is not a plain tensor (a key,
            an index or a callable); ``None`` finds logits in tensors, dicts, tuples and HF outputs.
        fuse: how maps of several layers are combined: ``"mean"`` or ``"max"`` of the normalised maps,
            rescaled to ``[0, 1]``.
        reshape: a callable ``(activation, input) -> (B, K, *spatial)`` for layers whose output layout
            camlens cannot infer (see :mod:`camlens.reshape`).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs_grad: ClassVar[bool] = True
    uses_target: ClassVar[bool] = True
    #: the map is the first principal component of the terms, not their sum (Eigen-CAM)
    principal_component: ClassVar[bool] = False

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
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', not {fuse!r}")
        self.model = model
        self.output = output
        self.fuse = fuse
        if reshape is not None and not callable(reshape):
            raise TypeError(
                f"reshape must be a callable (activation, input) -> (B, K, *spatial), not {reshape!r}"
            )
        self.reshape = reshape
        self._layer_spec = layer
        self._layers: list[tuple[str, nn.Module]] | None = (
            None if layer is None else resolve_layers(model, layer)
        )
        self._auto: dict[int, list[tuple[str, nn.Module]]] = {}
        self._warned_train = False

    # ---- what subclasses state -------------------------------------------------------------------
    def _terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        """Per-channel terms ``(B, K, *s)`` from activations and gradients (negated if counterfactual)."""
        raise NotImplementedError

    def _record_inputs(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Modules whose inputs the capture should also record (CAM's classifier)."""
        return []

    def _options(self) -> dict[str, Any]:
        """Constructor keyword arguments, to rebuild the method on another model."""
        return {"output": self.output, "fuse": self.fuse, "reshape": self.reshape}

    # ---- public API ------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str] | None:
        """Names of the layers explained, or ``None`` until an automatic choice has been made."""
        layers = self._layers or next(iter(self._auto.values()), None)
        return None if layers is None else [n for n, _ in layers]

    def with_model(self, model: nn.Module) -> BaseCAM:
        """The same method and options on another model with the same layer names (e.g. a copy)."""
        return type(self)(model, layer=self.layer_names, **self._options())

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
            x: ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, D, H, W)`` input on the model's device.
            target: ``None`` (each sample's top class), an int, one int per sample, or a callable
                ``output -> (B,)`` scores.
            counterfactual: negate the gradients (Selvaraju et al. 2017, sec. 5): regions whose
                removal would raise the target's score.
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
        """
        if not isinstance(targets, str):
            targets = list(targets)
            if not targets:
                raise ValueError("targets is empty; pass at least one target")
        return self._explain(x, targets, counterfactual, aug_smooth, eigen_smooth)

    # ---- smoothing -------------------------------------------------------------------------------
    _AUG_SCALES: ClassVar[tuple[float, ...]] = (1.0, 0.875, 1.125)

    def _explain(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        counterfactual: bool,
        aug_smooth: bool,
        eigen_smooth: bool,
    ) -> list[CAMResult]:
        base = self._run(x, targets, counterfactual=counterfactual, eigen_smooth=eigen_smooth)
        if not aug_smooth:
            return base
        # The augmented passes explain the same classes as the plain pass (an argmax could change).
        specs = [
            r.targets if r.targets is not None else t
            for r, t in zip(base, self._specs_like(targets, base), strict=True)
        ]
        size = x.shape[2:]
        sums = [(r.maps.clone(), r.raw.clone()) for r in base]
        n = 1
        for flip in (False, True):
            for scale in self._AUG_SCALES:
                if not flip and scale == 1.0:
                    continue
                xa = x.flip(-1) if flip else x
                if scale != 1.0:
                    xa = upsample_input(xa, scale)
                for (m_sum, r_sum), r in zip(
                    sums,
                    self._run(xa, specs, counterfactual=counterfactual, eigen_smooth=eigen_smooth),
                    strict=True,
                ):
                    m, raw = (r.maps.flip(-1), r.raw.flip(-1)) if flip else (r.maps, r.raw)
                    m_sum += upsample(m, size)
                    r_sum += upsample(raw, r_sum.shape[1:])
                n += 1
        out = []
        for r, (m_sum, r_sum) in zip(base, sums, strict=True):
            r.maps, r.raw = normalize(m_sum / n), r_sum / n
            r.method += "+aug"
            out.append(r)
        return out

    @staticmethod
    def _specs_like(targets: str | list[TargetSpec], base: list[CAMResult]) -> list[TargetSpec]:
        return [None] * len(base) if isinstance(targets, str) else targets

    # ---- machinery -------------------------------------------------------------------------------
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
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch")
        return x

    def _resolve_layers(self, x: Tensor) -> list[tuple[str, nn.Module]]:
        if self._layers is not None:
            return self._layers
        if x.ndim not in self._auto:
            name = self._find_layer(x)
            self._auto[x.ndim] = resolve_layers(self.model, name)
        return self._auto[x.ndim]

    def _find_layer(self, x: Tensor) -> str:
        try:
            return find_default_layer(self.model, x)
        except ValueError:
            raise
        except Exception as e:
            raise self._model_error(x, e) from e

    def _model_error(self, x: Tensor, e: Exception) -> ModelError:
        return ModelError(
            f"the model failed on an input of shape {tuple(x.shape)} ({type(e).__name__}: {e}); check that "
            "the input has the channels, size and dtype the model expects"
        )

    def _forward(self, x: Tensor) -> Any:
        try:
            return self.model(x)
        except CaptureError:
            raise
        except Exception as e:
            raise self._model_error(x, e) from e

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
        return to_spatial(t, x, name=name, model=self.model, reshape=self.reshape)

    def _run(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        *,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        x = self._check_input(x)
        if counterfactual and not self.uses_target:
            raise ValueError(
                f"{type(self).__name__} does not use the target, so counterfactual=True has no meaning"
            )
        layers = self._resolve_layers(x)
        self._warn_training()
        results = []
        with (
            torch.inference_mode(False),
            LayerCapture(
                layers, grad=self.needs_grad, record_inputs=self._record_inputs(layers)
            ) as cap,
        ):
            # a callable target (e.g. BoxTarget) may read an output with no score tensor in it
            passthrough = not self.uses_target or accepts_any_output(targets)
            logits = select_output(self._forward(x), self.output, passthrough=passthrough)
            cap.check_called()
            specs: list[Any] = (
                top_k_targets(targets, logits) if isinstance(targets, str) else targets
            )
            acts = {n: self._to_spatial(n, cap.activations[n], x) for n, _ in layers}
            for i, spec in enumerate(specs):
                resolved = self._resolve_target(spec, logits, batch=x.shape[0])
                raws: dict[str, Tensor] = {}
                grads: dict[str, Tensor] = {}
                if self.needs_grad:
                    g = cap.gradients(resolved.scores, retain_graph=i < len(specs) - 1)
                    grads = {n: self._to_spatial(n, g[n], x) for n, _ in layers}
                for n, _ in layers:
                    a = acts[n].detach().float()
                    gn = grads[n].float() if n in grads else None
                    if gn is not None and counterfactual:
                        gn = -gn
                    ctx = MapContext(resolved, cap, n, counterfactual, x, spec, logits)
                    terms = self._terms(a, gn, ctx)
                    raw = (
                        eigencam_map(terms)
                        if eigen_smooth or self.principal_component
                        else terms.sum(dim=1)
                    )
                    raws[n] = raw.clamp(min=0)
                results.append(self._result(x, raws, grads, resolved, counterfactual, eigen_smooth))
        return results

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

    def _result(
        self,
        x: Tensor,
        raws: dict[str, Tensor],
        grads: dict[str, Tensor],
        target: Resolved,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> CAMResult:
        size = x.shape[2:]
        per_layer = {n: normalize(upsample(r, size)) for n, r in raws.items()}
        if len(per_layer) == 1:
            maps = next(iter(per_layer.values()))
        else:
            stack = torch.stack(list(per_layer.values()))
            maps = normalize(stack.mean(0) if self.fuse == "mean" else stack.amax(0))
        self._warn_empty(raws, grads)
        names = list(raws)
        return CAMResult(
            maps=maps.float(),
            raw=raws[names[-1]],
            scores=target.scores.detach(),
            targets=target.classes,
            layer="+".join(names),
            method=self.name
            + ("(counterfactual)" if counterfactual else "")
            + ("+eigen" if eigen_smooth else ""),
            per_layer=per_layer if len(names) > 1 else {},
            raw_per_layer=raws if len(names) > 1 else {},
        )

    def _warn_empty(self, raws: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
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


def upsample_input(x: Tensor, scale: float) -> Tensor:
    """Resize a ``(B, C, *spatial)`` input by ``scale`` (linear interpolation of matching dimension)."""
    size = [max(1, round(s * scale)) for s in x.shape[2:]]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False)
