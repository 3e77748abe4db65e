"""Methods that weigh channels by perturbing the model: Score-CAM (and SS-CAM, IS-CAM), Ablation-CAM.

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
from camlens.methods import _options as opt
from camlens.methods._fast import internal_forward
from camlens.methods._head import check_split, head_runner
from camlens.methods.base import BaseCAM, MapContext
from camlens.methods.registry import register

__all__ = ["ISCAM", "SSCAM", "AblationCAM", "ScoreCAM"]


def _check_batch_size(batch_size: int) -> int:
    return opt.positive_int("batch_size", batch_size, "how many perturbed copies run at once")


@register("scorecam", aliases=("score-cam",))
class ScoreCAM(BaseCAM):
    r"""Score-CAM (Wang et al., CVPR-W 2020, https://arxiv.org/abs/1910.01279).

    Each activation channel, upsampled to the input and min-max normalised to ``[0, 1]``
    (:func:`camlens.maps.scorecam_masks`), masks the input; the channel's weight is its increase of
    confidence (the paper's CIC, eq. 5): the target's score on the masked input minus its score on the
    baseline image ``B`` (:func:`camlens.maps.scorecam_weights`):

    .. math:: w_k = y^c\big(X \odot H_k + B \odot (1 - H_k)\big) - y^c(B), \qquad
              L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    ``y^c`` is the softmax-free score (the logit for class targets), as for every camlens method.
    pytorch-grad-cam and torchcam apply a softmax over the channels' scores instead (``w =
    softmax_k(y^c(X \odot H_k))``; the baseline term cancels in a softmax), which squashes the weights
    of all but the few best channels to ~0 and makes them depend on the logits' scale; camlens keeps
    the paper's CIC. The tests compare the two through that softmax, on masks that both libraries
    build alike. The baseline ``B`` is the all-zeros image by default (masked-out pixels are set to 0,
    as in the paper); ``subtract_baseline=False`` uses the raw scores ``y^c(X \odot H_k + ...)``.

    How it runs: the masked inputs of all samples of the batch are batched together (``batch_size``
    per forward) under inference mode, with capture paused. On the CPU they run on an
    inference-optimised copy of the model (batch norms folded into the convolutions, oneDNN layouts;
    :mod:`camlens.methods._fast`) where fx can build one that reproduces the model's output on the
    call's input, else channels-last; ``result.details["forward"]`` says which (``"optimized"``,
    ``"channels-last"`` or ``"model"``). The baseline image runs once per call. A channel whose mask
    is constant needs no forward: an all-ones mask leaves the input as it is (its score is the
    target's own score) and an all-zeros mask gives the baseline; both are filled in exactly.

    Args:
        batch_size: masked inputs per forward pass; bounds memory.
        top_k: keep only the ``top_k`` channels with the largest mean activation per sample (the rest get
            weight 0). An approximation that trades accuracy for speed; ``None`` (default) uses all.
        baseline: ``"zeros"`` or a tensor broadcastable to one input ``(C, *spatial)``.
        subtract_baseline: subtract the baseline image's score from each weight (default, as in CIC).
        optimize: use the inference-optimised copy where it pays (see
            :func:`camlens.methods._fast.internal_forward`; it keeps a second copy of the weights
            while the model lives); ``False`` always runs the model itself.

    A callable target must score each row of a batch on its own (it sees masked copies of the samples).
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
        optimize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.batch_size = _check_batch_size(batch_size)
        self.optimize = bool(optimize)
        self.top_k = opt.positive_int("top_k", top_k, "None: all channels", optional=True)
        if isinstance(baseline, str) and baseline != "zeros":
            raise ValueError(f"baseline must be 'zeros' or a tensor, not {baseline!r}")
        self.baseline = baseline
        self.subtract_baseline = bool(subtract_baseline)

    # ---- what the variants (SS-CAM, IS-CAM) change --------------------------------------------------
    def _steps(self) -> tuple[Tensor, float]:
        """The perturbed masks of each channel: ``scale_j * H_k + std * noise``; ``(N,)`` scales, std."""
        return torch.ones(1), 0.0

    def _noise_generators(self, b: int, device: torch.device) -> list[torch.Generator] | None:
        """One generator per sample for the masks' noise (``None``: no noise)."""
        return None

    # ---- the common engine ---------------------------------------------------------------------------
    def weights(self, acts: Tensor, grads: Tensor | None, ctx: MapContext) -> Tensor:
        x = ctx.x
        b, k = acts.shape[:2]
        dev = acts.device
        if self.top_k is not None and self.top_k > k:
            raise ValueError(
                f"top_k={self.top_k} is larger than the {k} channels of layer {ctx.layer!r}; use 1 to {k}"
            )
        keep = torch.ones(b, k, dtype=torch.bool, device=dev)
        if self.top_k is not None:
            keep = torch.zeros_like(keep)
            keep.scatter_(1, acts.flatten(2).mean(2).topk(self.top_k, dim=1).indices, True)
        scales, std = self._steps()
        scales = scales.to(dev)
        # identical noise-free steps give identical scores: run each distinct scale once
        if std == 0:
            scales, counts = torch.unique(scales, return_counts=True)
        else:
            counts = torch.ones_like(scales, dtype=torch.long)
        n_steps = scales.shape[0]
        # a constant mask is all ones (positive value) or all zeros (see maps.normalize)
        flat = acts.flatten(2)
        constant = flat.amax(2) == flat.amin(2)
        ones = constant & (flat[:, :, 0] > 0)
        y_x = ctx.target.scores.detach().float().to(dev)
        scores = torch.zeros(n_steps, b, k, device=dev)
        todo = keep[None].expand(n_steps, b, k).clone()
        if std == 0:  # the scores of constant masks at scale 0 or 1 are known without a forward
            value = scales[:, None, None] * ones[None].float()  # the mask's constant value
            known = constant[None] & ((value == 0) | (value == 1))
            todo &= ~known
            scores = torch.where(value == 1, y_x[None, :, None], scores)
            need_base = bool((known & (value == 0) & keep[None]).any())
        else:
            need_base = False
        # the forwards: (sample, step, channel) in this order, batched across samples
        work = todo.permute(1, 0, 2).nonzero()  # (R, 3): sample, step, channel
        forward = internal_forward(self.model, ctx, optimize=self.optimize, rows=work.shape[0])
        base_img = None if isinstance(self.baseline, str) else self.baseline.to(x)
        y_base = torch.zeros(b, device=dev)
        if self.subtract_baseline or need_base:
            image = torch.zeros_like(x[:1]) if base_img is None else base_img.expand_as(x[:1])
            out = forward(image)
            y_base = torch.stack([ctx.scores(out, i)[0] for i in range(b)]).to(dev)
            if std == 0:
                zero = constant[None] & (scales[:, None, None] * ones[None].float() == 0)
                scores = torch.where(zero, y_base[None, :, None], scores)
        gens = self._noise_generators(b, x.device) if std > 0 else None
        size = x.shape[2:]
        for start in range(0, work.shape[0], self.batch_size):
            chunk = work[start : start + self.batch_size]
            rows, step, chan = chunk[:, 0], chunk[:, 1], chunk[:, 2]
            masks = maps.scorecam_masks(acts[rows, chan], size)
            masks = masks * scales[step].reshape(-1, *([1] * len(size)))
            if gens is not None:
                noise = torch.stack(
                    [
                        torch.randn(size, generator=gens[int(r)], device=x.device)
                        for r in rows.tolist()
                    ]
                )
                masks = masks + std * noise.to(masks)
            m = masks.unsqueeze(1).to(x.dtype)
            xin = x[rows.to(x.device)] * m
            if base_img is not None:
                xin = xin + base_img * (1 - m)
            out = forward(xin)
            scores[step, rows, chan] = ctx.row_scores(out, rows).to(dev)
        ctx.details["forward"] = forward.used
        scores = scores.repeat_interleave(counts.to(dev), dim=0)  # back to the N steps
        weights = maps.scorecam_weights(scores, y_base if self.subtract_baseline else 0.0)
        return torch.where(keep, weights, torch.zeros_like(weights))  # top_k: the rest weigh 0


@register("sscam", aliases=("ss-cam", "smoothed-scorecam"))
class SSCAM(ScoreCAM):
    r"""SS-CAM, Smoothed Score-CAM (Wang et al. 2020, https://arxiv.org/abs/2006.14255).

    Score-CAM whose channel weights average the increase of confidence over ``num_samples`` masks with
    Gaussian noise added to every pixel (the paper's SS-CAM(M), as torchcam's ``SSCAM``):

    .. math:: w_k = \frac{1}{N} \sum_{j=1}^{N} y^c\big(X \odot (H_k + \delta_j) + B \odot
              (1 - H_k - \delta_j)\big) - y^c(B), \qquad \delta_j \sim \mathcal{N}(0, \sigma^2)

    (:func:`camlens.maps.scorecam_weights`). Defaults are torchcam's (``num_samples=35``,
    ``std=2.0``); torchcam then applies a softmax over the channels, camlens keeps the CIC in logits
    (see :class:`ScoreCAM`). ``std=0`` gives Score-CAM exactly (and costs no more than it). Noise of
    ``std=2`` on masks in ``[0, 1]`` can drown them: on the bundled demo model SS-CAM at these defaults
    pointed worse than random channel weights (``camlens evaluate``, README); a ``std`` of a few tenths
    keeps the masks' shape.

    The noise is reproducible: each sample draws it from its own ``torch.Generator`` seeded with
    ``seed``, one ``(*input_spatial)`` draw per (step, channel) in that order, so a batch equals its
    samples alone, and threads cannot disturb each other. It costs ``num_samples`` times Score-CAM.

    Args:
        num_samples: noisy masks per channel (the paper's ``N``).
        std: standard deviation of the noise, on the ``[0, 1]`` scale of the masks.
        seed: seed of the noise generators.
        **kwargs: Score-CAM's options (``batch_size``, ``top_k``, ``baseline``, ``subtract_baseline``).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        num_samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.num_samples = opt.positive_int("num_samples", num_samples, "noisy copies")
        self.std = opt.non_negative("std", std, "the noise's standard deviation")
        self.seed = opt.seed(seed)

    def _steps(self) -> tuple[Tensor, float]:
        return torch.ones(self.num_samples), self.std

    def _noise_generators(self, b: int, device: torch.device) -> list[torch.Generator] | None:
        return [torch.Generator(device=device).manual_seed(self.seed) for _ in range(b)]


@register("iscam", aliases=("is-cam", "integrated-scorecam"))
class ISCAM(ScoreCAM):
    r"""IS-CAM, Integrated Score-CAM (Naidu et al. 2020, https://arxiv.org/abs/2010.03023).

    Score-CAM whose channel weights integrate the increase of confidence along the straight path from
    the baseline to the masked input, with ``steps`` points ``i / N`` (a Riemann sum, as in integrated
    gradients; :func:`camlens.maps.iscam_scales`):

    .. math:: w_k = \frac{1}{N} \sum_{i=1}^{N} \Big[y^c\big(X \odot \tfrac{i}{N} H_k + B \odot
              (1 - \tfrac{i}{N} H_k)\big) - y^c(B)\Big]

    One step is Score-CAM exactly. The default ``steps=10`` is torchcam's ``num_samples``. torchcam's
    ``ISCAM`` scales the ``i``-th mask by the cumulative sum ``\sum_{j \le i} j / N`` (up to
    ``(N + 1) / 2``: inputs brighter than the image, off the path) and applies a softmax over the
    channels; camlens follows the integration and keeps the CIC in logits. The two agree at one step,
    through the softmax.

    Args:
        steps: integration points (the paper's ``N``).
        **kwargs: Score-CAM's options (``batch_size``, ``top_k``, ``baseline``, ``subtract_baseline``).
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec = None, *, steps: int = 10, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        maps.iscam_scales(steps)  # validates
        self.steps = steps

    def _steps(self) -> tuple[Tensor, float]:
        return maps.iscam_scales(self.steps), 0.0


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

    Channels are zeroed, as in the paper, whatever the layer's activation. pytorch-grad-cam zeroes
    them only where the batch's smallest activation is exactly 0 and otherwise sets them to that
    minimum minus ``1e7``; on layers with negative activations (ConvNeXt's LayerNorm, EfficientNet's
    SiLU, MobileNetV3's Hardswish, transformer tokens) its maps therefore differ from these.

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
