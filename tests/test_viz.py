"""Tests for camlens.viz: numbers, not just shapes."""

from __future__ import annotations

import base64
import io
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("PIL")
matplotlib = pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from camlens import viz  # noqa: E402

JET = matplotlib.colormaps["jet"]


def jet_u8(value: float) -> np.ndarray:
    """The documented colourisation: round(255 * jet(value)[:3])."""
    return np.rint(np.asarray(JET(value)[:3], dtype=np.float64) * 255).astype(np.uint8)


def arr(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def img_u8(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)


@pytest.fixture
def cam(rng: np.random.Generator) -> np.ndarray:
    return rng.random((6, 7))


# --------------------------------------------------------------------------- overlay numbers


def test_alpha_zero_returns_image(img_u8: np.ndarray, cam: np.ndarray) -> None:
    out = viz.overlay(img_u8, cam, alpha=0.0)
    assert out.size == (7, 6)
    np.testing.assert_array_equal(arr(out), img_u8)


def test_alpha_one_is_colormap_of_map(img_u8: np.ndarray, cam: np.ndarray) -> None:
    out = arr(viz.overlay(img_u8, cam, alpha=1.0))
    for y, x in [(0, 0), (2, 3), (5, 6), (4, 1)]:
        np.testing.assert_array_equal(out[y, x], jet_u8(cam[y, x]))


def test_map_endpoints_give_colormap_endpoints(img_u8: np.ndarray) -> None:
    m = np.full((6, 7), 0.5)
    m[1, 2] = 0.0
    m[4, 5] = 1.0
    out = arr(viz.overlay(img_u8, m, alpha=1.0))
    np.testing.assert_array_equal(out[1, 2], jet_u8(0.0))
    np.testing.assert_array_equal(out[4, 5], jet_u8(1.0))
    # jet runs from dark blue (0, 0, 0.5) to dark red (0.5, 0, 0)
    np.testing.assert_array_equal(out[1, 2], [0, 0, 128])
    np.testing.assert_array_equal(out[4, 5], [128, 0, 0])


def test_blend_formula_alpha_03(img_u8: np.ndarray, cam: np.ndarray) -> None:
    out = arr(viz.overlay(img_u8, cam, alpha=0.3))
    for y, x in [(0, 0), (3, 4), (5, 6)]:
        heat = np.asarray(JET(cam[y, x])[:3]) * 255
        expected = 0.7 * img_u8[y, x].astype(np.float64) + 0.3 * heat
        np.testing.assert_allclose(out[y, x], expected, atol=0.5 + 1e-9)
        np.testing.assert_array_equal(out[y, x], np.rint(expected).astype(np.uint8))


def test_other_colormap(img_u8: np.ndarray, cam: np.ndarray) -> None:
    out = arr(viz.overlay(img_u8, cam, colormap="viridis", alpha=1.0))
    expected = np.rint(np.asarray(matplotlib.colormaps["viridis"](cam[2, 2])[:3]) * 255)
    np.testing.assert_array_equal(out[2, 2], expected)


def test_values_outside_unit_interval_are_clipped(img_u8: np.ndarray) -> None:
    m = np.zeros((6, 7))
    m[0, 0], m[0, 1], m[0, 2] = -3.0, 2.5, np.inf
    out = arr(viz.overlay(img_u8, m, alpha=1.0))
    np.testing.assert_array_equal(out[0, 0], jet_u8(0.0))
    np.testing.assert_array_equal(out[0, 1], jet_u8(1.0))
    np.testing.assert_array_equal(out[0, 2], jet_u8(1.0))


def test_heatmap_equals_alpha_one_overlay(img_u8: np.ndarray, cam: np.ndarray) -> None:
    h = viz.heatmap(torch.from_numpy(cam))
    assert h.size == (7, 6)
    np.testing.assert_array_equal(arr(h), arr(viz.overlay(img_u8, cam, alpha=1.0)))
    np.testing.assert_array_equal(arr(h)[3, 3], jet_u8(cam[3, 3]))


# --------------------------------------------------------------------------- input types


def test_tensor_array_pil_inputs_identical(rng: np.random.Generator) -> None:
    hwc = rng.random((5, 9, 3)).astype(np.float32)
    cam = rng.random((5, 9)).astype(np.float32)
    u8 = np.rint(hwc.astype(np.float64) * 255).astype(np.uint8)
    images = [
        hwc,
        torch.from_numpy(hwc).permute(2, 0, 1).requires_grad_(True),  # needs detaching
        Image.fromarray(u8),
        u8,
        torch.from_numpy(u8).permute(2, 0, 1),
    ]
    maps = [cam, torch.from_numpy(cam), torch.from_numpy(cam)[None]]
    ref = arr(viz.overlay(images[0], maps[0], alpha=0.4))
    for im in images:
        for m in maps:
            np.testing.assert_array_equal(arr(viz.overlay(im, m, alpha=0.4)), ref)
    np.testing.assert_array_equal(arr(viz.to_pil(hwc)), u8)


def test_to_pil_grey_and_alpha_variants(rng: np.random.Generator) -> None:
    grey = rng.random((4, 5))
    g8 = np.rint(grey * 255).astype(np.uint8)
    expected = np.repeat(g8[:, :, None], 3, axis=2)
    for x in [grey, g8, torch.from_numpy(grey), torch.from_numpy(grey)[None], g8[:, :, None]]:
        np.testing.assert_array_equal(arr(viz.to_pil(x)), expected)
    rgba = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(arr(viz.to_pil(rgba)), rgba[:, :, :3])
    np.testing.assert_array_equal(arr(viz.to_pil(Image.fromarray(rgba))), rgba[:, :, :3])
    half = torch.from_numpy(grey).to(torch.bfloat16)
    assert viz.to_pil(half).size == (5, 4)
    ints = g8.astype(np.int64)  # np.array of Python ints in range
    np.testing.assert_array_equal(arr(viz.to_pil(ints)), expected)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ([[0.0, 1.0]], TypeError),
        ("image.png", TypeError),
        (np.zeros((4, 5), dtype=bool), TypeError),
        (np.zeros((4, 5), dtype=np.complex64), TypeError),
        (torch.zeros(4, 5, dtype=torch.bool), TypeError),
        (np.zeros((4, 5, 2)), ValueError),
        (np.zeros((3, 4, 5)), ValueError),  # channels-first numpy
        (np.zeros((2, 3, 4, 5)), ValueError),
        (np.zeros((5,)), ValueError),
        (np.zeros((0, 5)), ValueError),
        (torch.zeros(1, 3, 4, 5), ValueError),  # batch dimension
        (torch.zeros(4, 4, 5), ValueError),
        (torch.zeros(4, 5, 3), ValueError),  # channels-last tensor
        (np.full((4, 5), 255.0), ValueError),  # 0..255 floats
        (np.full((4, 5), -2.0), ValueError),  # normalised image
        (np.full((4, 5), np.nan), ValueError),
        (np.full((4, 5), 300, dtype=np.int64), ValueError),
    ],
)
def test_to_pil_rejects(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"accepted|empty|NaN|complex"):
        viz.to_pil(bad)  # type: ignore[arg-type]


def test_to_pil_error_lists_accepted_shapes_and_dtypes() -> None:
    with pytest.raises(ValueError) as info:
        viz.to_pil(np.zeros((4, 5, 2)))
    msg = str(info.value)
    for part in ["(H, W)", "(H, W, 3)", "(H, W, 4)", "(3, H, W)", "(1, H, W)", "uint8", "float"]:
        assert part in msg


# --------------------------------------------------------------------------- resizing


def test_map_is_resized_bilinearly_by_hand() -> None:
    # 2 -> 4 with align_corners=False samples the source at -0.25, 0.25, 0.75, 1.25,
    # i.e. (clamped) weights 0, 0.25, 0.75, 1 on the right column.
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    m = np.array([[0.0, 1.0], [0.0, 1.0]])
    out = arr(viz.overlay(img, m, alpha=1.0))
    assert out.shape == (4, 4, 3)
    for x, v in enumerate([0.0, 0.25, 0.75, 1.0]):
        for y in range(4):
            np.testing.assert_array_equal(out[y, x], jet_u8(v))


def test_map_is_resized_to_image_size(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    for shape in [(3, 4), (40, 30)]:
        m = rng.random(shape)
        out = arr(viz.overlay(img, m, alpha=1.0))
        assert out.shape == (10, 12, 3)
        t = torch.from_numpy(m)[None, None]
        r = F.interpolate(t, size=(10, 12), mode="bilinear", align_corners=False, antialias=True)
        np.testing.assert_array_equal(out, arr(viz.heatmap(r[0, 0])))


# --------------------------------------------------------------------------- bad overlay inputs


def test_overlay_rejects_bad_inputs(img_u8: np.ndarray, cam: np.ndarray) -> None:
    nan_map = cam.copy()
    nan_map[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay(img_u8, nan_map)
    with pytest.raises(ValueError, match="NaN"):
        viz.heatmap(torch.from_numpy(nan_map))
    for a in [-0.1, 1.5, float("nan")]:
        with pytest.raises(ValueError, match="alpha"):
            viz.overlay(img_u8, cam, alpha=a)
    with pytest.raises(ValueError, match="jet") as info:
        viz.overlay(img_u8, cam, colormap="no_such_map")
    assert "viridis" in str(info.value)
    with pytest.raises(ValueError, match="cam_map"):
        viz.overlay(img_u8, np.zeros((2, 6, 7)))
    with pytest.raises(ValueError, match="cam_map"):
        viz.overlay(img_u8, np.zeros(7))
    with pytest.raises(TypeError, match="cam_map"):
        viz.overlay(img_u8, cam.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accepted"):
        viz.overlay(np.zeros((6, 7, 2)), cam)


# --------------------------------------------------------------------------- grid


def test_grid_flat_layout_size_and_placement(rng: np.random.Generator) -> None:
    ims = [rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8) for _ in range(5)]
    g = viz.grid(ims, ncols=3, pad=4)
    assert g.size == (3 * 10 + 4 * 4, 2 * 8 + 3 * 4)
    a = arr(g)
    np.testing.assert_array_equal(a[4 : 4 + 8, 4 : 4 + 10], ims[0])
    np.testing.assert_array_equal(a[4 + 8 + 4 : 4 + 16 + 4, 4 + 14 : 4 + 14 + 10], ims[4])
    assert (a[:4] == 255).all()  # white padding
    assert (a[-4:] == 255).all()
    assert (a[12:, 46 - 14 :] == 255).all()  # the empty sixth cell
    # default ncols = ceil(sqrt(n))
    assert viz.grid(ims, pad=0).size == (math.ceil(math.sqrt(5)) * 10, 2 * 8)


def test_grid_rows_titles_and_mixed_sizes(rng: np.random.Generator) -> None:
    a = Image.fromarray(rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8))
    b = rng.random((12, 6))  # grey float array, taller
    c = torch.rand(3, 5, 5)
    g = viz.grid([[a, b], [c]], titles=[["a", "b"], ["c"]], pad=2, title_height=15)
    cell_w, cell_h = 10, 12
    assert g.size == (2 * cell_w + 3 * 2, 2 * (15 + cell_h) + 3 * 2)
    strip = arr(g)[2 : 2 + 15, 2 : 2 + cell_w]
    assert (strip != 255).any()  # the title was drawn
    flat = viz.grid([[a, b], [c]], titles=["a", "b", None], pad=2, title_height=15)
    assert flat.size == g.size
    # default title height comes from the default font
    assert viz.grid([a], titles=["x"], pad=0).height > a.height
    assert viz.grid([a], pad=0).size == a.size


def test_grid_rejects_bad_inputs() -> None:
    im = np.zeros((4, 4))
    with pytest.raises(ValueError, match="titles"):
        viz.grid([im, im], titles=["one"])
    with pytest.raises(ValueError, match="titles"):
        viz.grid([[im, im], [im]], titles=[["a"], ["b"]])
    with pytest.raises(ValueError):
        viz.grid([])
    with pytest.raises(ValueError, match="ncols"):
        viz.grid([im], ncols=0)
    with pytest.raises(ValueError, match="ncols"):
        viz.grid([[im]], ncols=2)
    with pytest.raises(ValueError, match="pad"):
        viz.grid([im], pad=-1)
    with pytest.raises(ValueError, match="both"):
        viz.grid([im, [im]])  # type: ignore[list-item]


def test_long_titles_are_shortened() -> None:
    g = viz.grid([np.zeros((10, 30))], titles=["a title far wider than thirty pixels"], pad=0)
    assert g.width == 30


# --------------------------------------------------------------------------- export


def test_png_bytes_and_data_uri_round_trip(img_u8: np.ndarray, cam: np.ndarray) -> None:
    im = viz.overlay(img_u8, cam, alpha=0.3)
    png = viz.to_png_bytes(im)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    uri = viz.to_data_uri(im)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    decoded = base64.b64decode(uri[len(prefix) :])
    assert decoded == png
    back = Image.open(io.BytesIO(decoded))
    back.load()
    np.testing.assert_array_equal(np.asarray(back.convert("RGB")), arr(im))


# --------------------------------------------------------------------------- 3-D and 1-D


def test_overlay_3d_grid(rng: np.random.Generator) -> None:
    vol = torch.from_numpy(rng.random((2, 16, 16, 16)))
    m = torch.from_numpy(rng.random((4, 4, 4)))
    out = viz.overlay_3d(vol, m, n_slices=8)
    # 8 slices of 16x16 upscaled x4 to 64x64 in ceil(sqrt(8)) = 3 columns, pad 4
    assert out.width == 3 * 64 + 4 * 4
    assert 3 * 64 + 4 * 4 < out.height < 3 * 64 + 4 * 4 + 3 * 40
    a = arr(out).astype(np.int64)
    assert a.std() > 10
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50

    # (D, H, W) volume, other axes, n_slices capped at the axis length
    v3 = rng.random((3, 20, 24))
    for axis in (0, 1, 2, -1):
        im = viz.overlay_3d(v3, rng.random((3, 5, 6)), n_slices=4, axis=axis)
        assert im.width >= 64 and im.height >= 64
        assert arr(im).std() > 0
    small = viz.overlay_3d(v3, rng.random((3, 5, 6)), n_slices=50, axis=0, alpha=0.0)
    # only 3 slices exist: each 20x24, upscaled x4 to 80x96, in ceil(sqrt(3)) = 2 columns
    assert small.width == 2 * 96 + 3 * 4
    assert small.height > 2 * 80 + 3 * 4


def test_overlay_3d_values() -> None:
    # constant map of 1 at alpha=1 -> every slice pixel is jet(1)
    vol = torch.rand(1, 4, 16, 16)
    out = arr(viz.overlay_3d(vol, torch.ones(2, 2, 2), alpha=1.0, n_slices=1))
    np.testing.assert_array_equal(out[-4 - 32, 4 + 32], jet_u8(1.0))
    # alpha=0 -> min-max scaled grey volume
    v = torch.zeros(1, 1, 64, 64)
    v[0, 0, :, 32:] = 5.0
    g = arr(viz.overlay_3d(v, torch.zeros(1, 1, 1), alpha=0.0, n_slices=1))
    np.testing.assert_array_equal(g[-4 - 10, 4 + 10], [0, 0, 0])
    np.testing.assert_array_equal(g[-4 - 10, 4 + 50], [255, 255, 255])


def test_overlay_3d_rejects_bad_inputs() -> None:
    vol = torch.rand(4, 8, 8)
    m = torch.rand(4, 8, 8)
    with pytest.raises(ValueError, match="axis"):
        viz.overlay_3d(vol, m, axis=3)
    with pytest.raises(ValueError, match="n_slices"):
        viz.overlay_3d(vol, m, n_slices=0)
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay_3d(vol, m, alpha=2.0)
    with pytest.raises(ValueError, match="volume"):
        viz.overlay_3d(torch.rand(8, 8), m)
    with pytest.raises(ValueError, match="cam_map"):
        viz.overlay_3d(vol, torch.rand(8, 8))
    bad = m.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay_3d(vol, bad)
    with pytest.raises(ValueError, match="colormap"):
        viz.overlay_3d(vol, m, colormap="nope")


def test_overlay_1d(rng: np.random.Generator) -> None:
    t = np.linspace(0, 8 * np.pi, 1000)
    sig = np.stack([np.sin(t), np.cos(t)])
    m = rng.random(50)
    im = viz.overlay_1d(sig, torch.from_numpy(m))
    assert im.mode == "RGB"
    assert im.width == 800
    assert 200 <= im.height <= 600
    a = arr(im).astype(np.int64)
    assert a.std() > 10
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20
    one = viz.overlay_1d(torch.from_numpy(sig[0]), m, colormap="viridis")
    assert one.width == 800 and 100 <= one.height < im.height
    assert arr(one).std() > 0


def test_overlay_1d_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="signal"):
        viz.overlay_1d(np.zeros((2, 3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="cam_map"):
        viz.overlay_1d(np.zeros(10), np.zeros((2, 10)))
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay_1d(np.zeros(10), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="colormap"):
        viz.overlay_1d(np.zeros(10), np.zeros(10), colormap="nope")


# --------------------------------------------------------------------------- optional deps


def test_missing_pillow_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r'pip install "camlens\[viz\]"'):
        viz.to_pil(np.zeros((2, 2)))


def test_missing_matplotlib_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "camlens\[viz\]"'):
        viz.heatmap(np.zeros((2, 2)))
