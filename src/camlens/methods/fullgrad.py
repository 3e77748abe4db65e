"""FullGrad: the input-gradient and the bias-gradients of every layer, a map with no target layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from camlens import maps
from camlens.capture import LayerCapture, LayerSpec, input_leaf, layer_gradients
from camlens.methods.base import BaseCAM, MapContext, Observation, run_model
from camlens.methods.registry import register
from camlens.targets import TargetSpec, accepts_any_output, select_output

__all__ = ["FullGrad", "FullGradDecomposition", "bias_layers", "effective_bias"]

_PREFIX = "bias:"


def effective_bias(module: nn.Module) -> Tensor | None:
    r"""The bias a layer adds to its output, or ``None`` for a layer without one.

    Convolutions and linear layers: their ``bias``. Batch norms with running statistics (used as
    they are in eval mode): the bias of the affine map they apply,

    .. math:: b = \beta - \frac{\gamma\,\mu}{\sqrt{\sigma^2 + \epsilon}}

    (``gamma = 1``, ``beta = 0`` without affine parameters), as in the FullGrad paper's code.

    Example:
        >>> bn = nn.BatchNorm1d(2).eval(); _ = bn.running_mean.fill_(2.0)
        >>> effective_bias(bn)
        tensor([-2.0000, -2.0000])
    """
    if isinstance(module, _ConvNd | nn.Linear):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, _BatchNorm):
        if module.running_mean is None or module.running_var is None:
            return None
        mean, var = module.running_mean.detach(), module.running_var.detach()
        gamma = torch.ones_like(mean) if module.weight is None else module.weight.detach()
        beta = torch.zeros_like(mean) if module.bias is None else module.bias.detach()
        return beta - gamma * mean / torch.sqrt(var + module.eps)
    return None


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose biases FullGrad accounts for: convolutions and linear layers with a bias, and
    batch norms with running statistics, in the order of ``named_modules``."""
    return [(n, m) for n, m in model.named_modules() if n and effective_bias(m) is not None]


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


@dataclass(frozen=True)
class FullGradDecomposition:
    """The signed FullGrad terms of a target score, before absolute values and post-processing.

    Attributes:
        input: ``(B, C, *spatial)``: ``x * dy/dx``.
        biases: layer name -> its bias-gradient terms ``b * dy/dz`` in the layer's output layout.
        scores: ``(B,)`` the target scores.
    """

    input: Tensor
    biases: dict[str, Tensor]
    scores: Tensor

    def total(self) -> Tensor:
        """``(B,)``: the sum of every term; equals :attr:`scores` for a piecewise-linear network."""
        total = self.input.flatten(1).sum(1)
        for t in self.biases.values():
            total = total + t.flatten(1).sum(1)
        return total


@register("fullgrad", aliases=("full-grad",))
class FullGrad(BaseCAM):
    r"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, https://arxiv.org/abs/1905.00780).

    The gradient of the target score with respect to the input and to the bias of every layer:

    .. math:: S = \psi\big(x \odot \nabla_x y^c\big)
              + \sum_{l \in \text{conv, BN}} \sum_k \mathrm{up}\Big(\psi\big(b^{(l)} \odot
              \nabla_{z^{(l)}} y^c\big)\Big)_k

    where ``z^{(l)}`` is the output of layer ``l`` and ``b^{(l)}`` its (effective, for batch norms)
    bias; ``\psi`` takes absolute values and min-max scales each term over all its channels and
    positions (:func:`camlens.maps.fullgrad_saliency`), ``up`` is bilinear (linear, trilinear)
    upsampling to the input. Before ``\psi``, these terms together with those of the linear layers
    sum to ``y^c`` for a piecewise-linear network (completeness; :meth:`decompose` returns them).

    No target layer: the map explains the input, at its resolution (``raw`` is ``S`` before the final
    scaling; ``layer`` is ``"input"``). One forward with autograd recorded from the input and one
    backward to the input and every bias layer; no parameter gradient is computed. Layers taken:
    convolutions with a bias and batch norms with running statistics, of any dimension
    (pytorch-grad-cam takes ``Conv2d`` and ``BatchNorm2d``; the same set on 2-D CNNs).

    Differences from pytorch-grad-cam, which follow the paper's code: ``\psi`` scales a layer's
    term as a whole (pytorch-grad-cam scales every channel on its own), and the maps are upsampled
    with the library's ``align_corners=False`` interpolation (as ``cv2.resize``).
    ``tests/test_gradient_family.py`` shows the conversion. ``eigen_smooth`` takes the principal
    component over the input term and the layers' maps. ``counterfactual=True`` is refused: the
    absolute values make it the same map.
    """

    takes_layer = False

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        super()._check_call(counterfactual, eigen_smooth)
        if counterfactual:
            raise ValueError(
                "FullGrad takes absolute values of its terms, so counterfactual=True would give the "
                "same map; use a signed method (e.g. GradCAM) for counterfactual maps"
            )

    def _observe(self, x: Tensor, layers: list[tuple[str, nn.Module]]) -> Observation:
        leaf = input_leaf(x, "FullGrad")
        mods = [(_PREFIX + n, m) for n, m in bias_layers(self.model)]
        with LayerCapture(mods, grad=True, full_graph=True) as cap:
            out = run_model(self.model, leaf)
        acts = {"input": leaf}
        acts.update({n: cap.activations[n] for n, _ in mods if n in cap.activations})
        return Observation(out, acts)

    def _signed_terms(
        self, x: Tensor, gradients: dict[str, Tensor] | Any
    ) -> tuple[Tensor, dict[str, tuple[nn.Module, Tensor]]]:
        """``x * dy/dx`` and, per bias layer that ran, the module and its signed bias-gradient terms."""
        inp = x.float() * gradients["input"].float()
        biases: dict[str, tuple[nn.Module, Tensor]] = {}
        for name, module in bias_layers(self.model):
            g = gradients.get(_PREFIX + name)
            bias = effective_bias(module)
            if g is None or bias is None:
                continue
            terms = maps.fullgrad_bias_terms(g.float(), bias.float(), _channel_dim(module))
            biases[name] = (module, terms)
        return inp, biases

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        inp, biases = self._signed_terms(acts, ctx.gradients)
        size = acts.shape[2:]
        parts = [maps.fullgrad_saliency(inp)]
        for module, t in biases.values():
            if isinstance(module, nn.Linear) or t.ndim != acts.ndim:
                continue  # no spatial map (a classifier, a batch norm of vectors)
            parts.append(maps.upsample(maps.fullgrad_saliency(t), size))
        ctx.details["fullgrad_layers"] = len(parts) - 1
        return torch.stack(parts, dim=1)

    def decompose(self, x: Tensor, target: TargetSpec = None) -> FullGradDecomposition:
        """The signed terms of the target's score: the input term and every layer's bias-gradients.

        For a piecewise-linear network (convolutions, linear layers, batch norms in eval mode, ReLU,
        max and average pooling) they sum to the score (:meth:`FullGradDecomposition.total`).

        Args:
            x: the input batch, as for a call.
            target: as for a call.
        """
        x = self._check_input(x)
        with torch.inference_mode(False):
            obs = self._observe(x, [("input", self.model)])
            logits = select_output(
                obs.output, self.output, passthrough=accepts_any_output([target])
            )
            resolved = self._resolve_target(target, logits, batch=x.shape[0])
            g = layer_gradients(resolved.scores, obs.activations)
            inp, biases = self._signed_terms(x, g)
        return FullGradDecomposition(
            inp.detach(), {n: t.detach() for n, (_, t) in biases.items()}, resolved.scores.detach()
        )
