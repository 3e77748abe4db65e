"""Token models: the grid and prefix tokens inferred from the model, channels-last stages, layer choice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import camlens
from camlens.reshape import Layout, infer_layout, to_spatial
from conftest import make

# maps of a layer (input-space methods are checked on every dimension in test_contract.py)
CAM_METHODS = [
    c
    for c in camlens.METHODS.values()
    if not c.input_space and c.takes_layer and c.model_kind == "any"
]  # FullGrad (no layer) and LeGrad (attention): tests/test_gradient_family.py

# random weights: for some samples no position has positive evidence and the map is empty (with a
# warning); the tests check the signed map (before the ReLU) instead, see signed_map
pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


def signed_map(cam: camlens.BaseCAM, x: torch.Tensor, target: object = None) -> torch.Tensor:
    """The map before its ReLU, ``(B, *layer_spatial)``: ``ReLU(z) - ReLU(-z) = z``."""
    plain = cam(x, target=target)
    targets = plain.targets if plain.targets is not None else target
    return plain.raw - cam(x, target=targets, counterfactual=True).raw


def varies(t: torch.Tensor) -> bool:
    """Every sample of ``(B, ...)`` varies over its positions."""
    return bool((t.flatten(1).std(dim=1) > 1e-3 * t.abs().amax().clamp(min=1e-12)).all())


class OnePatchViT(nn.Module):
    """Patch embedding, ``prefix`` extra tokens, a LayerNorm, and a head that reads patch ``k`` only.

    The score is ``|norm(tokens)[prefix + k]|^2``, so the gradient at the norm is zero everywhere but
    at patch ``k``: HiResCAM must light exactly that patch, and nothing else.
    """

    def __init__(
        self, prefix: int, k: int, embed: str = "conv", patch: int = 16, dim: int = 8
    ) -> None:
        super().__init__()
        self.prefix, self.k, self.patch = prefix, k, patch
        if embed == "conv":
            self.patch_embed: nn.Module = nn.Conv2d(3, dim, patch, stride=patch)
        else:  # no convolution: the grid must come from the token count alone
            self.patch_embed = nn.Linear(3 * patch * patch, dim)
        self.embed = embed
        self.extra = nn.Parameter(torch.randn(1, prefix, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed == "conv":
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
        else:
            t = self.patch_embed(
                nn.functional.unfold(x, self.patch, stride=self.patch).transpose(1, 2)
            )
        t = self.norm(torch.cat([self.extra.expand(x.shape[0], -1, -1), t], dim=1))
        s = t[:, self.prefix + self.k].pow(2).sum(-1)
        return torch.stack([s, -s], dim=1)


# ---- the grid is right: one known patch matters ------------------------------------------------


@pytest.mark.parametrize("embed", ["conv", "linear"])
@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_only_the_patch_that_matters_lights_up(prefix: int, embed: str) -> None:
    # 32 x 64 input, 16-pixel patches: a 2 x 4 grid; patch 6 is row 1, column 2 (row-major)
    net = OnePatchViT(prefix, k=6, embed=embed).eval()
    x = torch.rand(2, 3, 32, 64)
    res = camlens.HiResCAM(net)(x, target=0)
    assert res.layer == "norm"
    assert res.raw.shape == (2, 2, 4)
    expected = torch.zeros(2, 4, dtype=torch.bool)
    expected[1, 2] = True
    for b in range(2):
        assert torch.equal(res.raw[b] > 0, expected), res.raw[b]
        # the upsampled map peaks inside that patch: rows 16..31, columns 32..47
        peak = divmod(int(res.maps[b].argmax()), 64)
        assert 16 <= peak[0] < 32 and 32 <= peak[1] < 48
    # Grad-CAM weights channels by the mean gradient: <A_k, A_p> is largest at p = k
    g = camlens.GradCAM(net)(x, target=0)
    assert [divmod(int(r.argmax()), 4) for r in g.raw] == [(1, 2), (1, 2)]
    layout = infer_layout((2, prefix + 8, 8), tuple(x.shape), model=net, name="norm")
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", prefix, (2, 4))
    assert layout.source == ("patch size (16, 16)" if embed == "conv" else "shape")


def _tv_vit() -> nn.Module:
    import torchvision

    net = torchvision.models.VisionTransformer(
        image_size=64,
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=5,
    )
    nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision initialises the head to zero
    return net


def _timm_vit() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5
    )


def _timm_deit_distilled() -> nn.Module:
    import timm

    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5
    )


def _timm_registers() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=(32, 64),
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        reg_tokens=4,
        num_classes=5,
    )


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    return ViTForImageClassification(cfg)


# builder, input size, a layer where each patch token depends on its own patch only, prefix, grid,
# patch size, the automatic layer
REAL = {
    "torchvision-vit": (
        _tv_vit,
        (64, 64),
        "encoder.dropout",
        1,
        (4, 4),
        16,
        "encoder.layers.encoder_layer_1.ln_1",
    ),
    "timm-vit": (_timm_vit, (64, 64), "pos_drop", 1, (4, 4), 16, "blocks.1.norm1"),
    "timm-deit-distilled": (
        _timm_deit_distilled,
        (64, 64),
        "pos_drop",
        2,
        (4, 4),
        16,
        "blocks.1.norm1",
    ),
    "timm-registers": (_timm_registers, (32, 64), "pos_drop", 5, (2, 4), 16, "blocks.1.norm1"),
    "hf-vit": (_hf_vit, (32, 32), "vit.embeddings", 1, (4, 4), 8, "1.layernorm_before"),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_token_models_grid_prefix_and_layer(name: str) -> None:
    build, size, early, prefix, grid, patch, auto = REAL[name]
    net: nn.Module = build().eval()
    x = torch.rand(2, 3, *size)
    # change one patch (row 1, column 2): at `early` only that patch's token may change
    x2 = x.clone()
    x2[:, :, patch : 2 * patch, 2 * patch : 3 * patch] = torch.rand(2, 3, patch, patch)
    module = net.get_submodule(early)
    acts = []
    h = module.register_forward_hook(lambda _m, _i, out: acts.append(out.detach()))
    try:
        with torch.no_grad():
            net(x), net(x2)
    finally:
        h.remove()
    assert acts[0].shape[1] == prefix + grid[0] * grid[1]
    layout = infer_layout(tuple(acts[0].shape), tuple(x.shape), model=net, name=early)
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", prefix, grid)
    changed = to_spatial(acts[1] - acts[0], x, name=early, model=net).abs().amax(dim=1) > 1e-6
    expected = torch.zeros(2, *grid, dtype=torch.bool)
    expected[:, 1, 2] = True
    assert torch.equal(changed, expected)
    # the automatic layer: the input norm of the last block; the maps are not constant
    cam = camlens.GradCAM(net)
    res = cam(x)
    assert res.layer.endswith(auto)
    assert res.raw.shape == (2, *grid) and res.maps.shape == (2, *size)
    assert varies(signed_map(cam, x))
    torch.testing.assert_close(res.scores, camlens.targets.select_output(net(x)).max(dim=1).values)


@pytest.mark.parametrize("cls", CAM_METHODS, ids=lambda c: c.name)
def test_every_method_on_a_token_model(cls: type) -> None:
    net = _timm_registers().eval()
    x = torch.rand(2, 3, 32, 64)
    if cls is camlens.CAM:
        with pytest.raises(ValueError, match="use GradCAM"):
            cls(net)(x, target=1)
        return
    cam = make(cls, net)
    res = cam(x, target=1)
    assert res.layer == "blocks.1.norm1"
    assert res.raw.shape == (2, 2, 4) and res.maps.shape == (2, 32, 64)
    assert bool(torch.isfinite(res.maps).all())
    assert float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1
    # Recipro-CAM scores probabilities, which have no counterfactual (it refuses one)
    signed = cls.uses_target and cls is not camlens.ReciproCAM
    assert varies(signed_map(cam, x, 1) if signed else res.maps)


def test_vit_b_16_at_224() -> None:
    import torchvision

    net = torchvision.models.vit_b_16(num_classes=10).eval()
    nn.init.normal_(net.heads.head.weight, std=0.05)
    x = torch.rand(1, 3, 224, 224)
    cam = camlens.GradCAM(net)
    res = cam(x, target=3)
    assert res.layer == "encoder.layers.encoder_layer_11.ln_1"
    assert res.raw.shape == (1, 14, 14) and res.maps.shape == (1, 224, 224)
    assert varies(signed_map(cam, x, 3))


# ---- channels-last stages ----------------------------------------------------------------------


def test_swin_t_channels_last_equals_its_permuted_norm() -> None:
    import torchvision

    net = torchvision.models.swin_t(num_classes=5).eval()
    x = torch.rand(1, 3, 64, 64)
    auto = camlens.GradCAM(net)(x, target=2)
    assert auto.layer == "permute"  # the final norm as (B, C, H, W)
    assert auto.raw.shape == (1, 2, 2)
    # `norm` outputs the same tensor channels-last (1, 2, 2, 768): read right, the map is identical
    last = camlens.GradCAM(net, layer="norm")(x, target=2)
    torch.testing.assert_close(last.raw, auto.raw)
    stage = camlens.GradCAM(net, layer="features.5")  # (1, 4, 4, 384)
    assert stage(x, target=2).raw.shape == (1, 4, 4)
    assert varies(signed_map(stage, x, 2))
    # the head is global average pooling + linear: CAM applies, and equals Grad-CAM * Z
    cam = camlens.CAM(net, layer="norm")(x, target=2)
    torch.testing.assert_close(cam.raw, auto.raw * 4, rtol=1e-4, atol=1e-5 * float(cam.raw.max()))


def test_hf_swin_deeper_stage_grid_from_shape() -> None:
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=3,
    )
    net = SwinForImageClassification(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    res = camlens.GradCAM(net)(x)
    assert res.layer.endswith("layers.1.blocks.0.layernorm_before")
    assert res.raw.shape == (2, 4, 4)  # 16 tokens of the second stage, fewer than the 8 x 8 patches
    layout = infer_layout((2, 16, 32), (2, 3, 32, 32), model=net, name=res.layer)
    assert layout == Layout("tokens", 0, (4, 4), "shape")


class _Block(nn.Module):
    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.inner = make()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.inner(t)


@pytest.mark.parametrize(
    ("shape", "module", "kind"),
    [
        ((2, 512, 7, 7), None, "spatial"),  # a CNN stage
        ((2, 7, 7, 768), None, "channels_last"),  # a Swin stage
        ((2, 16, 16, 96), nn.LayerNorm(96), "channels_last"),
        ((2, 16, 32, 32), None, "spatial"),  # (16, 32) is no grid of a square input
        ((2, 8, 8, 8), None, "spatial"),  # ambiguous: a CNN unless the layer says otherwise
        ((2, 8, 8, 8), nn.LayerNorm(8), "channels_last"),
        ((2, 8, 8, 8), nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), "spatial"),
        ((2, 8, 8, 8), nn.Sequential(nn.Conv2d(8, 8, 1), nn.LayerNorm(8)), "spatial"),
    ],
)
def test_channels_last_only_when_the_shape_or_the_layer_says_so(
    shape: tuple[int, ...], module: nn.Module | None, kind: str
) -> None:
    assert infer_layout(shape, (2, 3, 64, 64), module=module).kind == kind


def test_cnn_outputs_are_never_read_as_channels_last() -> None:
    import torchvision

    for net in (torchvision.models.resnet18(), torchvision.models.mobilenet_v3_small()):
        net.eval()
        for size in ((64, 64), (48, 80)):
            x = torch.rand(1, 3, *size)
            seen = []

            def hook(m: nn.Module, _i: object, out: object, seen: list = seen) -> None:
                if isinstance(out, torch.Tensor) and out.ndim == 4:
                    seen.append((m, tuple(out.shape)))

            handles = [m.register_forward_hook(hook) for m in net.modules()]
            try:
                with torch.no_grad():
                    net(x)
            finally:
                for h in handles:
                    h.remove()
            assert len(seen) > 20
            for m, shape in seen:
                assert infer_layout(shape, tuple(x.shape), module=m).kind == "spatial", (m, shape)


# ---- what camlens cannot infer, and reshape= ---------------------------------------------------


def test_uninferable_tokens_error_then_reshape() -> None:
    # 21 extra tokens before a 2 x 4 grid: more than camlens guesses, and no num_prefix_tokens
    net = OnePatchViT(prefix=21, k=6).eval()
    x = torch.rand(2, 3, 32, 64)
    with pytest.raises(ValueError, match="could not infer the token grid") as err:
        camlens.GradCAM(net, layer="norm")(x, target=0)
    assert (
        "reshape=lambda act, x: act[:, 1:].reshape(act.shape[0], 14, 14, -1).permute(0, 3, 1, 2)"
        in str(err.value)
    )
    assert "(2, 29, 8)" in str(err.value)
    # the fix the message shows, with this model's numbers
    fixed = camlens.HiResCAM(
        net,
        layer="norm",
        reshape=lambda act, x: act[:, 21:].reshape(act.shape[0], 2, 4, -1).permute(0, 3, 1, 2),
    )(x, target=0)
    assert [divmod(int(r.argmax()), 4) for r in fixed.raw] == [(1, 2), (1, 2)]
    assert int((fixed.raw > 0).sum()) == 2
    # a reshape that does not return (B, K, H, W) is refused with what it returned
    with pytest.raises(ValueError, match=r"reshape= returned \(2, 29, 8\) for layer 'norm'"):
        camlens.GradCAM(net, layer="norm", reshape=lambda act, x: act)(x, target=0)
    with pytest.raises(TypeError, match="reshape must be a callable"):
        camlens.GradCAM(net, layer="norm", reshape="tokens")  # type: ignore[arg-type]


def test_a_layer_with_no_spatial_reading_says_so() -> None:
    net = _timm_registers().eval()
    with pytest.raises(ValueError, match="no spatial axes"):
        camlens.GradCAM(net, layer="head")(torch.rand(1, 3, 32, 64))
