"""Methods that need no gradient: CAM (classifier weights) and Eigen-CAM (principal component)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camlens.capture import LayerSpec, resolve_layers
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["CAM", "EigenCAM"]


@register("cam")
class CAM(BaseCAM):
    r"""CAM (Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150): the classifier's own weights.

    .. math:: M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Valid only when the model ends in global average pooling of the layer followed by one linear layer;
    camlens checks this numerically on every call (the classifier's input must equal the layer's spatial
    mean) and raises otherwise. Grad-CAM equals this map divided by ``Z`` for such heads, and works for
    any head.

    Args:
        fc: the linear classifier (name or module); ``None`` takes the model's last ``nn.Linear``.
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        fc: str | nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        if fc is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(
                    f"CAM needs a GAP + linear head, but {type(model).__name__} has no nn.Linear; use "
                    "GradCAM, which works for any head"
                )
            self._fc_name = linears[-1]
        else:
            self._fc_name = resolve_layers(model, fc)[0][0]
        self._classifier()  # an fc that is not nn.Linear fails here, not at the first call

    def _classifier(self) -> nn.Linear:
        """The classifier as it is in the model now (looked up by name at every call)."""
        fc = self.model.get_submodule(self._fc_name)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"fc={self._fc_name!r} is a {type(fc).__name__}, not an nn.Linear")
        return fc

    def _record_inputs(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        if len(layers) != 1:
            raise ValueError(
                "CAM explains one layer (the one the classifier pools); pass a single layer"
            )
        return [(self._fc_name, self._classifier())]

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        if ctx.target.classes is None:
            raise ValueError(
                "CAM needs class targets (None, an int or one int per sample), not a callable"
            )
        pooled = acts.mean(dim=tuple(range(2, acts.ndim)))
        fc_in = ctx.inputs.get(self._fc_name)
        if (
            fc_in is None
            or fc_in.reshape(pooled.shape[0], -1).shape != pooled.shape
            or not torch.allclose(
                fc_in.reshape(pooled.shape).float(),
                pooled,
                rtol=1e-4,
                atol=1e-5 * float(pooled.abs().max()) + 1e-6,
            )
        ):
            raise ValueError(
                f"CAM needs the classifier {self._fc_name!r} to take the global average of layer "
                f"{ctx.layer!r} as its input, and this model's head is different; use GradCAM, which "
                "equals CAM up to a constant for such heads and works for any head"
            )
        weight = self._classifier().weight.detach().float()
        return weight[ctx.target.classes.to(weight.device)].to(acts.device)


@register("eigencam", aliases=("eigen-cam",))
class EigenCAM(BaseCAM):
    r"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299).

    The first principal component of the layer's activations; no gradient, no target (the map is the same
    for every class). See :func:`camlens.maps.eigencam_map`.
    """

    needs_grad = False
    uses_target = False
    principal_component = True

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        return acts
