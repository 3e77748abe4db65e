"""What to explain: a target is a callable ``output -> (B,)`` scores, one per sample.

Internally there is one target type, a callable on the model's (selected) output. Ints, sequences and
``None`` are converted at the boundary by :func:`resolve`. The score must be taken *before* softmax
(Selvaraju et al. 2017): the classes here index raw logits.

Targets for other tasks, each a callable accepted by ``target=``:

* :class:`ClassTarget` -- a class logit (classification).
* :class:`SegmentationTarget` -- the sum of a class's logits over a region (semantic segmentation).
* :class:`BoxTarget` -- the scores of the detections that match a box (object detection); one per
  detection with :func:`box_targets`, explained together with ``cam.for_targets(x, targets)``.
* :class:`SimilarityTarget` -- the cosine similarity of an embedding to a reference (retrieval, CLIP).

When the model's output is not a tensor that :func:`select_output` can pick (a detection model's list
of dicts), a callable target receives the whole output.

Example:
    >>> import torch
    >>> logits = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    >>> ClassTarget(1)(logits)
    tensor([ 5., -1.])
    >>> r = resolve(None, logits)
    >>> r.classes, r.scores
    (tensor([1, 2]), tensor([5., 3.]))
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BoxTarget",
    "ClassTarget",
    "Resolved",
    "SegmentationTarget",
    "SimilarityTarget",
    "TargetSpec",
    "accepts_any_output",
    "box_targets",
    "resolve",
    "select_output",
    "top_k_targets",
]

TargetSpec = int | Sequence[int] | Tensor | np.ndarray | Callable[[Any], Tensor] | None


def _is_index(value: Any) -> bool:
    """An integer class index: a Python or numpy integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _check_logits(output: Any, what: str) -> None:
    if not isinstance(output, Tensor):
        raise ValueError(
            f"{what} indexes classes of a (B, num_classes) tensor, but the model's output is "
            f"{_describe(output)}; pass a callable target that reads it (e.g. camlens.targets.BoxTarget "
            "for detection models) or select the logits with output="
        )
    if output.ndim != 2:
        raise ValueError(
            f"{what} indexes classes of a (B, num_classes) output, but the model's output has shape "
            f"{tuple(output.shape)}; pass a callable target (e.g. camlens.targets.SegmentationTarget) "
            "or select the logits with output="
        )


class ClassTarget:
    """The logit of class ``c`` (one class for the batch, or one per sample).

    Args:
        c: a class index (a Python or numpy integer), or a sequence, 1-D tensor or 1-D numpy array of
            ``B`` indices.

    Example:
        >>> ClassTarget([0, 2])(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        tensor([1., 6.])
        >>> import numpy as np
        >>> ClassTarget(np.int64(1)).classes, ClassTarget(np.array([2, 0])).classes
        (1, tensor([2, 0]))
    """

    def __init__(self, c: int | Sequence[int] | Tensor | np.ndarray) -> None:
        if isinstance(c, bool | np.bool_):
            raise TypeError("a class index must be an int, not a bool")
        if _is_index(c):
            self.classes: Tensor | int = int(c)  # type: ignore[arg-type]
            return
        t = (
            torch.from_numpy(np.ascontiguousarray(c))
            if isinstance(c, np.ndarray)
            else torch.as_tensor(c)
        )
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.ndim > 1:
            raise ValueError(f"class indices must be an int or a 1-D sequence of ints, got {c!r}")
        self.classes = int(t) if t.ndim == 0 else t.long()

    def indices(self, output: Tensor) -> Tensor:
        """The ``(B,)`` class indices for ``output``, validated against its shape."""
        _check_logits(output, "a class target")
        b, n = output.shape
        if isinstance(self.classes, int):
            idx = torch.full((b,), self.classes, dtype=torch.long, device=output.device)
        else:
            if self.classes.shape[0] != b:
                raise ValueError(
                    f"got {self.classes.shape[0]} class indices for a batch of {b}; pass one index per "
                    "sample, or a single int for the whole batch"
                )
            idx = self.classes.to(output.device)
        bad = (idx < 0) | (idx >= n)
        if bool(bad.any()):
            raise ValueError(
                f"class index {int(idx[bad][0])} is out of range for an output with {n} classes "
                f"(valid: 0 to {n - 1})"
            )
        return idx

    def __call__(self, output: Tensor) -> Tensor:
        idx = self.indices(output)
        return output.gather(1, idx[:, None]).squeeze(1)

    def __repr__(self) -> str:
        return f"ClassTarget({self.classes!r})"


class SegmentationTarget:
    """The sum of one class's logits over a region of a segmentation output.

    ``score_b = sum_{p in mask_b} logits[b, category, p]`` for an output ``(B, num_classes, *spatial)``
    (torchvision's segmentation models: the ``"out"`` entry, picked automatically). With ``mask=None``
    the region is, for each sample, the pixels whose predicted class (the argmax over classes of the
    output) is ``category``; a sample with no such pixel scores 0 (and gets an empty map).

    Args:
        category: the class index whose logits are summed.
        mask: ``(*spatial)`` for every sample or ``(B, *spatial)``, bool or float weights, at the
            output's resolution (for torchvision's models: the input's); ``None`` as above.

    Example:
        >>> logits = torch.zeros(1, 2, 2, 2)
        >>> logits[0, 1, 0, 0], logits[0, 1, 1, 1] = 3.0, 1.0
        >>> SegmentationTarget(1)(logits)  # pixels predicted as class 1: (0, 0) and (1, 1)
        tensor([4.])
        >>> SegmentationTarget(1, mask=torch.tensor([[True, False], [False, False]]))(logits)
        tensor([3.])
        >>> import camlens, torch.nn as nn
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
        >>> res = camlens.GradCAM(net, layer="1")(torch.rand(1, 3, 8, 8), target=SegmentationTarget(2))
        >>> tuple(res.maps.shape), res.scores.shape
        ((1, 8, 8), torch.Size([1]))
    """

    def __init__(self, category: int, mask: Tensor | None = None) -> None:
        if isinstance(category, bool) or not isinstance(category, int):
            raise TypeError(f"category must be an int class index, not {type(category).__name__}")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype.is_complex or mask.ndim < 1:
                raise ValueError(
                    f"mask must be a bool or float tensor of shape (*spatial) or (B, *spatial), got {mask!r}"
                )
        self.category = category
        self.mask = mask

    def __call__(self, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim < 3:
            raise ValueError(
                "SegmentationTarget needs (B, num_classes, *spatial) logits, got "
                f"{_describe(output)}; select them with output= (torchvision's 'out' is found automatically)"
            )
        b, k, *spatial = output.shape
        if not 0 <= self.category < k:
            raise ValueError(
                f"category {self.category} is out of range for an output with {k} classes (valid: 0 to {k - 1})"
            )
        logits = output[:, self.category]
        if self.mask is None:
            mask = output.detach().argmax(dim=1) == self.category
        else:
            mask = self.mask.to(output.device)
            if tuple(mask.shape) == tuple(spatial):
                mask = mask.expand(b, *spatial)
            elif tuple(mask.shape) != (b, *spatial):
                raise ValueError(
                    f"mask has shape {tuple(mask.shape)}, but the output's spatial size is {tuple(spatial)} "
                    f"for a batch of {b}; pass a mask of shape {tuple(spatial)} or {(b, *spatial)}"
                )
        return (logits * mask.to(logits.dtype)).flatten(1).sum(dim=1)

    def __repr__(self) -> str:
        m = "None" if self.mask is None else f"<mask {tuple(self.mask.shape)}>"
        return f"SegmentationTarget({self.category}, mask={m})"


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``(x1, y1, x2, y2)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


_DETECTION_FORMAT = (
    "a detection model's output: a list with one dict per image holding 'boxes' (N, 4) as "
    "(x1, y1, x2, y2) pixels, 'labels' (N,) and 'scores' (N,), as torchvision's Faster R-CNN, "
    "RetinaNet and FCOS return in eval mode"
)


def _detections(output: Any, what: str) -> list[Mapping[str, Tensor]]:
    if isinstance(output, Mapping) and "boxes" in output:
        output = [output]
    if (
        not isinstance(output, Sequence)
        or isinstance(output, str)
        or not all(
            isinstance(d, Mapping)
            and isinstance(d.get("boxes"), Tensor)
            and isinstance(d.get("scores"), Tensor)
            for d in output
        )
    ):
        raise TypeError(f"{what} expects {_DETECTION_FORMAT}; got {_describe(output)}")
    return list(output)


def _as_box(box: Any) -> Tensor:
    t = (
        torch.as_tensor(box, dtype=torch.float32)
        if not isinstance(box, Tensor)
        else box.detach().float()
    )
    if (
        t.shape != (4,)
        or not bool(torch.isfinite(t).all())
        or bool(t[2] < t[0])
        or bool(t[3] < t[1])
    ):
        raise ValueError(
            f"box must be 4 finite numbers (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, got {box!r}"
        )
    return t


class BoxTarget:
    """The scores of the detections that match a box: explain one detected object.

    For each image, a detection matches when its IoU with ``box`` is at least ``iou_threshold`` and
    (unless ``label`` is ``None``) its label equals ``label``. The score is the sum of the matching
    detections' confidence scores (plus their IoU with ``box`` if ``add_iou``, which makes the box
    regression count too, as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` does); an image with no
    match scores 0 (a zero that still has a gradient, so its map is empty rather than an error).
    The same box is looked for in every image of the batch: explain the boxes of one image with
    ``x[i:i + 1]``.

    The model's output must be a list with one dict per image holding ``"boxes"`` ``(N, 4)`` as
    ``(x1, y1, x2, y2)`` in input pixels, ``"labels"`` ``(N,)`` and ``"scores"`` ``(N,)``: what
    torchvision's Faster R-CNN, RetinaNet and FCOS return in eval mode. Explain a layer of the
    backbone (``backbone.body.layer4``, the automatic choice); the model's internal resizing does not
    matter, since maps are upsampled to the input's size.

    Args:
        box: ``(x1, y1, x2, y2)`` in the input's pixel coordinates.
        label: the class label detections must have; ``None`` accepts any.
        iou_threshold: the least IoU for a detection to match, in ``[0, 1]``.
        add_iou: also add each matching detection's IoU with ``box`` to the score.

    Example:
        >>> dets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
        ...          "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}]
        >>> BoxTarget([1.0, 1.0, 10.0, 10.0], label=1)(dets)  # IoU 0.81 with the first detection
        tensor([0.9000])
        >>> BoxTarget([1.0, 1.0, 10.0, 10.0], label=2)(dets)  # nothing of label 2 overlaps
        tensor([0.])
        >>> BoxTarget([1.0, 1.0, 10.0, 10.0], label=1, add_iou=True)(dets)
        tensor([1.7100])
    """

    def __init__(
        self,
        box: Sequence[float] | Tensor,
        label: int | None = None,
        iou_threshold: float = 0.5,
        *,
        add_iou: bool = False,
    ) -> None:
        self.box = _as_box(box)
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise TypeError(f"label must be an int class label or None, not {type(label).__name__}")
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
        self.label = label
        self.iou_threshold = float(iou_threshold)
        self.add_iou = add_iou

    def __call__(self, output: Any) -> Tensor:
        scores = []
        for det in _detections(output, "BoxTarget"):
            boxes, conf = det["boxes"], det["scores"]
            iou = _box_iou(self.box.to(boxes)[None], boxes)[0]
            match = iou.detach() >= self.iou_threshold
            if self.label is not None:
                labels = det.get("labels")
                if not isinstance(labels, Tensor):
                    raise TypeError(
                        f"BoxTarget with a label expects {_DETECTION_FORMAT}; 'labels' is missing"
                    )
                match &= labels.to(boxes.device) == self.label

            w = match.to(conf.dtype)
            s = (conf * w).sum()
            if self.add_iou:
                s = s + (iou.to(conf.dtype) * w).sum()
            scores.append(s)
        if not scores:
            raise ValueError("the detection output holds no image")
        return torch.stack(scores)

    def __repr__(self) -> str:
        box = [round(float(v), 2) for v in self.box]
        return f"BoxTarget({box}, label={self.label}, iou_threshold={self.iou_threshold})"


def box_targets(
    detections: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
    score_threshold: float = 0.5,
    *,
    iou_threshold: float = 0.5,
) -> list[BoxTarget]:
    """One :class:`BoxTarget` per detection of one image whose score is at least ``score_threshold``.

    Use them with ``cam.for_targets(x, targets)``, which runs the model once and gives one map per
    detection, in the order of the detections (torchvision sorts them by score).

    Args:
        detections: one image's detections, a dict with ``"boxes"``, ``"labels"``, ``"scores"``, or the
            model's output for a batch of one image (a list holding that dict).
        score_threshold: the least score of a detection to explain.
        iou_threshold: passed to each :class:`BoxTarget`.

    Raises:
        ValueError: ``detections`` holds several images (explain them one at a time with ``x[i:i + 1]``).

    Example:
        >>> dets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
        ...          "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.3])}]
        >>> box_targets(dets, score_threshold=0.5)
        [BoxTarget([0.0, 0.0, 10.0, 10.0], label=1, iou_threshold=0.5)]
    """
    dets = _detections(detections, "box_targets")
    if len(dets) != 1:
        raise ValueError(
            f"box_targets takes the detections of one image, got {len(dets)}; call it on output[i] and "
            "explain that image alone with cam.for_targets(x[i:i + 1], targets)"
        )
    det = dets[0]
    labels = det.get("labels")
    out = []
    for i in range(det["boxes"].shape[0]):
        if float(det["scores"][i]) >= score_threshold:
            label = int(labels[i]) if isinstance(labels, Tensor) else None
            out.append(BoxTarget(det["boxes"][i], label, iou_threshold))
    return out


class SimilarityTarget:
    """The cosine similarity of each sample's embedding to a reference embedding.

    ``score_b = cos(output_b, embedding_b)``, for an output ``(B, D)`` (anything ``(B, ...)`` with
    ``D`` values per sample is flattened) and a reference ``(D,)`` shared by the batch or ``(B, D)``,
    e.g. an image embedding of CLIP-like or retrieval models and the embedding of a text or of another
    image. The reference is treated as a constant.

    Args:
        embedding: the reference, ``(D,)`` or ``(B, D)``.

    Example:
        >>> SimilarityTarget(torch.tensor([1.0, 0.0]))(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        tensor([1.0000, 0.7071])
        >>> import camlens, torch.nn as nn
        >>> encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                         nn.Flatten(), nn.Linear(8, 16)).eval()
        >>> x = torch.rand(2, 3, 8, 8)
        >>> reference = encoder(x[:1]).detach()[0]
        >>> res = camlens.GradCAM(encoder, layer="1")(x, target=SimilarityTarget(reference))
        >>> round(float(res.scores[0]), 4)
        1.0
    """

    def __init__(self, embedding: Tensor) -> None:
        e = torch.as_tensor(embedding).detach()
        if e.ndim not in (1, 2) or not e.dtype.is_floating_point or e.numel() == 0:
            raise ValueError(
                f"embedding must be a float tensor of shape (D,) or (B, D), got {tuple(e.shape)} {e.dtype}"
            )
        self.embedding = e

    def __call__(self, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim < 2:
            raise ValueError(
                f"SimilarityTarget needs a (B, D) embedding output, got {_describe(output)}; select it "
                "with output= (e.g. output='image_embeds' for a Hugging Face CLIP vision model)"
            )
        out = output.flatten(1)
        ref = self.embedding.to(device=out.device, dtype=out.dtype)
        d = ref.shape[-1]
        if out.shape[1] != d or (ref.ndim == 2 and ref.shape[0] != out.shape[0]):
            raise ValueError(
                f"the output holds {out.shape[1]} values per sample for a batch of {out.shape[0]}, the "
                f"reference embedding has shape {tuple(ref.shape)}; pass a reference of shape "
                f"({out.shape[1]},) or ({out.shape[0]}, {out.shape[1]})"
            )
        return F.cosine_similarity(out, ref.expand_as(out), dim=1)

    def __repr__(self) -> str:
        return f"SimilarityTarget(<embedding {tuple(self.embedding.shape)}>)"


@dataclass(frozen=True)
class Resolved:
    """A target applied to an output: ``scores`` (B,) and, for class targets, ``classes`` (B,)."""

    scores: Tensor
    classes: Tensor | None


def _batch_size(output: Any) -> int | None:
    """The batch size of a model output: a tensor's first axis, a list's length (one entry per image)."""
    if isinstance(output, Tensor):
        return int(output.shape[0]) if output.ndim else None
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor) and logits.ndim:
        return int(logits.shape[0])
    if isinstance(output, Mapping):
        for v in output.values():
            if isinstance(v, Tensor) and v.ndim:
                return int(v.shape[0])
        return None
    if isinstance(output, tuple | list):
        return len(output)
    return None


def resolve(target: TargetSpec, output: Any, *, batch: int | None = None) -> Resolved:
    """Apply a target spec to the model's output.

    Args:
        target: ``None`` (each sample's top class), an int (that class for every sample; numpy
            integers too), a sequence, 1-D tensor or 1-D numpy array of ints (one per sample), or a
            callable ``output -> (B,)``.
        output: the model's selected output, ``(B, ...)``; for a callable target it may be anything
            the callable understands (e.g. a detection model's list of dicts).
        batch: the number of samples ``B``; by default the output's first axis (or its length when it
            is a list).

    Raises:
        ValueError: a class index out of range, a length that does not match the batch, or a callable
            that does not return ``(B,)`` scores.
    """
    if target is None:
        _check_logits(output, "target=None (the top class)")
        classes = output.argmax(dim=1)
        return Resolved(output.gather(1, classes[:, None]).squeeze(1), classes)
    if isinstance(target, ClassTarget) or (
        (_is_index(target) or isinstance(target, Sequence | Tensor | np.ndarray))
        and not isinstance(target, str)
    ):
        ct = target if isinstance(target, ClassTarget) else ClassTarget(target)  # type: ignore[arg-type]
        idx = ct.indices(output)
        return Resolved(output.gather(1, idx[:, None]).squeeze(1), idx)
    if callable(target):
        scores = target(output)
        b = batch if batch is not None else _batch_size(output)
        if not isinstance(scores, Tensor):
            raise ValueError(
                f"a target callable must return a tensor of shape ({b},), got {type(scores).__name__}"
            )
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if b is None and scores.ndim == 1:
            b = int(scores.shape[0])
        if scores.shape != (b,):
            raise ValueError(
                f"a target callable must return one score per sample, shape ({b},); got {tuple(scores.shape)}"
            )
        classes = getattr(target, "classes", None)
        cls = classes if isinstance(classes, Tensor) and classes.shape == (b,) else None
        return Resolved(scores, cls)
    raise TypeError(
        f"target must be None, an int, a sequence of ints or a callable output -> (B,), not {type(target).__name__}"
    )


def accepts_any_output(targets: Any) -> bool:
    """Whether every target is a callable that may receive the model's whole output (not a class index).

    Example:
        >>> accepts_any_output([lambda out: out[0]["scores"].sum()[None]]), accepts_any_output([0, None])
        (True, False)
    """
    specs = [targets] if not isinstance(targets, list | tuple) else list(targets)
    return bool(specs) and all(callable(t) and not isinstance(t, ClassTarget) for t in specs)


_TOP = re.compile(r"^top-?(\d+)$")


def top_k_targets(spec: str, output: Tensor) -> list[ClassTarget]:
    """``"top-k"`` as ``k`` class targets: the i-th gives each sample its i-th highest class.

    Example:
        >>> [t.classes.tolist() for t in top_k_targets("top-2", torch.tensor([[1.0, 3.0, 2.0]]))]
        [[1], [2]]
    """
    m = _TOP.match(spec.strip().lower())
    if not m:
        raise ValueError(f"target string {spec!r} is not understood; use 'top-K' such as 'top-3'")
    k = int(m.group(1))
    _check_logits(output, f"target {spec!r}")
    if not 1 <= k <= output.shape[1]:
        raise ValueError(
            f"{spec!r} asks for {k} classes but the output has {output.shape[1]} (use 1 to {output.shape[1]})"
        )
    order = output.topk(k, dim=1).indices
    return [ClassTarget(order[:, i]) for i in range(k)]


def select_output(
    output: Any,
    selector: str | int | Callable[[Any], Tensor] | None = None,
    *,
    passthrough: bool = False,
) -> Any:
    """Pick the score tensor out of whatever the model returns.

    With ``selector=None``: a tensor is itself; a Hugging Face ``ModelOutput`` or any object with a
    ``logits`` attribute gives ``logits``; a mapping gives its ``"logits"`` or ``"out"`` entry (the
    latter is torchvision's segmentation output) or its only tensor; a dataclass its only tensor field;
    a tuple or list its first tensor. A string selects a key or attribute, an int an index (of a
    dataclass: its fields in order), a callable is applied.

    Args:
        output: what the model returned.
        selector: the key, attribute, index or callable that selects the scores; ``None`` to find them.
        passthrough: when ``selector`` is ``None`` and nothing can be selected, return ``output`` itself
            instead of raising (for callable targets that read the whole output, such as
            :class:`BoxTarget` on a detection model's list of dicts).

    Raises:
        ValueError: nothing suitable is found; the message lists what the output holds.

    Example:
        >>> select_output({"out": torch.zeros(1, 21, 4, 4), "aux": torch.zeros(1, 21, 4, 4)}).shape
        torch.Size([1, 21, 4, 4])
        >>> select_output((torch.ones(1, 3), torch.zeros(1, 8)), 1).shape
        torch.Size([1, 8])
        >>> dets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}]
        >>> select_output(dets, passthrough=True) is dets
        True
    """
    if selector is not None:
        try:
            if callable(selector):
                picked = selector(output)
            elif isinstance(selector, str):
                picked = (
                    output[selector] if isinstance(output, Mapping) else getattr(output, selector)
                )
            elif _is_dataclass_instance(output) and not isinstance(output, Mapping | Sequence):
                picked = getattr(output, dataclasses.fields(output)[selector].name)
            else:
                picked = output[selector]
        except (KeyError, IndexError, AttributeError, TypeError) as e:
            raise ValueError(
                f"output={selector!r} does not select anything from {_describe(output)}"
            ) from e
        if not isinstance(picked, Tensor):
            raise ValueError(
                f"output={selector!r} selected a {type(picked).__name__}, not a tensor"
            )
        return picked
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        tensors = [v for v in output.values() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    elif _is_dataclass_instance(output):
        tensors = [getattr(output, f.name) for f in dataclasses.fields(output)]
        tensors = [t for t in tensors if isinstance(t, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    if passthrough:
        return output
    raise ValueError(
        f"cannot tell which part of the model's output holds the scores: {_describe(output)}; pass "
        "output= a key, an index or a callable, or a callable target that reads the whole output "
        "(e.g. camlens.targets.BoxTarget for a detection model)"
    )


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    if isinstance(output, tuple | list):
        inner = (
            f" ({type(output[0]).__name__})" if output and not isinstance(output[0], Tensor) else ""
        )
        return f"a {type(output).__name__} of {len(output)} items{inner}"
    if _is_dataclass_instance(output):
        return (
            f"a {type(output).__name__} with fields {[f.name for f in dataclasses.fields(output)]}"
        )
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"
