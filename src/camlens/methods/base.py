"""The machinery every method shares: input checks, layer choice, capture, targets, post-processing.

A method states only what differs: :meth:`BaseCAM._map` turns activations ``(B, K, *s)`` and gradients
into a map ``(B, *s)`` before ReLU, with a formula from :mod:`camlens.maps`; ``needs_grad`` says whether
gradients are computed at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camlens.capture import CaptureError, LayerCapture, LayerSpec, find_last_spatial_layer, resolve_layers
from camlens.maps import normalize, upsample
from camlens.result import CAMResult
from camlens.targets import Resolved, TargetSpec, resolve, select_output, top_k_targets

__all__ = ["BaseCAM", "MapContext", "ModelError"]

OutputSelector = str | int | Callable[[Any], Tensor] | None


@dataclass(frozen=True)
class MapContext:
    """What a method's ``_map`` may need beyond activations and gradients."""

    target: Resolved
    capture: LayerCapture
    layer: str
    counterfactual: bool


class ModelError(RuntimeError):
    """The model itself failed to run on the input it was given."""


class BaseCAM:
    """Base of all class-activation-map methods.

    Args:
        model: any ``nn.Module``. It is used as it is: camlens never changes its mode, flags or
            parameters, and removes every hook it adds before returning.
        layer: the layer to explain: a dotted name (``"layer4"``), a module, a list of them (one map per
            layer, fused), or ``None`` to pick the last layer whose output keeps the input's spatial axes.
        output: which part of the model's output holds the scores, when it is not a plain tensor (a key,
            an index or a callable); ``None`` finds logits in tensors, dicts, tuples and HF outputs.
        fuse: how maps of several layers are combined: ``"mean"`` or ``"max"`` of the normalised maps.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs_grad: ClassVar[bool] = True
    uses_target: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        output: OutputSelector = None,
        fuse: str = "mean",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', not {fuse!r}")
        self.model = model
        self.output = output
        self.fuse = fuse
        self._layer_spec = layer
        self._layers: list[tuple[str, nn.Module]] | None = None if layer is None else resolve_layers(model, layer)
        self._auto: dict[int, list[tuple[str, nn.Module]]] = {}
        self._warned_train = False

    # ---- what subclasses state -------------------------------------------------------------------
    def _map(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        """``(B, *s)`` map before ReLU from activations and gradients (already negated if counterfactual)."""
        raise NotImplementedError

    def _record_inputs(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Modules whose inputs the capture should also record (CAM's classifier)."""
        return []

    def _options(self) -> dict[str, Any]:
        """Constructor keyword arguments, to rebuild the method on another model."""
        return {"output": self.output, "fuse": self.fuse}

    # ---- public API ------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str] | None:
        """Names of the layers explained, or ``None`` until an automatic choice has been made."""
        layers = self._layers or next(iter(self._auto.values()), None)
        return None if layers is None else [n for n, _ in layers]

    def with_model(self, model: nn.Module) -> BaseCAM:
        """The same method and options on another model with the same layer names (e.g. a copy)."""
        names = None
        if self._layers is not None:
            names = [n for n, _ in self._layers]
        return type(self)(model, layer=names, **self._options())

    def __call__(self, x: Tensor, target: TargetSpec = None, *, counterfactual: bool = False) -> CAMResult:
        """Explain ``target`` for the batch ``x``.

        Args:
            x: ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, D, H, W)`` input on the model's device.
            target: ``None`` (each sample's top class), an int, one int per sample, or a callable
                ``output -> (B,)`` scores.
            counterfactual: negate the gradients (Selvaraju et al. 2017, sec. 5): regions whose
                removal would raise the target's score.

        Returns:
            A :class:`~camlens.result.CAMResult`.
        """
        return self._run(x, [target], counterfactual=counterfactual)[0]

    def for_targets(
        self, x: Tensor, targets: str | Sequence[TargetSpec], *, counterfactual: bool = False
    ) -> list[CAMResult]:
        """Several targets for one batch with one forward pass; only the head is differentiated again.

        Args:
            targets: a list of target specs (each as in :meth:`__call__`), or ``"top-k"``: the k
                highest classes of each sample, in order.
        """
        if isinstance(targets, str):
            return self._run(x, targets, counterfactual=counterfactual)
        targets = list(targets)
        if not targets:
            raise ValueError("targets is empty; pass at least one target")
        return self._run(x, targets, counterfactual=counterfactual)

    # ---- machinery -------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C, *spatial), not {type(x).__name__}")
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
            return find_last_spatial_layer(self.model, x)
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
                stacklevel=4,
            )

    def _to_spatial(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """A layer's output as ``(B, K, *spatial)`` with the input's number of spatial axes."""
        if t.ndim != x.ndim or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"layer {name!r} outputs shape {tuple(t.shape)}, which has no spatial axes matching the "
                f"input {tuple(x.shape)}; a CAM method needs a layer whose output is (B, K, *spatial), "
                "such as the last convolutional block"
            )
        return t

    def _run(self, x: Tensor, targets: str | list[TargetSpec], *, counterfactual: bool) -> list[CAMResult]:
        x = self._check_input(x)
        if counterfactual and not self.uses_target:
            raise ValueError(f"{type(self).__name__} does not use the target, so counterfactual=True has no meaning")
        layers = self._resolve_layers(x)
        self._warn_training()
        results = []
        with (
            torch.inference_mode(False),
            LayerCapture(layers, grad=self.needs_grad, record_inputs=self._record_inputs(layers)) as cap,
        ):
            logits = select_output(self._forward(x), self.output)
            cap.check_called()
            specs: list[Any] = top_k_targets(targets, logits) if isinstance(targets, str) else targets
            acts = {n: self._to_spatial(n, cap.activations[n], x) for n, _ in layers}
            for i, spec in enumerate(specs):
                resolved = self._resolve_target(spec, logits)
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
                    raws[n] = self._map(a, gn, MapContext(resolved, cap, n, counterfactual)).clamp(min=0)
                results.append(self._result(x, raws, grads, resolved, counterfactual))
        return results

    def _resolve_target(self, spec: TargetSpec, logits: Tensor) -> Resolved:
        if not self.uses_target and spec is None and logits.ndim != 2:
            nan = torch.full((logits.shape[0],), float("nan"), device=logits.device)
            return Resolved(nan, None)
        return resolve(spec, logits)

    def _result(
        self,
        x: Tensor,
        raws: dict[str, Tensor],
        grads: dict[str, Tensor],
        target: Resolved,
        counterfactual: bool,
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
            method=self.name + ("(counterfactual)" if counterfactual else ""),
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
            warnings.warn(f"{self.name}: the map of layer {n!r} is all zero for samples {idx}: {cause}", stacklevel=4)

