"""``CAMResult``: what every method returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["CAMResult"]


@dataclass
class CAMResult:
    """Maps for one batch and one target per sample.

    Attributes:
        maps: ``(B, *input_spatial)`` float32 in ``[0, 1]``, upsampled to the input's resolution (for
            several layers: the fused map).
        raw: ``(B, *layer_spatial)`` at the layer's resolution, after the method's ReLU, before upsampling
            or normalisation (for several layers: the last one's).
        scores: ``(B,)`` the target scores (pre-softmax logits for class targets).
        targets: ``(B,)`` class indices when the targets are classes, else ``None``.
        layer: the name of the layer explained (names joined by ``+`` for several).
        method: the method's registry name, e.g. ``"gradcam"``.
        per_layer: layer name -> ``(B, *input_spatial)`` normalised map of that layer.
        raw_per_layer: layer name -> ``(B, *layer_spatial)`` raw map of that layer.
        input_maps: for methods that explain the input itself (guided backpropagation, Guided
            Grad-CAM): the signed ``(B, C, *input_spatial)`` attribution with the input's channels;
            ``maps`` is then its reduction to one value per position
            (:func:`camlens.maps.input_saliency`). ``None`` for layer methods.
        details: how the result was computed, where a method has a choice to report (for example
            Ablation-CAM's ``{"split": "fx"}`` or ``{"split": "hook"}``).
        logits: the model's selected output for the batch from the same forward (the
            ``(B, num_classes)`` logits of a classifier), detached; ``None`` when the output is not a
            tensor (a detection model's list of dicts). Predictions need no second forward.
    """

    maps: Tensor
    raw: Tensor
    scores: Tensor
    targets: Tensor | None
    layer: str
    method: str
    per_layer: dict[str, Tensor] = field(default_factory=dict)
    raw_per_layer: dict[str, Tensor] = field(default_factory=dict)
    input_maps: Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    logits: Tensor | None = None

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def numpy(self) -> np.ndarray:
        """The maps as a ``(B, *input_spatial)`` float32 numpy array (copied to the CPU)."""
        return self.maps.detach().float().cpu().numpy()

    def overlay(self, images: Any, colormap: str = "jet", alpha: float = 0.5) -> list[Any]:
        """Heatmaps blended on ``images``, one PIL image per sample.

        Args:
            images: a sequence of ``B`` images (PIL, arrays or ``(C, H, W)`` tensors) or a ``(B, C, H, W)``
                tensor such as the input batch (values in ``[0, 1]``).
            colormap: a matplotlib colour map name.
            alpha: weight of the heatmap, ``out = (1 - alpha) * image + alpha * heat``.
        """
        from camlens import viz

        imgs: Sequence[Any] = (
            list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
        )
        if len(imgs) != len(self):
            raise ValueError(f"got {len(imgs)} images for {len(self)} maps; pass one image per map")
        ndim = self.maps.ndim - 1
        if ndim == 2:
            return [
                viz.overlay(im, m, colormap=colormap, alpha=alpha)
                for im, m in zip(imgs, self.maps, strict=True)
            ]
        if ndim == 1:
            return [
                viz.overlay_1d(im, m, colormap=colormap)
                for im, m in zip(imgs, self.maps, strict=True)
            ]
        return [
            viz.overlay_3d(im, m, colormap=colormap, alpha=alpha)
            for im, m in zip(imgs, self.maps, strict=True)
        ]

    def _repr_png_(self) -> bytes | None:
        """Jupyter shows the maps of a 2-D result as a row of heatmaps."""
        if self.maps.ndim != 3:
            return None
        try:
            from camlens import viz

            cells = [viz.heatmap(m) for m in self.maps[:16]]
            titles = [
                f"#{i}" + (f" class {int(self.targets[i])}" if self.targets is not None else "")
                for i in range(len(cells))
            ]
            return viz.to_png_bytes(viz.grid(cells, titles=titles))
        except ImportError:
            return None

    def __repr__(self) -> str:
        t = None if self.targets is None else self.targets.tolist()
        return (
            f"CAMResult(method={self.method!r}, layer={self.layer!r}, maps={tuple(self.maps.shape)}, "
            f"raw={tuple(self.raw.shape)}, targets={t})"
        )
