"""Methods that weigh channels by perturbing the model: Score-CAM and Ablation-CAM.

Their extra forwards run inside :func:`camlens.capture.paused` and under inference mode (through
:meth:`MapContext.run`), so no capture records them and no autograd graph is built; a model that fails
in one of them raises the same :class:`~camlens.methods.base.ModelError` as in the first forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerSpec
from camlens.methods._head import check_split, head_runner
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["AblationCAM", "ScoreCAM"]


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be an int >= 1 (how many perturbed copies run at once), got {batch_size!r}"
        )
    return batch_size


@register("scorecam", aliases=("score-cam",))
class ScoreCAM(BaseCAM):
    r"""Score-CAM (Wang et al., CVPR-W 2020, https://arxiv.org/abs/1910.01279).

    Each activation channel, upsampled to the input and min-max normalised to ``[0, 1]``, masks the
    input; the channel's weight is its increase of confidence (the paper's CIC, eq. 5): the target's
    score on the masked input minus its score on the baseline image ``B``
    (:func:`camlens.maps.scorecam_weights`):

    .. math:: w_k = y^c\big(X \odot H_k + B \odot (1 - H_k)\big) - y^c(B), \qquad
              L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    ``y^c`` is the softmax-free score (the logit for class targets), as for every camlens method; the
    softmax of the paper's code is not applied. The baseline ``B`` is the all-zeros image by default
    (masked-out pixels are set to 0, as in the paper); ``subtract_baseline=False`` uses the raw scores
    ``y^c(X \odot H_k + ...)`` instead. The masked inputs run batched under inference mode. A channel
    whose mask is constant needs no forward: an all-ones mask leaves the input as it is (its score is
    the target's own score) and an all-zeros mask gives the baseline; both are filled in exactly.

    Args:
        batch_size: masked inputs per forward pass; bounds memory.
        top_k: keep only the ``top_k`` channels with the largest mean activation per sample (the rest get
            weight 0). An approximation that trades accuracy for speed; ``None`` (default) uses all.
        baseline: ``"zeros"`` or a tensor broadcastable to one input ``(C, *spatial)``.
        subtract_baseline: subtract the baseline image's score from each weight (default, as in CIC).

    A callable target must score each row of a batch on its own (it sees copies of one sample).
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        batch_size: int = 32,
        top_k: int | None = None,
        baseline: str | Tensor = "zeros",
        subtract_baseline: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.batch_size = _check_batch_size(batch_size)
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k must be None (all channels) or an int >= 1, got {top_k!r}")
        self.top_k = top_k
        if isinstance(baseline, str) and baseline != "zeros":
            raise ValueError(f"baseline must be 'zeros' or a tensor, not {baseline!r}")
        self.baseline = baseline
        self.subtract_baseline = bool(subtract_baseline)

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        x = ctx.x
        b, k = acts.shape[:2]
        if self.top_k is not None and self.top_k > k:
            raise ValueError(
                f"top_k={self.top_k} is larger than the {k} channels of layer {ctx.layer!r}; use 1 to {k}"
            )
        size = x.shape[2:]
        base = None if isinstance(self.baseline, str) else self.baseline.to(x)
        masked = torch.zeros(b, k, device=acts.device)
        base_scores = torch.zeros(b, device=acts.device)
        keep = torch.zeros(b, k, dtype=torch.bool, device=acts.device)
        for i in range(b):
            xi = x[i : i + 1]
            baseline_image = torch.zeros_like(xi) if base is None else base.expand_as(xi)
            chans = torch.arange(k, device=acts.device)
            if self.top_k is not None:
                chans = acts[i].flatten(1).mean(1).topk(self.top_k).indices
            keep[i, chans] = True
            mask = maps.normalize(maps.upsample(acts[i, chans], size)).to(x.dtype)
            flat = mask.flatten(1)
            constant = flat.amax(1) == flat.amin(1)
            ones = constant & (flat[:, 0] > 0)
            zeros = constant & ~ones
            # an all-ones mask leaves the input as it is; an all-zeros mask gives the baseline image
            masked[i, chans[ones]] = ctx.target.scores[i].detach().float().to(acts.device)
            if self.subtract_baseline or bool(zeros.any()):
                y_base = ctx.scores(ctx.run(self.model, baseline_image), i)[0].to(acts.device)
                masked[i, chans[zeros]] = y_base
                if self.subtract_baseline:
                    base_scores[i] = y_base
            todo = (~constant).nonzero().flatten()
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                m = mask[idx].unsqueeze(1)
                xin = xi * m if base is None else xi * m + baseline_image * (1 - m)
                masked[i, chans[idx]] = ctx.scores(ctx.run(self.model, xin), i).to(acts.device)
        weights = maps.scorecam_weights(masked, base_scores)
        return torch.where(keep, weights, torch.zeros_like(weights))  # top_k: the rest weigh 0


@register("ablationcam", aliases=("ablation-cam",))
class AblationCAM(BaseCAM):
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html).

    A channel's weight is the relative drop of the target score when that channel is zeroed
    (:func:`camlens.maps.ablation_weights`):

    .. math:: w_k = \frac{y^c - y^c_k}{y^c}, \qquad L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    Only the part of the model after the layer runs on the ablated activations: the model is split at
    the layer with ``torch.fx``. The split is checked against the live model on every call: the head
    applied to the prefix's values must give the model's own output for that batch (a head replaced
    since the trace, a flag read in ``forward``, a forward hook or pre-hook that fx does not see would
    all break that). A split that fails the check is traced again once; if it still fails, or fx cannot
    trace the model, a forward hook substitutes the layer's output and the whole model runs per batch
    of ablations. ``result.details["split"]`` says which was used (``"fx"`` or ``"hook"``). For a
    GAP + linear head, ``w_k = W_{c,k} \bar{A}^k / y^c`` in closed form.

    Args:
        batch_size: ablated copies per head run; bounds memory.
        split: ``"auto"`` (fx where it reproduces the model, else the hook), ``"fx"`` (an error where it
            does not) or ``"hook"``.
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        batch_size: int = 128,
        split: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.batch_size = _check_batch_size(batch_size)
        self.split = check_split(split)

    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        b, k = acts.shape[:2]
        act = ctx.activation  # the layer's own layout (before any reshape to (B, K, *s))
        if act.shape[1] == k and act.ndim == acts.ndim:
            shape = (k, *([1] * (act.ndim - 2)))  # channels first
        elif act.shape[-1] == k:
            shape = (*([1] * (act.ndim - 2)), k)  # channels last (tokens)
        else:
            raise ValueError(
                f"cannot find the {k} channels in layer {ctx.layer!r}'s output {tuple(act.shape)}"
            )
        run_head = head_runner(self.model, ctx, self.split)
        eye = torch.eye(k, device=act.device, dtype=torch.bool)
        ablated_scores = torch.zeros(b, k, device=acts.device)
        for i in range(b):
            for start in range(0, k, self.batch_size):
                keep = ~eye[start : start + self.batch_size]  # (n, K): False at the ablated channel
                n = keep.shape[0]
                ablated = act[i : i + 1] * keep.reshape(n, *shape).to(act.dtype)
                out = run_head(i, ablated)
                ablated_scores[i, start : start + n] = ctx.scores(out, i).to(acts.device)
        return maps.ablation_weights(ctx.target.scores.detach().float(), ablated_scores)
