"""Recipro-CAM: each position's features alone, scored by the head of the network."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods import _options as opt
from camlens.methods._head import check_split, head_runner
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["ReciproCAM"]


@register("reciprocam", aliases=("recipro-cam",))
class ReciproCAM(BaseCAM):
    r"""Recipro-CAM (Byun & Lee 2022, https://arxiv.org/abs/2209.14074): gradient-free, one head run per position.

    For every position ``p`` of the layer, a masked feature map keeps only the channel vector at ``p``,
    spread over ``p``'s neighbourhood by a 3x3 (3, 3x3x3) binomial kernel ``g``
    (:func:`camlens.maps.reciprocam_features`); the part of the network after the layer scores it, and
    the target's softmax probability is the map's value at ``p``:

    .. math:: M^{(p)}_{k,q} = A^k_p \, g(q - p), \qquad
              L_p = \mathrm{softmax}\big(f_{\text{head}}(M^{(p)})\big)_c

    The map is min-max scaled like every camlens map (the paper does the same). Only the head runs on
    the masked maps: the model is split at the layer with ``torch.fx`` and the split is checked
    against the live model on every call, as for Ablation-CAM (:mod:`camlens.methods._head`); where fx
    cannot reproduce the model, a forward hook substitutes the layer's output and the whole model runs
    per batch (``result.details["split"]`` is ``"fx"`` or ``"hook"``). The masked maps of all positions
    of all samples are batched together. Neither pytorch-grad-cam nor torchcam has this method; the
    defaults are those of the authors' code (Gaussian kernel, softmax scores).

    Layers whose output is not ``(B, K, *s)`` (channels last, transformer tokens) work too: the masked
    map is written back into the layer's own layout, and tokens that are not positions (a class
    token) keep their values.

    Args:
        batch_size: masked feature maps per head run (positions of all samples together).
        kernel: ``"gaussian"`` (default, the authors' code) or ``"point"`` (the position alone).
        softmax: score class targets by their softmax probability (default, the paper); ``False``
            uses the logit. A callable target scores the output as it is.
        split: ``"auto"``, ``"fx"`` or ``"hook"``: how the head is run (see Ablation-CAM).

    ``counterfactual=True`` needs ``softmax=False`` (a negated probability is never positive), and
    ``eigen_smooth`` is refused (the map has no channel terms to decompose).
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        batch_size: int = 128,
        kernel: str = "gaussian",
        softmax: bool = True,
        split: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.batch_size = opt.positive_int(
            "batch_size", batch_size, "masked feature maps per head run"
        )
        maps.reciprocam_kernel(1, kernel)  # validates the name
        self.kernel = kernel
        self.softmax = bool(softmax)
        self.split = check_split(split)

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        super()._check_call(counterfactual, eigen_smooth)
        if counterfactual and self.softmax:
            raise ValueError(
                "Recipro-CAM scores positions by a probability, whose negation is never positive; use "
                "ReciproCAM(..., softmax=False) to explain -y^c with logits"
            )
        if eigen_smooth:
            raise ValueError(
                "Recipro-CAM's map is one score per position, with no channel terms for eigen_smooth"
            )

    def terms(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        b = acts.shape[0]
        spatial = tuple(acts.shape[2:])
        z = math.prod(spatial)
        kernel = maps.reciprocam_kernel(len(spatial), self.kernel).to(acts)
        place = self._placer(acts, ctx)
        run = head_runner(self.model, ctx, self.split)
        rows_all = torch.arange(b, device=acts.device).repeat_interleave(z)
        pos_all = torch.arange(z, device=acts.device).repeat(b)
        scores = torch.empty(b * z, device=acts.device)
        for start in range(0, b * z, self.batch_size):
            rows = rows_all[start : start + self.batch_size]
            feats = maps.reciprocam_features(
                acts, rows, pos_all[start : start + self.batch_size], kernel
            )
            out = run(rows, place(rows, feats))
            scores[start : start + len(rows)] = ctx.row_scores(out, rows, softmax=self.softmax).to(
                acts.device
            )
        return scores.reshape(b, 1, *spatial)

    def _placer(self, acts: Tensor, ctx: MapContext) -> Callable[[Tensor, Tensor], Tensor]:
        """Writes ``(n, K, *s)`` maps into the layer's own layout (a copy of each row's activation)."""
        act = ctx.activation
        if act.shape == acts.shape:  # channels first: the layout is already (B, K, *s)
            return lambda rows, feats: feats.to(act.dtype)
        # Where each element of the (K, *s) view sits in the layer's own output: the layout is a pure
        # re-indexing, so it carries the flat indices of one sample's output along exactly.
        numbered = torch.arange(act[:1].numel(), dtype=torch.float64, device=act.device)
        index = self._to_spatial(ctx.layer, numbered.reshape(act[:1].shape), ctx.x[:1])
        index = index.round().long().flatten()

        def place(rows: Tensor, feats: Tensor) -> Tensor:
            out = act[rows.to(act.device)].flatten(1)  # indexing with a tensor copies
            out[:, index] = feats.flatten(1).to(act.dtype)
            return out.reshape(len(rows), *act.shape[1:])

        return place
