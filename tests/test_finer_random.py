"""Finer-CAM and RandomCAM: identities, closed forms, pytorch-grad-cam and torchcam.

Conversions: pytorch-grad-cam's ``FinerWeightedTarget`` differentiates through its softmax weights
``p_d / sum p``; camlens treats them as constants (the paper's weighted difference of logits). With
one reference the weight is 1 and the two agree as they are; with three, pytorch-grad-cam agrees
once its weights are detached. torchcam's ``FinerCAM`` is ``weighting="mean"`` with its ``gamma``.
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

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


# ---- Finer-CAM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "layercam", "gradcam++", "hirescam"])
def test_finercam_with_alpha_zero_is_its_base_method(method: str, gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    finer = camlens.FinerCAM(gapnet, layer="features", method=method, alpha=0.0)(x, target=[1, 4])
    base = camlens.get_method(method)(gapnet, layer="features")(x, target=[1, 4])
    torch.testing.assert_close(finer.raw, base.raw)
    torch.testing.assert_close(finer.scores, base.scores)


def test_finercam_on_gap_linear_is_the_difference_of_classifier_rows(gapnet: GapNet) -> None:
    """Grad-CAM of y^c - alpha sum_d w_d y^d on GAP + linear: weights (W_c - alpha sum_d w_d W_d) / Z."""
    x = torch.rand(3, 3, 16, 16)
    target = torch.tensor([0, 2, 4])
    with torch.no_grad():
        acts, out = gapnet.features(x), gapnet(x)
    dist = (out - out.gather(1, target[:, None])).abs()
    dist[torch.arange(3), target] = float("inf")
    refs = dist.argsort(dim=1)[:, :3]  # the three classes closest in logit
    p = out.softmax(1).gather(1, refs)
    p = p / p.sum(1, keepdim=True)
    w = gapnet.fc.weight
    rows = w[target] - 0.7 * (p[:, :, None] * w[refs]).sum(1)
    expected = torch.relu((rows[:, :, None, None] * acts).sum(1) / 64)
    res = camlens.FinerCAM(gapnet, layer="features", alpha=0.7)(x, target=target)
    torch.testing.assert_close(res.raw, expected, rtol=1e-4, atol=1e-7)
    assert res.details["comparisons"].tolist() == refs.tolist()
    y = out.gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(res.scores, y)  # the target's own score
    torch.testing.assert_close(
        res.details["objective"], y - 0.7 * (p * out.gather(1, refs)).sum(1), rtol=1e-5, atol=1e-6
    )


def _pgc_finer(model: nn.Module, layer: nn.Module, x: torch.Tensor, **kw: object) -> np.ndarray:
    from pytorch_grad_cam import FinerCAM

    cam = FinerCAM(model, [layer])
    cam.base_cam.get_target_width_height = lambda _x: None  # keep the layer's resolution
    try:
        return cam(x, **kw)
    finally:
        cam.base_cam.activations_and_grads.release()


@pytest.mark.parametrize("arch", ["resnet18", "demo"])
def test_finercam_equals_pgc_with_one_reference(arch: str, resnet: nn.Module) -> None:
    if arch == "demo":
        from camlens.demo import load_model, make_dataset

        model, layer = load_model(), "features"
        x = make_dataset(2, seed=2)[0]
        target = 1
    else:
        model, layer, x, target = resnet, "layer4", torch.rand(2, 3, 64, 64), 3
    ref = _pgc_finer(
        model, model.get_submodule(layer), x, comparison_categories=[1], target_idx=target
    )
    ours = camlens.FinerCAM(model, layer=layer, comparisons=1)(x, target=target)
    assert float(ref.max()) > 0.5
    np.testing.assert_allclose(maps.normalize(ours.raw).numpy(), ref, atol=2e-4)


def test_finercam_equals_pgc_with_three_references_once_its_weights_are_constants(
    resnet: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytorch_grad_cam.finer_cam as pgc_finer
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    class ConstantWeights(FinerWeightedTarget):  # type: ignore[misc]
        def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
            prob = torch.softmax(model_output, dim=-1).detach()
            w = prob[..., self.comparison_categories]
            diff = (
                model_output[..., [self.main_category]]
                - self.alpha * model_output[..., self.comparison_categories]
            )
            return (w * diff).sum(-1) / w.sum(-1)

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = camlens.FinerCAM(resnet, layer="layer3")(x, target=3)
    stock = _pgc_finer(resnet, resnet.layer3, x, target_idx=3)
    monkeypatch.setattr(pgc_finer, "FinerWeightedTarget", ConstantWeights)
    converted = _pgc_finer(resnet, resnet.layer3, x, target_idx=3)
    assert float(converted.max()) > 0.5
    np.testing.assert_allclose(maps.normalize(ours.raw).numpy(), converted, atol=2e-4)
    # the gradient through pytorch-grad-cam's weights is a real difference, not noise
    assert float(np.abs(stock - converted).max()) > 1e-3


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_finercam_equals_torchcam_in_mean_weighting(method: str, resnet: nn.Module) -> None:
    from torchcam.methods import FinerCAM as TorchcamFinerCAM
    from torchcam.methods import GradCAM as TorchcamGradCAM
    from torchcam.methods import LayerCAM as TorchcamLayerCAM

    base = {"gradcam": TorchcamGradCAM, "layercam": TorchcamLayerCAM}[method]
    x = torch.rand(2, 3, 64, 64)
    with TorchcamFinerCAM(resnet, "layer4", input_shape=(3, 64, 64), base_method=base) as ext:
        out = resnet(x)
        ref = ext([3, 8], scores=out, normalized=False)[0]
    ours = camlens.FinerCAM(resnet, layer="layer4", method=method, alpha=0.6, weighting="mean")(
        x, target=[3, 8]
    )
    assert float(ref.max()) > 0
    torch.testing.assert_close(ours.raw, ref.detach(), rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_finercam_explicit_comparisons_and_refusals(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    cam = camlens.FinerCAM(gapnet, layer="features", comparisons=[2, 0], weighting="mean")
    res = cam(x, target=[2, 3])
    with torch.no_grad():
        out = gapnet(x)
    # sample 0's target is among the comparisons: it compares with class 0 alone
    expected = torch.stack([out[0, 2] - out[0, 0], out[1, 3] - (out[1, 2] + out[1, 0]) / 2])
    torch.testing.assert_close(res.details["objective"], expected)
    with pytest.raises(ValueError, match="class targets"):
        cam(x, target=lambda out: out[:, 1])
    with pytest.raises(ValueError, match="method must be one of"):
        camlens.FinerCAM(gapnet, method="scorecam")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        camlens.FinerCAM(gapnet, alpha=-1)
    with pytest.raises(ValueError, match="comparisons must be"):
        camlens.FinerCAM(gapnet, comparisons=0)
    with pytest.raises(ValueError, match="out of range"):
        camlens.FinerCAM(gapnet, layer="features", comparisons=[9])(x, target=1)


# ---- RandomCAM ---------------------------------------------------------------------------------


def test_randomcam_is_a_seeded_random_combination(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        acts = gapnet.features(x)
    for seed in (0, 3):
        w = torch.rand(8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        res = camlens.RandomCAM(gapnet, layer="features", seed=seed)(x, target=1)
        torch.testing.assert_close(res.raw, torch.relu((w[None, :, None, None] * acts).sum(1)))
    a = camlens.RandomCAM(gapnet, layer="features", seed=1)(x)
    b = camlens.RandomCAM(gapnet, layer="features", seed=2)(x)
    assert not torch.allclose(a.raw, b.raw)
    fresh = camlens.RandomCAM(gapnet, layer="features", seed=None)
    # fresh weights each call: ten draws are not all the same map (one draw may well be empty)
    draws = [fresh(x).raw for _ in range(10)]
    assert any(not torch.allclose(draws[0], d) for d in draws[1:])
    with pytest.raises(TypeError, match="seed"):
        camlens.RandomCAM(gapnet, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not use the target"):
        camlens.RandomCAM(gapnet)(x, counterfactual=True)


def test_random_weights_are_uniform_on_minus_one_one() -> None:
    w = maps.random_weights(20000, torch.Generator().manual_seed(0))
    assert float(w.min()) >= -1 and float(w.max()) < 1
    counts = torch.histc(w, bins=4, min=-1, max=1)
    assert float((counts / 5000 - 1).abs().max()) < 0.05  # as pytorch-grad-cam's U(-1, 1)
