"""Shared test set-up: the torchvision CPU shim, one torch thread, slow tests, and small models with
known structure."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import tv_cpu_shim  # noqa: E402,F401  (must precede any torchvision import)

# The suite runs many small models. On shared cores, torch's OpenMP threads spin while they wait for
# each other: tests/test_core.py and test_references.py took 86.8 s with 2 threads and 31.6 s with 1
# on the 2-core CI machine under a load average of 8. One thread here and in the processes tests
# start (CAMLENS_TEST_THREADS overrides it).
THREADS = os.environ.setdefault("CAMLENS_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", THREADS)
torch.set_num_threads(int(THREADS))

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


#: Tests of other files too slow for a developer's default run, marked ``slow`` here (in one place,
#: so that their files need not change): each took 3.5-15 s of wall time on the shared 2-core CI
#: machine under a load average of 6-7 (`pytest --durations=25`). scripts/test.sh runs them.
#: New slow tests are marked in their own files with ``@pytest.mark.slow``.
SLOW_TESTS = frozenset(
    {
        "tests/test_tokens.py::test_vit_b_16_at_224",
        "tests/test_family.py::test_guided_backprop_matches_module_swap_reference_and_leaves_model_intact",
        "tests/test_evaluate.py::test_gradcam_beats_the_baselines_on_the_demo_model",
        "tests/test_family.py::test_ablation_fx_split_equals_hook_fallback[resnet18]",
        "tests/test_references.py::test_methods_match_pytorch_grad_cam[HiResCAM-mobilenet_v2]",
        "tests/test_references.py::test_methods_match_pytorch_grad_cam[GradCAMPlusPlus-resnet18]",
        "tests/test_references.py::test_methods_match_pytorch_grad_cam[HiResCAM-resnet18]",
        "tests/test_tokens.py::test_cnn_outputs_are_never_read_as_channels_last",
        "tests/test_tasks.py::test_segmentation_target_on_deeplabv3",
        "tests/test_tasks.py::test_box_targets_on_faster_rcnn",
        "tests/test_tokens.py::test_real_token_models_grid_prefix_and_layer[hf-vit]",
        "tests/test_tokens.py::test_real_token_models_grid_prefix_and_layer[timm-deit-distilled]",
        "tests/test_tokens.py::test_real_token_models_grid_prefix_and_layer[torchvision-vit]",
        "tests/test_tokens.py::test_swin_t_channels_last_equals_its_permuted_norm",
        "tests/test_references.py::test_methods_match_pytorch_grad_cam[GradCAM-mobilenet_v2]",
        "tests/test_references.py::test_gradcam_matches_captum[densenet121]",
        "tests/test_shapes.py::test_video_model_r3d_18",
    }
)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


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
