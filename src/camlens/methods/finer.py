"""Finer-CAM: any gradient method, explaining what sets the target apart from similar classes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import get_method, register
from camlens.targets import Resolved

__all__ = ["FinerCAM"]


def _plain_gradient_method(cls: type[Any]) -> bool:
    """A method whose whole definition is its formula on activations and gradients of one layer."""
    return (
        issubclass(cls, BaseCAM)
        and cls.needs_grad
        and cls.takes_layer
        and not cls.input_space
        and not cls.principal_component
        and cls._run is BaseCAM._run
        and cls._observe is BaseCAM._observe
        and cls._objective is BaseCAM._objective
    )


@register("finercam", aliases=("finer-cam",))
class FinerCAM(BaseCAM):
    r"""Finer-CAM (Zhang et al., CVPR 2025, https://arxiv.org/abs/2501.11309).

    A gradient method (Grad-CAM by default) applied to the difference between the target's score and
    those of the classes the model finds most similar, instead of the target's score alone:

    .. math:: s = y^c - \alpha \sum_{j=1}^{n} \omega_j \, y^{d_j}, \qquad
              \omega_j = \frac{p_{d_j}}{\sum_i p_{d_i}}

    where ``d_1 .. d_n`` are the ``n`` classes whose logits are closest to ``y^c``
    (:func:`camlens.maps.finer_references`) and ``p`` the softmax probabilities
    (:func:`camlens.maps.finer_objective`). Features shared with the similar classes cancel; what
    tells ``c`` apart remains. ``alpha = 0`` gives the base method exactly.

    Defaults are pytorch-grad-cam's (``FinerCAM``: Grad-CAM, ``alpha=1``, three references weighted by
    their probabilities, as in the authors' ``FinerWeightedTarget``). One difference, deliberate: the
    weights ``omega`` are constants here. pytorch-grad-cam differentiates through them too, which adds
    the gradient of the softmax weights to the difference the paper explains; with one reference the
    two agree exactly. ``weighting="mean"`` gives torchcam's objective ``y^c - alpha * mean_j y^{d_j}``
    (torchcam's default ``gamma`` is 0.6).

    ``result.scores`` is the target's own score ``y^c``; ``result.details["comparisons"]`` holds the
    ``(B, n)`` reference classes and ``details["objective"]`` the ``(B,)`` values of ``s``.

    Args:
        method: the gradient method whose map is computed (a name of ``camlens.METHODS`` or a class):
            any method defined by its formula on one layer's activations and gradients (Grad-CAM,
            Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM, ...).
        alpha: comparison strength (the paper's ``gamma``), ``>= 0``.
        comparisons: how many of the most similar classes to compare with (an int), or the classes
            themselves (a sequence of ints, the same for every sample; a sample whose target is among
            them compares with the others).
        weighting: ``"probability"`` (default) or ``"mean"``.

    Class targets only (the comparison is between classes).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        method: str | type[BaseCAM] = "gradcam",
        alpha: float = 1.0,
        comparisons: int | Sequence[int] = 3,
        weighting: str = "probability",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        cls = get_method(method) if isinstance(method, str) else method
        if not isinstance(cls, type) or not _plain_gradient_method(cls):
            allowed = [n for n, c in _registered().items() if _plain_gradient_method(c)]
            raise ValueError(
                f"Finer-CAM changes what a gradient method differentiates, so method must be one of "
                f"{allowed}, not {method!r}"
            )
        self._inner: BaseCAM = cls(model, layer, **kwargs)
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
        ):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0 (0 gives the base method), got {alpha!r}")
        self.alpha = float(alpha)
        if isinstance(comparisons, bool) or not (
            (isinstance(comparisons, int) and comparisons >= 1)
            or (
                isinstance(comparisons, Sequence)
                and len(comparisons) > 0
                and all(isinstance(c, int) and not isinstance(c, bool) for c in comparisons)
            )
        ):
            raise ValueError(
                "comparisons must be an int >= 1 (that many most similar classes) or a non-empty "
                f"sequence of class indices, got {comparisons!r}"
            )
        self.comparisons = comparisons
        if weighting not in ("probability", "mean"):
            raise ValueError(f"weighting must be 'probability' or 'mean', not {weighting!r}")
        self.weighting = weighting

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return self._inner.weights(acts, grads, ctx)

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return self._inner.terms(acts, grads, ctx)

    def _objective(self, target: Resolved, output: Any, details: dict[str, Any]) -> Tensor:
        if target.classes is None or not isinstance(output, Tensor) or output.ndim != 2:
            raise ValueError(
                "Finer-CAM compares the target class with other classes: pass class targets (None, an "
                "int, one int per sample or 'top-k') for a model with (B, classes) logits"
            )
        classes = target.classes.to(output.device)
        if isinstance(self.comparisons, int):
            refs = maps.finer_references(output, classes, self.comparisons)
        else:
            refs = torch.as_tensor(list(self.comparisons), device=output.device)
            if int(refs.min()) < 0 or int(refs.max()) >= output.shape[1]:
                raise ValueError(
                    f"comparisons {list(self.comparisons)} are out of range for {output.shape[1]} classes"
                )
            refs = refs.expand(output.shape[0], -1)
        weights = None
        if self.weighting == "probability":
            weights = output.detach().float().softmax(dim=1).gather(1, refs)
        objective = maps.finer_objective(output, classes, refs, self.alpha, weights)
        details["comparisons"] = refs.detach()
        details["objective"] = objective.detach()
        return objective


def _registered() -> dict[str, type[Any]]:
    from camlens.methods.registry import METHODS

    return METHODS
