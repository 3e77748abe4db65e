"""Tasks beyond classification: segmentation, detection, similarity, and outputs that are not tensors."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch
from torch import nn

import camlens
from camlens.targets import (
    BoxTarget,
    SegmentationTarget,
    SimilarityTarget,
    _box_iou,
    box_targets,
    select_output,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


def gradcam_reference(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, score_fn
) -> torch.Tensor:
    """Grad-CAM by the plain route: full autograd graph, retain_grad on the layer, backward."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer.register_forward_hook(hook)
    try:
        xx = x.clone().requires_grad_(True)
        score_fn(model(xx)).sum().backward()
    finally:
        h.remove()
        model.zero_grad(set_to_none=True)
    a, g = store["a"].detach(), store["a"].grad.detach()
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1).clamp(min=0)


# ---- segmentation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    ).eval()


def test_segmentation_target_on_deeplabv3(deeplab: nn.Module) -> None:
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        out = deeplab(x)["out"]  # what select_output finds with no output= argument
    c = int(out.argmax(1).flatten().mode().values)  # a class that is predicted somewhere
    cam = camlens.GradCAM(deeplab)
    res = cam(x, target=SegmentationTarget(c))
    assert res.layer == "backbone.layer4"  # the backbone, not the logits conv of the head
    assert res.raw.shape == (2, 6, 6) and res.maps.shape == (2, 48, 48)
    pred = out.argmax(1) == c
    torch.testing.assert_close(res.scores, (out[:, c] * pred).sum(dim=(1, 2)), rtol=1e-5, atol=1e-3)
    ref = gradcam_reference(
        deeplab, deeplab.backbone.layer4, x, lambda o: SegmentationTarget(c)(o["out"])
    )
    assert float(ref.max()) > 0
    torch.testing.assert_close(res.raw, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))
    # an explicit region: the top-left quadrant, the same for both images, and per image
    region = torch.zeros(48, 48, dtype=torch.bool)
    region[:24, :24] = True
    masked = camlens.GradCAM(deeplab, layer="backbone.layer4")(
        x, target=SegmentationTarget(c, region)
    )
    torch.testing.assert_close(
        masked.scores, out[:, c, :24, :24].sum(dim=(1, 2)), rtol=1e-5, atol=1e-3
    )
    per_image = SegmentationTarget(c, torch.stack([region, ~region]).float())
    torch.testing.assert_close(
        per_image(out), torch.stack([out[0, c, :24, :24].sum(), out[1, c][~region].sum()])
    )
    assert not torch.allclose(masked.raw, res.raw)


def test_segmentation_target_errors() -> None:
    out = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="out of range for an output with 3 classes"):
        SegmentationTarget(3)(out)
    with pytest.raises(ValueError, match=r"pass a mask of shape \(4, 4\) or \(2, 4, 4\)"):
        SegmentationTarget(1, torch.ones(8, 8))(out)
    with pytest.raises(ValueError, match="needs \\(B, num_classes, \\*spatial\\) logits"):
        SegmentationTarget(1)(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="int class index"):
        SegmentationTarget(1.0)  # type: ignore[arg-type]
    # no pixel of the class: zero score, zero gradient, an empty map (with its warning)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    with torch.no_grad():
        net[2].bias.copy_(torch.tensor([100.0, 0.0, 0.0]))  # class 0 wins everywhere
    with pytest.warns(UserWarning, match="gradient of the target score .* is zero"):
        res = camlens.GradCAM(net, layer="1")(torch.rand(1, 3, 8, 8), target=SegmentationTarget(2))
    assert float(res.scores[0]) == 0.0 and float(res.maps.max()) == 0.0


# ---- detection ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faster_rcnn() -> nn.Module:
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return torchvision.models.detection.FasterRCNN(
        backbone,
        num_classes=3,
        min_size=96,
        max_size=128,
        rpn_pre_nms_top_n_test=60,
        rpn_post_nms_top_n_test=20,
        box_score_thresh=0.0,
        box_detections_per_img=4,
    ).eval()


def test_box_targets_on_faster_rcnn(faster_rcnn: nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        dets = faster_rcnn(x)
    assert isinstance(dets, list) and set(dets[0]) == {"boxes", "labels", "scores"}
    targets = box_targets(dets, score_threshold=0.0)[:2]
    assert len(targets) == 2
    assert [t.label for t in targets] == dets[0]["labels"][:2].tolist()
    calls = []
    h = faster_rcnn.backbone.body.register_forward_hook(lambda *a: calls.append(1))
    try:
        cam = camlens.GradCAM(faster_rcnn)
        results = cam.for_targets(x, targets)
    finally:
        h.remove()
    assert len(calls) == 2  # one probe forward to choose the layer, then one forward for all boxes
    assert cam.layer_names is None  # chosen per input shape
    assert [r.layer for r in results] == ["backbone.body.layer4"] * 2
    boxes, labels, scores = dets[0]["boxes"], dets[0]["labels"], dets[0]["scores"]
    iou = _box_iou(boxes, boxes)
    for i, (res, target) in enumerate(zip(results, targets, strict=True)):
        assert res.maps.shape == (1, 96, 128) and res.raw.shape == (1, 3, 4)
        match = (iou[i] >= 0.5) & (labels == labels[i])
        torch.testing.assert_close(res.scores, (scores * match).sum()[None])
        ref = gradcam_reference(faster_rcnn, faster_rcnn.backbone.body.layer4, x, target)
        torch.testing.assert_close(
            res.raw, ref, rtol=1e-3, atol=1e-4 * float(ref.max().clamp(min=1e-6))
        )
    assert any(float(r.maps.std()) > 0.05 for r in results)
    # a box nothing matches: score 0 with a gradient, so an empty map rather than an error
    with pytest.warns(UserWarning, match="is zero"):
        none = cam(x, target=BoxTarget([0.0, 0.0, 1.0, 1.0], label=1))
    assert float(none.scores[0]) == 0.0 and float(none.maps.max()) == 0.0
    # a method without a target needs nothing from the detections
    eig = camlens.EigenCAM(faster_rcnn)(x)
    assert eig.maps.shape == (1, 96, 128) and float(eig.maps.std()) > 0.05
    # class targets cannot index a list of dicts: the message says what to do
    with pytest.raises(ValueError, match="BoxTarget"):
        cam(x, target=1)


def test_box_target_score_rules() -> None:
    dets = [
        {
            "boxes": torch.tensor(
                [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
            ),
            "labels": torch.tensor([1, 1, 2]),
            "scores": torch.tensor([0.9, 0.6, 0.8], requires_grad=True),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "scores": torch.zeros(0),
        },
    ]
    s = BoxTarget([0.0, 0.0, 10.0, 10.0], label=1)(dets)
    torch.testing.assert_close(s, torch.tensor([1.5, 0.0]))  # both label-1 boxes match (IoU 0.81)
    assert s.requires_grad
    torch.testing.assert_close(
        BoxTarget([0.0, 0.0, 10.0, 10.0], label=1, iou_threshold=0.9)(dets),
        torch.tensor([0.9, 0.0]),
    )
    torch.testing.assert_close(BoxTarget([0.0, 0.0, 10.0, 10.0])(dets), torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(
        BoxTarget([0.0, 0.0, 10.0, 10.0], label=2)(dets), torch.tensor([0.0, 0.0])
    )
    torch.testing.assert_close(
        BoxTarget([0.0, 0.0, 10.0, 10.0], label=1, add_iou=True)(dets),
        torch.tensor([1.5 + 1.0 + 0.81, 0.0]),
    )
    assert [t.label for t in box_targets(dets[0], score_threshold=0.7)] == [1, 2]
    with pytest.raises(ValueError, match="one image"):
        box_targets(dets)
    with pytest.raises(TypeError, match="'boxes'"):
        BoxTarget([0.0, 0.0, 1.0, 1.0])(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="x1 <= x2"):
        BoxTarget([5.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="iou_threshold"):
        BoxTarget([0.0, 0.0, 1.0, 1.0], iou_threshold=1.5)


def test_draw_boxes_on_an_overlay() -> None:
    from camlens.detection import PALETTE, draw_boxes

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    x = torch.rand(1, 3, 48, 64)
    over = camlens.GradCAM(net, layer="0")(x, target=0).overlay(x)[0]
    img = draw_boxes(
        over,
        torch.tensor([[8.0, 20.0, 40.0, 44.0]]),
        torch.tensor([2]),
        scores=[0.87],
        names=["bg", "a", "b"],
    )
    assert img.size == over.size == (64, 48)
    assert (
        img.getpixel((8, 40)) == PALETTE[2] and img.getpixel((39, 30)) == PALETTE[2]
    )  # the outline
    assert img.getpixel((24, 40)) == over.getpixel((24, 40))  # inside: untouched
    assert img.getpixel((60, 5)) == over.getpixel((60, 5))  # outside: untouched
    tag = [img.getpixel((c, r)) for r in range(20) for c in range(8, 40)]
    assert tag.count(PALETTE[2]) > 50  # the caption's tag above the box
    assert over.getpixel((8, 40)) != PALETTE[2]  # the input is not modified
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        draw_boxes(over, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="got 1 labels for 2 boxes"):
        draw_boxes(over, torch.zeros(2, 4), [1])


def _reference_roi_align():
    """torchvision's own pure-Python roi_align, loaded apart from the module the shim patched."""
    path = sys.modules["torchvision.ops.roi_align"].__file__
    spec = importlib.util.spec_from_file_location("torchvision.ops._roi_align_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._roi_align.__wrapped__  # not torch.compile'd


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_shim_roi_align_matches_torchvision(aligned: bool, sampling_ratio: int) -> None:
    import tv_cpu_shim

    if tv_cpu_shim._LIB is None:
        pytest.skip("torchvision's compiled kernels are available; the shim is not used")
    ref = _reference_roi_align()
    feats = torch.rand(2, 4, 13, 17, dtype=torch.float64, requires_grad=True)
    xy = torch.rand(12, 2, dtype=torch.float64) * torch.tensor([16.0, 12.0])
    wh = torch.rand(12, 2, dtype=torch.float64) * 9
    rois = torch.cat([torch.randint(0, 2, (12, 1)).double(), xy, xy + wh], dim=1)
    rois[:, 3:] = torch.minimum(rois[:, 3:], torch.tensor([33.0, 25.0], dtype=torch.float64))
    got = tv_cpu_shim._roi_align_cpu(feats, rois, 0.5, 3, 4, sampling_ratio, aligned)
    want = ref(feats, rois, 0.5, 3, 4, sampling_ratio, aligned)
    torch.testing.assert_close(got, want)
    w = torch.rand_like(got)
    torch.testing.assert_close(
        torch.autograd.grad((got * w).sum(), feats)[0],
        torch.autograd.grad((want * w).sum(), feats)[0],
    )


# ---- similarity ----------------------------------------------------------------------------------


def test_similarity_target() -> None:
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
    ).eval()
    x = torch.rand(3, 3, 12, 12)
    with torch.no_grad():
        emb = encoder(x)
    target = SimilarityTarget(emb[0])
    res = camlens.GradCAM(encoder, layer="2")(x, target=target)
    cos = nn.functional.cosine_similarity(emb, emb[0][None], dim=1)
    torch.testing.assert_close(res.scores, cos)
    assert abs(float(res.scores[0]) - 1.0) < 1e-6
    ref = gradcam_reference(encoder, encoder[2], x, target)
    assert float(ref.max()) > 0
    torch.testing.assert_close(res.raw, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))
    # one reference per sample
    per_sample = SimilarityTarget(emb.flip(0))(emb)
    torch.testing.assert_close(per_sample, nn.functional.cosine_similarity(emb, emb.flip(0), dim=1))
    with pytest.raises(ValueError, match=r"pass a reference of shape \(16,\) or \(3, 16\)"):
        SimilarityTarget(torch.ones(8))(emb)
    with pytest.raises(ValueError, match=r"\(D,\) or \(B, D\)"):
        SimilarityTarget(torch.ones(1, 2, 3))


# ---- outputs that are not tensors ---------------------------------------------------------------


@dataclasses.dataclass
class Out:
    embedding: torch.Tensor
    scores: torch.Tensor


class Wrapped(nn.Module):
    """A small CNN whose logits come back wrapped in one of several containers."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        logits = self.head(f)
        if self.kind == "hf":
            from transformers.modeling_outputs import ImageClassifierOutput

            return ImageClassifierOutput(logits=logits, hidden_states=(f,))
        if self.kind == "dict":
            return {"out": logits, "aux": logits.detach() * 0}
        if self.kind == "tuple":
            return logits, f
        if self.kind == "dataclass":
            return Out(embedding=f.mean((2, 3)), scores=logits)
        return logits


@pytest.mark.parametrize("kind", ["hf", "dict", "tuple", "dataclass"])
def test_logits_are_found_in_wrapped_outputs(kind: str) -> None:
    net = Wrapped(kind).eval()
    plain = Wrapped("tensor").eval()
    plain.load_state_dict(net.state_dict())
    x = torch.rand(2, 3, 10, 10)
    want = camlens.GradCAM(plain)(x, target=[1, 3])
    output = {"dataclass": "scores"}.get(kind)  # two tensors and no `logits`: say which
    got = camlens.GradCAM(net, output=output)(x, target=[1, 3])
    assert got.layer == "features"
    torch.testing.assert_close(got.raw, want.raw)
    torch.testing.assert_close(got.scores, want.scores)


def test_output_selectors() -> None:
    logits, other = torch.rand(2, 4), torch.rand(2, 6)
    assert select_output({"a": logits, "b": other}, "b") is other
    assert select_output((logits, other), 1) is other
    assert select_output(Out(other, logits), 1) is logits  # dataclass fields in order
    assert select_output(Out(other, logits), lambda o: o.scores) is logits
    with pytest.raises(ValueError, match=r"keys \['a', 'b'\].*output= a key"):
        select_output({"a": logits, "b": other})
    with pytest.raises(ValueError, match=r"fields \['embedding', 'scores'\]"):
        select_output(Out(other, logits))
    with pytest.raises(ValueError, match="does not select anything"):
        select_output({"a": logits}, "c")
    # a callable target receives an output with no score tensor in it as it is
    dets = [{"boxes": torch.zeros(1, 4)}]
    assert select_output(dets, passthrough=True) is dets
    with pytest.raises(ValueError, match="callable target"):
        select_output(dets)
