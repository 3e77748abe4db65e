"""1-D (signals) and 3-D (volumes, video) models: every method, the matching interpolation, overlays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import maps
from conftest import make

# maps of a layer (input-space methods are checked on every dimension in test_contract.py)
CAM_METHODS = [
    c
    for c in camlens.METHODS.values()
    if not c.input_space and c.takes_layer and c.model_kind == "any"
]  # FullGrad (no layer) and LeGrad (attention): tests/test_gradient_family.py

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


class SignalNet(nn.Module):
    """An ECG-style 1-D CNN: conv blocks with batch norm and pooling, global average pool, linear."""

    def __init__(self, in_ch: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_ch, 8, 7, padding=3),
            nn.BatchNorm1d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class VolumeNet(nn.Module):
    """A CT-style 3-D CNN on one-channel volumes."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(4, 8, 3, stride=2, padding=1),
            nn.BatchNorm3d(8),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _randomise_bn(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


CASES = {
    "signal": (lambda: _randomise_bn(SignalNet()), (2, 2, 120), (30,), "linear"),
    "volume": (lambda: _randomise_bn(VolumeNet()), (2, 1, 8, 12, 16), (4, 6, 8), "trilinear"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cls", CAM_METHODS, ids=lambda c: c.name)
def test_every_method_on_1d_and_3d(cls: type, case: str) -> None:
    build, shape, layer_size, mode = CASES[case]
    net = build()
    x = torch.rand(*shape)
    cam = make(cls, net)
    res = cam(x, target=[1, 2])
    assert res.layer == "features"
    assert res.raw.shape == (2, *layer_size) and res.maps.shape == (2, *shape[2:])
    assert float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1
    assert bool(torch.isfinite(res.maps).all())
    # the map is the raw map resized with the interpolation of its dimension, then min-max scaled
    up = F.interpolate(res.raw[:, None], size=shape[2:], mode=mode, align_corners=False)[:, 0]
    torch.testing.assert_close(res.maps, maps.normalize(up), rtol=1e-5, atol=1e-6)
    # not constant: the map before the ReLU varies over positions for every sample
    if cls.uses_target and cls is not camlens.ReciproCAM:  # probabilities: no counterfactual
        signed = res.raw - cam(x, target=[1, 2], counterfactual=True).raw
    else:
        signed = res.raw
    assert bool((signed.flatten(1).std(dim=1) > 0).all())
    # CAM and Grad-CAM agree up to Z on these GAP + linear heads
    if cls is camlens.CAM:
        g = camlens.GradCAM(net)(x, target=[1, 2])
        torch.testing.assert_close(g.raw * g.raw[0].numel(), res.raw, rtol=1e-4, atol=1e-6)


class OneRegionNet(nn.Module):
    """Conv features whose score reads one known region of the layer's output only."""

    def __init__(self, dims: int, region: tuple[slice, ...]) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
        self.features = nn.Sequential(
            conv(1, 6, 3, padding=1), nn.Tanh(), conv(6, 6, 3, stride=2, padding=1)
        )
        self.region = region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        s = f[(slice(None), slice(None), *self.region)].pow(2).flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


@pytest.mark.parametrize(
    ("dims", "shape", "region"),
    [
        (1, (2, 1, 64), (slice(20, 24),)),
        (3, (2, 1, 8, 16, 16), (slice(1, 2), slice(2, 4), slice(5, 6))),
    ],
)
def test_the_region_that_matters_lights_up(
    dims: int, shape: tuple[int, ...], region: tuple[slice, ...]
) -> None:
    net = OneRegionNet(dims, region).eval()
    x = torch.rand(*shape)
    res = camlens.HiResCAM(net)(x, target=0)
    assert res.layer == "features"
    inside = torch.zeros(res.raw.shape[1:], dtype=torch.bool)
    inside[region] = True
    for b in range(2):
        assert torch.equal(res.raw[b] > 0, inside)
        # the full-resolution map peaks where the region lies (stride 2)
        peak = torch.unravel_index(res.maps[b].argmax(), res.maps.shape[1:])
        for p, sl in zip(peak, region, strict=True):
            assert 2 * sl.start - 1 <= int(p) <= 2 * sl.stop


def test_video_model_r3d_18() -> None:
    import torchvision

    net = torchvision.models.video.r3d_18(num_classes=4).eval()
    x = torch.rand(1, 3, 8, 32, 32)
    cam = camlens.GradCAM(net)
    res = cam(x, target=2)
    assert res.layer == "layer4"
    assert res.raw.shape == (1, 1, 2, 2) and res.maps.shape == (1, 8, 32, 32)
    up = F.interpolate(res.raw[:, None], size=(8, 32, 32), mode="trilinear", align_corners=False)[
        :, 0
    ]
    torch.testing.assert_close(res.maps, maps.normalize(up))
    c = camlens.CAM(net)(x, target=2)
    torch.testing.assert_close(c.raw, res.raw * 4, rtol=1e-4, atol=1e-6 * float(c.raw.max()))


def test_overlays_through_cam_result() -> None:
    sig_net, vol_net = _randomise_bn(SignalNet()), _randomise_bn(VolumeNet())
    signals = torch.randn(2, 2, 120)
    one_d = camlens.GradCAM(sig_net)(signals, target=0)
    images = one_d.overlay(signals)
    assert len(images) == 2
    for img in images:
        assert img.mode == "RGB" and img.size[0] == 800
        assert len(set(img.getdata())) > 20  # a plot, not a blank canvas
    volumes = torch.rand(2, 1, 8, 12, 16)
    three_d = camlens.GradCAM(vol_net)(volumes, target=1)
    tiles = three_d.overlay(volumes, alpha=0.6)
    assert len(tiles) == 2 and all(t.mode == "RGB" for t in tiles)
    # 8 slices along depth on a 3 x 3 grid; each 12 x 16 slice upscaled to at least 64 px
    assert tiles[0].size[0] >= 3 * 16 * 6 and tiles[0].size[1] >= 3 * 12 * 6
    with pytest.raises(ValueError, match="one image per map"):
        three_d.overlay(volumes[:1])
