"""Concepts a layer has learnt, found without a target: Deep Feature Factorization.

:func:`factorize` runs the model once on a batch, takes one layer's activations at every position of
every image, and factorises them into ``n`` non-negative *concepts*
(:func:`camlens.maps.deep_feature_factorization`, Collins et al. 2018,
https://arxiv.org/abs/1806.10206). Each concept has an embedding in the layer's channel space, a map
per image (where the image shows it) and, through the model's classifier, the classes it stands for.
:meth:`Concepts.overlay` draws each concept in its own colour, as pytorch-grad-cam's
``show_factorization_on_image`` does.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 4)).eval()
    >>> c = factorize(net, torch.rand(2, 3, 16, 16), n=3)
    >>> c.layer, tuple(c.maps.shape), tuple(c.embeddings.shape), tuple(c.top_classes.shape)
    ('1', (2, 3, 16, 16), (3, 8), (3, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camlens import maps
from camlens.capture import LayerCapture, default_layer, resolve_layers
from camlens.methods.base import model_error, run_model
from camlens.reshape import ReshapeFn, to_spatial

__all__ = ["Concepts", "deep_feature_factorization", "factorize"]

Classifier = nn.Module | str | Callable[[Tensor], Tensor] | None


@dataclass
class Concepts:
    """The concepts of one layer over a batch (see :func:`factorize`).

    Attributes:
        maps: ``(B, n, *input_spatial)``: where each image shows each concept, upsampled to the
            input and min-max scaled per image and concept (as pytorch-grad-cam's).
        raw: ``(B, n, *layer_spatial)``: the factorisation's coefficients ``H``, before any scaling.
        embeddings: ``(n, K)``: each concept in the layer's channel space (``W`` plus the channels'
            offsets; pytorch-grad-cam's ``concepts``, transposed).
        error: relative reconstruction error of the shifted activations,
            ``||(A - o) - W H||_F / ||A - o||_F``.
        layer: the layer's name.
        logits: ``(n, classes)``: the classifier applied to each embedding, or ``None``.
        probs: ``(n, classes)``: their softmax, or ``None``.
        top_classes: ``(n, top_k)``: each concept's most probable classes, or ``None``.
        class_names: names of the classes, for :meth:`labels` and :meth:`overlay`.
    """

    maps: Tensor
    raw: Tensor
    embeddings: Tensor
    error: float
    layer: str
    logits: Tensor | None = None
    probs: Tensor | None = None
    top_classes: Tensor | None = None
    class_names: Sequence[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def dominant(self) -> Tensor:
        """``(B, *input_spatial)``: the concept that dominates each pixel (largest scaled map)."""
        return self.maps.argmax(dim=1)

    def labels(self) -> list[str]:
        """One line per concept: its top classes and their probabilities (``"concept 0"`` without)."""
        out = []
        for j in range(len(self)):
            if self.top_classes is None or self.probs is None:
                out.append(f"concept {j}")
                continue
            parts = []
            for c in self.top_classes[j].tolist():
                name = self.class_names[c] if self.class_names is not None else str(c)
                parts.append(f"{name} {float(self.probs[j, c]):.2f}")
            out.append(f"{j}: " + ", ".join(parts))
        return out

    def overlay(
        self, images: Any, *, alpha: float = 0.7, legend: bool = True, colormap: str = "hsv"
    ) -> list[Any]:
        """Each pixel coloured by its dominant concept, as bright as that concept's map there.

        As pytorch-grad-cam's ``show_factorization_on_image`` (with ``image_weight = 1 - alpha``,
        0.3 in its ``run_dff_on_image``): concept ``j`` gets colour ``colormap(j / n)``, and
        ``out = (1 - alpha) * image + alpha * colour[dominant] * map[dominant]``. With ``legend``, a
        strip below lists the concepts' colours and :meth:`labels`.

        Args:
            images: ``B`` images (anything :func:`camlens.viz.to_pil` accepts) or a ``(B, C, H, W)``
                tensor in ``[0, 1]``.
            alpha: weight of the concept colours, in ``[0, 1]``.
            legend: draw the legend strip.
            colormap: a matplotlib colour map for the concepts' colours.

        Returns:
            One PIL image per sample. Needs Pillow and matplotlib (``pip install "camlens[viz]"``).
        """
        from camlens import viz

        if self.maps.ndim != 4:
            raise ValueError("overlay draws 2-D maps; these concepts have other spatial axes")
        a = viz._check_alpha(alpha)
        imgs = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        if len(imgs) != self.maps.shape[0]:
            raise ValueError(f"got {len(imgs)} images for {self.maps.shape[0]} maps; pass one each")
        cmap = viz._get_cmap(colormap)
        n = len(self)
        colours = np.array([cmap(j / n)[:3] for j in range(n)]) * 255.0  # (n, 3)
        Image = viz._pil_image()
        out = []
        for img, m in zip(imgs, self.maps, strict=True):
            base = np.asarray(viz.to_pil(img), dtype=np.float64)
            h, w = base.shape[:2]
            scaled = maps.upsample(m.detach().float().cpu(), (h, w)).clamp(0, 1).numpy()
            top = scaled.argmax(axis=0)
            value = np.take_along_axis(scaled, top[None], axis=0)[0]
            colour = colours[top] * value[..., None]
            out.append(Image.fromarray(viz._to_uint8((1 - a) * base + a * colour)))
        if legend:
            out = [self._with_legend(o, colours) for o in out]
        return out

    def _with_legend(self, image: Any, colours: np.ndarray) -> Any:
        from camlens import viz

        Image = viz._pil_image()
        ImageDraw, ImageFont = viz._pil_draw()
        font = ImageFont.load_default()
        lines = self.labels()
        row = 14
        strip = Image.new("RGB", (image.width, row * len(lines) + 4), "white")
        draw = ImageDraw.Draw(strip)
        for j, text in enumerate(lines):
            y = 2 + j * row
            draw.rectangle([2, y + 1, 12, y + row - 3], fill=tuple(int(c) for c in colours[j]))
            draw.text(
                (16, y), viz._fit_text(draw, text, font, image.width - 18), fill="black", font=font
            )
        canvas = Image.new("RGB", (image.width, image.height + strip.height), "white")
        canvas.paste(image, (0, 0))
        canvas.paste(strip, (0, image.height))
        return canvas


def _classifier(
    model: nn.Module, spec: Classifier | str, k: int
) -> Callable[[Tensor], Tensor] | None:
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "auto":
        linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
        return linears[-1] if linears and linears[-1].in_features == k else None
    if isinstance(spec, str):
        return resolve_layers(model, spec)[0][1]
    if callable(spec):
        return spec
    raise TypeError(
        f"classifier must be 'auto', a module name, a module or a callable, not {spec!r}"
    )


def factorize(
    model: nn.Module,
    x: Tensor,
    layer: str | nn.Module | None = None,
    n: int = 5,
    *,
    classifier: Classifier | str = "auto",
    top_k: int = 2,
    class_names: Sequence[str] | None = None,
    reshape: ReshapeFn | None = None,
    iters: int = 200,
    tol: float = 1e-4,
) -> Concepts:
    """Deep Feature Factorization of ``layer``'s activations over the batch ``x``.

    One forward (inference mode, the model untouched), then
    :func:`camlens.maps.deep_feature_factorization` on the layer's ``(B, K, *s)`` activations. The
    defaults are pytorch-grad-cam's ``run_dff_on_image`` (5 concepts, top 2 classes; its
    ``DeepFeatureFactorization`` class defaults to 16 concepts), except the factorisation itself:
    scikit-learn's NMF from a random start there, a deterministic NNDSVDa start and the same
    coordinate-descent updates here, in torch, on the input's device.

    Args:
        model: any ``nn.Module``.
        x: ``(B, C, *spatial)`` input batch.
        layer: the layer (name or module); ``None`` chooses one as the CAM methods do
            (:func:`camlens.capture.find_default_layer`).
        n: number of concepts.
        classifier: what turns an embedding ``(n, K)`` into class scores: ``"auto"`` (the model's
            last ``nn.Linear``, when it takes ``K`` features: right for a GAP + linear head), a
            module name, a module or callable, or ``None`` (no classes).
        top_k: classes listed per concept.
        class_names: names of the classes (for the labels).
        reshape: as for the CAM methods, for layers whose output is not ``(B, K, *s)``.
        iters, tol: the factorisation's stopping rule (:func:`camlens.maps.nmf`).

    Returns:
        :class:`Concepts`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(x, Tensor) or x.ndim not in (3, 4, 5):
        raise ValueError("x must be a (B, C, L), (B, C, H, W) or (B, C, D, H, W) tensor")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has NaN or infinite values; a factorisation of them means nothing")
    if layer is None:
        try:
            name = default_layer(model, x)
        except ValueError:
            raise
        except Exception as e:  # the model fails on x: one ModelError, as for the methods
            raise model_error(x, e) from e
        module = model.get_submodule(name)
    else:
        name, module = resolve_layers(model, layer)[0]
    with LayerCapture([(name, module)], grad=False) as cap, torch.inference_mode():
        run_model(model, x)
        cap.check_called()
    acts = to_spatial(cap.activations[name], x, name=name, model=model, reshape=reshape).float()
    b, k = acts.shape[:2]
    z = acts[0, 0].numel()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= min(k, b * z):
        raise ValueError(
            f"n must be an int from 1 to {min(k, b * z)} (channels {k}, positions {b * z}), got {n!r}"
        )
    embeddings, raw, err = maps.deep_feature_factorization(acts, n, iters=iters, tol=tol)
    scaled = maps.normalize(maps.upsample(raw.flatten(0, 1), x.shape[2:]))
    result = Concepts(
        maps=scaled.reshape(b, n, *x.shape[2:]),
        raw=raw,
        embeddings=embeddings.T.contiguous(),
        error=err,
        layer=name,
        class_names=class_names,
    )
    head = _classifier(model, classifier, k)
    if head is not None:
        try:
            with torch.inference_mode():
                logits = head(result.embeddings.to(x.dtype))
        except Exception as e:
            raise model_error(result.embeddings, e) from e
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
            raise ValueError(
                f"the classifier must map (n, K) embeddings to (n, classes) scores; got {logits!r:.80}"
            )
        result.logits = logits.float()
        result.probs = result.logits.softmax(dim=1)
        result.top_classes = result.probs.topk(min(top_k, logits.shape[1]), dim=1).indices
    return result


#: The name of the method in the literature and in pytorch-grad-cam.
deep_feature_factorization = factorize
