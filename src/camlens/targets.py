"""What to explain: a target is a callable ``output -> (B,)`` scores, one per sample.

Internally there is one target type, a callable on the model's (selected) output. Ints, sequences and
``None`` are converted at the boundary by :func:`resolve`. The score must be taken *before* softmax
(Selvaraju et al. 2017): the classes here index raw logits.

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

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassTarget", "Resolved", "TargetSpec", "resolve", "select_output", "top_k_targets"]

TargetSpec = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None


def _check_logits(output: Tensor, what: str) -> None:
    if output.ndim != 2:
        raise ValueError(
            f"{what} indexes classes of a (B, num_classes) output, but the model's output has shape "
            f"{tuple(output.shape)}; pass a callable target (e.g. camlens.targets.SegmentationTarget) "
            "or select the logits with output="
        )


class ClassTarget:
    """The logit of class ``c`` (one class for the batch, or one per sample).

    Args:
        c: a class index, or a sequence / 1-D tensor of ``B`` indices.

    Example:
        >>> ClassTarget([0, 2])(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        tensor([1., 6.])
    """

    def __init__(self, c: int | Sequence[int] | Tensor) -> None:
        if isinstance(c, bool):
            raise TypeError("a class index must be an int, not a bool")
        if isinstance(c, int):
            self.classes: Tensor | int = c
        else:
            t = torch.as_tensor(c)
            if t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"class indices must be an int or a 1-D sequence of ints, got {c!r}")
            self.classes = t.long()

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


@dataclass(frozen=True)
class Resolved:
    """A target applied to an output: ``scores`` (B,) and, for class targets, ``classes`` (B,)."""

    scores: Tensor
    classes: Tensor | None


def resolve(target: TargetSpec, output: Tensor) -> Resolved:
    """Apply a target spec to the model's output.

    Args:
        target: ``None`` (each sample's top class), an int (that class for every sample), a sequence or
            1-D tensor of ints (one per sample), or a callable ``output -> (B,)``.
        output: the model's selected output, ``(B, ...)``.

    Raises:
        ValueError: a class index out of range, a length that does not match the batch, or a callable
            that does not return ``(B,)`` scores.
    """
    if target is None:
        _check_logits(output, "target=None (the top class)")
        classes = output.argmax(dim=1)
        return Resolved(output.gather(1, classes[:, None]).squeeze(1), classes)
    if isinstance(target, ClassTarget) or isinstance(target, int | Sequence | Tensor) and not isinstance(target, str):
        ct = target if isinstance(target, ClassTarget) else ClassTarget(target)  # type: ignore[arg-type]
        idx = ct.indices(output)
        return Resolved(output.gather(1, idx[:, None]).squeeze(1), idx)
    if callable(target):
        scores = target(output)
        b = output.shape[0]
        if not isinstance(scores, Tensor):
            raise ValueError(f"a target callable must return a tensor of shape ({b},), got {type(scores).__name__}")
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
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
        raise ValueError(f"{spec!r} asks for {k} classes but the output has {output.shape[1]} (use 1 to {output.shape[1]})")
    order = output.topk(k, dim=1).indices
    return [ClassTarget(order[:, i]) for i in range(k)]


def select_output(output: Any, selector: str | int | Callable[[Any], Tensor] | None = None) -> Tensor:
    """Pick the score tensor out of whatever the model returns.

    With ``selector=None``: a tensor is itself; a Hugging Face ``ModelOutput`` or any object with a
    ``logits`` attribute gives ``logits``; a mapping gives its ``"logits"`` or ``"out"`` entry (the
    latter is torchvision's segmentation output) or its only tensor; a tuple or list its first tensor.
    A string selects a key or attribute, an int an index, a callable is applied.

    Raises:
        ValueError: nothing suitable is found; the message lists what the output holds.
    """
    if selector is not None:
        try:
            if callable(selector):
                picked = selector(output)
            elif isinstance(selector, str):
                picked = output[selector] if isinstance(output, Mapping) else getattr(output, selector)
            else:
                picked = output[selector]
        except (KeyError, IndexError, AttributeError, TypeError) as e:
            raise ValueError(f"output={selector!r} does not select anything from {_describe(output)}") from e
        if not isinstance(picked, Tensor):
            raise ValueError(f"output={selector!r} selected a {type(picked).__name__}, not a tensor")
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
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"cannot tell which part of the model's output holds the scores: {_describe(output)}; pass "
        "output= a key, an index or a callable"
    )


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    if isinstance(output, tuple | list):
        return f"a {type(output).__name__} of {len(output)} items"
    return f"a {type(output).__name__}"
