"""Shared test set-up: the torchvision CPU shim and small models with known structure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import tv_cpu_shim  # noqa: E402,F401  (must precede any torchvision import)

# Options that keep a costly method cheap in the tests that run every registered method on toy models
# (SS-CAM and IS-CAM run many masked forwards per channel at their defaults); the methods' own tests
# check their defaults, and every contract must hold whatever these values are.
CHEAP: dict[str, dict[str, Any]] = {
    "sscam": {"num_samples": 2, "std": 0.3, "top_k": 4},
    "iscam": {"steps": 2, "top_k": 4},
}


def make(cls: type, model: nn.Module, **options: Any) -> Any:
    """``cls(model, **options)``, with :data:`CHEAP` options under the given ones."""
    return cls(model, **{**CHEAP.get(getattr(cls, "name", ""), {}), **options})


class GapNet(nn.Module):
    """Conv features -> global average pool -> linear: the head for which CAM and Grad-CAM agree."""

    def __init__(
        self, dims: int = 2, in_ch: int = 3, width: int = 8, classes: int = 5, inplace: bool = True
    ) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
        self.features = nn.Sequential(
            conv(in_ch, width, 3, padding=1),
            nn.ReLU(inplace=inplace),
            conv(width, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.pool = pool(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class ConvHead(nn.Module):
    """A head that is not GAP + linear: gradients vary over space, so HiResCAM != Grad-CAM."""

    def __init__(self, classes: int = 4, inplace: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)
        )
        self.head = nn.Sequential(
            nn.ReLU(inplace=inplace),
            nn.Conv2d(6, 3, 3),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def out_of_place_copy(model: nn.Module) -> nn.Module:
    """The same weights in a copy whose ReLUs are not in place (for plain-autograd references)."""
    import copy

    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return twin


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def gapnet() -> GapNet:
    return GapNet().eval()


@pytest.fixture
def convhead() -> ConvHead:
    m = ConvHead().eval()
    m(torch.rand(1, 3, 12, 12))  # materialise the lazy layer
    return m
