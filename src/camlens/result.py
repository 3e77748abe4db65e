"""``CAMResult``: what every method returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["CAMResult", "CAMResults"]


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

    def overlay(
        self,
        images: Any,
        colormap: str = "jet",
        alpha: float = 0.5,
        *,
        legend: bool = False,
        classes: Sequence[str] | None = None,
    ) -> list[Any]:
        """Heatmaps blended on ``images``, one PIL image per sample.

        Args:
            images: an :class:`~camlens.images.ImageBatch` from :func:`camlens.load_images`: each map
                is drawn on the full-resolution original, where the model looked (the part it did
                not see is greyed; see :func:`camlens.viz.overlay_on_original`). Or a sequence of
                ``B`` images (PIL, arrays or ``(C, H, W)`` tensors in ``[0, 1]``) or a
                ``(B, C, H, W)`` tensor in ``[0, 1]`` (for example ``batch.views``): the map is
                resized to each image.
            colormap: a matplotlib colour map name.
            alpha: weight of the heatmap, ``out = (1 - alpha) * image + alpha * heat``.
            legend: add a strip with the method, layer, class, score and a colour bar (2-D maps).
            classes: class names for the legend.

        Raises:
            ValueError: a normalised input batch (values outside ``[0, 1]``; pass the
                ``ImageBatch`` or ``batch.views`` instead), or images that do not match the maps.
        """
        from camlens import viz
        from camlens.images import ImageBatch

        ndim = self.maps.ndim - 1
        if isinstance(images, ImageBatch):
            if len(images) != len(self):
                raise ValueError(
                    f"got {len(images)} images for {len(self)} maps; pass one image per map"
                )
            out = []
            for i, (orig, geo) in enumerate(zip(images.originals, images.geometry, strict=True)):
                if geo is None:
                    img = viz.overlay(images.views[i], self.maps[i], colormap, alpha)
                else:
                    img = viz.overlay_on_original(orig, self.maps[i], geo, colormap, alpha)
                out.append(self._with_legend(img, i, legend, classes, colormap))
            return out
        if (
            ndim == 2
            and isinstance(images, Tensor)
            and images.is_floating_point()
            and images.numel()
        ):
            lo, hi = float(images.min()), float(images.max())
            if lo < -0.1 or hi > 1.1:
                raise ValueError(
                    f"these images range over [{lo:.2f}, {hi:.2f}]: a normalised model input, not "
                    "pictures. Pass the ImageBatch from camlens.load_images(...) (maps drawn on the "
                    "original photos) or its .views (what the model saw, in [0, 1])"
                )
        imgs: Sequence[Any] = (
            list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
        )
        if len(imgs) != len(self):
            raise ValueError(f"got {len(imgs)} images for {len(self)} maps; pass one image per map")
        if ndim == 2:
            return [
                self._with_legend(
                    viz.overlay(im, m, colormap=colormap, alpha=alpha), i, legend, classes, colormap
                )
                for i, (im, m) in enumerate(zip(imgs, self.maps, strict=True))
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

    def _with_legend(
        self, img: Any, i: int, legend: bool, classes: Sequence[str] | None, colormap: str
    ) -> Any:
        if not legend:
            return img
        from camlens import viz
        from camlens.gallery import _legend

        return viz.with_legend(img, _legend(self, i, classes, colormap))

    def show(self, images: Any = None, **options: Any) -> Any:
        """A labelled grid of these maps (on ``images`` if given); see :func:`camlens.show`."""
        from camlens.gallery import show

        return show(self, images, **options)

    def _repr_html_(self) -> str | None:
        """Jupyter shows a 2-D result as a labelled grid of heat maps with a colour bar."""
        if self.maps.ndim != 3:
            return None
        try:
            from camlens.gallery import show

            return show(self, limit=16)._repr_html_()
        except ImportError:
            return None

    def _repr_png_(self) -> bytes | None:
        """The same grid as one PNG, for front ends without HTML."""
        if self.maps.ndim != 3:
            return None
        try:
            from camlens.gallery import show

            return show(self, limit=16)._repr_png_()
        except ImportError:
            return None

    def __repr__(self) -> str:
        t = None if self.targets is None else self.targets.tolist()
        return (
            f"CAMResult(method={self.method!r}, layer={self.layer!r}, maps={tuple(self.maps.shape)}, "
            f"raw={tuple(self.raw.shape)}, targets={t})"
        )


class CAMResults(list[CAMResult]):
    """A list of results of the same batch (``for_targets``), which a notebook shows as one grid.

    It is a plain ``list`` in every other way: index it, iterate it, compare it to a list.
    """

    def show(self, images: Any = None, **options: Any) -> Any:
        """A labelled grid of these results side by side (on ``images`` if given); see
        :func:`camlens.show`."""
        from camlens.gallery import show

        return show(list(self), images, **options)

    def _repr_html_(self) -> str | None:
        if not self or any(r.maps.ndim != 3 for r in self):
            return None
        try:
            return self.show(limit=16)._repr_html_()
        except (ImportError, ValueError):
            return None

    def _repr_png_(self) -> bytes | None:
        if not self or any(r.maps.ndim != 3 for r in self):
            return None
        try:
            return self.show(limit=16)._repr_png_()
        except (ImportError, ValueError):
            return None
