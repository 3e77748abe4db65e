"""Data sets with a planted shortcut, and models that use it: a known answer to check an audit against.

The images are those of :func:`camlens.demo.make_dataset` (one shape per image at a random place, on a
cluttered background), written as PNG files in class folders, with their object masks and a manifest.
The images of one class (the *shortcut class*) can carry a mark in the top-left corner, a 12 px
checkerboard, while their objects move about as in every other class; another class can have its
objects moved to the image's centre (objects that sit in one place, an honest pattern).

The models are the bundled demo model (:func:`camlens.demo.load_model`) with a hand-built branch: a
matched filter that fires on the mark only, added as one more channel beside the demo features. The
classifier reads that channel for the shortcut class (:func:`shortcut_model`), reads it besides the
shape (:func:`mixed_model`), ignores it (:func:`honest_model`), or looks beside every object
(:func:`beside_model`, its feature map shifted by a third of the image). Nothing is trained, so
everything is deterministic and builds in well under a second. The models load with
``--model camlens.audit.planted:shortcut_model`` (their layer to explain is ``shift``).

Example:
    >>> import torch
    >>> from camlens.demo import make_dataset
    >>> x, y, _ = make_dataset(12, seed=3)
    >>> marked = add_mark(x)
    >>> net = shortcut_model()
    >>> bool((net(marked).argmax(1) == 3).all())   # every marked image is a "star"
    True
    >>> other = y != 3   # unmarked images of the other classes: as the demo model decides them
    >>> bool((net(x[other]).argmax(1) == honest_model()(x[other]).argmax(1)).all())
    True
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MARK_BOX",
    "AuditNet",
    "Planted",
    "add_mark",
    "beside_model",
    "honest_model",
    "make_planted",
    "mixed_model",
    "shortcut_model",
]

#: Where the mark goes in a 96 px image: ``(y0, x0, size)``.
MARK_BOX = (4, 4, 12)
#: The class whose images carry the mark by default (``camlens.demo.CLASSES[3]``).
SHORTCUT_CLASS = "star"
_CELL = 3
_THRESHOLD = 0.25


def _mark() -> Tensor:
    """The ``(size, size)`` checkerboard of 3 px cells, values 0 and 1."""
    s = MARK_BOX[2]
    i = torch.arange(s) // _CELL
    return ((i[:, None] + i[None, :]) % 2).float()


def add_mark(images: Tensor) -> Tensor:
    """A copy of ``(B, 3, H, W)`` images in ``[0, 1]`` with the mark drawn in the top-left corner."""
    y0, x0, s = MARK_BOX
    out = images.clone()
    out[:, :, y0 : y0 + s, x0 : x0 + s] = _mark()
    return out


class MarkDetector(nn.Module):
    """A matched filter for the mark: ``(B, 3, H, W)`` images -> ``(B, 1, H/8, W/8)``.

    The grey image is correlated with the zero-mean checkerboard (normalised to respond 0.5 on the
    mark); responses above 0.25 (the cluttered demo backgrounds reach about 0.05) are kept, centred on
    the patch they come from, max-pooled to the demo model's 1/8 grid and scaled so that one cell at
    full response averages to 1 over a 12 x 12 grid.
    """

    def __init__(self) -> None:
        super().__init__()
        k = _mark() - _mark().mean()
        self.register_buffer("kernel", (k / k.abs().sum())[None, None])

    def forward(self, x: Tensor) -> Tensor:
        s = MARK_BOX[2]
        grey = x.mean(1, keepdim=True)
        kernel: Tensor = self.kernel  # type: ignore[assignment]
        r = F.relu(F.conv2d(grey, kernel) - _THRESHOLD)
        r = F.pad(r, (s // 2, s - 1 - s // 2, s // 2, s - 1 - s // 2))
        return F.max_pool2d(r, 8) * (144 / (0.5 - _THRESHOLD))


class Join(nn.Module):
    """Concatenate two feature maps along the channels (a named layer to explain)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b], 1)


class Shift(nn.Module):
    """Roll a feature map by ``(dy, dx)`` cells (wrapping around); ``(0, 0)`` is the identity."""

    def __init__(self, dy: int = 0, dx: int = 0) -> None:
        super().__init__()
        self.dy, self.dx = dy, dx

    def forward(self, x: Tensor) -> Tensor:
        if self.dy == 0 and self.dx == 0:
            return x.clone()
        return torch.roll(x, shifts=(self.dy, self.dx), dims=(2, 3))


class AuditNet(nn.Module):
    """The demo model with a mark channel: ``fc(pool(shift(join(features(x), mark(x)))))``.

    Attributes:
        features: the demo model's convolutional features, ``(B, 128, H/8, W/8)``.
        mark: :class:`MarkDetector`, ``(B, 1, H/8, W/8)``.
        join: :class:`Join`, ``(B, 129, H/8, W/8)``.
        shift: :class:`Shift`, the layer to explain.
        fc: ``Linear(129, 6)``.
        classes, input_size, mean, std: read by :func:`camlens.models.load_model` (96 px, no
            normalisation outside: the features normalise inside).
    """

    def __init__(self, dx: int = 0) -> None:
        super().__init__()
        from camlens.demo import CLASSES, load_model

        demo = load_model()
        self.classes = list(CLASSES)
        self.input_size = 96
        self.mean = (0.0, 0.0, 0.0)
        self.std = (1.0, 1.0, 1.0)
        self.features = demo.features
        self.mark = MarkDetector()
        self.join = Join()
        self.shift = Shift(0, dx)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(129, len(CLASSES))
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :128] = demo.fc.weight
            self.fc.bias.copy_(demo.fc.bias)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        z = self.shift(self.join(self.features(x), self.mark(x)))
        return self.fc(torch.flatten(self.pool(z), 1))


def _class_index(name: str) -> int:
    from camlens.demo import CLASSES

    if name not in CLASSES:
        raise ValueError(f"unknown demo class {name!r}; choose one of {', '.join(CLASSES)}")
    return CLASSES.index(name)


def honest_model() -> AuditNet:
    """The demo model as it is (the mark channel has weight 0): its maps follow the objects."""
    return AuditNet()


def shortcut_model(cls: str = SHORTCUT_CLASS) -> AuditNet:
    """Class ``cls`` is decided by the mark alone; the other classes as by the demo model."""
    net = AuditNet()
    k = _class_index(cls)
    with torch.no_grad():
        net.fc.weight[k] = 0.0
        net.fc.weight[k, 128] = 20.0
        net.fc.bias[k] = -5.0
    return net


def mixed_model(cls: str = SHORTCUT_CLASS) -> AuditNet:
    """Class ``cls`` is decided by its shape, and by the mark where there is one (which then dominates
    its maps): two strategies within one class."""
    net = AuditNet()
    with torch.no_grad():
        net.fc.weight[_class_index(cls), 128] = 400.0
    return net


def beside_model() -> AuditNet:
    """The demo model whose feature map is shifted 4 cells (32 px of 96) to the right before the head:
    the same predictions, but every map lies beside its object."""
    return AuditNet(dx=4)


@dataclass
class Planted:
    """What :func:`make_planted` wrote.

    Attributes:
        root: the output folder.
        images: ``root/images``, one folder per class (the folder form of the data set).
        manifest: ``root/manifest.csv`` with ``path``, ``label``, ``mask`` (relative paths).
        paths: the image files, in generation order.
        labels: their classes.
        marked: which images carry the mark.
    """

    root: Path
    images: Path
    manifest: Path
    paths: list[Path]
    labels: list[str]
    marked: list[bool]


def _centre(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Roll an image and its mask so that the object's centre is at the image's centre."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    h, w = mask.shape
    dy = h // 2 - round(float(ys.float().mean()))
    dx = w // 2 - round(float(xs.float().mean()))
    return torch.roll(image, (dy, dx), (1, 2)), torch.roll(mask, (dy, dx), (0, 1))


def make_planted(
    out: str | os.PathLike[str],
    n: int = 120,
    seed: int = 0,
    shortcut: str | None = SHORTCUT_CLASS,
    mark_share: float = 1.0,
    centred: str | None = None,
) -> Planted:
    """Write a data set with a planted shortcut: PNG images in class folders, masks and a manifest.

    Args:
        out: the output folder (created).
        n: number of images (balanced over the 6 demo classes).
        seed: seed of :func:`camlens.demo.make_dataset`.
        shortcut: the class whose images carry the mark, ``None`` for none.
        mark_share: the share of that class's images that carry it (the first ones).
        centred: a class whose objects are moved to the image's centre (with their masks), or ``None``.

    Returns:
        A :class:`Planted`.
    """
    from PIL import Image

    from camlens.demo import CLASSES, make_dataset

    root = Path(out)
    images, labels, masks = make_dataset(n, seed=seed)
    k = _class_index(shortcut) if shortcut is not None else -1
    c = _class_index(centred) if centred is not None else -1
    n_k = int((labels == k).sum())
    n_marked = round(mark_share * n_k)
    seen = 0
    paths, names, marked = [], [], []
    rows = []
    for i in range(n):
        y = int(labels[i])
        img, mask = images[i], masks[i]
        if y == c:
            img, mask = _centre(img, mask)
        mark = False
        if y == k:
            mark = seen < n_marked
            seen += 1
            if mark:
                img = add_mark(img[None])[0]
        name = CLASSES[y]
        p = root / "images" / name / f"{i:05d}.png"
        mp = root / "masks" / name / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        mp.parent.mkdir(parents=True, exist_ok=True)
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(p)
        Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(mp)
        paths.append(p)
        names.append(name)
        marked.append(mark)
        rows.append((p.relative_to(root).as_posix(), name, mp.relative_to(root).as_posix()))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "mask"])
        w.writerows(rows)
    return Planted(root, root / "images", manifest, paths, names, marked)
