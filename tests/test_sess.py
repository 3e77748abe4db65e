"""camlens.SESS: pytorch-grad-cam's SESS reproduced, and the method contract checked on the wrapper.

SESS is a wrapper, not a registry entry (its docstring says why), so ``tests/test_contract.py`` does not
generate its checks; the same checks run here on SESS around several methods.

Conversion for pytorch-grad-cam: its fusion counts a patch at a pixel when the pasted value is
``> theta``; camlens when it is ``> theta + 1e-6`` (:func:`camlens.maps.sess_fuse`), because pasted
maps are resized, and OpenCV's and torch's bilinear resizing round values near 0 differently (one
gives 0 where the other gives 1e-8), which would change how many patches a pixel averages. For the
comparison, pytorch-grad-cam's paste resizes with torch's bilinear interpolation (what ``cv2.resize``
computes, up to rounding) and its fusion gets the same margin.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camlens
from camlens import maps
from conftest import GapNet, hook_count
from test_contract import BreaksAfterFirstForward, FailingHead, Yielding, net_for, same

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")

INNER = ["gradcam", "layercam", "guided-backprop"]


def wrap(name: str, model: nn.Module, **options: object) -> camlens.SESS:
    cls = camlens.get_method(name)
    cam = cls(model, layer="features") if cls.takes_layer else cls(model)
    return camlens.SESS(cam, num_scales=3, **options)  # type: ignore[arg-type]


# ---- pytorch-grad-cam's SESS -----------------------------------------------------------------------


@pytest.fixture
def pgc_sess(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """pytorch-grad-cam's SESS with the conversion of the module docstring."""
    import cv2
    import pytorch_grad_cam.sess as pgc
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class TorchResize:
        GaussianBlur = staticmethod(cv2.GaussianBlur)

        @staticmethod
        def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            t = torch.from_numpy(img)[None, None]
            out = torch.nn.functional.interpolate(
                t, size=(size[1], size[0]), mode="bilinear", align_corners=False
            )
            return out[0, 0].numpy()

    def add(self: pgc._CAMFusion, cam: np.ndarray) -> None:
        if self.pool == "max":
            np.maximum(self.total, cam, out=self.total)
        else:
            mask = cam > self.theta + 1e-6
            self.total[mask] += cam[mask]
            self.counts += mask

    monkeypatch.setattr(pgc, "cv2", TorchResize)
    monkeypatch.setattr(pgc._CAMFusion, "add", add)

    def run(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: list[int], **kw: object):
        cam = pgc.SESS(model, [layer], base_method=GradCAM, **kw)
        return cam(x, targets=[ClassifierOutputTarget(t) for t in target])

    return run


@pytest.mark.parametrize(
    "options",
    [
        {"num_scales": 3},
        {"num_scales": 3, "pool": "max"},
        {"num_scales": 2, "pre_filter": 0.3, "theta": 0.1, "step": 24, "smooth": False},
    ],
    ids=["mean", "max", "filtered"],
)
def test_sess_equals_pgc_on_resnet(options: dict, pgc_sess) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 80)  # not square: the shorter side sets the window and the scales
    names = {"pre_filter": "pre_filter_ratio", "step": "step_size"}
    theirs = {names.get(k, k): v for k, v in options.items()}
    ref = pgc_sess(model, model.layer4, x, [3, 5], **theirs)
    ours = camlens.SESS(camlens.GradCAM(model, layer="layer4"), **options)(x, target=[3, 5])
    np.testing.assert_allclose(ours.maps.numpy(), ref, atol=1e-5)
    assert float(ours.maps.amax()) == 1.0


def test_sess_equals_pgc_on_the_demo_model_with_its_defaults(pgc_sess) -> None:  # type: ignore[no-untyped-def]
    from camlens.demo import load_model, make_dataset

    model = load_model()
    x, labels = make_dataset(2, seed=5)[:2]
    ref = pgc_sess(model, model.features, x, labels.tolist())
    ours = camlens.SESS(camlens.GradCAM(model, layer="features"))(x, target=labels)
    # 12 scales of 96, 123, ..., 393 px, windows of 96 every 96 px (the last one shifted back inside)
    expected = sum(len(maps.sliding_windows(s, 96, 96)) ** 2 for s in range(96, 394, 27))
    assert ours.details["patches"] == expected == 122
    np.testing.assert_allclose(ours.maps.numpy(), ref, atol=1e-5)


def test_sess_pieces_match_their_formulas() -> None:
    assert maps.sess_scales(224) == [224 + 64 * i for i in range(12)]
    assert maps.sliding_windows(288, 224, 224) == [0, 64]
    stack = torch.tensor([[0.2, 0.0], [0.6, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(maps.sess_fuse(stack), torch.tensor([0.4, 0.0]))
    torch.testing.assert_close(maps.sess_fuse(stack, theta=0.3), torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(maps.sess_fuse(stack, pool="max"), torch.tensor([0.6, 0.0]))
    import cv2

    m = torch.rand(1, 20, 17)
    ref = cv2.GaussianBlur(m[0].numpy(), (11, 11), 5.0, 0)
    np.testing.assert_allclose(maps.gaussian_blur(m)[0].numpy(), ref, atol=1e-6)


# ---- the method contract, on the wrapper ---------------------------------------------------------


@pytest.mark.parametrize("name", INNER)
def test_sess_batched_equals_per_sample_and_for_targets_equals_separate_calls(name: str) -> None:
    net = GapNet().eval()
    x = torch.rand(3, 3, 16, 16)
    sess = wrap(name, net)
    batch = sess(x, target=[0, 3, 1])
    assert batch.maps.shape == batch.raw.shape == (3, 16, 16) and batch.method == f"sess({name})"
    for i, t in enumerate([0, 3, 1]):
        one = sess(x[i : i + 1], target=t)
        torch.testing.assert_close(one.raw[0], batch.raw[i], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(one.scores[0], batch.scores[i])
    together = sess.for_targets(x[:2], [4, None, "ignored"][:2])
    for res, t in zip(together, [4, None], strict=True):
        same(res, sess(x[:2], target=t))
    top = sess.for_targets(x[:2], "top-2")
    assert [r.targets.tolist() for r in top] == net(x[:2]).topk(2).indices.T.tolist()


def test_sess_with_model_keeps_the_method_and_every_option() -> None:
    net = GapNet().eval()
    options = dict(
        scales=[16, 20],
        window=12,
        step=5,
        pre_filter=0.2,
        theta=0.05,
        pool="max",
        smooth=False,
        softmax=False,
        batch_size=7,
        num_scales=2,
        scale_step=0.5,
    )
    sess = camlens.SESS(camlens.LayerCAM(net, layer="features", fuse="max"), **options)
    twin = copy.deepcopy(net)
    again = sess.with_model(twin)
    assert again.options == options and again.cam.model is twin and again.model is twin
    assert again.cam.options == {"fuse": "max"} and again.layer_names == ["features"]
    x = torch.rand(2, 3, 16, 16)
    same(again(x, target=1), sess(x, target=1))


def test_sess_hooks_gone_after_success_and_after_errors() -> None:
    net: Any = net_for(camlens.GradCAM, FailingHead)
    x = torch.rand(2, 3, 16, 16)
    sess = wrap("gradcam", net)
    sess(x, target=1)
    assert hook_count(net) == 0
    net.fail = True
    with pytest.raises(camlens.ModelError, match="the head broke"):
        sess(x, target=1)
    assert hook_count(net) == 0 and all(p.grad is None for p in net.parameters())
    breaks: Any = net_for(camlens.GradCAM, BreaksAfterFirstForward)
    with pytest.raises(camlens.ModelError, match="out of memory on an internal pass"):
        wrap("gradcam", breaks)(torch.rand(1, 3, 16, 16), target=0)
    assert breaks.calls > 1 and hook_count(breaks) == 0


def test_sess_any_layout_and_any_number_of_axes() -> None:
    net = GapNet().eval()
    x = torch.rand(2, 3, 16, 16)
    sess = wrap("gradcam", net)
    ref = sess(x, target=[1, 2])
    same(sess(x.transpose(2, 3).contiguous().transpose(2, 3), target=[1, 2]), ref)
    same(sess(x.contiguous(memory_format=torch.channels_last), target=[1, 2]), ref)
    for dims, size in ((1, 24), (3, 8)):
        vol = GapNet(dims=dims).eval()
        res = wrap("gradcam", vol)(torch.rand(2, 3, *([size] * dims)), target=[1, 2])
        assert res.maps.shape == res.raw.shape == (2, *([size] * dims))
        assert float(res.maps.min()) >= 0 and float(res.maps.max()) == 1


def test_sess_threads_share_one_model() -> None:
    net = net_for(camlens.GradCAM, Yielding, width=8)
    xs = [torch.rand(1, 3, 16, 16) for _ in range(3)]
    sess = wrap("gradcam", net)
    refs = [sess(x, target=i) for i, x in enumerate(xs)]
    errors: list[str] = []

    def work(k: int) -> None:
        for j in range(6):
            i = (j + k) % 3
            try:
                same(sess(xs[i], target=i), refs[i])
            except Exception as e:  # collected: an assertion in a thread would be lost
                errors.append(f"thread {k} call {j}: {e}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert hook_count(net) == 0


def test_sess_follows_a_changed_model_and_refuses_bad_calls() -> None:
    net = GapNet().eval()
    x = torch.rand(2, 3, 16, 16)
    sess = wrap("gradcam", net)
    before = sess(x, target=1)
    torch.manual_seed(7)
    net.fc = nn.Linear(8, 5)
    now = sess(x, target=1)
    same(now, wrap("gradcam", net)(x, target=1))
    assert not torch.allclose(now.scores, before.scores)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in sample\(s\) \[1\]"):
        sess(bad, target=1)
    with pytest.raises(ValueError, match="counterfactual"):
        sess(x, target=1, counterfactual=True)
    with pytest.raises(TypeError, match="wraps a camlens method"):
        camlens.SESS(net)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least the window"):
        camlens.SESS(camlens.GradCAM(net), scales=[8])(x)
    with pytest.raises(ValueError, match="pool must be"):
        camlens.SESS(camlens.GradCAM(net), pool="median")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # patches with empty maps are expected: no warning each
        sess(torch.zeros(1, 3, 16, 16), target=0)


@pytest.mark.parametrize("pre_filter", [0.0, 0.5])
def test_sess_runs_each_patch_once_unless_it_prefilters(pre_filter: float) -> None:
    """Without pre-filtering the patch scores come from the wrapped method's own forward; with it,
    every patch is scored first (one extra forward per patch, as the pre-filter needs)."""
    net = GapNet().eval()
    rows: list[int] = []
    net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    x = torch.rand(2, 3, 32, 32)
    sess = camlens.SESS(camlens.GradCAM(net, layer="features"), num_scales=2, pre_filter=pre_filter)
    res = sess(x, target=[1, 4])
    n_patch = res.details["patches"]
    kept = n_patch - int(n_patch * pre_filter)
    scoring = 2 * n_patch if pre_filter else 0
    assert sum(rows) == 2 + scoring + 2 * kept  # the full images, the scoring pass, the method
    with torch.no_grad():
        torch.testing.assert_close(res.logits, net(x))
