"""Agreement with independent implementations: Captum's LayerGradCam and pytorch-grad-cam.

Both run full autograd (every parameter gradient, the whole graph); camlens runs its fast path. The
maps must agree before normalisation (Captum) or after the same min-max scaling at the layer's own
resolution (pytorch-grad-cam, which only returns scaled maps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camlens
from camlens import maps
from conftest import GapNet


def _last_conv(module: nn.Module) -> str:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)][-1]


ARCHS = {
    # name: (constructor, layer); VGG's target conv is followed by ReLU(inplace=True), DenseNet's
    # `features` output by F.relu(..., inplace=True) in its forward.
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), "layer4"),
    "resnet18-layer3": (lambda: torchvision.models.resnet18(num_classes=10), "layer3"),
    "vgg11-conv": (lambda: torchvision.models.vgg11(num_classes=10), None),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), "features"),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), "features"),
}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[nn.Module, str]]:
    out = {}
    for name, (make, layer) in ARCHS.items():
        torch.manual_seed(0)
        model = make().eval()
        out[name] = (model, layer or "features." + _last_conv(model.features))
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradcam_matches_captum(arch: str, models: dict[str, tuple[nn.Module, str]]) -> None:
    from captum.attr import LayerGradCam

    model, layer = models[arch]
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    target = torch.tensor([3, 8])
    ours = camlens.GradCAM(model, layer=layer)(x, target=target)
    ref = LayerGradCam(model, model.get_submodule(layer)).attribute(
        x, target=target, relu_attributions=True
    )
    ref = ref.squeeze(1).detach()
    scale = float(ref.abs().max())
    assert scale > 0, "degenerate reference map"
    torch.testing.assert_close(ours.raw, ref, rtol=1e-4, atol=1e-4 * scale)
    if arch.startswith("vgg"):
        assert isinstance(model.get_submodule(layer), nn.Conv2d)


def _pgc_scaled(
    cls: type, model: nn.Module, layer: nn.Module, x: torch.Tensor, target: list[int]
) -> np.ndarray:
    """pytorch-grad-cam's map, min-max scaled at the layer's resolution (its resize switched off)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[layer])
    cam.get_target_width_height = lambda _x: None  # keep the layer's resolution
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target])
    finally:
        cam.activations_and_grads.release()


# pytorch-grad-cam adds epsilons to the denominators of XGrad-CAM (1e-7 to the activation sum) and
# Grad-CAM++ (1e-6); camlens uses the papers' exact formulas. A randomly initialised MobileNetV2 has
# activations of ~1e-9 at `features`, where that epsilon dominates, so those two are compared on ResNet.
PGC = [
    (name, arch)
    for arch in ["resnet18", "resnet18-layer3", "mobilenet_v2"]
    for name in ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM"]
    if arch.startswith("resnet") or name not in ("XGradCAM", "GradCAMPlusPlus")
]


@pytest.mark.parametrize(("name", "arch"), PGC)
def test_methods_match_pytorch_grad_cam(
    name: str, arch: str, models: dict[str, tuple[nn.Module, str]]
) -> None:
    import pytorch_grad_cam

    model, layer = models[arch]
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)
    target = [1, 6]
    if name == "GradCAMPlusPlus":
        # pytorch-grad-cam adds 1e-6 to Grad-CAM++'s denominator; with random weights the gradients
        # are ~1e-4 and that epsilon would dominate. Compare on a model whose logits are scaled up
        # (same maps up to the scale for every other method), where its epsilon is negligible.
        model = nn.Sequential(model, _Scale(1e4)).eval()
        layer = "0." + layer
    ours = getattr(camlens, name)(model, layer=layer)(x, target=target)
    ref = _pgc_scaled(getattr(pytorch_grad_cam, name), model, model.get_submodule(layer), x, target)
    ours_scaled = maps.normalize(ours.raw).numpy()
    assert float(ref.max()) > 0.5
    np.testing.assert_allclose(ours_scaled, ref, atol=2e-3)


def test_pgc_records_an_activation_that_inplace_relu_overwrote(
    models: dict[str, tuple[nn.Module, str]],
) -> None:
    """Why pytorch-grad-cam is not a reference on VGG: its hook keeps the conv output, which the next
    ReLU(inplace=True) overwrites, so it explains post-ReLU values. camlens keeps the true output (and
    agrees with Captum there, above)."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    model, layer = models["vgg11-conv"]
    x = torch.rand(1, 3, 64, 64)
    ag = ActivationsAndGradients(model, [model.get_submodule(layer)], None, True)
    try:
        ag(x)
        theirs = ag.activations[0]
    finally:
        ag.release()
    with camlens.LayerCapture([(layer, model.get_submodule(layer))], grad=False) as cap:
        model(x)
    ours = cap.activations[layer]
    assert float(ours.min()) < 0 <= float(theirs.min())
    torch.testing.assert_close(theirs, ours.clamp(min=0))


def test_eigencam_matches_pytorch_grad_cam_projection() -> None:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    torch.manual_seed(3)
    acts = torch.rand(3, 16, 5, 7)
    ref = torch.from_numpy(get_2d_projection(acts.numpy()))
    ours = maps.eigencam_map(acts)
    for b in range(3):  # an SVD's sign is arbitrary; camlens fixes it, pytorch-grad-cam does not
        sign = 1.0 if float((ours[b] * ref[b]).sum()) >= 0 else -1.0
        torch.testing.assert_close(ours[b], sign * ref[b], rtol=1e-4, atol=1e-5)


def test_gradcampp_weights_follow_the_paper_where_pgc_epsilon_dominates() -> None:
    # tiny gradients: the paper's weights are scale-consistent, alpha*relu(g) = g / (2 + S g) for g > 0
    acts = torch.rand(1, 2, 3, 3)
    grads = torch.rand(1, 2, 3, 3) * 1e-4
    s = acts.sum(dim=(2, 3), keepdim=True)
    expected = (grads / (2 + s * grads)).sum(dim=(2, 3))
    torch.testing.assert_close(maps.gradcampp_weights(acts, grads), expected, rtol=1e-5, atol=0)


def test_gap_model_cam_equals_captum_scaled(gapnet: GapNet) -> None:
    from captum.attr import LayerGradCam

    x = torch.rand(2, 3, 16, 16)
    cam = camlens.CAM(gapnet, layer="features")(x, target=[0, 4])
    ref = LayerGradCam(gapnet, gapnet.features).attribute(
        x, target=torch.tensor([0, 4]), relu_attributions=True
    )
    z = cam.raw[0].numel()
    torch.testing.assert_close(cam.raw / z, ref.squeeze(1).detach(), rtol=1e-4, atol=1e-7)


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_torchcam_gradcampp_never_applies_its_denominator(
    models: dict[str, tuple[nn.Module, str]],
) -> None:
    """Why torchcam 0.5.0 is not a reference for Grad-CAM++: ``alpha[idx][mask].div_(...)`` divides
    a copy (boolean indexing copies), so its alpha stays ``g**2`` and its weights are
    ``sum_ij g**2 ReLU(g)``. camlens applies the paper's denominator, from the same activations and
    gradients."""
    from torchcam.methods import GradCAMpp

    model, layer = models["resnet18"]
    torch.manual_seed(5)
    x = torch.randn(1, 3, 64, 64)
    extractor = GradCAMpp(model, target_layer=layer)
    try:
        out = model(x)
        target = int(out[0].argmax())
        theirs = extractor(target, out, normalized=False)[0].detach()
        acts, grads = extractor.hook_a[0].detach(), extractor.hook_g[0].detach()
    finally:
        extractor.remove_hooks()
    as_coded = (grads.pow(2) * grads.relu()).flatten(2).sum(-1)
    torch.testing.assert_close(theirs, maps.weighted_sum(acts, as_coded).relu(), rtol=1e-5, atol=0)
    paper = maps.gradcampp_weights(acts, grads)
    assert not torch.allclose(paper / paper.abs().max(), as_coded / as_coded.abs().max(), atol=1e-2)
    ours = camlens.GradCAMPlusPlus(model, layer=layer)(x, target=target).raw
    torch.testing.assert_close(ours, maps.weighted_sum(acts, paper).relu(), rtol=1e-4, atol=1e-6)
