"""Pictures a person can trust: maps on the original photo, legends, notebook grids, and the
one-call ``camlens.explain``. Numbers, not just shapes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens import viz
from camlens.images import Geometry, load_images
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Preprocess
from camlens.pipeline import TargetChoice, file_name, parse_target, shared_range
from camlens.result import CAMResult

matplotlib = pytest.importorskip("matplotlib")
skdata = pytest.importorskip("skimage.data")
JET = matplotlib.colormaps["jet"]


def jet(v: np.ndarray) -> np.ndarray:
    return np.asarray(JET(v), dtype=np.float64)[..., :3] * 255.0


def u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class TinyNet(nn.Module):
    """Conv features at 1/4 resolution, GAP, linear: 5 classes with names."""

    classes = ("ant", "bee", "cat", "dog", "eel")

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=4, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


PRE = Preprocess((32, 32), IMAGENET_MEAN, IMAGENET_STD, resize=40)


# --------------------------------------------------------------------------- overlay on the original


def test_overlay_on_original_inside_blends_outside_is_grey_and_outlined() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    geo = Geometry((30, 50), (10, 10), (10.0, 0.0, 40.0, 30.0))  # the centre 30x30, 3x smaller
    m = rng.random((10, 10))
    out = np.asarray(viz.overlay_on_original(photo, m, geo, alpha=0.4, outline=False))
    values, inside = geo.place(m)
    expected_in = u8(0.6 * photo + 0.4 * jet(values.astype(np.float64)))
    luma = photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected_out = u8(np.repeat((0.45 * luma + 0.55 * 150)[..., None], 3, axis=2))
    np.testing.assert_array_equal(out[inside], expected_in[inside])
    np.testing.assert_array_equal(out[~inside], expected_out[~inside])
    assert inside[:, 10:40].all() and not inside[:, :10].any()
    # with the outline: the crop's edge columns are white, the rest is unchanged
    lined = np.asarray(viz.overlay_on_original(photo, m, geo, alpha=0.4))
    assert (lined[:, 10] == 255).all() and (lined[:, 39] == 255).all()
    np.testing.assert_array_equal(lined[1:-1, 11:39], out[1:-1, 11:39])


def test_overlay_on_original_equals_overlay_for_a_plain_image() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    m = rng.random((12, 9)).astype(np.float32)
    a = viz.overlay_on_original(img, m, Geometry.identity(12, 9), alpha=0.7)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(viz.overlay(img, m, alpha=0.7)))


def test_overlay_on_original_reduced_size_and_errors() -> None:
    photo = np.full((300, 400, 3), 200, np.uint8)
    geo = Geometry((300, 400), (8, 8), (50.0, 0.0, 350.0, 300.0))
    out = viz.overlay_on_original(photo, np.ones((8, 8)), geo, alpha=1.0, size=(150, 200))
    arr = np.asarray(out)
    assert out.size == (200, 150)
    np.testing.assert_array_equal(
        arr[75, 100], u8(jet(np.array(1.0)))
    )  # inside: the map's top colour
    np.testing.assert_array_equal(
        arr[75, 5], [172] * 3
    )  # outside: 0.45*200 + 0.55*150 = 172.5 -> 172
    with pytest.raises(ValueError, match="geometry is for 400x300"):
        viz.overlay_on_original(np.zeros((10, 10, 3), np.uint8), np.ones((8, 8)), geo)
    with pytest.raises(ValueError, match="input is"):
        viz.overlay_on_original(photo, np.ones((4, 4)), geo)


# --------------------------------------------------------------------------- legends and colour bars


def test_colorbar_and_css_gradient_follow_the_colour_map() -> None:
    bar = np.asarray(viz.colorbar("jet", 64, 3))
    centres = (np.arange(64) + 0.5) / 64
    np.testing.assert_array_equal(bar[1], u8(jet(centres)))
    assert bar.shape == (3, 64, 3) and (bar[0] == bar[2]).all()
    grad = viz.css_gradient("viridis", stops=3)
    colours = re.findall(r"#([0-9a-f]{6}) ([0-9.]+)%", grad)
    assert [p for _, p in colours] == ["0.0", "50.0", "100.0"]
    vir = matplotlib.colormaps["viridis"]
    for (hex_colour, _), value in zip([colours[0], colours[2]], (0.0, 1.0), strict=True):
        r, g, b = u8(np.asarray(vir(value)[:3]) * 255)
        assert hex_colour == f"{r:02x}{g:02x}{b:02x}"
    with pytest.raises(ValueError, match="positive size"):
        viz.colorbar("jet", 0, 4)


def test_with_legend_keeps_the_image_and_draws_bar_and_text() -> None:
    img = np.random.default_rng(2).integers(0, 256, (40, 300, 3), dtype=np.uint8)
    leg = viz.Legend("gradcam", "layer4", "tabby cat (281)", "score 9.31, p 0.83")
    assert leg.title() == "gradcam at layer4 · tabby cat (281) · score 9.31, p 0.83"
    out = np.asarray(viz.with_legend(img, leg))
    assert out.shape[1] == 300 and out.shape[0] > 40
    np.testing.assert_array_equal(out[:40], img)  # the image's own pixels, untouched
    strip = out[40:]
    # the colour bar: a row whose colours run from jet(0) (dark blue) to jet(1) (dark red)
    blue, red = u8(jet(np.array(0.0))), u8(jet(np.array(1.0)))
    rows = [r for r in strip if np.abs(r.astype(int) - blue).sum(1).min() < 40]
    assert rows, "no colour bar in the legend"
    row = rows[len(rows) // 2].astype(int)
    first = int(np.argmin(np.abs(row - blue).sum(1)))
    last = int(np.argmin(np.abs(row - red).sum(1)))
    assert first < last and last - first > 200
    assert (strip < 100).all(axis=2).sum() > 100  # dark text pixels
    narrow = viz.with_legend(np.zeros((20, 30, 3), np.uint8), leg)
    assert narrow.size[0] == 240  # a minimum width; the image is centred
    np.testing.assert_array_equal(np.asarray(narrow)[:20, 105:135], 0)
    assert (np.asarray(narrow)[:20, :100] == 255).all()


def test_scale_texts() -> None:
    assert "normalised per image" in viz.PER_IMAGE_SCALE
    assert viz.shared_scale_text("all 6 gradcam maps").endswith("all 6 gradcam maps")


def test_thumbnail_and_image_uri() -> None:
    big = np.zeros((500, 1000, 3), np.uint8)
    t = viz.thumbnail(big, 100)
    assert t.size == (100, 50)
    assert viz.thumbnail(np.zeros((10, 20, 3), np.uint8), 100).size == (20, 10)
    uri = viz.to_image_uri(t, "jpeg", 80)
    assert uri.startswith("data:image/jpeg;base64,")
    assert viz.to_image_uri(t, "webp").startswith("data:image/webp;base64,")
    with pytest.raises(ValueError, match="format"):
        viz.to_image_uri(t, "gif")


# --------------------------------------------------------------------------- CAMResult display


def _result(b: int = 2) -> CAMResult:
    torch.manual_seed(3)
    return CAMResult(
        torch.rand(b, 32, 32),
        torch.rand(b, 8, 8),
        torch.tensor([1.25, -0.5, 2.0][:b]),
        torch.tensor([2, 4, 0][:b]),
        "features",
        "gradcam",
    )


def test_result_overlay_on_an_image_batch_draws_on_the_originals() -> None:
    batch = load_images([skdata.chelsea(), skdata.astronaut()], PRE)
    res = _result()
    outs = res.overlay(batch)
    assert [o.size for o in outs] == [(451, 300), (512, 512)]
    for o, orig, geo, m in zip(outs, batch.originals, batch.geometry, res.maps, strict=True):
        ref = viz.overlay_on_original(orig, m, geo)
        np.testing.assert_array_equal(np.asarray(o), np.asarray(ref))
    with_legend = res.overlay(batch, legend=True, classes=TinyNet.classes)
    assert with_legend[0].size[0] == 451 and with_legend[0].size[1] > 300
    np.testing.assert_array_equal(np.asarray(with_legend[0])[:300], np.asarray(outs[0]))


def test_result_overlay_refuses_a_normalised_batch_with_advice() -> None:
    batch = load_images([skdata.chelsea(), skdata.coffee()], PRE)
    with pytest.raises(ValueError, match=r"normalised model input.*ImageBatch.*\.views"):
        _result().overlay(batch.x)
    outs = _result().overlay(batch.views)  # what the model saw, in [0, 1]
    assert [o.size for o in outs] == [(32, 32), (32, 32)]


def test_result_displays_as_a_labelled_grid() -> None:
    res = _result(3)
    html = res._repr_html_()
    assert html is not None
    assert html.count("<img ") == 3 and html.count("data:image/jpeg;base64,") == 3
    for text in ("gradcam at features", "class 2", "score 1.25", "normalised per image"):
        assert text in html
    assert "linear-gradient(to right" in html  # the colour bar
    png = res._repr_png_()
    assert png is not None and png.startswith(b"\x89PNG")
    one_d = CAMResult(torch.rand(2, 16), torch.rand(2, 4), torch.zeros(2), None, "x", "gradcam")
    assert one_d._repr_html_() is None and one_d._repr_png_() is None


def test_show_several_results_side_by_side(tmp_path: Path) -> None:
    batch = load_images([skdata.chelsea(), skdata.coffee()], PRE)
    a, b = _result(), _result()
    b.method = "eigencam"
    g = camlens.show([a, b], batch, classes=TinyNet.classes)
    assert len(g.rows) == 2 and [len(r.tiles) for r in g.rows] == [2, 2]
    assert g.rows[0].tiles[0].legend.target == "cat (2)"
    assert g.rows[1].tiles[1].legend.method == "eigencam"
    assert max(g.rows[0].tiles[0].image.size) == 256  # the original, reduced
    html = g.to_html()
    assert html.count("<img ") == 6  # two inputs and four maps
    img = g.image()
    assert img.size[0] > 3 * 256
    assert g.save(tmp_path / "g.html").read_text().startswith("<!DOCTYPE html>")
    with Image.open(g.save(tmp_path / "g.png")) as im:
        assert im.size == img.size
    with pytest.raises(ValueError, match="save to"):
        g.save(tmp_path / "g.txt")
    with pytest.raises(ValueError, match="same images"):
        camlens.show([a, _result(3)])


# --------------------------------------------------------------------------- the one-call pipeline


def test_parse_target_and_file_names() -> None:
    names = ["ant", "bee", "Tabby cat"]
    assert parse_target(None, names) == TargetChoice()
    assert parse_target(2, names) == TargetChoice(index=2)
    assert parse_target("tabby CAT", names) == TargetChoice(index=2)
    assert parse_target("top-2", names) == TargetChoice(top_k=2)
    assert parse_target("7", None) == TargetChoice(index=7)
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        parse_target(3, names)
    with pytest.raises(ValueError, match="closest class names: bee"):
        parse_target("bea", names)
    with pytest.raises(ValueError, match="top-1 to top-3"):
        parse_target("top-4", names)
    with pytest.raises(ValueError, match="top-K"):
        parse_target("top-x", names, what="--target")
    with pytest.raises(TypeError):
        parse_target(1.5, names)  # type: ignore[arg-type]
    assert file_name("im", "gradcam", "png") == "im.gradcam.png"
    assert (
        file_name("im", "gradcam", "npz", 3, "Egyptian cat, Felis")
        == "im.gradcam.top3-egyptian-cat.npz"
    )


def test_explain_in_one_call_on_photos() -> None:
    net = TinyNet().eval()
    forwards: list[int] = []
    net.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))
    photos = [skdata.chelsea(), skdata.coffee()]
    ex = camlens.explain(
        net, photos, method=["gradcam", "Eigen-CAM"], target="top-2", preprocess=PRE
    )
    # the default layer's probe (one sample, once per input shape), then one forward per method:
    # the predictions come from the methods' own forward
    assert forwards == [1, 2, 2]
    assert ex.methods == ["gradcam", "eigencam"] and len(ex) == 2
    assert [len(ex.results[m]) for m in ex.methods] == [2, 2]
    overlays = ex.overlays("gradcam", rank=2, legend=False)
    assert [o.size for o in overlays] == [(451, 300), (600, 400)]
    # the overlay is the map placed on the original through the batch's geometry
    m = ex.results["gradcam"][1].maps[0]
    ref = viz.overlay_on_original(ex.batch.originals[0], m, ex.batch.geometry[0])
    np.testing.assert_array_equal(np.asarray(overlays[0]), np.asarray(ref))
    # ranks explain the two highest classes, and the legend says which with the probability
    with torch.no_grad():
        logits = net(ex.batch.x)
    top2 = logits.topk(2, dim=1).indices
    assert ex.results["gradcam"][1].targets.tolist() == top2[:, 1].tolist()
    probs = logits.softmax(1)
    leg = ex.legend(0, "gradcam", 2)
    c = int(top2[0, 1])
    assert leg.target == f"top-2: {TinyNet.classes[c]} ({c})"
    assert leg.score.endswith(f"p {float(probs[0, c]):.2f}")
    pred = ex.predicted(1)
    assert pred is not None and pred[0] == int(logits[1].argmax())
    assert ex.overlay(0, size=100, legend=False).size == (100, 67)
    assert ex.overlay(0, size="input", legend=False).size == (32, 32)
    html = ex._repr_html_()
    assert html.count("<img ") == 2 * (1 + 4) and "predicted" in html and "original" in html
    with pytest.raises(ValueError, match="methods: gradcam, eigencam"):
        ex.maps("scorecam")


def test_explain_shared_scale_puts_maps_on_one_scale() -> None:
    net = TinyNet().eval()
    ex = camlens.explain(
        net,
        [skdata.chelsea(), skdata.coffee(), skdata.astronaut()],
        preprocess=PRE,
        shared_scale=True,
    )
    res = ex.results["gradcam"][0]
    lo, hi = ex.scale["gradcam"]  # type: ignore[index]
    assert (lo, hi) == shared_range([res])
    shared = ex.maps()
    # the image with the largest raw value reaches 1; the others stay below their per-image maps
    peaks = shared.amax(dim=(1, 2))
    assert float(peaks.max()) == pytest.approx(1.0, abs=1e-6)
    raw_peaks = res.raw.amax(dim=(1, 2))
    assert int(peaks.argmax()) == int(raw_peaks.argmax())
    # equal to the upsampled raw map rescaled by hand
    from camlens.maps import upsample

    up = upsample(res.raw, (32, 32))
    assert torch.allclose(shared, ((up - lo) / (hi - lo)).clamp(0, 1), atol=1e-6)
    assert "shared scale" in ex.legend(0).scale and "all 3 gradcam maps" in ex.legend(0).scale


def test_explain_with_a_spec_and_a_loaded_model(tmp_path: Path) -> None:
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cat.jpg")
    ex = camlens.explain("demo", [tmp_path / "cat.jpg"], target="ring")
    assert ex.model.spec == "demo" and ex.batch.names == ["cat.jpg"]
    assert ex.results["gradcam"][0].targets.tolist() == [5]
    assert ex.overlays()[0].size[0] == 451  # legend strip under the 451x300 photo
    lm = LoadedModel.wrap(TinyNet().eval(), PRE)
    assert lm.classes == list(TinyNet.classes)
    ex2 = camlens.explain(lm, ex.batch.originals, method="hirescam", target=1)
    assert ex2.results["hirescam"][0].targets.tolist() == [1]
    with pytest.raises(TypeError, match="model must be"):
        camlens.explain(42, [skdata.chelsea()])
    with pytest.raises(ValueError, match="unknown method"):
        camlens.explain(lm, [skdata.chelsea()], method="gradcum")


def test_for_targets_gives_a_list_that_displays_as_one_grid() -> None:
    import camlens
    from conftest import GapNet

    net = GapNet().eval()
    x = torch.rand(2, 3, 16, 16)
    several = camlens.GradCAM(net, layer="features").for_targets(x, "top-3")
    assert isinstance(several, list) and isinstance(several, camlens.CAMResults)
    assert len(several) == 3 and several == list(several)
    html = several._repr_html_()
    assert html is not None
    single = several[0]._repr_html_()
    assert single is not None
    # one grid of the 2 images x 3 targets: three times the tiles of one result
    assert html.count("<img") == 3 * single.count("<img")
    png = several._repr_png_()
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
