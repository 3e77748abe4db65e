r"""Faithfulness: does the model's score follow the map when the pixels it ranks are taken away or given?

* :func:`deletion` and :func:`insertion`: the area under the score curve while pixels are removed or
  inserted in the map's order (Petsiuk et al. 2018, RISE).
* :func:`average_drop`, :func:`average_increase` and :func:`increase_in_confidence`: the score on the
  image masked by the map (Chattopadhay et al. 2018, Grad-CAM++).
* :func:`road`: remove a share of the pixels, most or least relevant first, and fill them with noisy
  linear imputation rather than a constant (Rong et al. 2022, ROAD).

Every function takes the model, the batch ``x`` ``(B, C, *spatial)`` exactly as the model takes it, the
maps ``(B, *spatial)`` (upsampled to ``x``'s size when smaller) and a target as in
:func:`camlens.targets.resolve`. The target is resolved once on the unperturbed ``x`` (``None`` is each
sample's top class there) and that class is followed through every perturbation. All perturbed images
are built on the model's device in chunks of at most ``batch_size`` images and run under
:func:`torch.inference_mode`; the model's mode and parameters are not touched. Perturbations act on
``x`` as the model receives it (after any normalisation you apply outside the model).

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    >>> x, m = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    >>> r = deletion(net, x, m, target=1, steps=8)
    >>> tuple(r.per_sample.shape), tuple(r.details["curve"].shape)
    ((2,), (2, 9))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.maps import upsample
from camlens.metrics.localization import MetricResult, _nanmean
from camlens.targets import TargetSpec, resolve, select_output

__all__ = [
    "average_drop",
    "average_increase",
    "deletion",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "linear_imputation_residual",
    "noisy_linear_imputation",
    "road",
]

Baseline = str | Tensor
OutputSelector = str | int | Callable[[Any], Tensor] | None
_SCORES = ("prob", "logit", "accuracy")


# ---- shared plumbing ---------------------------------------------------------------------------


def _device_of(model: nn.Module, x: Tensor) -> torch.device:
    p: Tensor | None = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return x.device if p is None else p.device


def _check_inputs(model: Any, x: Any, maps: Any) -> tuple[Tensor, Tensor]:
    """``x`` and ``maps`` on the model's device, the maps float and at ``x``'s spatial size."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(
            f"x must be a torch.Tensor of shape (B, C, *spatial), not {type(x).__name__}"
        )
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"maps must be a torch.Tensor of shape (B, *spatial), not {type(maps).__name__}"
        )
    if x.ndim < 3:
        raise ValueError(f"x must be (B, C, *spatial), got shape {tuple(x.shape)}")
    if maps.ndim != x.ndim - 1 or maps.shape[0] != x.shape[0]:
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} do not match x of shape {tuple(x.shape)}: maps must be "
            f"(B, *spatial) = ({x.shape[0]}, {', '.join(str(s) for s in x.shape[2:])}) or a smaller spatial "
            "size that is upsampled"
        )
    dev = _device_of(model, x)
    x = x.detach().to(dev)
    maps = maps.detach().to(dev).float()
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN")
    if tuple(maps.shape[1:]) != tuple(x.shape[2:]):
        maps = upsample(maps, x.shape[2:])
    return x, maps


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _forward(model: nn.Module, imgs: Tensor, output: OutputSelector, batch_size: int) -> Tensor:
    """The selected output of ``model`` on ``imgs`` (N, ...), in chunks of ``batch_size``."""
    outs = []
    with torch.inference_mode():
        for chunk in imgs.split(batch_size):
            outs.append(select_output(model(chunk), output))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


class _Scorer:
    """The target's score on perturbed versions of one batch, with the target fixed on the original.

    ``score``: ``"prob"`` applies the target to ``softmax(output, dim=1)`` (for a class target: that
    class's probability), ``"logit"`` to the raw output, ``"accuracy"`` gives 1.0 where the top class is
    the target class.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        target: TargetSpec,
        score: str,
        output: OutputSelector,
        batch_size: int,
    ) -> None:
        if score not in _SCORES:
            raise ValueError(f"score must be one of {', '.join(map(repr, _SCORES))}, not {score!r}")
        self.model, self.score, self.output = model, score, output
        self.batch_size = _check_int("batch_size", batch_size, 1)
        logits = _forward(model, x, output, self.batch_size)
        resolved = resolve(target, logits)
        self.classes = resolved.classes
        if self.classes is None and score == "accuracy":
            raise ValueError(
                "score='accuracy' needs class targets (None, an int or one int per sample)"
            )
        self.target: TargetSpec = self.classes if self.classes is not None else target
        self.original = self.from_output(logits)

    def from_output(self, out: Tensor) -> Tensor:
        """``(B,)`` scores from the model's selected output ``(B, ...)``."""
        if self.score == "accuracy":
            assert self.classes is not None
            return (out.argmax(1) == self.classes.to(out.device)).float()
        t = out.float().softmax(1) if self.score == "prob" else out.float()
        return resolve(self.target, t).scores.float()

    def __call__(self, imgs: Tensor) -> Tensor:
        """``(K, B)`` scores of ``(K, B, C, *spatial)`` perturbed images."""
        k, b = imgs.shape[:2]
        out = _forward(
            self.model, imgs.reshape(k * b, *imgs.shape[2:]), self.output, self.batch_size
        )
        out = out.reshape(k, b, *out.shape[1:])
        if self.classes is not None and self.score != "accuracy":
            t = out.float().softmax(2) if self.score == "prob" else out.float()
            idx = self.classes.to(t.device).reshape(1, b, 1).expand(k, b, 1)
            return t.gather(2, idx)[..., 0]
        return torch.stack([self.from_output(o) for o in out.unbind(0)])


def _order(maps: Tensor, descending: bool) -> Tensor:
    """``(B, N)`` rank of every pixel in the map's order, ties broken stably by flat index."""
    b = maps.shape[0]
    perm = maps.reshape(b, -1).sort(dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(perm)
    rank.scatter_(1, perm, torch.arange(perm.shape[1], device=perm.device).expand_as(perm))
    return rank


def _gaussian_kernel1d(sigma: float, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    ax = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (ax / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _filter_axes(t: Tensor, kernel: Tensor, pad_mode: str | None) -> Tensor:
    """Separable 1-D filtering of ``(B, C, *spatial)`` along every spatial axis.

    ``pad_mode=None`` filters "valid" (the output shrinks by ``len(kernel) - 1`` per axis).
    """
    size = kernel.numel()
    w = kernel.reshape(1, 1, size)
    for axis in range(2, t.ndim):
        moved = t.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        if pad_mode is not None:
            flat = F.pad(flat, (size // 2, (size - 1) // 2), mode=pad_mode)
        flat = F.conv1d(flat, w)
        t = flat.reshape(*shape[:-1], flat.shape[-1]).movedim(-1, axis)
    return t


def gaussian_blur(x: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Gaussian blur of ``(B, C, *spatial)`` in torch: separable, per channel, edges replicated.

    Args:
        x: ``(B, C, *spatial)`` with 1 to 3 spatial axes.
        sigma: standard deviation in pixels, ``> 0``.
        kernel_size: taps of the (truncated, renormalised) kernel, odd, ``>= 1``.

    Example:
        >>> gaussian_blur(torch.ones(1, 1, 4, 4)).allclose(torch.ones(1, 1, 4, 4))
        True
    """
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma!r}")
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"blur kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    k = _gaussian_kernel1d(float(sigma), kernel_size, x.device, dtype)
    return _filter_axes(x.to(dtype), k, "replicate")


def _make_baseline(
    x: Tensor, baseline: Baseline, blur_sigma: float, blur_kernel: int
) -> tuple[Tensor, str]:
    if isinstance(baseline, Tensor):
        base = baseline.to(device=x.device, dtype=x.dtype)
        if base.ndim == 1 and base.shape[0] == x.shape[1]:
            base = base.reshape(1, -1, *([1] * (x.ndim - 2)))
        try:
            ok = torch.broadcast_shapes(base.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"a baseline tensor of shape {tuple(baseline.shape)} does not broadcast to x of shape "
                f"{tuple(x.shape)}; pass (C,), (1, C, 1, 1) or x's shape"
            )
        return base.expand_as(x), "tensor"
    if baseline == "zeros":
        return torch.zeros_like(x), baseline
    if baseline == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x), baseline
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma, blur_kernel), baseline
    raise ValueError(f"baseline must be 'blur', 'mean', 'zeros' or a tensor, not {baseline!r}")


def _perturbation_curve(
    mode: str,
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec,
    steps: int,
    baseline: Baseline,
    score: str,
    blur_sigma: float,
    blur_kernel: int,
    batch_size: int,
    output: OutputSelector,
) -> MetricResult:
    steps = _check_int("steps", steps, 1)
    x, maps = _check_inputs(model, x, maps)
    base, base_name = _make_baseline(x, baseline, blur_sigma, blur_kernel)
    scorer = _Scorer(model, x, target, score, output, batch_size)
    b = x.shape[0]
    n = maps[0].numel()
    rank = _order(maps, descending=True)
    counts = torch.tensor([(i * n) // steps for i in range(steps + 1)], device=x.device)
    start, end = (x, base) if mode == "deletion" else (base, x)
    per_chunk = max(1, batch_size // b)
    curves = []
    for c in counts.split(per_chunk):
        changed = (rank[None] < c[:, None, None]).reshape(
            len(c), b, 1, *x.shape[2:]
        )  # (K, B, 1, *s)
        curves.append(scorer(torch.where(changed, end, start)))
    curve = torch.cat(curves).T.contiguous()  # (B, steps + 1)
    fractions = counts.to(curve.dtype) / n
    auc = torch.trapezoid(curve, fractions, dim=1)
    details = {
        "curve": curve,
        "fractions": fractions,
        "baseline": base_name,
        "score": score,
        "original": scorer.original,
        "classes": scorer.classes,
    }
    return MetricResult(mode, auc, _nanmean(auc), details, higher_is_better=mode == "insertion")


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 100,
    baseline: Baseline = "zeros",
    score: str = "prob",
    blur_sigma: float = 5.0,
    blur_kernel: int = 11,
    batch_size: int = 128,
    output: OutputSelector = None,
) -> MetricResult:
    """Deletion AUC (Petsiuk et al., BMVC 2018, "RISE", https://arxiv.org/abs/1806.07421, sec. 4.1).

    Pixels are replaced by the baseline in the order of the map, most salient first; the area under
    the target's score curve is small when the map finds what the model uses. **Lower is better.**

    Choices the paper leaves open (or its code fixes):
        * Order: descending map value, ties broken stably by flat pixel index (raster order).
        * Step ``i`` (``0..steps``) has the first ``floor(i * N / steps)`` pixels replaced (all channels),
          ``N`` the number of pixels; the curve has ``steps + 1`` points from the intact image to the
          full baseline. RISE's code removes 224 pixels per step on 224x224 images.
        * Score: the softmax probability of the target class (``score="prob"``, as RISE), or the raw
          logit (``"logit"``), or the 0/1 top-1 hit (``"accuracy"``).
        * AUC: trapezoidal rule over the fraction of pixels changed, on ``[0, 1]``.
        * Baseline (what replaces the pixels): ``"zeros"`` by default, RISE's choice for deletion;
          ``"blur"``: a Gaussian blur of ``x`` (``blur_sigma=5``, ``blur_kernel=11`` taps, RISE's values;
          edges replicated, not zero-padded); ``"mean"``: each image's per-channel mean; or a tensor
          broadcastable to ``x`` (``(C,)`` is read as per channel).
        * Maps smaller than ``x`` are upsampled bilinearly (:func:`camlens.maps.upsample`).

    Args:
        model: the classifier, on the device ``x`` is moved to.
        x: ``(B, C, *spatial)`` inputs as the model takes them.
        maps: ``(B, *spatial)`` maps (any real values; only their order matters).
        target: as in :func:`camlens.targets.resolve`; ``None`` is each sample's top class on ``x``.
        steps: number of steps, ``>= 1``.
        baseline: ``"zeros"``, ``"blur"``, ``"mean"`` or a tensor.
        score: ``"prob"``, ``"logit"`` or ``"accuracy"``.
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.
        blur_kernel: kernel taps for ``baseline="blur"`` (odd).
        batch_size: at most this many images per forward pass (also bounds memory: perturbed images
            are built per chunk of steps).
        output: which part of the model's output holds the scores (see
            :func:`camlens.targets.select_output`).

    Returns:
        :class:`MetricResult` ``"deletion"``: ``per_sample`` (B,) AUCs, ``summary`` their mean;
        ``details["curve"]`` (B, steps + 1) the scores, ``details["fractions"]`` (steps + 1,) the x axis,
        ``details["original"]`` (B,) the score on ``x``, ``details["classes"]`` the target classes (or
        ``None`` for a callable target).

    Raises:
        ValueError: ``maps`` and ``x`` do not match (naming both shapes), ``steps < 1``, an unknown
            baseline or score.
    """
    return _perturbation_curve(
        "deletion",
        model,
        x,
        maps,
        target,
        steps,
        baseline,
        score,
        blur_sigma,
        blur_kernel,
        batch_size,
        output,
    )


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 100,
    baseline: Baseline = "blur",
    score: str = "prob",
    blur_sigma: float = 5.0,
    blur_kernel: int = 11,
    batch_size: int = 128,
    output: OutputSelector = None,
) -> MetricResult:
    """Insertion AUC (Petsiuk et al., BMVC 2018, "RISE", https://arxiv.org/abs/1806.07421, sec. 4.1).

    Starts from the baseline (a blurred image by default, as RISE) and puts the original pixels back in
    the order of the map, most salient first; **higher is better**. Every other choice is as in
    :func:`deletion` (same arguments and details), with the curve running from the baseline (step 0)
    to the intact image (step ``steps``).

    Returns:
        :class:`MetricResult` ``"insertion"``: ``per_sample`` (B,) AUCs, ``summary`` their mean.
    """
    return _perturbation_curve(
        "insertion",
        model,
        x,
        maps,
        target,
        steps,
        baseline,
        score,
        blur_sigma,
        blur_kernel,
        batch_size,
        output,
    )


# ---- Grad-CAM++ measures -------------------------------------------------------------------------


def _confidences(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec,
    batch_size: int,
    output: OutputSelector,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``Y`` (B,) and ``O`` (B,): the target's softmax probability on ``x`` and on ``x * map``."""
    x, maps = _check_inputs(model, x, maps)
    lo, hi = float(maps.min()), float(maps.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"maps must lie in [0, 1] (they multiply the image), got values in [{lo:.4g}, {hi:.4g}]; "
            "use camlens.maps.normalize"
        )
    scorer = _Scorer(model, x, target, "prob", output, batch_size)
    explanation = x * maps.clamp(0, 1).unsqueeze(1).to(x.dtype)
    o = scorer(explanation[None])[0]
    return scorer.original, o, scorer.classes


def _grad_campp_details(y: Tensor, o: Tensor, classes: Tensor | None) -> dict[str, Any]:
    tiny = torch.finfo(y.dtype).tiny
    drop = (y - o).clamp(min=0) / y.clamp(min=tiny) * 100
    inc = (o - y).clamp(min=0) / y.clamp(min=tiny) * 100
    more = (o > y).float() * 100
    return {
        "Y": y,
        "O": o,
        "classes": classes,
        "drop": drop,
        "increase": inc,
        "increased": more,
        "average_drop": _nanmean(drop),
        "average_increase": _nanmean(inc),
        "increase_in_confidence": _nanmean(more),
    }


_GRADCAMPP_DOC = """

    Chattopadhay et al., WACV 2018, "Grad-CAM++", https://arxiv.org/abs/1710.11063, sec. 6.1.1. The
    explanation map is ``E = x * map`` (the map upsampled to ``x`` and broadcast over channels), ``Y`` the
    softmax probability of the target class on ``x`` and ``O`` on ``E``.

    Choices the paper leaves open:
        * ``x`` is multiplied as the model receives it (the demo model normalises inside, so ``E``
          fades to black); maps must lie in ``[0, 1]``.
        * The target class is fixed on ``x`` (``None``: the top class of ``x``); ``O`` is that class's
          probability on ``E`` even if ``E`` is classified otherwise.
        * "Average increase" is the mirror of average drop, ``mean(max(0, O - Y) / Y) * 100``. Some
          later papers (e.g. Poppi et al. 2021, ADCC) call the share of samples with ``O > Y`` by that
          name; here that share is :func:`increase_in_confidence`.

    All three numbers are in ``details`` of each of the three functions: ``"Y"``, ``"O"`` (B,),
    ``"drop"``, ``"increase"`` (B,) in percent, ``"increased"`` (B,) 100.0 where ``O > Y``, and the
    summaries ``"average_drop"``, ``"average_increase"``, ``"increase_in_confidence"``.
"""


def average_drop(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    batch_size: int = 128,
    output: OutputSelector = None,
) -> MetricResult:
    """Average drop %: how much the target's confidence falls when only the map's region is shown.

    .. math:: \\text{drop}_i = \\frac{\\max(0, Y_i - O_i)}{Y_i} \\cdot 100

    **Lower is better.** Returns :class:`MetricResult` ``"average_drop"``: ``per_sample`` (B,) the
    drop in percent, ``summary`` its mean.

    Raises:
        ValueError: ``maps`` and ``x`` do not match (naming both shapes), or maps outside ``[0, 1]``.
    """
    y, o, classes = _confidences(model, x, maps, target, batch_size, output)
    d = _grad_campp_details(y, o, classes)
    return MetricResult("average_drop", d["drop"], d["average_drop"], d, higher_is_better=False)


def average_increase(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    batch_size: int = 128,
    output: OutputSelector = None,
) -> MetricResult:
    """Average increase %: how much the target's confidence rises when only the map's region is shown.

    .. math:: \\text{increase}_i = \\frac{\\max(0, O_i - Y_i)}{Y_i} \\cdot 100

    **Higher is better.** Returns :class:`MetricResult` ``"average_increase"``: ``per_sample`` (B,) in
    percent, ``summary`` its mean.
    """
    y, o, classes = _confidences(model, x, maps, target, batch_size, output)
    d = _grad_campp_details(y, o, classes)
    return MetricResult("average_increase", d["increase"], d["average_increase"], d)


def increase_in_confidence(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    batch_size: int = 128,
    output: OutputSelector = None,
) -> MetricResult:
    """Increase in confidence %: the share of samples whose confidence rises on the map's region.

    ``per_sample`` is 100.0 where ``O > Y`` (strictly) and 0.0 elsewhere, so ``summary``, their mean, is
    the percentage of the paper. **Higher is better.** Returns :class:`MetricResult`
    ``"increase_in_confidence"``.
    """
    y, o, classes = _confidences(model, x, maps, target, batch_size, output)
    d = _grad_campp_details(y, o, classes)
    return MetricResult("increase_in_confidence", d["increased"], d["increase_in_confidence"], d)


for _f in (average_drop, average_increase, increase_in_confidence):
    _f.__doc__ = (_f.__doc__ or "").rstrip() + "\n" + _GRADCAMPP_DOC


# ---- ROAD ------------------------------------------------------------------------------------------

#: The neighbour weights of ROAD's noisy linear imputer: 1/6 for the 4 direct neighbours and 1/12 for
#: the 4 diagonal ones (they sum to 1).
_NLI_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum(t: Tensor) -> Tensor:
    """``sum_j w_ij t_j`` over the 8 in-image neighbours of every pixel of ``(N, 1, H, W)``.

    The kernel ``[[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12`` is ``([1, 2, 1] x [1, 2, 1] - 4 delta) / 12``:
    two 1-D passes with zero padding, cheaper than a one-channel 3x3 convolution on the CPU.
    """
    p = F.pad(t, (1, 1, 0, 0))
    a = p[..., :-2] + p[..., 2:] + 2 * t
    p = F.pad(a, (0, 0, 1, 1))
    return (p[..., :-2, :] + p[..., 2:, :] + 2 * a - 4 * t) / 12


def _nli_conv(t: Tensor) -> Tensor:
    """The same neighbour sum as :func:`_neighbour_sum`, as a plain 3x3 convolution with the paper's
    weights (the reference the residual is checked against)."""
    k = torch.tensor(_NLI_KERNEL, device=t.device, dtype=t.dtype)[None, None]
    return F.conv2d(t, k, padding=1)


def _cg(known: Tensor, u: Tensor, x0: Tensor, tol_abs: float, limit: int) -> tuple[Tensor, int]:
    """Solve the imputation system for ``(N, 1, H, W)`` images by Jacobi-preconditioned CG.

    ``known``: the image with zeros on the unknowns; ``u``: 1 on the unknowns; ``x0``: the start
    (zero off the unknowns). Every 8 iterations the systems whose largest residual is below
    ``tol_abs`` are set aside, so the rest run on a smaller batch. Returns the unknowns' values (zero
    elsewhere) and the iterations run.
    """
    _, _, h, w = u.shape
    s = _neighbour_sum(torch.ones(1, 1, h, w, device=u.device, dtype=u.dtype))

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    tiny = torch.finfo(u.dtype).tiny
    out = x0.clone()
    idx = torch.arange(u.shape[0], device=u.device)
    sol = x0
    r = u * (_neighbour_sum(known) - s * sol + _neighbour_sum(sol))
    z = r / s
    p = z
    rz = dot(r, z)
    it = 0
    while it < limit:
        if it % 8 == 0:
            done = r.abs().amax(dim=(1, 2, 3)) <= tol_abs
            if bool(done.any()):
                out[idx[done]] = sol[done]
                keep = ~done
                if not bool(keep.any()):
                    return out, it
                idx, u, sol, r, p, rz = (t[keep] for t in (idx, u, sol, r, p, rz))
        ap = u * (s * p - _neighbour_sum(p))
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), torch.zeros_like(pap))
        sol = sol + alpha * p
        r = r - alpha * ap
        z = r / s
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        it += 1
    out[idx] = sol
    return out, it


def _coarse_guess(known: Tensor, u: Tensor, tol_abs: float, limit: int) -> Tensor:
    """A start for CG from the same problem solved at half the resolution, recursively (cascadic CG).

    A coarse pixel is known when any pixel of its 2x2 block is, with their mean value. Only the start
    changes; the fine system and its tolerance are untouched, so this affects speed, not the answer.
    On the coarsest level (side < 16) the start is each image's mean of the known pixels.
    """
    _, _, h, w = u.shape
    if min(h, w) < 16:
        kept = 1 - u
        mean = known.sum(dim=(1, 2, 3), keepdim=True) / kept.sum(dim=(1, 2, 3), keepdim=True).clamp(
            min=1
        )
        return u * mean
    kept_c = F.avg_pool2d(1 - u, 2, ceil_mode=True)
    u_c = (kept_c <= 0).to(u.dtype)
    known_c = (
        F.avg_pool2d(known, 2, ceil_mode=True)
        / kept_c.clamp(min=torch.finfo(u.dtype).tiny)
        * (1 - u_c)
    )
    sol_c, _ = _cg(known_c, u_c, _coarse_guess(known_c, u_c, tol_abs, limit), tol_abs, limit)
    full_c = known_c + sol_c
    return u * F.interpolate(full_c, size=(h, w), mode="bilinear", align_corners=False)


def linear_imputation_residual(values: Tensor, removed: Tensor) -> Tensor:
    """Residual of ROAD's linear imputation system for ``values`` (noise-free), per image and channel.

    For every removed pixel ``i``: ``r_i = s_i v_i - sum_j w_ij v_j``, where ``j`` runs over the 8
    neighbours inside the image, ``w_ij`` is 1/6 (direct) or 1/12 (diagonal) and ``s_i = sum_j w_ij``
    (1 inside the image, less at the border). ``r = 0`` exactly when each removed pixel is the weighted
    mean of its neighbours, known or imputed.

    Args:
        values: ``(B, C, H, W)`` imputed images.
        removed: ``(B, H, W)`` boolean, True where a pixel was imputed.

    Returns:
        ``(B, C)`` the largest ``|r_i|`` over the removed pixels (0 where nothing was removed).
    """
    b, c, h, w = values.shape
    v = values.reshape(b * c, 1, h, w).double()
    u = removed.to(values.device)[:, None].double().repeat_interleave(c, 0)
    s = _nli_conv(torch.ones(1, 1, h, w, device=values.device, dtype=torch.float64))
    conv = _nli_conv
    r = u * (s * v - conv(v))
    return r.abs().amax(dim=(1, 2, 3)).reshape(b, c)


def noisy_linear_imputation(
    x: Tensor,
    removed: Tensor,
    noise_std: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    max_iter: int | None = None,
    tol: float = 1e-5,
) -> tuple[Tensor, dict[str, Any]]:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449,
    sec. 4), batched in torch.

    Every removed pixel takes the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal, as in
    the paper's code; neighbours outside the image are dropped and the weights renormalised), where the
    neighbours may themselves be removed: one linear system over all removed pixels of an image
    jointly, per channel. Gaussian noise of std ``noise_std`` is then added to the removed pixels only.

    The system ``(D - W_uu) v_u = W_uk v_k`` is symmetric, and irreducibly diagonally dominant whenever
    at least one pixel is kept, hence positive definite. Instead of the paper's per-image sparse direct
    solve (``scipy.sparse.linalg.spsolve`` in a Python loop) it is solved for all images and channels at
    once by **conjugate gradients with a Jacobi preconditioner**, each matrix product being one 3x3
    stencil (two separable passes) on the whole batch. CG starts from the same problem solved at half
    the resolution (recursively, "cascadic" CG, down to a side of 16 pixels, where the start is the
    mean of the kept pixels) and runs until the largest residual is below ``tol * max(1, max|x|)``
    (checked every 8 iterations) or ``max_iter`` iterations per level (default ``4 * (H + W)``). The
    solve is in float64 when ``x`` is, else float32. ``info["residual"]`` reports the residual of the
    noise-free result, recomputed in float64 with the paper's 3x3 weights.

    Args:
        x: ``(B, C, H, W)`` images.
        removed: ``(B, H, W)`` boolean, True where the pixel is removed and imputed. At least one pixel
            of each image must be kept when any is removed.
        noise_std: standard deviation of the added noise (0.01 in the paper, in ``x``'s units).
        generator: random generator for the noise (on ``x``'s device), for reproducibility.
        max_iter: the most CG iterations.
        tol: tolerance on the residual, relative to ``max(1, max|x|)``.

    Returns:
        ``(imputed, info)``: imputed ``(B, C, H, W)`` in ``x``'s dtype; ``info["iterations"]`` and
        ``info["residual"]``, the largest residual of the noise-free solution relative to
        ``max(1, max|x|)`` (see :func:`linear_imputation_residual`).

    Raises:
        ValueError: shapes do not match, or an image has every pixel removed.
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(
            f"x must be (B, C, H, W) images, got {tuple(x.shape) if isinstance(x, Tensor) else x!r}"
        )
    if not isinstance(removed, Tensor) or tuple(removed.shape) != (x.shape[0], *x.shape[2:]):
        shape = tuple(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ValueError(
            f"removed of shape {shape} must be (B, H, W) = {(x.shape[0], *x.shape[2:])} for x of shape {tuple(x.shape)}"
        )
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    removed = removed.to(x.device).bool()
    b, c, h, w = x.shape
    if bool(removed.reshape(b, -1).all(1).any()):
        raise ValueError(
            "every pixel of an image is removed: the imputation has nothing to start from"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = x.detach().reshape(b * c, 1, h, w).to(dtype)
    u = removed[:, None].to(dtype).repeat_interleave(c, 0)
    known = v * (1 - u)
    scale = max(1.0, float(x.detach().abs().max())) if x.numel() else 1.0
    limit = 4 * (h + w) if max_iter is None else max_iter
    guess = _coarse_guess(known, u, tol * scale, limit)
    sol, it = _cg(known, u, guess, tol * scale, limit)
    filled = known + sol
    residual = float(linear_imputation_residual(filled.reshape(b, c, h, w), removed).max()) / scale
    if noise_std > 0:
        noise = torch.randn(filled.shape, generator=generator, device=filled.device, dtype=dtype)
        filled = filled + u * noise * noise_std
    out = filled.reshape(b, c, h, w).to(x.dtype)
    return out, {"iterations": it, "residual": residual}


def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetSpec = None,
    *,
    percentiles: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "morf",
    noise_std: float = 0.01,
    score: str = "prob",
    seed: int | None = 0,
    batch_size: int = 128,
    max_iter: int | None = None,
    tol: float = 1e-5,
    output: OutputSelector = None,
) -> MetricResult:
    """ROAD: RemOve And Debias (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", https://arxiv.org/abs/2202.00449).

    For each percentile ``p`` the share ``p`` of pixels that the map ranks most relevant (``order=
    "morf"``) or least relevant (``"lerf"``) first is removed and filled by noisy linear imputation
    (:func:`noisy_linear_imputation`, batched in torch), and the model's score for the target is
    recorded. With MoRF a steep fall (low mean) means a faithful map; with LeRF a flat curve (high mean).

    Choices the paper leaves open (or its code fixes):
        * Pixels removed at ``p``: the first ``round(p * N)`` in the map's order (descending for MoRF,
          ascending for LeRF; ties broken stably by flat index), all channels; ``p`` in ``[0, 1)``.
        * Score: the target's softmax probability (``score="prob"``, default) per sample, or
          ``"accuracy"`` (1.0 when the top class is the target, the paper's measure averaged over a
          data set), or ``"logit"``. No retraining (the point of ROAD is that it needs none).
        * Imputation in ``x``'s units as the model receives it, noise std 0.01 there; the noise is drawn
          from a generator seeded with ``seed`` (``None``: the global RNG).

    Args:
        model: the classifier.
        x: ``(B, C, H, W)`` images.
        maps: ``(B, H, W)`` maps (upsampled if smaller).
        target: as in :func:`camlens.targets.resolve`; fixed on ``x``.
        percentiles: shares of pixels to remove, each in ``[0, 1)``.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        noise_std: std of the imputation noise.
        score: ``"prob"``, ``"accuracy"`` or ``"logit"``.
        seed: seed of the noise.
        batch_size: at most this many images per imputation and forward pass.
        max_iter: CG iterations bound (see :func:`noisy_linear_imputation`).
        tol: CG tolerance.
        output: which part of the model's output holds the scores.

    Returns:
        :class:`MetricResult` ``"road_morf"`` or ``"road_lerf"``: ``per_sample`` (B,) the mean of each
        sample's curve over the percentiles, ``summary`` their mean; ``details["curve"]`` (B, P),
        ``details["percentiles"]`` (P,), ``details["original"]`` (B,), ``details["residual"]`` the
        largest relative residual of the imputation systems, ``details["iterations"]``.

    Raises:
        ValueError: ``maps`` and ``x`` do not match (naming both shapes), a percentile outside
            ``[0, 1)``, an unknown order or score.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', not {order!r}")
    ps = [float(p) for p in percentiles]
    if not ps:
        raise ValueError("percentiles is empty")
    if any(not 0 <= p < 1 for p in ps):
        raise ValueError(f"percentiles must lie in [0, 1), got {ps}")
    x, maps = _check_inputs(model, x, maps)
    if x.ndim != 4:
        raise ValueError(f"road needs images (B, C, H, W), got x of shape {tuple(x.shape)}")
    scorer = _Scorer(model, x, target, score, output, batch_size)
    b = x.shape[0]
    n = maps[0].numel()
    rank = _order(maps, descending=order == "morf")
    counts = torch.tensor([min(n - 1, round(p * n)) for p in ps], device=x.device)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
    per_chunk = max(1, batch_size // b)
    curves, residual, iters = [], 0.0, 0
    for c in counts.split(per_chunk):
        k = len(c)
        removed = (rank[None] < c[:, None, None]).reshape(k * b, *x.shape[2:])
        xs = x[None].expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        imputed, info = noisy_linear_imputation(
            xs, removed, noise_std, generator=gen, max_iter=max_iter, tol=tol
        )
        residual, iters = max(residual, info["residual"]), max(iters, info["iterations"])
        curves.append(scorer(imputed.reshape(k, b, *x.shape[1:])))
    curve = torch.cat(curves).T.contiguous()
    per = curve.mean(1)
    details = {
        "curve": curve,
        "percentiles": torch.tensor(ps, device=x.device),
        "order": order,
        "score": score,
        "original": scorer.original,
        "classes": scorer.classes,
        "residual": residual,
        "iterations": iters,
    }
    return MetricResult(
        f"road_{order}", per, _nanmean(per), details, higher_is_better=order == "lerf"
    )
