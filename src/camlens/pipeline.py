"""From photos to trustworthy pictures in one call: load, explain, overlay on the originals.

:func:`explain` is the common case: a model (an ``nn.Module``, a spec such as
``"torchvision:resnet50"``, or a :class:`~camlens.models.LoadedModel`), some photos, one or more
methods and a target. It returns an :class:`Explanation`, whose :meth:`~Explanation.overlays` are
drawn on the full-resolution photos with a legend, and which shows itself in a notebook as a
labelled grid (several methods side by side).

The steps are public too, for front ends that run them batch by batch (the command line, a server):
:func:`parse_target`, :func:`build_method`, :func:`run_method`, :func:`model_logits`,
:func:`explain_batch`, :func:`shared_range` and :func:`file_name`.

Example:
    >>> import torch, torch.nn as nn, numpy as np, camlens
    >>> from camlens.models import Preprocess
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 3)).eval()
    >>> photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    >>> ex = camlens.explain(net, [photo], method=["gradcam", "hirescam"], target=1,
    ...                      preprocess=Preprocess((16, 16), resize=16))
    >>> ex.methods, [im.size for im in ex.overlays("hirescam", legend=False)]
    (['gradcam', 'hirescam'], [(40, 30)])
"""

from __future__ import annotations

import contextlib
import difflib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from camlens.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor, nn

    from camlens.gallery import Gallery
    from camlens.images import ImageBatch
    from camlens.models import LoadedModel
    from camlens.result import CAMResult
    from camlens.viz import Legend

__all__ = [
    "Explanation",
    "TargetChoice",
    "build_method",
    "explain",
    "explain_batch",
    "file_name",
    "model_logits",
    "parse_target",
    "run_method",
    "shared_range",
]


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetChoice:
    """What to explain: the top class (both ``None``), one class ``index``, or the ``top_k`` classes."""

    index: int | None = None
    top_k: int | None = None

    @property
    def spec(self) -> int | str | None:
        """The target as a method call takes it: ``None``, an int, or ``"top-k"``."""
        return f"top-{self.top_k}" if self.top_k is not None else self.index

    @property
    def ranks(self) -> int:
        """How many maps per image and method."""
        return self.top_k or 1

    def describe(self) -> str:
        """``"the top class"``, ``"class 281"`` or ``"the top 3 classes"``."""
        if self.top_k is not None:
            return f"the top {self.top_k} classes"
        return "the top class" if self.index is None else f"class {self.index}"


def parse_target(
    target: int | str | None, classes: Sequence[str] | None, *, what: str = "target"
) -> TargetChoice:
    """Read a target: ``None`` (top class), a class index, a class name, or ``"top-K"``.

    Args:
        target: the target.
        classes: the model's class names, if known (for names and range checks).
        what: how the target is called in messages (``"--target"`` on the command line).

    Raises:
        ValueError: an index out of range, an unknown name (with the closest names), or a bad K.

    Example:
        >>> parse_target("top-3", ["a", "b", "c"]), parse_target("B", ["a", "b", "c"])
        (TargetChoice(index=None, top_k=3), TargetChoice(index=1, top_k=None))
    """
    if target is None:
        return TargetChoice()
    n = len(classes) if classes is not None else None
    if isinstance(target, bool) or not isinstance(target, int | str):
        raise TypeError(
            f"{what} must be None, a class index, a class name or 'top-K', not {type(target).__name__}"
        )
    text = str(target).strip()
    m = re.fullmatch(r"top[- ]?(\d+)", text.lower())
    if m:
        k = int(m.group(1))
        if k < 1:
            raise ValueError(f"{what} {target!r}: K must be at least 1")
        if n is not None and k > n:
            raise ValueError(
                f"{what} {target!r}: the model has only {n} classes (use top-1 to top-{n})"
            )
        return TargetChoice(top_k=k)
    if re.fullmatch(r"top\b.*", text.lower()):
        raise ValueError(
            f"{what} {target!r} is not understood; use top-K with K a number, e.g. top-3"
        )
    try:
        idx = int(text)
    except ValueError:
        low = text.lower()
        for i, c in enumerate(classes or []):
            if str(c).lower() == low:
                return TargetChoice(index=i)
        hint = ""
        if classes is not None:
            close = difflib.get_close_matches(text, [str(c) for c in classes], n=3, cutoff=0.5)
            hint = f"; closest class names: {', '.join(close)}" if close else ""
        raise ValueError(
            f"{what} {target!r} is not a class index, a class name of the model or top-K{hint}"
        ) from None
    if idx < 0:
        raise ValueError(f"{what} {idx} is negative; class indices start at 0")
    if n is not None and idx >= n:
        raise ValueError(
            f"{what} {idx} is out of range: the model has {n} classes (use 0 to {n - 1})"
        )
    return TargetChoice(index=idx)


# --------------------------------------------------------------------------- methods


def build_method(name: str, model: nn.Module, layer: str | None = None, **options: Any) -> Any:
    """The method ``name`` (or alias) on ``model``; ``layer`` goes only to methods that take one.

    Input-space methods (``takes_layer`` false, such as guided backpropagation) are built with
    ``layer=None``: they explain the input itself.
    """
    from camlens.methods import get_method

    cls = get_method(name)
    takes_layer = getattr(cls, "takes_layer", True)  # every method states it; default for safety
    return cls(model, layer=layer if takes_layer else None, **options)


def run_method(cam: Any, x: Tensor, target: TargetChoice) -> list[CAMResult]:
    """One result per class rank: ``cam.for_targets(x, "top-k")``, or ``[cam(x, target)]``."""
    if target.top_k is not None:
        return list(cam.for_targets(x, f"top-{target.top_k}"))
    return [cam(x, target=target.index)]


def model_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's scores for ``x`` under ``no_grad``, as float (the logits of a classifier).

    Raises:
        ModelError: the model fails on ``x`` (wrong size or normalisation).
    """
    import torch

    from camlens.methods.base import model_error
    from camlens.targets import select_output

    try:
        with torch.no_grad():
            return select_output(model(x)).float()
    except ValueError:
        raise
    except Exception as exc:
        raise model_error(x, exc) from exc  # the command line names its --size/--mean/--std


def shared_range(results: Iterable[CAMResult]) -> tuple[float, float]:
    """The lowest and highest value of the upsampled raw maps of ``results``: one scale for all.

    Each raw map is upsampled to its maps' size, as the method does before normalising.

    Raises:
        ValueError: a result without a raw map of the same dimensionality as its maps.
    """
    from camlens.maps import upsample

    lo, hi = float("inf"), float("-inf")
    for r in results:
        up = upsample(_raw_like_maps(r), tuple(r.maps.shape[1:]))
        lo, hi = min(lo, float(up.min())), max(hi, float(up.max()))
    if lo > hi:
        raise ValueError("no map to take a shared scale from")
    return lo, hi


def _raw_like_maps(r: CAMResult) -> Tensor:
    raw = r.raw.detach().float()
    if raw.ndim != r.maps.ndim:
        raise ValueError(
            f"{r.method}: a shared scale needs a raw map per position, (B, *spatial); its raw map is "
            f"{tuple(raw.shape)}; leave out --shared-scale for this method"
        )
    return raw


def _rescaled(r: CAMResult, lo: float, hi: float, size: tuple[int, ...]) -> Tensor:
    """``r``'s raw maps upsampled to ``size`` on the scale ``[lo, hi]`` (clipped to ``[0, 1]``)."""
    from camlens.maps import upsample

    up = upsample(_raw_like_maps(r), size)
    span = hi - lo
    if span <= 0:
        return (up > lo).float()
    return ((up - lo) / span).clamp(0, 1).float()


_SLUG = re.compile(r"[^A-Za-z0-9]+")


def file_name(stem: str, method: str, ext: str, rank: int | None = None, label: str = "") -> str:
    """``"<stem>.<method>.<ext>"``, or for a class rank ``"<stem>.<method>.top<rank>-<label>.<ext>"``.

    The label is made file-name safe (first comma-separated part, ASCII letters and digits, at most 40
    characters).

    Example:
        >>> file_name("cat", "gradcam", "png", rank=2, label="Egyptian cat, Felis")
        'cat.gradcam.top2-egyptian-cat.png'
    """
    if rank is None:
        return f"{stem}.{method}.{ext}"
    slug = _SLUG.sub("-", label.split(",")[0].strip().lower()).strip("-")[:40] or "class"
    return f"{stem}.{method}.top{rank}-{slug}.{ext}"


# --------------------------------------------------------------------------- the explanation


@dataclass
class Explanation:
    """Maps of one batch of images, for one or more methods and one or more class ranks.

    Attributes:
        batch: the images, originals and geometry.
        model: the model and its class names.
        target: what was explained.
        results: method name -> one :class:`~camlens.result.CAMResult` per class rank.
        logits: ``(B, K)`` the model's scores on the CPU (``None`` when its output is not a score
            vector per image).
        scale: ``None`` when each map is normalised on its own; else method name -> ``(lo, hi)``,
            the shared range its maps are scaled to.
        scale_scope: what the shared scale spans, for legends (``"all 30 gradcam maps"``).
        seconds: method name -> wall time of its run on this batch.
        colormap: the colour map of overlays.
        alpha: the weight of the heat map in overlays.
    """

    batch: ImageBatch
    model: LoadedModel
    target: TargetChoice
    results: dict[str, list[CAMResult]]
    logits: Tensor | None = None
    scale: dict[str, tuple[float, float]] | None = None
    scale_scope: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    colormap: str = "jet"
    alpha: float = 0.5

    @property
    def methods(self) -> list[str]:
        """The methods, in order."""
        return list(self.results)

    def __len__(self) -> int:
        return len(self.batch)

    def _pick(self, method: str | None, rank: int) -> tuple[str, CAMResult]:
        name = method if method is not None else self.methods[0]
        if name not in self.results:
            from camlens.methods import get_method

            with contextlib.suppress(ValueError):
                name = get_method(name).name
        if name not in self.results:
            raise ValueError(f"no maps of {name!r} here; methods: {', '.join(self.methods)}")
        ranks = self.results[name]
        if not 1 <= rank <= len(ranks):
            raise ValueError(f"rank {rank} is not between 1 and {len(ranks)}")
        return name, ranks[rank - 1]

    def maps(self, method: str | None = None, rank: int = 1) -> Tensor:
        """``(B, H, W)`` maps in ``[0, 1]`` of ``method`` (default: the first) at class ``rank``,
        on the shared scale when there is one."""
        name, r = self._pick(method, rank)
        if self.scale is not None:
            lo, hi = self.scale[name]
            return _rescaled(r, lo, hi, tuple(self.batch.views.shape[2:]))
        return r.maps.detach().float()

    def probabilities(self) -> Tensor | None:
        """``(B, K)`` softmax of the logits, or ``None``."""
        if self.logits is None or self.logits.ndim != 2:
            return None
        return self.logits.softmax(1)

    def predicted(self, i: int) -> tuple[int, str, float] | None:
        """Image ``i``'s top class: ``(index, name, probability)``, or ``None`` without logits."""
        probs = self.probabilities()
        if probs is None:
            return None
        k = int(probs[i].argmax())
        return k, self.model.class_name(k), float(probs[i, k])

    def target_text(self, i: int, method: str | None = None, rank: int = 1) -> str:
        """``"tabby cat (281)"`` (``"class 281"`` without names; ``"top-2: ..."`` for class ranks), or
        ``""`` for targets that are not classes."""
        _, r = self._pick(method, rank)
        if r.targets is None:
            return ""
        c = int(r.targets[i])
        text = f"{self.model.class_name(c)} ({c})" if self.model.classes else f"class {c}"
        return f"top-{rank}: {text}" if self.target.top_k is not None else text

    def score_text(self, i: int, method: str | None = None, rank: int = 1) -> str:
        """``"score 9.31, p 0.83"``: the explained score and, for classes, its probability."""
        _, r = self._pick(method, rank)
        s = float(r.scores[i])
        parts = [f"score {s:.3g}"] if s == s else []
        probs = self.probabilities()
        if probs is not None and r.targets is not None:
            parts.append(f"p {float(probs[i, int(r.targets[i])]):.2f}")
        return ", ".join(parts)

    def legend(self, i: int, method: str | None = None, rank: int = 1) -> Legend:
        """The legend of image ``i``'s map."""
        from camlens.viz import PER_IMAGE_SCALE, Legend, shared_scale_text

        name, r = self._pick(method, rank)
        scale = PER_IMAGE_SCALE
        if self.scale is not None:
            scale = shared_scale_text(self.scale_scope.get(name) or f"these {name} maps")
        return Legend(
            method=r.method,
            layer=r.layer,
            target=self.target_text(i, name, rank),
            score=self.score_text(i, name, rank),
            scale=scale,
            colormap=self.colormap,
        )

    def overlay(
        self,
        i: int,
        method: str | None = None,
        rank: int = 1,
        *,
        legend: bool = True,
        size: str | int = "original",
    ) -> Image.Image:
        """Image ``i``'s overlay.

        Args:
            i: the image.
            method: the method (default: the first).
            rank: the class rank (1 unless the target was top-K).
            legend: add the legend strip (method, layer, class, score, colour bar).
            size: ``"original"`` (the full photo, map placed where the model looked),
                ``"input"`` (the model's view) or an int: the original with its longer side
                reduced to at most that many pixels.
        """
        from camlens import viz

        maps = self.maps(method, rank)
        geo = self.batch.geometry[i]
        if size == "input" or geo is None:
            img = viz.overlay(self.batch.views[i], maps[i], self.colormap, self.alpha)
        else:
            out_size = None
            if isinstance(size, int) and not isinstance(size, bool):
                h0, w0 = geo.original_size
                f = min(1.0, size / max(h0, w0))
                out_size = (max(1, round(h0 * f)), max(1, round(w0 * f)))
            elif size != "original":
                raise ValueError(f"size must be 'original', 'input' or an int, not {size!r}")
            img = viz.overlay_on_original(
                self.batch.originals[i], maps[i], geo, self.colormap, self.alpha, size=out_size
            )
        return viz.with_legend(img, self.legend(i, method, rank)) if legend else img

    def overlays(
        self,
        method: str | None = None,
        rank: int = 1,
        *,
        legend: bool = True,
        size: str | int = "original",
    ) -> list[Image.Image]:
        """Every image's overlay for one method and rank (see :meth:`overlay`)."""
        return [self.overlay(i, method, rank, legend=legend, size=size) for i in range(len(self))]

    def show(self, max_side: int = 320) -> Gallery:
        """A labelled grid: one row per image (its photo, then each method and rank)."""
        from camlens.gallery import Gallery, GalleryRow, Tile

        rows = []
        for i in range(len(self)):
            tiles = [
                Tile(
                    self.overlay(i, m, rank, legend=False, size=max_side),
                    self.legend(i, m, rank),
                )
                for m in self.methods
                for rank in range(1, len(self.results[m]) + 1)
            ]
            pred = self.predicted(i)
            note = f"predicted {pred[1]} ({100 * pred[2]:.1f}%)" if pred else ""
            geo = self.batch.geometry[i]
            if geo is not None and not geo.covers_whole_image:
                note += ("; " if note else "") + geo.describe()
            rows.append(GalleryRow(self.batch.names[i], self.batch.originals[i], tiles, note))
        scale = None
        if self.scale is not None:
            from camlens.viz import shared_scale_text

            scopes = sorted(set(self.scale_scope.values())) or ["these maps"]
            scale = shared_scale_text(" / ".join(scopes))
        return Gallery(rows, colormap=self.colormap, scale=scale, max_side=max_side)

    def _repr_html_(self) -> str:
        return self.show()._repr_html_()

    def __repr__(self) -> str:
        return (
            f"Explanation({len(self)} images, methods={self.methods}, target={self.target.describe()!r}, "
            f"model={self.model.spec!r})"
        )


def explain_batch(
    model: LoadedModel,
    cams: dict[str, Any],
    batch: ImageBatch,
    target: TargetChoice,
    *,
    shared_scale: bool = False,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> Explanation:
    """Run built methods on a loaded batch (what :func:`explain` and the command line do per batch).

    Args:
        model: the loaded model.
        cams: method name -> method object on ``model.model``.
        batch: the images (``batch.x`` on the model's device).
        target: what to explain.
        shared_scale: scale each method's maps over this batch together instead of per image.
        colormap: colour map of the overlays.
        alpha: weight of the heat map in overlays.
    """
    results: dict[str, list[CAMResult]] = {}
    seconds: dict[str, float] = {}
    for name, cam in cams.items():
        t0 = time.perf_counter()
        results[name] = run_method(cam, batch.x, target)
        seconds[name] = time.perf_counter() - t0
    # the predictions come from the methods' own forward; a forward of its own only without one
    kept = (r.logits for rs in results.values() for r in rs if r.logits is not None)
    logits = next(kept, None)
    logits = model_logits(model.model, batch.x) if logits is None else logits.float()
    scale = scope = None
    if shared_scale:
        scale = {n: shared_range(rs) for n, rs in results.items()}
        scope = {n: f"all {len(batch) * len(rs)} {n} maps" for n, rs in results.items()}
    return Explanation(
        batch,
        model,
        target,
        results,
        logits.detach().cpu() if logits.ndim == 2 else None,
        scale,
        scope or {},
        seconds,
        colormap,
        alpha,
    )


def explain(
    model: Any,
    images: Any,
    method: str | Sequence[str] = "gradcam",
    target: int | str | None = None,
    *,
    layer: str | None = None,
    weights: str | None = None,
    preprocess: Any = None,
    device: Any = None,
    shared_scale: bool = False,
    colormap: str = "jet",
    alpha: float = 0.5,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Explanation:
    """Load images, explain them with one or more methods, and get overlays on the originals.

    Args:
        model: an ``nn.Module`` (used as it is: its mode and device are not changed), a model spec
            (``"torchvision:resnet50"``, see :func:`camlens.models.load_model`) or a
            :class:`~camlens.models.LoadedModel`.
        images: an image or a list (paths, PIL images, arrays; see :func:`camlens.images.load_image`),
            or an :class:`~camlens.images.ImageBatch`.
        method: a method name (``"gradcam"``), or several for a side-by-side comparison.
        target: ``None`` (each image's top class), a class index, a class name, or ``"top-K"``.
        layer: the layer to explain (default: chosen per method, see ``BaseCAM``).
        weights: for a spec: ``None`` (pretrained), ``"none"`` or a state-dict file.
        preprocess: how images become input (see :func:`camlens.images.load_images`); default: the
            spec's own, or the module's ``input_size``/``mean``/``std`` attributes, else 224x224 with
            the ImageNet mean and std.
        device: for a spec: where to load it (default: the CPU).
        shared_scale: scale each method's maps over all images together instead of per image.
        colormap: colour map of overlays.
        alpha: weight of the heat map in overlays.
        max_pixels: the size limit of :func:`camlens.images.load_image`.

    Returns:
        An :class:`Explanation`; in a notebook it shows itself as a labelled grid.

    Raises:
        ValueError: an unknown method, layer or target; images that cannot be read.
        TypeError: a model that is none of the above.
    """
    from torch import nn

    from camlens.images import ImageBatch, load_images
    from camlens.methods import get_method
    from camlens.models import LoadedModel, load_model
    from camlens.models.preprocess import as_preprocess

    if isinstance(model, LoadedModel):
        lm = model
    elif isinstance(model, str):
        lm = load_model(model, weights, device=device or "cpu")
    elif isinstance(model, nn.Module):
        lm = LoadedModel.wrap(model, preprocess)
    else:
        raise TypeError(
            f"model must be an nn.Module, a spec such as 'torchvision:resnet50' or a LoadedModel, "
            f"not {type(model).__name__}"
        )
    if preprocess is not None and not isinstance(model, nn.Module):
        lm = LoadedModel(
            lm.model, lm.spec, as_preprocess(preprocess), lm.classes, lm.device, lm.weights
        )
    names = [method] if isinstance(method, str) else list(method)
    if not names:
        raise ValueError("no method given; pass method='gradcam' or a list of names")
    names = list(dict.fromkeys(get_method(n).name for n in names))
    choice = parse_target(target, lm.classes)
    if isinstance(images, ImageBatch):
        batch = images.to(lm.device)
    else:
        batch = load_images(images, lm.preprocess, device=lm.device, max_pixels=max_pixels)
    cams = {n: build_method(n, lm.model, layer) for n in names}
    return explain_batch(
        lm, cams, batch, choice, shared_scale=shared_scale, colormap=colormap, alpha=alpha
    )
