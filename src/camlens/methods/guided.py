"""Guided backpropagation and Guided Grad-CAM: input-space gradients with ReLU's backward clamped."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camlens.capture import LayerSpec
from camlens.maps import normalize
from camlens.methods.base import BaseCAM, OutputSelector
from camlens.methods.gradient import GradCAM
from camlens.result import CAMResult
from camlens.targets import TargetSpec, accepts_any_output, resolve, select_output

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

    The user's modules are not touched: the substitution lives in this context only. An in-place ReLU
    returns a new tensor instead of writing into its input, which matters only to code that ignores the
    return value of ``relu_``.
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


class GuidedBackprop:
    r"""Guided backpropagation (Springenberg et al., ICLR-W 2015, https://arxiv.org/abs/1412.6806).

    The gradient of the target score with respect to the input, where every ReLU's backward keeps only
    positive gradients at positive inputs:

    .. math:: R^{(l)} = \mathbb{1}[f^{(l)} > 0] \cdot \mathbb{1}[R^{(l+1)} > 0] \cdot R^{(l+1)}

    Returns a :class:`CAMResult` whose ``raw`` is the signed gradient ``(B, C, *spatial)`` and whose
    ``maps`` is that gradient min-max scaled to ``[0, 1]`` per sample (input channels kept). No layer
    argument: the explanation lives at the input.
    """

    name: ClassVar[str] = "guided-backprop"
    aliases: ClassVar[tuple[str, ...]] = ("guidedbackprop", "guided-bp")
    takes_layer: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, output: OutputSelector = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.output = output

    def with_model(self, model: nn.Module) -> GuidedBackprop:
        return type(self)(model, output=self.output)

    def gradients(
        self, x: Tensor, target: TargetSpec = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(B, C, *spatial)`` guided gradients, the ``(B,)`` scores and the class targets."""
        BaseCAM._check_input(self, x)  # type: ignore[arg-type]
        leaf = x.detach().requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            with _GuidedMode():
                try:
                    out = self.model(leaf)
                except Exception as e:
                    raise BaseCAM._model_error(self, x, e) from e  # type: ignore[arg-type]
            r = resolve(
                target, select_output(out, self.output, passthrough=accepts_any_output([target]))
            )
            (g,) = torch.autograd.grad(r.scores.sum(), leaf)
        return g.detach(), r.scores.detach(), r.classes

    def __call__(self, x: Tensor, target: TargetSpec = None) -> CAMResult:
        g, scores, classes = self.gradients(x, target)
        return CAMResult(
            maps=normalize(g).float(),
            raw=g,
            scores=scores,
            targets=classes,
            layer="input",
            method=self.name,
        )


class GuidedGradCAM:
    r"""Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM map.

    .. math:: G^c = R_{\text{guided}} \odot \mathrm{upsample}(L^c_{\text{Grad-CAM}})

    ``raw`` is the signed product ``(B, C, *spatial)`` (Grad-CAM map scaled to ``[0, 1]``), ``maps`` its
    per-sample min-max scaling. Two passes: guided gradients must not leak into Grad-CAM's.
    """

    name: ClassVar[str] = "guided-gradcam"
    aliases: ClassVar[tuple[str, ...]] = ("guidedgradcam", "guided-grad-cam")
    takes_layer: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, output: OutputSelector = None
    ) -> None:
        self.cam = GradCAM(model, layer, output=output)
        self.guided = GuidedBackprop(model, output=output)
        self.model = model

    @property
    def layer_names(self) -> list[str] | None:
        return self.cam.layer_names

    def with_model(self, model: nn.Module) -> GuidedGradCAM:
        return type(self)(model, self.cam.layer_names, output=self.cam.output)

    def __call__(self, x: Tensor, target: TargetSpec = None) -> CAMResult:
        cam = self.cam(x, target)
        # the guided pass explains the same classes, even if target=None
        g, _, _ = self.guided.gradients(x, cam.targets if cam.targets is not None else target)
        raw = g * cam.maps.unsqueeze(1).to(g.dtype)
        return CAMResult(
            maps=normalize(raw).float(),
            raw=raw,
            scores=cam.scores,
            targets=cam.targets,
            layer=cam.layer,
            method=self.name,
        )
