"""Test set-up only: make the CUDA-only torchvision wheel importable beside a CPU torch.

The torchvision wheel available on the CI machine is built for CUDA, so its compiled extension does not
load and ``import torchvision`` fails with ``operator torchvision::nms does not exist``. Declaring the
operator schemas first lets the pure-Python model definitions load; a small CPU ``nms`` kernel and
``_has_ops() -> True`` let detection models run. A user's machine has a matching torchvision and never
needs this; nothing in ``src/camlens`` imports it.

``roi_align`` (Faster R-CNN's box head) then takes torchvision's pure-Python fallback, which is wrapped
in ``torch.compile``: its first call compiles with inductor for minutes, and run eagerly it indexes far
too much memory. The shim replaces that fallback with :func:`_roi_align_cpu`, the arithmetic of
torchvision's C++ kernel (bilinear samples on a regular grid in each bin, averaged; samples more than
one pixel outside the map count as 0) done with ``grid_sample``, and differentiable. For boxes inside
the map it equals the Python fallback, values and gradients (tests/test_tasks.py checks this).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = scores.argsort(descending=True)
    iou = _box_iou(dets[order], dets[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _roi_align_cpu(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for ``(N, C, H, W)`` features and ``(K, 5)`` rois ``(b, x1, y1, x2, y2)``."""
    n_rois = rois.shape[0]
    c, h, w = input.shape[1:]
    if n_rois == 0:
        return input.new_zeros((0, c, pooled_height, pooled_width))
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
    if sampling_ratio > 0:
        grid_h = torch.full((n_rois,), sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h.detach() / pooled_height).long().clamp(min=1).cpu()
        grid_w = torch.ceil(roi_w.detach() / pooled_width).long().clamp(min=1).cpu()
    batch = rois[:, 0].detach().long().cpu()
    groups: dict[tuple[int, int, int], list[int]] = {}
    for k in range(n_rois):
        groups.setdefault((int(batch[k]), int(grid_h[k]), int(grid_w[k])), []).append(k)
    results = []
    for (b, sh, sw), ks in groups.items():
        idx = torch.tensor(ks, dtype=torch.long, device=input.device)
        ph = torch.arange(pooled_height, device=input.device, dtype=input.dtype)
        pw = torch.arange(pooled_width, device=input.device, dtype=input.dtype)
        iy = (torch.arange(sh, device=input.device, dtype=input.dtype) + 0.5) / sh
        ix = (torch.arange(sw, device=input.device, dtype=input.dtype) + 0.5) / sw
        ys = y1[idx, None, None] + (ph[None, :, None] + iy[None, None, :]) * bin_h[idx, None, None]
        xs = x1[idx, None, None] + (pw[None, :, None] + ix[None, None, :]) * bin_w[idx, None, None]
        k = len(ks)
        yy = ys[:, :, :, None, None].expand(k, pooled_height, sh, pooled_width, sw)
        xx = xs[:, None, None, :, :].expand(k, pooled_height, sh, pooled_width, sw)
        valid = (yy >= -1.0) & (yy <= h) & (xx >= -1.0) & (xx <= w)
        gy = yy.clamp(0, h - 1) / max(h - 1, 1) * 2 - 1
        gx = xx.clamp(0, w - 1) / max(w - 1, 1) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).reshape(
            1, k * pooled_height * sh, pooled_width * sw, 2
        )
        vals = F.grid_sample(input[b : b + 1], grid, mode="bilinear", align_corners=True)
        vals = vals.reshape(c, k, pooled_height, sh, pooled_width, sw) * valid.to(vals.dtype)
        results.append((idx, vals.sum(dim=(3, 5)).permute(1, 0, 2, 3) / (sh * sw)))
    order = torch.cat([i for i, _ in results])
    return torch.cat([v for _, v in results])[order.argsort()]


_LIB: torch.library.Library | None = None


def install() -> None:
    """Declare ``torchvision::nms``/``qnms`` with a CPU kernel, import torchvision, replace ``roi_align``."""
    global _LIB
    try:
        torch.ops.torchvision.nms  # noqa: B018  (already provided by a working torchvision)
    except (AttributeError, RuntimeError):
        if _LIB is None:
            _LIB = torch.library.Library("torchvision", "DEF")
            _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIB.impl("nms", _nms_cpu, "CPU")
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True
    if _LIB is not None:  # torchvision's own kernels are missing: use the fast CPU roi_align
        import torchvision.ops  # loads the roi_align module

        sys.modules["torchvision.ops.roi_align"]._roi_align = _roi_align_cpu  # type: ignore[attr-defined]


install()
