"""Shared test set-up: the torchvision CPU shim and small models with known structure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import tv_cpu_shim  # noqa: E402,F401  (must precede any torchvision import)


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


class TokenMean(nn.Module):
    """Mean over the tokens of ``(B, N, D)``: a ViT's pooling, as a module."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=1)


class PatchTokens(nn.Module):
    """A convolutional patch embedding, plus a class token in front: ``(B, 1 + gh * gw, D)``."""

    def __init__(self, in_ch: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)


class Block(nn.Module):
    """A pre-norm transformer block around ``nn.MultiheadAttention`` (torchvision's layout)."""

    def __init__(self, width: int, heads: int = 2) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GapViT(nn.Module):
    """GapNet's layout for a ViT: ``features`` (patch tokens, two blocks), ``pool`` (token mean), ``fc``.

    Patches of 2 pixels: the token grid is half the input's size, like GapNet's layer. The same
    ``forward`` (``fc(pool(features(x)).flatten(1))``) lets the contract tests derive behaviours
    (a failing head, a slow head) from either model.
    """

    def __init__(
        self, dims: int = 2, in_ch: int = 3, width: int = 8, classes: int = 5, inplace: bool = True
    ) -> None:
        super().__init__()
        if dims != 2:
            raise ValueError("GapViT is a 2-D model")
        self.features = nn.Sequential(PatchTokens(in_ch, width, 2), Block(width), Block(width))
        self.pool = TokenMean()
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


#: The test model of each ``model_kind`` a method declares.
MODELS: dict[str, type[nn.Module]] = {"any": GapNet, "transformer": GapViT}


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
