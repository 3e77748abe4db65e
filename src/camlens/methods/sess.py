"""SESS: any method made robust to scale, to repeated objects and to distractors."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import paused
from camlens.methods import _options as opt
from camlens.methods.base import BaseCAM, quiet, run_model
from camlens.result import CAMResult
from camlens.targets import (
    ClassTarget,
    Resolved,
    TargetSpec,
    accepts_any_output,
    resolve,
    select_output,
    top_k_targets,
)

__all__ = ["SESS"]


class SESS(BaseCAM):
    r"""SESS, Saliency Enhancing with Scaling and Sliding (Tursun et al. 2022, https://arxiv.org/abs/2207.01769).

    Wraps any camlens method: ``camlens.SESS(camlens.GradCAM(model, layer="layer4"))``. The image is
    resized so that its shorter side takes each of several scales (:func:`camlens.maps.sess_scales`),
    a window of the image's shorter side slides over every scale (:func:`camlens.maps.sliding_windows`),
    and the wrapped method explains every patch for the image's target. Each patch's map is weighted
    by the patch's score (the target's softmax probability, divided by the best patch's), pasted back
    where the patch came from, and the maps are fused by a mean over the patches that cover each pixel
    (:func:`camlens.maps.sess_fuse`), then smoothed (:func:`camlens.maps.gaussian_blur`):

    .. math:: M = \mathrm{blur}\Big(\mathrm{fuse}_p\big(\tfrac{s_p}{\max_q s_q}\,
              \mathrm{paste}_p(L_p)\big)\Big)

    The defaults are pytorch-grad-cam's ``SESS`` (the paper's): 12 scales from the window up in steps
    of 2/7 of it, non-overlapping windows, no pre-filtering, ``theta = 0``, mean fusion, an 11-wide
    Gaussian with ``sigma = 5``, softmax scores, 32 patches per forward. A patch's map is the wrapped
    method's ``maps`` (upsampled to the window, then scaled to ``[0, 1]``: what pytorch-grad-cam's
    scale-resize-rescale amounts to); images are resized by (bi)linear interpolation (antialiased in
    2-D, like torchvision's ``resize``).

    **Why a wrapper, not a registered method.** SESS is a recipe over *another* method: its identity
    is the pair (method, options), and a wrapper composes with every method, also ones registered
    later, without a second registry entry per method. Its ``raw`` map lives at the input's
    resolution (patch maps pasted back on the image), not at a layer's, and it needs a model that
    accepts window-sized inputs (a ViT with a fixed input size cannot run it), so the registry's
    every-method contracts would not hold as stated. It keeps the protocol all the same: the call,
    ``for_targets``, ``with_model`` and ``options`` behave as a method's and return
    :class:`~camlens.result.CAMResult` (``maps`` ``(B, *spatial)``, ``raw`` the fused map before
    scaling, ``scores`` the whole image's target scores), and its tests run the contract checks on it.

    Args:
        cam: the method to apply to every patch (any camlens method object).
        scales: shorter sides to resize to (each at least ``window``); ``None``: ``num_scales``
            scales from :func:`camlens.maps.sess_scales`.
        num_scales: how many default scales.
        scale_step: their step, as a fraction of the window.
        window: the (square, cubic) window's side; ``None``: the input's shorter side.
        step: the windows' stride; ``None``: the window (no overlap but at the far borders).
        pre_filter: share of the lowest-scoring patches dropped before their maps are computed.
        theta: pixels of a patch map at or below it do not count in the mean.
        pool: ``"mean"`` (the paper's spatial weighted average) or ``"max"``.
        smooth: apply the Gaussian blur.
        softmax: score class targets by their softmax probability (the paper); ``False``: the raw
            score, clipped at 0. A callable target scores the output as it is (clipped at 0).
        batch_size: patches per forward.

    ``counterfactual=True`` is refused (the patch weights are the target's own probabilities);
    ``eigen_smooth`` applies to the wrapped method's maps; ``aug_smooth`` to the fused map.
    """

    name = "sess"

    def __init__(
        self,
        cam: BaseCAM,
        *,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step: float = 2.0 / 7.0,
        window: int | None = None,
        step: int | None = None,
        pre_filter: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        softmax: bool = True,
        batch_size: int = 32,
    ) -> None:
        if not isinstance(cam, BaseCAM) or isinstance(cam, SESS):
            raise TypeError(
                f"SESS wraps a camlens method object such as camlens.GradCAM(model), not {cam!r}"
            )
        super().__init__(cam.model, output=cam.output)
        self.cam = cam
        num_scales = opt.positive_int("num_scales", num_scales)
        batch_size = opt.positive_int("batch_size", batch_size, "patches per forward")
        window = opt.positive_int("window", window, "None: the input's shorter side", optional=True)
        step = opt.positive_int("step", step, "None: the window", optional=True)
        if scales is not None and (
            not scales or any(isinstance(s, bool) or not isinstance(s, int) for s in scales)
        ):
            raise ValueError(f"scales must be None or a non-empty list of ints, got {scales!r}")
        if not 0.0 <= pre_filter < 1.0:
            raise ValueError(f"pre_filter must be in [0, 1), got {pre_filter!r}")
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', not {pool!r}")
        self.scales = None if scales is None else [int(s) for s in scales]
        self.num_scales = num_scales
        self.scale_step = float(scale_step)
        self.window = window
        self.step = step
        self.pre_filter = float(pre_filter)
        self.theta = float(theta)
        self.pool = pool
        self.smooth = bool(smooth)
        self.softmax = bool(softmax)
        self.batch_size = batch_size

    # ---- the protocol --------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str] | None:
        return self.cam.layer_names

    def with_model(self, model: nn.Module) -> SESS:
        """The same wrapped method (on ``model``) and SESS options."""
        return SESS(self.cam.with_model(model), **self._init_options)

    def _check_call(self, counterfactual: bool, eigen_smooth: bool) -> None:
        if counterfactual:
            raise ValueError(
                "SESS weighs patches by the target's own probability, so counterfactual=True has no "
                "meaning; use counterfactual=True on the wrapped method alone"
            )
        self.cam._check_call(False, eigen_smooth)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self._init_options.items())
        return f"SESS({self.cam!r}{opts})"

    # ---- the method ----------------------------------------------------------------------------
    def _layout(self, spatial: Sequence[int]) -> tuple[int, int, list[list[int]]]:
        """The window, the stride and the resized spatial size at every scale."""
        short = min(spatial)
        window = self.window if self.window is not None else short
        step = self.step if self.step is not None else window
        scales = (
            self.scales
            if self.scales is not None
            else maps.sess_scales(window, self.num_scales, self.scale_step)
        )
        sizes = []
        for s in scales:
            if s < window or window > short:
                raise ValueError(
                    f"the window ({window}) must fit the input ({list(spatial)}) and every scale must "
                    f"be at least the window; got scale {s}"
                )
            # the shorter side becomes s, the others keep the aspect (torchvision's resize)
            sizes.append([s if d == short else int(s * d / short) for d in spatial])
        return window, step, sizes

    def _patches(self, x: Tensor) -> tuple[Tensor, list[tuple[list[int], list[int]]]]:
        """Every patch of every scale of one input ``(C, *s)``: ``(P, C, *window)``, and for each
        patch the size of its scale and its corner there."""
        window, step, sizes = self._layout(list(x.shape[1:]))
        patches, where = [], []
        for size in sizes:
            scaled = maps.resize(x[None], size, antialias=True)[0]
            starts = [maps.sliding_windows(n, step, window) for n in size]
            # the last axis varies fastest (pytorch-grad-cam: rows outer, columns inner)
            for corner in itertools.product(*starts):
                index = (slice(None), *(slice(c, c + window) for c in corner))
                patches.append(scaled[index])
                where.append((size, list(corner)))
        return torch.stack(patches), where

    def _run(
        self,
        x: Tensor,
        targets: str | list[TargetSpec],
        *,
        counterfactual: bool,
        eigen_smooth: bool = False,
    ) -> list[CAMResult]:
        self._warn_training()
        with paused(), torch.inference_mode():
            full = run_model(self.model, x)
        specs_any = accepts_any_output(targets) if not isinstance(targets, str) else False
        logits = select_output(full, self.output, passthrough=specs_any)
        specs: list[Any] = top_k_targets(targets, logits) if isinstance(targets, str) else targets
        resolved = [resolve(s, logits, batch=x.shape[0]) for s in specs]
        b = x.shape[0]
        per_sample = [self._patches(x[i]) for i in range(b)]
        where = per_sample[0][1]
        n_patch = len(where)
        patches = torch.cat([p for p, _ in per_sample])  # (B * P, C, *window)
        rows = torch.arange(b, device=x.device).repeat_interleave(n_patch)
        scores = torch.zeros(len(specs), b * n_patch, device=x.device)
        keep = torch.ones(len(specs), b, n_patch, dtype=torch.bool, device=x.device)
        drop = int(n_patch * self.pre_filter)
        if drop:
            # pre-filter: score every patch first (one forward per batch of patches), then drop the
            # lowest-scoring ones; without it, the wrapped method's own forward gives the scores
            for start in range(0, len(patches), self.batch_size):
                chunk = patches[start : start + self.batch_size]
                with paused(), torch.inference_mode():
                    out = select_output(run_model(self.model, chunk), self.output, passthrough=True)
                r = rows[start : start + self.batch_size]
                for j, (spec, res) in enumerate(zip(specs, resolved, strict=True)):
                    scores[j, start : start + len(chunk)] = self._patch_scores(out, spec, res, r)
            order = torch.sort(scores.reshape(keep.shape), dim=2, stable=True).indices[..., :drop]
            keep.scatter_(2, order, False)
        # the wrapped method on every kept patch (one call per batch, all targets together)
        needed = keep.any(dim=0).reshape(-1).nonzero().flatten()
        patch_maps: list[dict[int, Tensor]] = [{} for _ in specs]
        layers = ""
        for start in range(0, len(needed), self.batch_size):
            idx = needed[start : start + self.batch_size]
            r = rows[idx]
            inner = [
                self._patch_target(spec, res, r) for spec, res in zip(specs, resolved, strict=True)
            ]
            with quiet():
                results = self.cam._run(
                    patches[idx], inner, counterfactual=False, eigen_smooth=eigen_smooth
                )
            for j, (part, spec, res) in enumerate(zip(results, specs, resolved, strict=True)):
                layers = part.layer
                if not drop:
                    scores[j, idx] = self._part_scores(part, patches[idx], spec, res, r)
                m = part.maps  # scaled to [0, 1] at the window's resolution
                for t, i in enumerate(idx.tolist()):
                    patch_maps[j][i] = m[t]
        # weights: each patch's score / the best patch's score
        scores = scores.clamp(min=0).reshape(keep.shape)
        best = scores.amax(dim=2, keepdim=True)
        weights = torch.where(best > 0, scores / best.clamp(min=1e-30), torch.ones_like(scores))
        out = []
        for j, res in enumerate(resolved):
            fused = torch.stack(
                [
                    self._fuse(x, patch_maps[j], where, weights[j, i], keep[j, i], i * n_patch)
                    for i in range(b)
                ]
            )
            if self.smooth:
                fused = maps.gaussian_blur(fused)
            out.append(
                CAMResult(
                    maps=maps.normalize(fused).float(),
                    raw=fused,
                    scores=res.scores.detach(),
                    targets=res.classes,
                    layer=layers,
                    method=f"sess({self.cam._label(False, eigen_smooth)})",
                    details={"patches": n_patch},
                    logits=logits.detach() if isinstance(logits, Tensor) else None,
                )
            )
        return out

    def _patch_scores(self, out: Any, spec: Any, res: Resolved, rows: Tensor) -> Tensor:
        """The target's score on each patch (softmax probability for class targets), from the
        model's output on the patches, selected (``select_output(..., passthrough=True)``)."""
        if res.classes is not None and not accepts_any_output([spec]):
            s = (out if isinstance(out, Tensor) else select_output(out)).float()
            s = s.softmax(dim=1) if self.softmax else s
            return s.gather(1, res.classes.to(s.device)[rows.to(s.device)][:, None]).squeeze(1)
        return resolve(spec, out).scores.float()

    def _part_scores(
        self, part: CAMResult, patches: Tensor, spec: Any, res: Resolved, rows: Tensor
    ) -> Tensor:
        """:meth:`_patch_scores` from the wrapped method's result on the patches: its logits and
        scores come from its own forward, so no second one is needed (unless it kept no logits)."""
        if res.classes is not None and not accepts_any_output([spec]):
            if part.logits is None:
                with paused(), torch.inference_mode():
                    out = select_output(
                        run_model(self.model, patches), self.output, passthrough=True
                    )
                return self._patch_scores(out, spec, res, rows)
            return self._patch_scores(part.logits, spec, res, rows)
        return part.scores.float()

    @staticmethod
    def _patch_target(spec: Any, res: Resolved, rows: Tensor) -> Any:
        if res.classes is not None and not accepts_any_output([spec]):
            return ClassTarget(res.classes[rows.to(res.classes.device)])
        return spec

    def _fuse(
        self,
        x: Tensor,
        patch_maps: dict[int, Tensor],
        where: list[tuple[list[int], list[int]]],
        weights: Tensor,
        keep: Tensor,
        offset: int,
    ) -> Tensor:
        """One image's patch maps, weighted, pasted back on their scale, resized to ``x``, fused."""
        size = list(x.shape[2:])
        pasted = []
        kept = keep.tolist()  # one transfer, not one per patch
        for p, (scaled, corner) in enumerate(where):
            if not kept[p]:
                continue
            m = patch_maps[offset + p]
            canvas = torch.zeros(scaled, dtype=m.dtype, device=m.device)
            index = tuple(slice(c, c + w) for c, w in zip(corner, m.shape, strict=True))
            canvas[index] = m * weights[p]
            pasted.append(maps.resize(canvas[None, None], size)[0, 0])
        if not pasted:
            return torch.zeros(size, device=x.device)
        return maps.sess_fuse(torch.stack(pasted), self.theta, self.pool)
