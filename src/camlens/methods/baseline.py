"""RandomCAM: random channel weights, the floor every metric table should show."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods import _options as opt
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["RandomCAM"]


@register("randomcam", aliases=("random-cam", "random"))
class RandomCAM(BaseCAM):
    r"""Random channel weights (pytorch-grad-cam's ``RandomCAM``): a baseline that looks at nothing.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big), \qquad w_k \sim \mathcal{U}(-1, 1)

    (:func:`camlens.maps.random_weights`). It keeps the layer's own spatial structure (where the layer
    fires) but ignores the target, so a method that does not beat it on a metric has learnt nothing
    about the class. Put it in every metric table beside the uniform and centre baselines.

    Reproducible, unlike pytorch-grad-cam's (which draws from numpy's global generator): every call
    draws its weights from its own ``torch.Generator`` seeded with ``seed``, so two calls, two threads,
    a batch and its samples alone all get the same weights. The same ``K`` weights are used for every
    sample and target of a call (so a batched call equals per-sample calls); ``seed=None`` draws
    fresh weights on every call.

    Args:
        seed: the seed of each call's generator, or ``None`` for non-reproducible weights.
    """

    needs_grad = False
    uses_target = False

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, seed: int | None = 0, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.seed = opt.seed(seed, optional=True)

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        gen = torch.Generator(device=acts.device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        w = maps.random_weights(acts.shape[1], gen)
        return w.to(acts).expand(acts.shape[0], -1)
