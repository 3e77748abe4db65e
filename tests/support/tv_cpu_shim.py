"""Test set-up only: make the CUDA-only torchvision wheel importable beside a CPU torch.

The torchvision wheel available on the CI machine is built for CUDA, so its compiled extension does not
load and ``import torchvision`` fails with ``operator torchvision::nms does not exist``. Declaring the
operator schemas first lets the pure-Python model definitions load; a small CPU ``nms`` kernel and
``_has_ops() -> True`` let detection models run. A user's machine has a matching torchvision and never
needs this; nothing in ``src/camlens`` imports it.
"""

from __future__ import annotations

import torch


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


_LIB: torch.library.Library | None = None


def install() -> None:
    """Declare ``torchvision::nms``/``qnms`` with a CPU kernel, then import torchvision."""
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


install()
