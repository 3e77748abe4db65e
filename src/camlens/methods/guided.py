"""Guided backpropagation and Guided Grad-CAM: input-space gradients with ReLU's backward clamped."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camlens.capture import LayerSpec, input_leaf, paused
from camlens.maps import input_saliency, normalize
from camlens.methods.base import BaseCAM, MapContext, Observation, _specs_like, run_model
from camlens.methods.gradient import GradCAM
from camlens.methods.registry import register
from camlens.result import CAMResult
from camlens.targets import TargetSpec

__all__ = ["GuidedBackprop", "GuidedGradCAM"]


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through positive inputs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _GuidedMode(TorchFunctionMode):
    """While active, every ReLU call (module, functional or method, in place or not) is guided.

    The user's modules are not touched: the substitution lives in this context only (torch keeps
    function modes per thread, so other threads running the model meanwhile get plain ReLUs). An
    in-place ReLU returns a new tensor instead of writing into its input, which matters only to code
    that ignores the return value of ``relu_``.
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


@register("guided-backprop", aliases=("guidedbackprop", "guided-bp"))
class GuidedBackprop(BaseCAM):
    r"""Guided backpropagation (Springenberg et al., ICLR-W 2015, https://arxiv.org/abs/1412.6806).

    The gradient of the target score with respect to the input, where every ReLU's backward keeps only
    positive gradients at positive inputs:

    .. math:: R^{(l)} = \mathbb{1}[f^{(l)} > 0] \cdot \mathbb{1}[R^{(l+1)} > 0] \cdot R^{(l+1)}

    ``input_maps`` is the signed gradient ``(B, C, *spatial)``; ``raw`` its reduction to one value per
    position, :func:`camlens.maps.input_saliency` (``max_c |R_c|``), and ``maps`` that reduction min-max
    scaled per sample. No layer: the explanation lives at the input. ``counterfactual=True`` guides the
    gradient of ``-y^c``.
    """

    takes_layer = False
    input_space = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)

    def _observe(self, x: Tensor, layers: list[tuple[str, nn.Module]]) -> Observation:
        leaf = input_leaf(x, type(self).__name__)
        with paused(), torch.enable_grad(), _GuidedMode():  # no capture of this context records it
            out = run_model(self.model, leaf)
        return Observation(out, {"input": leaf})

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        assert grads is not None
        return grads


@register("guided-gradcam", aliases=("guidedgradcam", "guided-grad-cam"))
class GuidedGradCAM(BaseCAM):
    r"""Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM map.

    .. math:: G^c = R_{\text{guided}} \odot \mathrm{upsample}(L^c_{\text{Grad-CAM}})

    ``input_maps`` is the signed product ``(B, C, *spatial)`` (the Grad-CAM map scaled to ``[0, 1]``),
    ``raw`` its :func:`camlens.maps.input_saliency` and ``maps`` that scaled per sample. Two passes, a
    Grad-CAM at ``layer`` and guided backpropagation for the same targets, so guided gradients never
    leak into Grad-CAM's. ``eigen_smooth`` and ``fuse`` apply to the Grad-CAM part.
    """

    input_space = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)
        self._cam = GradCAM(model, layer, **kwargs)
        self._guided = GuidedBackprop(model, output=self.output)

    def _run(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        *,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        cams = self._cam._run(x, targets, counterfactual=counterfactual, eigen_smooth=eigen_smooth)
        # the guided pass explains the same classes that the Grad-CAM pass found (target=None, top-k)
        specs = [
            c.targets if c.targets is not None else t
            for c, t in zip(cams, _specs_like(targets, cams), strict=True)
        ]
        guided = self._guided._run(x, specs, counterfactual=counterfactual)
        out = []
        for c, g in zip(cams, guided, strict=True):
            assert g.input_maps is not None
            attribution = g.input_maps * c.maps.unsqueeze(1).to(g.input_maps.dtype)
            raw = input_saliency(attribution)
            out.append(
                CAMResult(
                    maps=normalize(raw).float(),
                    raw=raw,
                    scores=c.scores,
                    targets=c.targets,
                    layer=c.layer,
                    method=self._label(counterfactual, eigen_smooth),
                    input_maps=attribution,
                    logits=c.logits,
                )
            )
        return out
