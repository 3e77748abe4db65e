"""Core API: identities from the papers, the fast path against full autograd, the model left untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import maps
from conftest import MODELS, ConvHead, GapNet, hook_count, make, out_of_place_copy

ALL = list(camlens.METHODS.values())
GUIDED = [c for c in ALL if c.input_space]
# methods that explain any model (transformer-only methods run on GapViT in test_contract.py)
ANY = [c for c in ALL if c.model_kind == "any"]


def layer_of(cls: type, name: str = "features") -> str | None:
    """The layer argument for a method: methods without a layer, and transformer methods (which
    take their blocks), take none here."""
    return name if cls.takes_layer and cls.model_kind == "any" else None


def model_for(cls: type, gapnet: GapNet) -> nn.Module:
    """``gapnet`` for methods that explain any model, a GapViT for transformer methods."""
    return gapnet if cls.model_kind == "any" else MODELS[cls.model_kind]().eval()


def reference_acts_grads(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: torch.Tensor):
    """Activations and gradients by the plain route: full autograd graph, retain_grad, backward.

    Runs on an out-of-place copy of the model, so no in-place op can overwrite what it records.
    """
    names = {id(m): n for n, m in model.named_modules()}
    model = out_of_place_copy(model)
    layer = model.get_submodule(names[id(layer)])
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out
        return None

    h = layer.register_forward_hook(hook)
    try:
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        out.gather(1, cls[:, None]).sum().backward()
    finally:
        h.remove()
        model.zero_grad(set_to_none=True)
    return store["a"].detach(), store["a"].grad.detach()


def reference_hvp(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: torch.Tensor
) -> torch.Tensor:
    """The Hessian-vector product ``H A`` at ``layer`` by the plain route: full graph, double backward."""
    names = {id(m): n for n, m in model.named_modules()}
    model = out_of_place_copy(model)
    layer = model.get_submodule(names[id(layer)])
    store = {}
    h = layer.register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    try:
        out = model(x.clone().requires_grad_(True))
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out.gather(1, cls[:, None]).sum(), a, create_graph=True)
    (hv,) = torch.autograd.grad(g, a, grad_outputs=a.detach())
    return hv.detach()


# ---- identities ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradcam_equals_cam_over_z_on_gap_linear(dims: int) -> None:
    net = GapNet(dims=dims, inplace=False).eval()
    x = torch.rand(3, 3, *([12] * dims))
    g = camlens.GradCAM(net, layer="features")(x, target=[0, 2, 4])
    c = camlens.CAM(net, layer="features")(x, target=[0, 2, 4])
    z = g.raw[0].numel()
    assert z == 6**dims
    torch.testing.assert_close(g.raw * z, c.raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.maps, c.maps, rtol=1e-4, atol=1e-5)
    h = camlens.HiResCAM(net, layer="features")(x, target=[0, 2, 4])
    torch.testing.assert_close(h.raw, g.raw, rtol=1e-5, atol=1e-7)
    # the ReLU hides the negative side: the counterfactual maps must agree too
    gc = camlens.GradCAM(net, layer="features")(x, target=[0, 2, 4], counterfactual=True)
    cc = camlens.CAM(net, layer="features")(x, target=[0, 2, 4], counterfactual=True)
    torch.testing.assert_close(gc.raw * z, cc.raw, rtol=1e-5, atol=1e-6)
    assert float((g.raw + gc.raw).amin(dim=tuple(range(1, dims + 1))).min()) >= 0
    assert float(g.raw.max() + gc.raw.max()) > 0


def test_gradcam_equals_cam_over_z_on_torchvision_resnet() -> None:
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 96, 96)
    g = camlens.GradCAM(net, layer="layer4")(x, target=[3, 7])
    c = camlens.CAM(net, layer="layer4")(x, target=[3, 7])
    assert g.raw.shape == (2, 3, 3)
    torch.testing.assert_close(g.raw * 9, c.raw, rtol=1e-4, atol=1e-5 * float(c.raw.max()))
    h = camlens.HiResCAM(net, layer="layer4")(x, target=[3, 7])
    torch.testing.assert_close(h.raw, g.raw, rtol=1e-4, atol=1e-6 * float(g.raw.max()))


def test_hirescam_differs_from_gradcam_when_head_is_not_gap(convhead: ConvHead) -> None:
    x = torch.rand(2, 3, 12, 12)
    g = camlens.GradCAM(convhead, layer="body")(x, target=1)
    h = camlens.HiResCAM(convhead, layer="body")(x, target=1)
    assert (g.raw - h.raw).abs().max() > 1e-3


def test_cam_refuses_a_head_that_is_not_gap_linear(convhead: ConvHead) -> None:
    with pytest.raises(ValueError, match="use GradCAM"):
        camlens.CAM(convhead, layer="body")(torch.rand(1, 3, 12, 12))


def test_counterfactual_is_relu_of_negated_weighted_sum(convhead: ConvHead) -> None:
    x = torch.rand(2, 3, 12, 12)
    cls = torch.tensor([1, 3])
    a, g = reference_acts_grads(convhead, convhead.body, x, cls)
    alpha = g.mean(dim=(2, 3))
    expected = F.relu(-(alpha[:, :, None, None] * a).sum(1))
    res = camlens.GradCAM(convhead, layer="body")(x, target=cls, counterfactual=True)
    assert float(expected.max()) > 0
    torch.testing.assert_close(res.raw, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))
    plain = camlens.GradCAM(convhead, layer="body")(x, target=cls)
    # where one is positive the other is zero
    assert float((res.raw * plain.raw).abs().max()) == 0.0
    assert "counterfactual" in res.method


def test_eigencam_does_not_depend_on_target(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    e = camlens.EigenCAM(gapnet, layer="features")
    a, b = e(x, target=0), e(x, target=[4, 2])
    assert torch.equal(a.raw, b.raw) and torch.equal(a.maps, b.maps)
    with pytest.raises(ValueError, match="counterfactual"):
        e(x, counterfactual=True)


def test_eigencam_matches_first_principal_component() -> None:
    torch.manual_seed(1)
    acts = torch.rand(2, 5, 4, 3)
    m = maps.eigencam_map(acts)
    for b in range(2):
        mat = acts[b].reshape(5, -1).T.double()
        mat = mat - mat.mean(0)
        # power iteration on the covariance: an independent route to the first component
        v = torch.ones(5, dtype=torch.double)
        for _ in range(500):
            v = mat.T @ (mat @ v)
            v = v / v.norm()
        proj = (mat @ v).float().reshape(4, 3)
        assert torch.allclose(m[b], proj, atol=1e-5) or torch.allclose(m[b], -proj, atol=1e-5)


# ---- the fast path against full autograd ------------------------------------------------------


@pytest.mark.parametrize("layer", ["features", "features.2", "features.0"])
def test_gradients_match_full_autograd(gapnet: GapNet, layer: str) -> None:
    x = torch.rand(3, 3, 16, 16)
    cls = torch.tensor([0, 1, 4])
    module = gapnet.get_submodule(layer)
    a_ref, g_ref = reference_acts_grads(gapnet, module, x, cls)
    with camlens.LayerCapture([(layer, module)]) as cap:
        out = gapnet(x)
        g = cap.gradients(out.gather(1, cls[:, None]).squeeze(1))[layer]
    torch.testing.assert_close(cap.activations[layer].detach(), a_ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_every_method_matches_reference_formula_from_full_autograd(
    cls: type, convhead: ConvHead
) -> None:
    if cls is camlens.CAM:
        pytest.skip("CAM needs a GAP head; covered by the identity tests")
    if cls in (camlens.ScoreCAM, camlens.SSCAM, camlens.ISCAM, camlens.AblationCAM):
        pytest.skip("perturbation methods have closed-form tests in test_family.py")
    if cls.input_space:
        pytest.skip("input-space methods have module-swap references in test_family.py")
    if not cls.takes_layer:
        pytest.skip(
            "FullGrad has completeness and pytorch-grad-cam tests in test_gradient_family.py"
        )
    if cls.model_kind != "any":
        pytest.skip(
            "transformer methods: test_gradient_family.py (torchcam and by-hand references)"
        )
    x = torch.rand(2, 3, 12, 12)
    target = torch.tensor([2, 0])
    a, g = reference_acts_grads(convhead, convhead.body, x, target)
    spatial = (2, 3)
    options: dict = {}
    if cls in (camlens.GradCAMPlusPlus, camlens.RefineCAM, camlens.SmoothGradCAMPlusPlus):
        # RefineCAM of one layer, and Smooth Grad-CAM++ without noise, are Grad-CAM++
        options = {"std": 0.0} if cls is camlens.SmoothGradCAMPlusPlus else {}
        g2, g3 = g**2, g**3
        alpha = g2 / (2 * g2 + a.sum(spatial, keepdim=True) * g3)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        w = (alpha * g.clamp(min=0)).sum(spatial, keepdim=True)
        ref = (w * a).sum(1)
    elif cls is camlens.GradCAMElementWise:
        ref = (g * a).clamp(min=0).sum(1)
    elif cls is camlens.EigenGradCAM:
        ref = maps.eigencam_map(g * a)
    elif cls is camlens.ShapleyCAM:
        hv = reference_hvp(convhead, convhead.body, x, target)  # the tanh head has curvature
        assert float(hv.abs().max()) > 0
        ref = ((g - 0.5 * hv).mean(spatial, keepdim=True) * a).sum(1)
    elif cls is camlens.KPCACAM:
        ref = maps.kpca_map(a)
    elif cls is camlens.FEM:
        mean, std = a.mean(spatial, keepdim=True), a.std(spatial, keepdim=True, correction=0)
        ref = ((a > mean + 2 * std).float() * mean).sum(1)
    elif cls is camlens.GradCAM:
        ref = (g.mean(spatial, keepdim=True) * a).sum(1)
    elif cls is camlens.HiResCAM:
        ref = (g * a).sum(1)
    elif cls is camlens.LayerCAM:
        ref = (g.clamp(min=0) * a).sum(1)
    elif cls is camlens.XGradCAM:
        w = (g * a).sum(spatial, keepdim=True) / a.sum(spatial, keepdim=True)
        ref = (w * a).sum(1)
    elif cls is camlens.EigenCAM:
        ref = maps.eigencam_map(a)
    elif cls is camlens.FinerCAM:
        # Grad-CAM of y^c - sum_d w_d y^d over the 3 other classes, w = their renormalised softmax
        with torch.no_grad():
            out = convhead(x)
        others = torch.tensor([[0, 1, 3], [1, 2, 3]])
        w = out.softmax(1).gather(1, others)
        w = w / w.sum(1, keepdim=True)
        g_obj = g.clone()
        for j in range(3):
            g_obj -= (
                w[:, j, None, None, None]
                * reference_acts_grads(convhead, convhead.body, x, others[:, j])[1]
            )
        ref = (g_obj.mean(spatial, keepdim=True) * a).sum(1)
    elif cls is camlens.RandomCAM:
        options = {"seed": 5}  # seed 0 happens to give this model an empty map
        w = torch.rand(a.shape[1], generator=torch.Generator().manual_seed(5)) * 2 - 1
        ref = (w[None, :, None, None] * a).sum(1)
    elif cls is camlens.ReciproCAM:
        # each position's channel vector alone, spread by the 3x3 binomial kernel, through the head
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        h, w_ = a.shape[2:]
        ref = torch.zeros(2, h, w_)
        for b in range(2):
            for i in range(h):
                for j in range(w_):
                    m = torch.zeros(a.shape[1:])
                    for di in (-1, 0, 1):
                        for dj in (-1, 0, 1):
                            if 0 <= i + di < h and 0 <= j + dj < w_:
                                m[:, i + di, j + dj] = a[b, :, i, j] * kernel[di + 1, dj + 1]
                    with torch.no_grad():
                        p = convhead.head(m[None]).softmax(1)
                    ref[b, i, j] = p[0, target[b]]
    else:
        pytest.fail(f"no reference for {cls.__name__}; add one")
    res = cls(convhead, layer="body", **options)(x, target=target)
    ref = ref.clamp(min=0)
    assert float(ref.max()) > 0
    torch.testing.assert_close(res.raw, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))


# ---- results: shapes, ranges, batches, dimensions ---------------------------------------------


@pytest.mark.parametrize("cls", ANY, ids=lambda c: c.name)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_every_method_every_dimension(cls: type, dims: int) -> None:
    net = GapNet(dims=dims).eval()
    size = {1: 40, 2: 20, 3: 10}[dims]
    x = torch.rand(2, 3, *([size] * dims))
    res = make(cls, net)(x, target=1)
    assert res.layer == ("features" if cls.takes_layer else "input")
    assert res.maps.shape == (2, *([size] * dims)) and res.maps.dtype == torch.float32
    raw_size = size if cls.input_space or not cls.takes_layer else size // 2
    assert res.raw.shape == (2, *([raw_size] * dims))
    assert float(res.maps.min()) >= 0.0 and float(res.maps.max()) <= 1.0
    assert float(res.raw.min()) >= 0.0
    assert res.scores.shape == (2,) and res.targets is not None and res.targets.tolist() == [1, 1]
    torch.testing.assert_close(res.scores, net(x)[:, 1])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_batched_equals_per_sample(cls: type, gapnet: GapNet) -> None:
    net = model_for(cls, gapnet)
    x = torch.rand(4, 3, 16, 16)
    target = [0, 3, 1, 4]
    batch = make(cls, net, layer=layer_of(cls))(x, target=target)
    for i in range(4):
        one = make(cls, net, layer=layer_of(cls))(x[i : i + 1], target=target[i])
        torch.testing.assert_close(batch.raw[i], one.raw[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batch.maps[i], one.maps[0], rtol=1e-4, atol=1e-5)


def test_targets_none_int_sequence_callable(gapnet: GapNet) -> None:
    x = torch.rand(3, 3, 16, 16)
    cam = camlens.GradCAM(gapnet, layer="features")
    logits = gapnet(x)
    top = cam(x)
    assert top.targets.tolist() == logits.argmax(1).tolist()
    seq = cam(x, target=logits.argmax(1).tolist())
    torch.testing.assert_close(seq.raw, top.raw)
    fn = cam(x, target=lambda out: out[:, 2])
    assert fn.targets is None
    torch.testing.assert_close(fn.raw, cam(x, target=2).raw)
    torch.testing.assert_close(fn.scores, logits[:, 2])


def test_for_targets_shares_one_forward(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    calls = []
    h = gapnet.features[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        cam = camlens.GradCAM(gapnet, layer="features")
        several = cam.for_targets(x, [0, 3, [1, 2]])
        assert len(calls) == 1
        top = cam.for_targets(x, "top-3")
    finally:
        h.remove()
    for res, t in zip(several, [0, 3, [1, 2]], strict=True):
        torch.testing.assert_close(res.raw, cam(x, target=t).raw)
    order = gapnet(x).topk(3, dim=1).indices
    assert [r.targets.tolist() for r in top] == order.T.tolist()


def test_several_layers_are_fused(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    res = camlens.GradCAM(gapnet, layer=["features.1", "features"])(x, target=1)
    assert set(res.per_layer) == {"features.1", "features"}
    assert res.layer == "features.1+features"
    expected = maps.normalize((res.per_layer["features.1"] + res.per_layer["features"]) / 2)
    torch.testing.assert_close(res.maps, expected)
    for name in res.per_layer:
        single = camlens.GradCAM(gapnet, layer=name)(x, target=1)
        torch.testing.assert_close(res.per_layer[name], single.maps, rtol=1e-4, atol=1e-5)


# ---- the model is left as found ---------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_model_left_untouched(cls: type, gapnet: GapNet) -> None:
    gapnet = model_for(cls, gapnet)
    x = torch.rand(2, 3, 16, 16)
    flags = [p.requires_grad for p in gapnet.parameters()]
    state = {k: v.clone() for k, v in gapnet.state_dict().items()}
    before = hook_count(gapnet)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            make(cls, gapnet)(x, target=0)
            assert torch.is_grad_enabled() is grad_mode
    with torch.inference_mode():
        make(cls, gapnet, layer=layer_of(cls))(x, target=0)
    assert hook_count(gapnet) == before == 0
    assert not gapnet.training
    assert [p.requires_grad for p in gapnet.parameters()] == flags
    assert all(p.grad is None for p in gapnet.parameters())
    for k, v in gapnet.state_dict().items():
        assert torch.equal(v, state[k])


def test_hooks_removed_after_an_exception(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    prev = torch.is_grad_enabled()
    with pytest.raises(ValueError, match="out of range"):
        camlens.GradCAM(gapnet, layer="features")(x, target=99)
    with pytest.raises(camlens.ModelError):
        camlens.GradCAM(gapnet, layer="features")(torch.rand(2, 4, 16, 16))
    assert hook_count(gapnet) == 0
    assert torch.is_grad_enabled() is prev


def test_training_mode_warns_once_and_mode_is_kept() -> None:
    net = GapNet().train()
    cam = camlens.GradCAM(net, layer="features")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cam(torch.rand(2, 3, 16, 16), target=0)
        cam(torch.rand(2, 3, 16, 16), target=0)
    assert sum("training mode" in str(m.message) for m in w) == 1
    assert net.training


def test_inplace_relu_after_target_layer_does_not_corrupt_activation(gapnet: GapNet) -> None:
    # features.2 is a conv followed by ReLU(inplace=True): the captured output must keep its negatives
    x = torch.rand(2, 3, 16, 16)
    with camlens.LayerCapture([("features.2", gapnet.features[2])], grad=False) as cap:
        gapnet(x)
    ref = gapnet.features[:3](x)
    torch.testing.assert_close(cap.activations["features.2"], ref)
    assert float(ref.min()) < 0


# ---- automatic layer choice --------------------------------------------------------------------


def test_auto_layer_on_torchvision_models() -> None:
    import torchvision

    x = torch.rand(1, 3, 64, 64)
    assert camlens.GradCAM(torchvision.models.resnet18(num_classes=3).eval())(x).layer == "layer4"
    mob = camlens.GradCAM(torchvision.models.mobilenet_v2(num_classes=3).eval())(x)
    assert mob.layer == "features"


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_layer_lists_close_names(gapnet: GapNet) -> None:
    with pytest.raises(ValueError, match=r"'featurs'.*Closest names: 'features'"):
        camlens.GradCAM(gapnet, layer="featurs")


def test_bad_targets(gapnet: GapNet) -> None:
    cam = camlens.GradCAM(gapnet, layer="features")
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(
        ValueError, match=r"class index 5 is out of range for an output with 5 classes"
    ):
        cam(x, target=5)
    with pytest.raises(ValueError, match="out of range"):
        cam(x, target=-1)
    with pytest.raises(ValueError, match="got 3 class indices for a batch of 2"):
        cam(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match=r"one score per sample, shape \(2,\)"):
        cam(x, target=lambda out: out)
    with pytest.raises(TypeError, match="target must be"):
        cam(x, target=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top-K"):
        cam.for_targets(x, "best")
    with pytest.raises(ValueError, match="asks for 6 classes"):
        cam.for_targets(x, "top-6")


def test_bad_inputs_and_layers(gapnet: GapNet) -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        camlens.GradCAM(gapnet)([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsqueeze"):
        camlens.GradCAM(gapnet)(torch.rand(16, 16))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        camlens.GradCAM("resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no spatial axes"):
        camlens.GradCAM(gapnet, layer="fc")(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="not part of the model"):
        camlens.GradCAM(gapnet, layer=nn.Conv2d(1, 1, 1))
    unused = GapNet()
    unused.extra = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="was not called"):
        camlens.GradCAM(unused.eval(), layer="extra")(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown method 'gradkam'"):
        camlens.get_method("gradkam")
    assert camlens.get_method("Grad-CAM++") is camlens.GradCAMPlusPlus


def test_all_zero_map_warns_with_cause(gapnet: GapNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    cam = camlens.GradCAM(gapnet, layer="features")
    with pytest.warns(
        UserWarning, match="gradient of the target score with respect to this layer is zero"
    ):
        res = cam(x, target=lambda out: out[:, 0] * 0)
    assert float(res.maps.abs().max()) == 0.0
    with torch.no_grad():
        gapnet.fc.weight[1] = -gapnet.fc.weight[1].abs()  # ReLU activations only lower class 1
    with pytest.warns(UserWarning, match="no positive evidence|ReLU removed everything"):
        cam(x, target=1)


@pytest.mark.parametrize("cls", GUIDED, ids=lambda c: c.name)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_guided_methods_every_dimension_and_model_untouched(cls: type, dims: int) -> None:
    net = GapNet(dims=dims).eval()
    size = {1: 40, 2: 20, 3: 10}[dims]
    x = torch.rand(2, 3, *([size] * dims))
    res = make(cls, net)(x, target=[1, 2])
    assert res.maps.shape == res.raw.shape == (2, *([size] * dims))
    assert res.input_maps is not None and res.input_maps.shape == (2, 3, *([size] * dims))
    torch.testing.assert_close(res.raw, res.input_maps.abs().amax(1))
    assert float(res.maps.min()) == 0.0 and float(res.maps.max()) == 1.0
    assert res.targets.tolist() == [1, 2]
    assert hook_count(net) == 0 and all(p.grad is None for p in net.parameters())
    assert torch.is_grad_enabled()
