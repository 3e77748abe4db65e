"""Issue 11, first half: the gradient family, second order, input gradients and transformers.

Each method is checked against pytorch-grad-cam or torchcam on torchvision models (random weights)
and on the bundled demo model, and by the identities the issue names. Where a peer differs from the
paper, the test states the conversion: the peer's output is rebuilt from camlens's own quantities
with the peer's formula, to float tolerance, and camlens's output is the paper's formula on the same
quantities.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlens
from camlens import maps
from camlens.capture import (
    AttentionCapture,
    LayerCapture,
    attention_blocks,
    layer_gradients_and_hvp,
    paused,
    resolve_layers,
)
from conftest import hook_count

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


class _Scale(nn.Module):
    """Logits times a constant: the same maps, up to the scale, for every method here; large enough
    that a peer's epsilon (1e-6 in pytorch-grad-cam's Grad-CAM++) no longer matters."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def _resnet18() -> nn.Module:
    """ResNet-18 with random weights, and batch norms with random statistics and affine parameters
    (at initialisation they are the identity, and FullGrad's biases would all be zero)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _resnet18()


@pytest.fixture(scope="module")
def demo() -> nn.Module:
    from camlens.demo import load_model

    return load_model()


@pytest.fixture(scope="module")
def demo_images() -> torch.Tensor:
    from camlens.demo import make_dataset

    return make_dataset(2, seed=3)[0]


def _case(name: str, resnet: nn.Module, demo: nn.Module, demo_images: torch.Tensor):  # type: ignore[no-untyped-def]
    """(model, layer name, input, targets) for a case id."""
    torch.manual_seed(2)
    if name == "demo":
        return demo, "features", demo_images, [0, 2]
    return resnet, name.split("-")[1], torch.rand(2, 3, 64, 64), [1, 6]


CASES = ["resnet18-layer4", "resnet18-layer3", "demo"]


def _pgc(
    cls: type,
    model: nn.Module,
    layers: list[nn.Module],
    x: torch.Tensor,
    targets: list | None,
    resize: bool = False,
    **kwargs: object,
) -> np.ndarray:
    """pytorch-grad-cam's map; min-max scaled at the layer's resolution unless ``resize``."""
    cam = cls(model=model, target_layers=layers, **kwargs)
    if not resize:
        cam.get_target_width_height = lambda _x: None
    try:
        return cam(input_tensor=x, targets=targets)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # its backward fills every .grad of the shared model


def _class_targets(classes: list[int]) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(c) for c in classes]


def _softmax_targets(classes: list[int]) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(c) for c in classes]


def _softmax_target(classes: list[int]):  # type: ignore[no-untyped-def]
    idx = torch.tensor(classes)
    return lambda out: out.softmax(1)[torch.arange(len(classes)), idx]


# ---- Grad-CAM element-wise, Eigen-Grad-CAM -------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_gradcam_elementwise_matches_pytorch_grad_cam(case, resnet, demo, demo_images) -> None:  # type: ignore[no-untyped-def]
    import pytorch_grad_cam

    model, layer, x, t = _case(case, resnet, demo, demo_images)
    ours = camlens.GradCAMElementWise(model, layer=layer)(x, target=t)
    ref = _pgc(
        pytorch_grad_cam.GradCAMElementWise,
        model,
        [model.get_submodule(layer)],
        x,
        _class_targets(t),
    )
    assert float(ref.max()) > 0.5
    # pytorch-grad-cam scales by max + 1e-7: negligible against maps of order 1e-4 and more
    np.testing.assert_allclose(maps.normalize(ours.raw).numpy(), ref, atol=1e-4)
    # element-wise differs from HiResCAM where channels disagree in sign
    hires = camlens.HiResCAM(model, layer=layer)(x, target=t)
    assert not torch.allclose(maps.normalize(hires.raw), maps.normalize(ours.raw), atol=1e-2)


@pytest.mark.parametrize("case", ["resnet18-layer3", "demo"])
def test_eigengradcam_matches_pytorch_grad_cam_up_to_the_component_sign(
    case, resnet, demo, demo_images
) -> None:  # type: ignore[no-untyped-def]
    """pytorch-grad-cam keeps whatever sign its SVD returns, then takes the ReLU; camlens fixes the
    sign (the map correlates with the HiResCAM map), and its counterfactual is the other sign. So
    each of pytorch-grad-cam's maps is camlens's map or camlens's counterfactual map."""
    import pytorch_grad_cam

    model, layer, x, t = _case(case, resnet, demo, demo_images)
    cam = camlens.EigenGradCAM(model, layer=layer)
    ours, other = cam(x, target=t), cam(x, target=t, counterfactual=True)
    ref = _pgc(
        pytorch_grad_cam.EigenGradCAM, model, [model.get_submodule(layer)], x, _class_targets(t)
    )
    for b in range(2):
        err = [
            float(np.abs(maps.normalize(r.raw[b : b + 1]).numpy()[0] - ref[b]).max())
            for r in (ours, other)
        ]
        assert min(err) < 1e-4, err
    # the chosen sign: the map correlates positively with the summed terms (HiResCAM's signed map)
    with LayerCapture([(layer, model.get_submodule(layer))]) as cap:
        out = model(x)
    g = cap.gradients(out[torch.arange(2), torch.tensor(t)])[layer]
    terms = g * cap.activations[layer].detach()
    signed = maps.eigencam_map(terms)
    hires = terms.sum(1)
    assert bool(((signed * (hires - hires.mean((1, 2), keepdim=True))).sum((1, 2)) > 0).all())
    torch.testing.assert_close(ours.raw, signed.clamp(min=0))


# ---- ShapleyCAM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_shapleycam_matches_pytorch_grad_cam_on_a_softmax_target(
    case, resnet, demo, demo_images
) -> None:  # type: ignore[no-untyped-def]
    """A softmax probability has curvature, so the Hessian term matters (the map is not Grad-CAM's)."""
    import pytorch_grad_cam

    model, layer, x, t = _case(case, resnet, demo, demo_images)
    target = _softmax_target(t)
    ours = camlens.ShapleyCAM(model, layer=layer)(x, target=target)
    ref = _pgc(
        pytorch_grad_cam.ShapleyCAM, model, [model.get_submodule(layer)], x, _softmax_targets(t)
    )
    assert float(ref.max()) > 0.5
    np.testing.assert_allclose(maps.normalize(ours.raw).numpy(), ref, atol=1e-4)
    # the Hessian-vector product is not zero, and the map is not Grad-CAM's
    with LayerCapture([(layer, model.get_submodule(layer))]) as cap:
        out = model(x)
    g, hv = layer_gradients_and_hvp(target(out), cap.activations)
    assert float(hv[layer].abs().max()) > 1e-3 * float(g[layer].abs().max())
    gc = camlens.GradCAM(model, layer=layer)(x, target=target)
    assert float((maps.normalize(gc.raw) - maps.normalize(ours.raw)).abs().max()) > 1e-2


@pytest.mark.parametrize("case", ["resnet18-layer3", "demo"])
def test_shapleycam_equals_gradcam_for_the_logits_of_a_relu_network(
    case, resnet, demo, demo_images
) -> None:  # type: ignore[no-untyped-def]
    """After the layer, ResNet and the demo model are piecewise linear: the Hessian of a logit is
    zero (almost everywhere) and ShapleyCAM is Grad-CAM."""
    model, layer, x, t = _case(case, resnet, demo, demo_images)
    with LayerCapture([(layer, model.get_submodule(layer))]) as cap:
        out = model(x)
    _, hv = layer_gradients_and_hvp(out[torch.arange(2), torch.tensor(t)], cap.activations)
    assert float(hv[layer].abs().max()) == 0.0
    shapley = camlens.ShapleyCAM(model, layer=layer)(x, target=t)
    grad = camlens.GradCAM(model, layer=layer)(x, target=t)
    torch.testing.assert_close(shapley.raw, grad.raw, rtol=1e-5, atol=1e-7)


def test_shapleycam_on_a_vit_with_fused_attention() -> None:
    """Fused attention kernels have no double backward; camlens computes attention step by step
    for second derivatives (in this thread only) and gets the same map as an unfused model."""
    import timm

    torch.manual_seed(0)
    fused = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4
    ).eval()
    plain = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4
    ).eval()
    plain.load_state_dict(fused.state_dict())
    for blk in plain.blocks:
        blk.attn.fused_attn = False
    x = torch.rand(2, 3, 32, 32)
    target = _softmax_target([1, 3])
    a = camlens.ShapleyCAM(fused, layer="blocks.1.norm1")(x, target=target)
    b = camlens.ShapleyCAM(plain, layer="blocks.1.norm1")(x, target=target)
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-6 * float(b.raw.max()))
    assert float(a.raw.max()) > 0 and hook_count(fused) == 0


# ---- Smooth Grad-CAM++ ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["resnet18-layer3", "demo"])
def test_smoothgradcampp_without_noise_is_gradcampp(case, resnet, demo, demo_images) -> None:  # type: ignore[no-untyped-def]
    model, layer, x, t = _case(case, resnet, demo, demo_images)
    if case == "demo":
        # at the demo's last layer (GAP + linear after it) the gradient is the classifier's weight
        # over Z whatever the input: noise changes nothing there
        smooth = camlens.SmoothGradCAMPlusPlus(model, layer=layer)(x, target=t)
        plain = camlens.GradCAMPlusPlus(model, layer=layer)(x, target=t)
        torch.testing.assert_close(smooth.raw, plain.raw)
        layer = "features.3"
    smooth = camlens.SmoothGradCAMPlusPlus(model, layer=layer, std=0.0, num_samples=3)(x, target=t)
    plain = camlens.GradCAMPlusPlus(model, layer=layer)(x, target=t)
    torch.testing.assert_close(smooth.raw, plain.raw, rtol=1e-5, atol=1e-6 * float(plain.raw.max()))
    noisy = camlens.SmoothGradCAMPlusPlus(model, layer=layer)(x, target=t)
    assert not torch.allclose(noisy.raw, plain.raw, rtol=1e-3)


def test_smoothgradcampp_follows_the_paper_and_torchcam_its_own_formula(resnet) -> None:  # type: ignore[no-untyped-def]
    """Both draw the same noise (a seeded generator; torchcam the global one, seeded alike), so
    the noisy gradients are the same. torchcam differs from the paper three ways: its denominator
    sums ``A * D3`` over positions instead of ``sum(A) * D3``, its ReLU takes the last noisy copy's
    gradient instead of the mean ``D1``, and its map weights the last noisy copy's activations.
    Its output is that formula on camlens's noisy gradients; camlens's is the paper's."""
    from torchcam.methods import SmoothGradCAMpp

    model, layer, n, seed = resnet, "layer3", 3, 5
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    ours = camlens.SmoothGradCAMPlusPlus(model, layer=layer, num_samples=n, seed=seed)(x, target=3)
    with SmoothGradCAMpp(model, layer, num_samples=n, std=0.3, input_shape=(3, 64, 64)) as ex:
        scores = model(x)
        torch.manual_seed(seed)
        theirs = ex(3, scores, normalized=False)[0]
    # the noisy gradients, by hand
    gen = torch.Generator().manual_seed(seed)
    grads, acts = [], []
    module = model.get_submodule(layer)
    for _ in range(n):
        noisy = x + torch.randn(x.shape[1:], generator=gen) * 0.3
        with LayerCapture([(layer, module)]) as cap:
            out = model(noisy)
        grads.append(cap.gradients(out[:, 3])[layer])
        acts.append(cap.activations[layer].detach())
    with LayerCapture([(layer, module)], grad=False) as cap:
        model(x)
    a = cap.activations[layer]
    g = torch.stack(grads)
    d1, d2, d3 = g.mean(0), g.pow(2).mean(0), g.pow(3).mean(0)
    paper = (maps.smooth_gradcampp_weights(a, d1, d2, d3)[:, :, None, None] * a).sum(1).relu()
    torch.testing.assert_close(ours.raw, paper, rtol=1e-5, atol=1e-6 * float(paper.max()))
    alpha = d2 / (2 * d2 + (d3 * a).sum((2, 3), keepdim=True) + 1e-8)  # torchcam's eps
    w = (alpha * g[-1].relu()).sum((2, 3))
    conversion = (w[:, :, None, None] * acts[-1]).sum(1).relu()
    torch.testing.assert_close(theirs, conversion, rtol=1e-5, atol=1e-6 * float(conversion.max()))
    assert float(paper.max()) > 0 and not torch.allclose(paper, conversion, rtol=1e-2)


def test_smoothgradcampp_is_reproducible_and_independent_of_the_batch(resnet) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 3, 64, 64)
    cam = camlens.SmoothGradCAMPlusPlus(resnet, layer="layer3", num_samples=2)
    torch.testing.assert_close(cam(x, target=2).raw, cam(x, target=2).raw, rtol=0, atol=0)
    one = cam(x[1:2], target=2).raw
    torch.testing.assert_close(cam(x, target=2).raw[1:2], one, rtol=1e-5, atol=1e-7)
    other_seed = camlens.SmoothGradCAMPlusPlus(resnet, layer="layer3", num_samples=2, seed=1)
    assert not torch.allclose(other_seed(x[1:2], target=2).raw, one)
    for bad in ({"num_samples": 0}, {"std": -1.0}, {"seed": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            camlens.SmoothGradCAMPlusPlus(resnet, layer="layer3", **bad)


# ---- RefineCAM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "demo"])
def test_refinecam_matches_pytorch_grad_cam(arch, resnet, demo, demo_images) -> None:  # type: ignore[no-untyped-def]
    """Both multiply the layers' Grad-CAM++ maps, each scaled and resized to the input. The logits
    are scaled by 1e4 so that pytorch-grad-cam's Grad-CAM++ epsilon (1e-6) is negligible. The rest
    differs only by where the min-max scaling meets the interpolation (before it there, after it
    here; bilinear resizing keeps the extremes at the borders) and cv2's against torch's resize."""
    from pytorch_grad_cam import RefineCAM

    if arch == "demo":
        base, x, layers, t = demo, demo_images[:1], ["features.3", "features.4", "features.5"], 1
    else:
        base, x, layers, t = resnet, torch.rand(1, 3, 64, 64), ["layer2", "layer3", "layer4"], 3
    model = nn.Sequential(base, _Scale(1e4)).eval()
    names = ["0." + n for n in layers]
    ours = camlens.RefineCAM(model, layer=names)(x, target=t)
    cam = RefineCAM(model, [model.get_submodule(n) for n in names])
    try:
        ref = cam(x, _class_targets([t]))
    finally:
        for c in cam.base_cam_per_layer:
            c.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    assert ours.maps.shape == ref.shape and set(ours.per_layer) == set(names)
    np.testing.assert_allclose(ours.maps.numpy(), ref, atol=1e-4)  # 7e-6 measured
    # the refinement is the product of the scaled per-layer maps, rescaled
    expected = maps.normalize(torch.stack(list(ours.per_layer.values())).prod(0))
    torch.testing.assert_close(ours.maps, expected)
    # ... and RefineCAM is Grad-CAM++ with fuse="product"
    again = camlens.GradCAMPlusPlus(model, layer=names, fuse="product")(x, target=t)
    torch.testing.assert_close(again.maps, ours.maps)


def test_product_fusion_matches_torchcam_refinecam(resnet) -> None:  # type: ignore[no-untyped-def]
    """torchcam's RefineCAM with LayerCAM as its base (torchcam's Grad-CAM++ sums ``A * g^3`` over
    positions in its denominator, not the paper's formula) against camlens's LayerCAM with
    ``fuse="product"``. torchcam multiplies at the finest layer's resolution: the conversion scales
    camlens's raw layer maps, resizes them there and multiplies; the outputs then agree exactly."""
    from torchcam.methods import LayerCAM
    from torchcam.methods import RefineCAM as TorchcamRefine

    x = torch.rand(2, 3, 64, 64)
    layers = ["layer2", "layer3", "layer4"]
    ours = camlens.LayerCAM(resnet, layer=layers, fuse="product")(x, target=[3, 5])
    with TorchcamRefine(resnet, layers, base_method=LayerCAM, input_shape=(3, 64, 64)) as ex:
        theirs = ex([3, 5], resnet(x))[0]
    size = theirs.shape[1:]
    scaled = [
        F.interpolate(maps.normalize(r)[:, None], size=size, mode="bilinear", align_corners=False)[
            :, 0
        ]
        for r in ours.raw_per_layer.values()
    ]
    conversion = maps.normalize(maps.product_fusion(torch.stack(scaled)))
    torch.testing.assert_close(conversion, theirs, rtol=1e-4, atol=1e-5)
    up = F.interpolate(theirs[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert np.corrcoef(up.numpy().ravel(), ours.maps.numpy().ravel())[0, 1] > 0.95


# ---- KPCA-CAM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
def test_kpca_map_equals_scikit_learn_kernel_pca(kernel: str, resnet) -> None:  # type: ignore[no-untyped-def]
    """pytorch-grad-cam's projection (scikit-learn's KernelPCA) on real activations, per kernel,
    up to the eigenvector's sign, which scikit-learn fixes its own way."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    with LayerCapture([("layer3", resnet.layer3)], grad=False) as cap:
        resnet(torch.rand(2, 3, 96, 96))
    a = cap.activations["layer3"]  # (2, 256, 6, 6): 36 positions
    ref = get_2d_projection_kernel(a.numpy(), kernel, None)
    ours = maps.kpca_map(a, kernel).numpy()
    for b in range(2):
        sign = 1.0 if float((ours[b] * ref[b]).sum()) >= 0 else -1.0
        np.testing.assert_allclose(ours[b], sign * ref[b], atol=1e-5 * np.abs(ref[b]).max())
    gamma_ref = get_2d_projection_kernel(a.numpy(), kernel, 0.01)
    gamma_ours = maps.kpca_map(a, kernel, 0.01).numpy()
    for b in range(2):
        sign = 1.0 if float((gamma_ours[b] * gamma_ref[b]).sum()) >= 0 else -1.0
        np.testing.assert_allclose(
            gamma_ours[b], sign * gamma_ref[b], atol=1e-5 * np.abs(gamma_ref[b]).max()
        )


@pytest.mark.parametrize("case", ["resnet18-layer3", "demo"])
def test_kpcacam_matches_pytorch_grad_cam(case, resnet, demo, demo_images) -> None:  # type: ignore[no-untyped-def]
    import pytorch_grad_cam

    model, layer, x, _ = _case(case, resnet, demo, demo_images)
    ours = camlens.KPCACAM(model, layer=layer)(x)
    ref = _pgc(pytorch_grad_cam.KPCA_CAM, model, [model.get_submodule(layer)], x, None)
    with LayerCapture([(layer, model.get_submodule(layer))], grad=False) as cap:
        model(x)
    proj = maps.kpca_map(cap.activations[layer])
    torch.testing.assert_close(ours.raw, proj.clamp(min=0))
    for b in range(2):  # pytorch-grad-cam's sign is scikit-learn's: the ReLU keeps one side
        err = [
            float(
                np.abs(maps.normalize((s * proj[b : b + 1]).clamp(min=0)).numpy()[0] - ref[b]).max()
            )
            for s in (1.0, -1.0)
        ]
        assert min(err) < 1e-4, err
    with pytest.raises(ValueError, match="already a principal component"):
        camlens.KPCACAM(model, layer=layer)(x, eigen_smooth=True)
    with pytest.raises(ValueError, match="kernel must be one of"):
        camlens.KPCACAM(model, layer=layer, kernel="laplacian")


# ---- FEM -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["resnet18-layer3", "demo"])
def test_fem_is_the_paper_formula_and_pytorch_grad_cam_uses_the_same_masks(
    case, resnet, demo, demo_images
) -> None:  # type: ignore[no-untyped-def]
    """camlens: the k-sigma masks weighted by the channel means (the paper). pytorch-grad-cam: the
    activations weighted by each mask's area. Both from the same masks: the conversion is exact."""
    import pytorch_grad_cam

    model, layer, x, _ = _case(case, resnet, demo, demo_images)
    with LayerCapture([(layer, model.get_submodule(layer))], grad=False) as cap:
        model(x)
    a = cap.activations[layer]
    mean, std = a.mean((2, 3), keepdim=True), a.std((2, 3), keepdim=True, correction=0)
    mask = (a > mean + 2 * std).float()
    ours = camlens.FEM(model, layer=layer)(x)
    torch.testing.assert_close(ours.raw, (mask * mean).sum(1).clamp(min=0))
    assert float(mask.mean()) > 0.01
    ref = _pgc(pytorch_grad_cam.FEM, model, [model.get_submodule(layer)], x, None)
    conversion = maps.normalize((mask.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0))
    np.testing.assert_allclose(conversion.numpy(), ref, atol=1e-5)
    k1 = camlens.FEM(model, layer=layer, k=1.0)(x)  # a lower threshold: larger masks
    assert not torch.allclose(k1.raw, ours.raw)


# ---- FullGrad --------------------------------------------------------------------------------------------


class PiecewiseLinear(nn.Module):
    """Convolutions with biases, batch norm (eval), ReLU, max and average pooling, a linear head."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
        gap = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
        self.features = nn.Sequential(
            conv(2, 6, 3, padding=1),
            bn(6),
            nn.ReLU(inplace=True),
            pool(2),
            conv(6, 8, 3, padding=1, bias=False),
            bn(8),
            nn.ReLU(),
        )
        self.head = nn.Sequential(gap(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fullgrad_completeness_on_piecewise_linear_networks(dims: int) -> None:
    """x * dy/dx plus every layer's bias-gradients (convolutions, batch norms, linear layers) sum
    to the score, before absolute values: the paper's completeness."""
    torch.manual_seed(dims)
    net = PiecewiseLinear(dims).eval()
    x = torch.randn(3, 2, *([8] * dims))
    d = camlens.FullGrad(net).decompose(x, target=[0, 1, 3])
    torch.testing.assert_close(d.scores, net(x).detach()[[0, 1, 2], [0, 1, 3]])
    assert set(d.biases) == {"features.0", "features.1", "features.5", "head.2", "head.4"}
    torch.testing.assert_close(d.total(), d.scores, rtol=1e-5, atol=1e-5)
    # the biases carry a real share of the score: the input term alone is not the score
    assert float((d.input.flatten(1).sum(1) - d.scores).abs().max()) > 1e-2
    res = camlens.FullGrad(net)(x, target=[0, 1, 3])
    assert res.maps.shape == x.shape[:1] + x.shape[2:] and res.details["fullgrad_layers"] == 3


def test_fullgrad_completeness_on_resnet18(resnet) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 3, 64, 64)
    d = camlens.FullGrad(resnet).decompose(x, target=[1, 6])
    torch.testing.assert_close(d.total(), d.scores, rtol=1e-5, atol=1e-5)
    assert len(d.biases) == 21  # 20 batch norms and the classifier


def _pgc_per_channel(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's scaling: |t| min-max scaled per sample and channel, resized with cv2."""
    t = t.abs()
    t = t - t.amin((2, 3), keepdim=True)
    t = t / (t.amax((2, 3), keepdim=True) + 1e-7)
    return torch.from_numpy(
        np.stack([np.stack([cv2.resize(c.numpy(), size[::-1]) for c in s]) for s in t.float()])
    ).sum(1)


@pytest.mark.parametrize("arch", ["resnet18", "demo"])
def test_fullgrad_matches_pytorch_grad_cam_after_its_per_channel_scaling(
    arch, resnet, demo, demo_images
) -> None:  # type: ignore[no-untyped-def]
    """The same gradient terms: pytorch-grad-cam's map is rebuilt exactly from camlens's signed
    terms with its per-channel scaling. camlens's map is the paper's: each layer's term scaled as a
    whole, upsampled, summed."""
    import pytorch_grad_cam

    model, x, t = (
        (demo, demo_images, [0, 2])
        if arch == "demo"
        else (resnet, torch.rand(2, 3, 64, 64), [1, 6])
    )
    size = tuple(x.shape[2:])
    fg = camlens.FullGrad(model)
    ours = fg(x, target=t)
    d = fg.decompose(x, target=t)
    assert all(p.grad is None for p in model.parameters()) and hook_count(model) == 0
    cam = pytorch_grad_cam.FullGrad(model, [])
    try:
        ref = cam(input_tensor=x, targets=_class_targets(t))
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward filled every .grad
    spatial = {n: v for n, v in d.biases.items() if v.ndim == 4}
    theirs = _pgc_per_channel(d.input, size) + sum(
        _pgc_per_channel(v, size) for v in spatial.values()
    )
    np.testing.assert_allclose(maps.normalize(theirs).numpy(), ref, atol=1e-4)
    paper = maps.fullgrad_saliency(d.input) + sum(
        maps.upsample(maps.fullgrad_saliency(v), size) for v in spatial.values()
    )
    torch.testing.assert_close(ours.raw, paper, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.maps, maps.normalize(paper), rtol=1e-4, atol=1e-4)
    assert np.corrcoef(ours.maps.numpy().ravel(), ref.ravel())[0, 1] > 0.8


def test_fullgrad_refuses_counterfactual_and_takes_no_layer(resnet) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="same map"):
        camlens.FullGrad(resnet)(x, target=1, counterfactual=True)
    with pytest.raises(ValueError, match="takes no layer"):
        camlens.FullGrad(resnet, layer="layer4")
    smooth = camlens.FullGrad(resnet)(x, target=1, eigen_smooth=True)
    assert smooth.maps.shape == (1, 32, 32) and bool(torch.isfinite(smooth.maps).all())


# ---- LeGrad ------------------------------------------------------------------------------------------------


def _tv_vit(layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=layers,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=4,
    ).eval()
    nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision initialises the head to zero
    return net


def _timm_vit(fused: bool = True, **kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224",
        **{
            "pretrained": False,
            "img_size": 32,
            "patch_size": 8,
            "depth": 2,
            "num_classes": 4,
            **kwargs,
        },
    ).eval()
    for blk in net.blocks:
        blk.attn.fused_attn = fused
    return net


def test_legrad_matches_torchcam_on_torchvision_vit() -> None:
    from torchcam.methods import LeGrad as TorchcamLeGrad

    net = _tv_vit()
    x = torch.rand(2, 3, 32, 32)
    ours = camlens.LeGrad(net)(x, target=[1, 2])
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert ours.layer == "+".join(blocks) and ours.raw.shape == (2, 4, 4)
    with TorchcamLeGrad(net, blocks) as ex:
        theirs = ex([1, 2], net(x), normalized=False)[0]
    torch.testing.assert_close(ours.raw, theirs, rtol=1e-4, atol=1e-6 * float(theirs.max()))
    assert float(theirs.max()) > 0
    torch.testing.assert_close(ours.maps, maps.normalize(maps.upsample(theirs, (32, 32))))
    # one block at a time: the same per-block maps torchcam gives for that block alone
    last = camlens.LeGrad(net, layer=blocks[-1])(x, target=[1, 2])
    with TorchcamLeGrad(net, blocks[-1]) as ex:
        theirs_last = ex([1, 2], net(x), normalized=False)[0]
    torch.testing.assert_close(
        last.raw, theirs_last, rtol=1e-4, atol=1e-6 * float(theirs_last.max())
    )
    torch.testing.assert_close(ours.raw_per_layer[blocks[-1]], last.raw)
    assert hook_count(net) == 0 and all(p.grad is None for p in net.parameters())


def _legrad_by_hand(net: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """LeGrad on a timm ViT with explicit attention: probabilities recorded at ``attn_drop`` (the
    softmax's output, identity in eval mode), each block's tokens at its output, full autograd."""
    probs: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    hooks = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o)) for b in net.blocks
    ]
    hooks += [b.register_forward_hook(lambda m, i, o: tokens.append(o)) for b in net.blocks]
    try:
        net(x.clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    idx = torch.tensor(classes)
    rel = []
    for p, t in zip(probs, tokens, strict=True):
        logits = net.head(net.fc_norm(net.norm(t.mean(1))))
        (g,) = torch.autograd.grad(
            logits[torch.arange(len(classes)), idx].sum(), p, retain_graph=True
        )
        rel.append(g.clamp(min=0).mean((1, 2))[:, net.num_prefix_tokens :])
    return torch.stack(rel).mean(0).reshape(len(classes), 4, 4).detach()


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_legrad_on_timm_vit_equals_a_computation_by_hand(fused: bool) -> None:
    """The attention is read from F.scaled_dot_product_attention (computed step by step) or from
    an explicit softmax; either way the map is the by-hand one on the unfused model."""
    net = _timm_vit(fused)
    x = torch.rand(2, 3, 32, 32)
    ours = camlens.LeGrad(net)(x, target=[0, 3])
    assert ours.layer == "blocks.0+blocks.1"
    ref = _legrad_by_hand(_timm_vit(False), x, [0, 3])
    assert float(ref.max()) > 0
    torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))
    # the head found from the forward (norm, head) equals naming it
    named = camlens.LeGrad(net, head=("norm", "fc_norm", "head"))(x, target=[0, 3])
    torch.testing.assert_close(named.raw, ours.raw)
    by_callable = camlens.LeGrad(
        net, head=lambda model, t: model.head(model.fc_norm(model.norm(t.mean(1))))
    )(x, target=[0, 3])
    torch.testing.assert_close(by_callable.raw, ours.raw)


@pytest.mark.slow
def test_legrad_on_timm_register_tokens_and_hugging_face() -> None:
    from transformers import ViTConfig, ViTForImageClassification

    reg = _timm_vit(True, reg_tokens=4, class_token=True, img_size=(32, 64))
    x = torch.rand(2, 3, 32, 64)
    res = camlens.LeGrad(reg)(x, target=1)
    assert res.raw.shape == (2, 4, 8) and bool(torch.isfinite(res.maps).all())
    assert float(res.raw.max()) > 0
    torch.manual_seed(0)
    cfg = dict(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=16,
        intermediate_size=32,
        num_labels=4,
    )
    sdpa = ViTForImageClassification(ViTConfig(**cfg, attn_implementation="sdpa")).eval()
    eager = ViTForImageClassification(ViTConfig(**cfg, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    xs = torch.rand(2, 3, 32, 32)
    a, b = camlens.LeGrad(sdpa)(xs, target=[0, 2]), camlens.LeGrad(eager)(xs, target=[0, 2])
    assert a.raw.shape == (2, 4, 4) and float(a.raw.max()) > 0
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-6 * float(b.raw.max()))


def test_legrad_counterfactual_targets_and_refusals() -> None:
    net = _tv_vit(2)
    x = torch.rand(2, 3, 32, 32)
    cam = camlens.LeGrad(net)
    plain, cf = cam(x, target=1), cam(x, target=1, counterfactual=True)
    assert not torch.allclose(plain.raw, cf.raw)
    # a callable target scores each block's head logits
    fn = cam(x, target=lambda logits: logits[:, 1])
    torch.testing.assert_close(fn.raw, plain.raw)
    top = cam.for_targets(x, "top-2")
    torch.testing.assert_close(top[0].raw, cam(x, target=top[0].targets).raw)
    with pytest.raises(ValueError, match="eigen_smooth"):
        cam(x, eigen_smooth=True)
    with pytest.raises(ValueError, match="2-D inputs only"):
        cam(torch.rand(2, 3, 32))
    with pytest.raises(ValueError, match="not a submodule"):
        camlens.LeGrad(net, head=("encoder.lnn",))
    assert hook_count(net) == 0


def test_attention_capture_records_probabilities_and_changes_nothing() -> None:
    """The recorded probabilities are the ones the blocks use (rows sum to 1, the output is the
    model's own), a forward run paused inside the capture is not recorded, and no hook remains."""
    net = _tv_vit(2)
    x = torch.rand(2, 3, 32, 32)
    blocks = resolve_layers(net, attention_blocks(net))
    with torch.no_grad():
        plain = net(x)
    with LayerCapture(blocks, full_graph=True), AttentionCapture(blocks) as cap:
        out = net(x.clone().requires_grad_(True))
        with paused():
            recorded = dict(cap.attentions)
            net(torch.rand(2, 3, 32, 32))  # an internal forward: not recorded
        assert all(cap.attentions[n] is recorded[n] for n in recorded)
    cap.check_called()
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    for probs in cap.attentions.values():
        assert probs.shape == (2, 2, 17, 17) and probs.requires_grad
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 17))
    assert hook_count(net) == 0
    with pytest.raises(ValueError, match="no attention probabilities"):
        with AttentionCapture([("heads", net.heads)]) as none:
            net(x)
        none.check_called()


def test_fullgrad_on_a_vit() -> None:
    """FullGrad needs no layer: on a ViT it takes the input and the patch embedding's bias."""
    net = _tv_vit(2)
    x = torch.rand(2, 3, 32, 32)
    res = camlens.FullGrad(net)(x, target=[0, 3])
    assert res.maps.shape == (2, 32, 32) and res.raw.shape == (2, 32, 32)
    assert res.details["fullgrad_layers"] == 1  # conv_proj; linear layers have no spatial map
    assert bool(torch.isfinite(res.maps).all()) and float(res.raw.max()) > 0
