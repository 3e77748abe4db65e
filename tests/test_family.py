"""Score-CAM, Ablation-CAM, guided backprop, Guided Grad-CAM, smoothing and several layers."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlens
from camlens import maps
from conftest import GapNet, hook_count

# ---- Ablation-CAM ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gapnet", "resnet18"])
def test_ablation_fx_split_equals_hook_fallback(arch: str) -> None:
    model = (
        GapNet().eval() if arch == "gapnet" else torchvision.models.resnet18(num_classes=7).eval()
    )
    layer = "features" if arch == "gapnet" else "layer3"
    x = torch.rand(2, 3, 48, 48)
    fx = camlens.AblationCAM(model, layer=layer, split="fx", batch_size=50)
    hook = camlens.AblationCAM(model, layer=layer, split="hook", batch_size=64)
    a, b = fx(x, target=[1, 4]), hook(x, target=[1, 4])
    assert (a.details["split"], b.details["split"]) == ("fx", "hook")
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-5 * float(b.raw.max()))
    assert float(a.raw.max()) > 0
    assert hook_count(model) == 0


def test_ablation_weights_match_closed_form_for_gap_linear(gapnet: GapNet) -> None:
    x = torch.rand(3, 3, 16, 16)
    cls = torch.tensor([0, 2, 4])
    with torch.no_grad():
        acts = gapnet.features(x)
        y = gapnet(x).gather(1, cls[:, None]).squeeze(1)
    # zeroing channel k removes W[c, k] * mean(A_k) from the logit
    w = gapnet.fc.weight[cls] * acts.mean(dim=(2, 3)) / y[:, None]
    expected = F.relu((w[:, :, None, None] * acts).sum(1))
    res = camlens.AblationCAM(gapnet, layer="features")(x, target=cls)
    torch.testing.assert_close(res.raw, expected, rtol=1e-4, atol=1e-6)


def test_ablation_falls_back_to_hook_when_fx_cannot_trace() -> None:
    class Dynamic(GapNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x)
            if float(f.mean()) > -1:  # data-dependent control flow: fx cannot trace this
                f = f * 1.0
            return self.fc(self.pool(f).flatten(1))

    net = Dynamic().eval()
    cam = camlens.AblationCAM(net, layer="features")
    res = cam(torch.rand(1, 3, 16, 16), target=0)
    assert res.details["split"] == "hook" and res.maps.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="split='hook'"):
        camlens.AblationCAM(net, layer="features", split="fx")(torch.rand(1, 3, 16, 16), target=0)


# ---- Score-CAM ---------------------------------------------------------------------------------


class MaskLinear(nn.Module):
    """The score is linear in the input, so Score-CAM's weights have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(1, 3, 2, stride=2)
        with torch.no_grad():  # positive activations and weights: a map that is not empty
            self.feat.weight.abs_()
            self.feat.bias.fill_(0.1)
        self.v = nn.Parameter(torch.rand(1, 1, 8, 8) - 0.2)
        self.b = nn.Parameter(torch.tensor([0.5, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.feat(x)  # the explained layer: its channels become masks
        s = (x * self.v).flatten(1).sum(1, keepdim=True)
        return torch.cat([s, -s], dim=1) + self.b


def _hand_scorecam(model: MaskLinear, x: torch.Tensor, subtract: bool) -> torch.Tensor:
    acts = model.feat(x).detach()  # (B, 3, 4, 4)
    out = []
    for i in range(x.shape[0]):
        w = []
        for k in range(acts.shape[1]):
            m = F.interpolate(
                acts[i, k][None, None], size=(8, 8), mode="bilinear", align_corners=False
            )[0, 0]
            m = (m - m.min()) / (m.max() - m.min())
            score = (x[i, 0] * m * model.v[0, 0]).sum() + model.b[0]  # class 0 on the masked input
            baseline = model.b[0]  # class 0 on the all-zeros image
            w.append(float(score - baseline) if subtract else float(score))
        out.append(F.relu((torch.tensor(w)[:, None, None] * acts[i]).sum(0)))
    return torch.stack(out)


def test_scorecam_matches_hand_computed_result_on_a_linear_score() -> None:
    model = MaskLinear().eval()
    x = torch.rand(2, 1, 8, 8)
    res = camlens.ScoreCAM(model, layer="feat", batch_size=2)(x, target=0)
    torch.testing.assert_close(
        res.raw, _hand_scorecam(model, x, subtract=True), rtol=1e-4, atol=1e-5
    )
    raw = camlens.ScoreCAM(model, layer="feat", subtract_baseline=False)(x, target=0)
    torch.testing.assert_close(
        raw.raw, _hand_scorecam(model, x, subtract=False), rtol=1e-4, atol=1e-5
    )
    assert float(res.raw.max()) > 0 and not torch.allclose(res.raw, raw.raw)


def test_scorecam_top_k_and_batch_size(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    full = camlens.ScoreCAM(gapnet, layer="features", batch_size=3)(x, target=1)
    one = camlens.ScoreCAM(gapnet, layer="features", batch_size=100)(x, target=1)
    torch.testing.assert_close(full.raw, one.raw, rtol=1e-5, atol=1e-6)
    all_k = camlens.ScoreCAM(gapnet, layer="features", top_k=8)(x, target=1)
    torch.testing.assert_close(all_k.raw, full.raw, rtol=1e-5, atol=1e-6)
    few = camlens.ScoreCAM(gapnet, layer="features", top_k=2)(x, target=1)
    assert few.maps.shape == full.maps.shape and not torch.allclose(few.raw, full.raw)


# ---- guided backprop -----------------------------------------------------------------------------


class _RefGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return g * (x > 0).float() * (g > 0).float()


class _RefReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RefGuidedReLU.apply(x)


def _swap_relus(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _RefReLU())
    return twin


def test_guided_backprop_matches_module_swap_reference_and_leaves_model_intact() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    ref_model = _swap_relus(model)
    xr = x.clone().requires_grad_(True)
    ref_model(xr)[:, 3].sum().backward()
    ours = camlens.GuidedBackprop(model)(x, target=3)
    assert all(p.grad is None for p in model.parameters())  # only the input gradient was computed
    assert ours.input_maps.shape == (2, 3, 32, 32) and ours.maps.shape == (2, 32, 32)
    torch.testing.assert_close(
        ours.input_maps, xr.grad, rtol=1e-4, atol=1e-6 * float(xr.grad.abs().max())
    )
    # one value per pixel: max over channels of |gradient| (Simonyan et al. 2014), min-max scaled
    torch.testing.assert_close(ours.raw, xr.grad.abs().amax(1))
    torch.testing.assert_close(ours.maps, maps.normalize(xr.grad.abs().amax(1)))
    # guided gradients differ from plain gradients, and the model still gives plain ones afterwards
    x2 = x.clone().requires_grad_(True)
    out = model(x2)
    out[:, 3].sum().backward()
    assert not torch.allclose(x2.grad, xr.grad)
    plain_ref = x.clone().requires_grad_(True)
    copy.deepcopy(model)(plain_ref)[:, 3].sum().backward()
    torch.testing.assert_close(x2.grad, plain_ref.grad)
    assert hook_count(model) == 0


def test_guided_backprop_handles_functional_relu() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.c(x), inplace=True).mean((2, 3)))

    m = Functional().eval()
    x = torch.rand(1, 3, 8, 8)
    xr = x.clone().requires_grad_(True)
    h = _RefGuidedReLU.apply(m.c(xr))
    m.fc(h.mean((2, 3)))[:, 1].sum().backward()
    torch.testing.assert_close(camlens.GuidedBackprop(m)(x, target=1).input_maps, xr.grad)


def test_guided_gradcam_is_product_of_guided_backprop_and_gradcam(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    gg = camlens.GuidedGradCAM(gapnet, layer="features")(x, target=[1, 2])
    gb = camlens.GuidedBackprop(gapnet)(x, target=[1, 2])
    gc = camlens.GradCAM(gapnet, layer="features")(x, target=[1, 2])
    torch.testing.assert_close(gg.input_maps, gb.input_maps * gc.maps[:, None])
    torch.testing.assert_close(gg.raw, (gb.input_maps * gc.maps[:, None]).abs().amax(1))
    assert gg.maps.shape == (2, 16, 16) and gg.layer == "features"
    assert float(gg.maps.min()) == 0 and float(gg.maps.max()) == 1


# ---- smoothing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "eigencam"]
)
def test_smoothing_keeps_range_and_shape(name: str, gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 20, 20)
    cam = camlens.get_method(name)(gapnet, layer="features")
    for kw in (
        {"aug_smooth": True},
        {"eigen_smooth": True},
        {"aug_smooth": True, "eigen_smooth": True},
    ):
        res = cam(x, target=1, **kw)
        assert res.maps.shape == (2, 20, 20) and res.raw.shape == (2, 10, 10)
        assert float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1
        assert torch.isfinite(res.maps).all()


def test_eigen_smooth_is_principal_component_of_weighted_activations(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    with camlens.LayerCapture([("features", gapnet.features)]) as cap:
        g = cap.gradients(gapnet(x)[:, 1])["features"]
    a = cap.activations["features"].detach()
    expected = maps.eigencam_map(g.mean((2, 3), keepdim=True) * a).clamp(min=0)
    res = camlens.GradCAM(gapnet, layer="features")(x, target=1, eigen_smooth=True)
    torch.testing.assert_close(res.raw, expected, rtol=1e-4, atol=1e-6)


def test_aug_smooth_averages_flips_and_scales_mapped_back(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    cam = camlens.GradCAM(gapnet, layer="features")
    plain = cam(x)  # target=None: the augmented passes must explain these same classes
    total = torch.zeros(2, 16, 16)
    for flip in (False, True):
        for size in (16, 14, 18):  # scales 1, 0.875, 1.125
            xa = x.flip(-1) if flip else x
            xa = F.interpolate(xa, size=(size, size), mode="bilinear", align_corners=False)
            m = cam(xa, target=plain.targets).maps
            m = m.flip(-1) if flip else m
            total += F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=False)[
                :, 0
            ]
    smoothed = cam(x, aug_smooth=True)
    torch.testing.assert_close(smoothed.maps, maps.normalize(total / 6), rtol=1e-4, atol=1e-5)
    assert smoothed.targets.tolist() == plain.targets.tolist()


def test_several_layers_fuse_max(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    res = camlens.LayerCAM(gapnet, layer=["features.1", "features"], fuse="max")(x, target=1)
    expected = maps.normalize(torch.maximum(res.per_layer["features.1"], res.per_layer["features"]))
    torch.testing.assert_close(res.maps, expected)


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument(gapnet: GapNet) -> None:
    x = torch.rand(1, 3, 16, 16)
    for cls in (camlens.ScoreCAM, camlens.AblationCAM):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            cls(gapnet, layer="features", batch_size=0)
    with pytest.raises(ValueError, match=r"top_k=9 is larger than the 8 channels"):
        camlens.ScoreCAM(gapnet, layer="features", top_k=9)(x)
    with pytest.raises(ValueError, match="top_k must be"):
        camlens.ScoreCAM(gapnet, layer="features", top_k=0)
    with pytest.raises(ValueError, match="split must be"):
        camlens.AblationCAM(gapnet, split="jit")
    for name in ("scorecam", "ablationcam", "gradcam", "eigencam"):
        with pytest.raises(ValueError, match="no spatial axes"):
            camlens.get_method(name)(gapnet, layer="fc")(x)
    with pytest.raises(ValueError, match="fuse must be"):
        camlens.GradCAM(gapnet, fuse="median")


# ---- nothing stale, nothing recorded twice -------------------------------------------------------


def test_ablation_hook_path_for_targets_equals_separate_calls(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    cam = camlens.AblationCAM(gapnet, layer="features", split="hook")
    both = cam.for_targets(x, [0, 1])
    for res, t in zip(both, [0, 1], strict=True):
        alone = cam(x, target=t)
        assert res.details["split"] == alone.details["split"] == "hook"
        torch.testing.assert_close(res.raw, alone.raw, rtol=0, atol=0)


class ScaledHead(GapNet):
    """A plain-float attribute read in forward: torch.fx freezes its value into the trace."""

    scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def test_ablation_fx_split_follows_the_live_model() -> None:
    net = ScaledHead().eval()
    x = torch.rand(2, 3, 16, 16)
    cam = camlens.AblationCAM(net, layer="features")

    def fresh_hook_result() -> camlens.CAMResult:
        return camlens.AblationCAM(net, layer="features", split="hook")(x, target=[1, 3])

    first = cam(x, target=[1, 3])
    assert first.details["split"] == "fx"
    torch.testing.assert_close(first.raw, fresh_hook_result().raw, rtol=1e-4, atol=1e-6)
    # a replaced head: the cached trace holds the old one, the check sees it, the model is re-traced
    torch.manual_seed(5)
    net.fc = nn.Linear(8, 5)
    res = cam(x, target=[1, 3])
    assert res.details["split"] == "fx"
    torch.testing.assert_close(res.raw, fresh_hook_result().raw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.scores, net(x)[:, [1, 3]].diagonal())
    # a flag read in forward changed since the trace: re-traced with its new value
    net.scale = -2.0
    res = cam(x, target=[1, 3])
    assert res.details["split"] == "fx"
    torch.testing.assert_close(res.raw, fresh_hook_result().raw, rtol=1e-4, atol=1e-6)
    # a root forward pre-hook, which no trace sees: the hook path, and the same maps as a fresh call
    h = net.register_forward_pre_hook(lambda m, args: (args[0].flip(-1),))
    try:
        res = cam(x, target=[1, 3])
        assert res.details["split"] == "hook"
        torch.testing.assert_close(res.raw, fresh_hook_result().raw, rtol=1e-4, atol=1e-6)
        with pytest.raises(ValueError, match="does not reproduce the model's output"):
            camlens.AblationCAM(net, layer="features", split="fx")(x, target=1)
    finally:
        h.remove()


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "guided-gradcam", "gradcam"])
def test_a_capture_records_only_the_forward_of_its_own_call(name: str, gapnet: GapNet) -> None:
    """A method run inside someone else's open capture: its forwards, internal ones included, are
    not recorded there, and the outer capture still records its own forward afterwards."""
    x = torch.rand(2, 3, 16, 16)
    with camlens.LayerCapture([("features", gapnet.features)], grad=False) as outer:
        camlens.get_method(name)(gapnet, layer="features")(x, target=1)
        assert outer.calls == {}
        gapnet(x)
    assert outer.calls == {"features": 1}
    torch.testing.assert_close(outer.activations["features"], gapnet.features(x))


def test_scorecam_skips_constant_masks_exactly() -> None:
    """Channels whose mask is constant need no forward: all ones is the input, all zeros the baseline."""

    class Counting(GapNet):
        batches: ClassVar[list[int]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.batches.append(x.shape[0])
            return super().forward(x)

    net = Counting().eval()
    with torch.no_grad():
        net.features[2].weight[:3] = 0  # channels 0-2 output their bias alone: constant maps
        net.features[2].bias[:3] = torch.tensor([0.5, -0.5, 0.0])
    x = torch.rand(1, 3, 16, 16)
    res = camlens.ScoreCAM(net, layer="features", batch_size=64)(x, target=2)
    # one forward (the call), one for the baseline image, one batch of the 5 channels that vary
    assert net.batches == [1, 1, 5]
    # the same weights as masking every channel by hand
    acts = net.features(x).detach()
    m = maps.normalize(maps.upsample(acts[0], (16, 16)))[:, None]
    with torch.no_grad():
        w = super(Counting, net).forward(x * m)[:, 2] - super(Counting, net).forward(0 * x)[:, 2]
    torch.testing.assert_close(res.raw[0], F.relu((w[:, None, None] * acts[0]).sum(0)))
