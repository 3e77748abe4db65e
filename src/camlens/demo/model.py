"""The bundled demo classifier: a small CNN with a global-average-pool + linear head."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from camlens.demo.data import CLASSES

__all__ = ["WEIGHTS_PATH", "DemoNet", "Normalize", "load_model"]

WEIGHTS_PATH: Path = Path(__file__).resolve().parent / "weights.pt"
"""Where :func:`load_model` looks for the trained weights by default."""

_MEAN = 0.5
_STD = 0.25


class Normalize(nn.Module):
    """Map images in [0, 1] to roughly zero mean, unit variance: ``(x - 0.5) / 0.25``.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, mean: float = _MEAN, std: float = _STD) -> None:
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Conv3x3-BN-ReLU: (N, c_in, H, W) -> (N, c_out, H / stride, W / stride)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DemoNet(nn.Module):
    """Small shape classifier for :func:`camlens.demo.make_dataset` images.

    ``forward(x) == fc(flatten(pool(features(x))))``: the last feature map (C=128 channels at
    1/8 of the input resolution, 12x12 for 96x96 inputs) is global-average-pooled and fed to a
    single linear layer, so CAM is exact for this model.

    Args:
        classes: class names, one logit each.
        input_size: side length of the square images the model was trained on.
        width: channel count of the last feature map.

    Attributes:
        features: ``nn.Sequential``: a :class:`Normalize` layer, then Conv-BN-ReLU blocks,
            (N, 3, H, W) in [0, 1] -> (N, C, H/8, W/8).
        pool: ``nn.AdaptiveAvgPool2d(1)``, (N, C, h, w) -> (N, C, 1, 1).
        fc: ``nn.Linear(C, len(classes))``.
        classes: the class names.
        input_size: the training image size.
    """

    def __init__(
        self, classes: tuple[str, ...] = CLASSES, input_size: int = 96, width: int = 128
    ) -> None:
        super().__init__()
        self.classes = tuple(classes)
        self.input_size = int(input_size)
        self.features = nn.Sequential(
            Normalize(),
            _block(3, 32, stride=2),  # 1/2
            _block(32, 64, stride=2),  # 1/4
            _block(64, width, stride=2),  # 1/8
            _block(width, width),
            _block(width, width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, len(self.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images.

        Args:
            x: images in [0, 1], shape (N, 3, H, W).

        Returns:
            Logits, shape (N, len(classes)).
        """
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def load_model(weights: str | os.PathLike[str] | None = None) -> DemoNet:
    """Load the trained demo model.

    Args:
        weights: state-dict file; defaults to ``weights.pt`` inside this package.

    Returns:
        A :class:`DemoNet` in eval mode on the CPU, float32.

    Raises:
        FileNotFoundError: if the weights file does not exist.
        RuntimeError: if the file cannot be read or does not match :class:`DemoNet`.
    """
    path = WEIGHTS_PATH if weights is None else Path(weights)
    hint = "run `python scripts/train_demo.py` to (re)create it"
    if not path.is_file():
        raise FileNotFoundError(f"demo model weights not found at {path}; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        model = DemoNet()
        model.load_state_dict(state)
    except Exception as exc:
        raise RuntimeError(
            f"could not load demo model weights from {path} ({exc}); {hint}"
        ) from exc
    return model.eval()
