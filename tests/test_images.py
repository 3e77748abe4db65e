"""Images with their geometry: loading any mode, the resize/crop of torchvision and timm pixel for
pixel, and maps placed back on the original."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pngfile import write_png

from camlens.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    Geometry,
    ImageTooLargeError,
    find_images,
    load_image,
    load_images,
    probe_image,
    read_image,
)
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camlens.models.preprocess import as_preprocess

skdata = pytest.importorskip("skimage.data")


# --------------------------------------------------------------------------- modes


def test_16_bit_grey_is_scaled_not_saturated(tmp_path: Path) -> None:
    grad = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(grad).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        naive = np.asarray(im.convert("RGB"))
    assert (naive == 255).mean() > 0.9  # what Pillow's convert does: almost all white
    got = np.asarray(load_image(tmp_path / "g16.png"))
    expected = np.rint(grad / 257.0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], expected)
    assert (got == 255).mean() < 0.01


def test_read_image_is_load_image_without_the_warnings_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grad = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(grad).save(tmp_path / "g16.png")
    expected = np.asarray(load_image(tmp_path / "g16.png"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("catch_warnings is not thread-safe")

    data = (tmp_path / "g16.png").read_bytes()
    with monkeypatch.context() as patched:  # undone before pytest's own use of catch_warnings
        patched.setattr(warnings, "catch_warnings", refuse)
        got = [read_image(source) for source in (tmp_path / "g16.png", data)]
        with pytest.raises(ValueError, match=r"^the upload is not an image file camlens reads"):
            read_image(b"GIF89a not really", name="the upload")
        with pytest.raises(ValueError, match=r"^the upload could not be decoded: it is truncated"):
            read_image(data[: len(data) // 2], name="the upload")
    for im in got:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), expected)


def test_16_bit_rgb_png_keeps_its_range(tmp_path: Path) -> None:
    grad = np.linspace(0, 65535, 8 * 8).reshape(8, 8).astype(np.uint16)
    rgb = np.stack([grad, grad // 2, grad // 4], -1).reshape(8, 24)
    write_png(tmp_path / "rgb16.png", 8, 8, rgb, depth=16)
    got = np.asarray(load_image(tmp_path / "rgb16.png")).astype(int)
    ref = np.stack([grad, grad // 2, grad // 4], -1) / 257.0
    assert np.abs(got - ref).max() <= 1.0  # Pillow keeps the high byte: within one level


def test_float_and_32_bit_integer_images() -> None:
    unit = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    got = np.asarray(load_image(Image.fromarray(unit, mode="F")))[..., 0]
    np.testing.assert_array_equal(got, np.rint(unit * 255).astype(np.uint8))
    wide = np.linspace(-10, 990, 16, dtype=np.float32).reshape(4, 4)  # neither [0, 1] nor [0, 255]
    got = np.asarray(load_image(Image.fromarray(wide, mode="F")))[..., 0]
    np.testing.assert_array_equal(got, np.rint((wide + 10) / 1000 * 255).astype(np.uint8))
    ints = (np.arange(16, dtype=np.int32) * 4369).reshape(4, 4)  # 0..65535 in mode "I"
    got = np.asarray(load_image(Image.fromarray(ints, mode="I")))[..., 0]
    np.testing.assert_array_equal(got, np.rint(ints / 257).astype(np.uint8))


def test_palette_with_transparency_and_arrays() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Palette images with Transparency" warning
        got = np.asarray(load_image(pal))
    assert got.shape == (4, 4, 3) and tuple(got[0, 0]) == (200, 10, 20)
    u16 = np.full((2, 3), 65535, np.uint16)
    assert np.asarray(load_image(u16)).max() == 255 and np.asarray(load_image(u16)).min() == 255
    as_tensor = load_image(torch.ones(3, 2, 5) * 0.5)
    assert as_tensor.size == (5, 2) and np.asarray(as_tensor)[0, 0, 0] == 128


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # top-left red as stored
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    img.save(tmp_path / "rot.png", exif=exif)
    got = np.asarray(load_image(tmp_path / "rot.png"))
    assert got.shape == (6, 4, 3)
    np.testing.assert_array_equal(got, np.rot90(arr, k=-1))  # red now top-right
    assert tuple(got[0, 3]) == (255, 0, 0)
    # the same from bytes and from an open file object
    data = (tmp_path / "rot.png").read_bytes()
    np.testing.assert_array_equal(np.asarray(load_image(data)), got)
    with open(tmp_path / "rot.png", "rb") as f:
        np.testing.assert_array_equal(np.asarray(load_image(f)), got)


# --------------------------------------------------------------------------- bad images


def test_decompression_bomb_is_a_clear_value_error(tmp_path: Path) -> None:
    write_png(tmp_path / "bomb.png", 20000, 20000)
    for call in (load_image, probe_image):
        with pytest.raises(ImageTooLargeError) as info:
            call(tmp_path / "bomb.png")
        msg = str(info.value)
        assert "20000x20000" in msg and "400.0 million" in msg and "89.5 million" in msg
        assert "--max-pixels 400000000" in msg
        assert isinstance(info.value, ValueError) and info.value.size == (20000, 20000)
    # the limit can be raised (only the header is read here)
    assert probe_image(tmp_path / "bomb.png", max_pixels=None) == (20000, 20000)
    assert probe_image(tmp_path / "bomb.png", max_pixels=400_000_000) == (20000, 20000)
    # Pillow's own guard is restored afterwards
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_size_in_pillows_warning_range_uses_our_limit(tmp_path: Path) -> None:
    write_png(tmp_path / "big.png", 10000, 10000)  # Pillow only warns here
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        probe_image(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe_image(tmp_path / "big.png", max_pixels=10**8) == (10000, 10000)
    with pytest.raises(ImageTooLargeError, match="5x4"):
        load_image(Image.new("RGB", (5, 4)), max_pixels=19)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "text.png")
    Image.fromarray(skdata.astronaut()).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:3000])
    assert probe_image(tmp_path / "cut.png") == (512, 512)  # the header is fine
    with pytest.raises(ValueError, match="truncated"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="check the path"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="cannot load an image from a dict"):
        load_image({})  # type: ignore[arg-type]


def test_only_the_allowed_formats_are_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import EpsImagePlugin

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    (tmp_path / "doc.eps").write_bytes(eps)
    (tmp_path / "doc.png").write_bytes(eps)  # the name does not matter, the format does
    with Image.open(tmp_path / "doc.eps") as im:
        assert im.format == "EPS"  # Pillow alone would open it (and run Ghostscript to load it)
    opened: list[bytes] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(b"x"))
    for path in (tmp_path / "doc.eps", tmp_path / "doc.png"):
        for call in (load_image, probe_image):
            with pytest.raises(ValueError) as info:
                call(path)
            assert str(info.value) == (
                f"{str(path)!r} is not an image file camlens reads; "
                "pass PNG, JPEG, WebP, BMP, TIFF or GIF images"
            )
    with pytest.raises(ValueError, match="not an image file camlens reads"):
        load_image(eps)
    assert opened == []  # the EPS plugin never saw the data
    assert IMAGE_FORMATS == ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
    # every suffix a folder listing takes is one of the allowed formats
    known = Image.registered_extensions()
    assert {known[s] for s in IMAGE_SUFFIXES} == set(IMAGE_FORMATS)


def test_find_images(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in find_images([tmp_path])] == ["a.png", "b.JPG"]
    assert [p.name for p in find_images([tmp_path / "a.png", tmp_path])] == ["a.png", "b.JPG"]
    with pytest.raises(ValueError, match="holds no image"):
        find_images([tmp_path / "sub"])
    with pytest.raises(FileNotFoundError):
        find_images([tmp_path / "nope"])


# --------------------------------------------------------------------------- geometry


def test_geometry_of_a_centre_crop() -> None:
    # chelsea: 451x300 -> shorter side 256 -> 384x256 -> centre crop 224 at (top 16, left 80)
    pre = Preprocess((224, 224), resize=256)
    g = pre.geometry((300, 451))
    assert pre.resized_size((300, 451)) == (256, 384)
    assert g == Geometry.from_resize_crop((300, 451), (256, 384), (16, 80), (224, 224))
    left, top, right, bottom = g.box
    assert left == pytest.approx(80 * 451 / 384) and right == pytest.approx(304 * 451 / 384)
    assert top == pytest.approx(16 * 300 / 256) and bottom == pytest.approx(240 * 300 / 256)
    assert g.explained_fraction == pytest.approx((right - left) * (bottom - top) / (451 * 300))
    assert not g.covers_whole_image
    u, v = g.to_input(*g.to_original(13.25, 200.5))
    assert (u, v) == pytest.approx((13.25, 200.5))
    assert g.to_original(0, 0) == pytest.approx((left, top))
    assert Geometry.from_dict(g.as_dict()) == g
    assert "of the 451x300 original" in g.describe()
    assert Preprocess((224, 224)).geometry((300, 451)).covers_whole_image  # plain resize


def test_place_matches_interpolate_on_the_box() -> None:
    torch.manual_seed(1)
    m = torch.rand(10, 10)
    g = Geometry((20, 30), (10, 10), (5.0, 0.0, 25.0, 20.0))  # the input is 2x smaller
    values, inside = g.place(m)
    ref = F.interpolate(m[None, None], size=(20, 20), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(values[:, 5:25], ref.numpy(), atol=1e-6)
    assert inside[:, 5:25].all() and not inside[:, :5].any() and not inside[:, 25:].any()
    assert (values[:, :5] == 0).all() and (values[:, 25:] == 0).all()
    # identity geometry: the map itself, exactly
    same, everywhere = Geometry.identity(10, 10).place(m)
    np.testing.assert_array_equal(same, m.numpy())
    assert everywhere.all()
    # a reduced 10x15 grid over the 20x30 original: output column j has its centre at x = 2j + 1,
    # input column u = (x - 5) / 2 - 0.5 = j - 2.5; row i reads input row i exactly
    small, inside_small = g.place(m, (10, 15))
    assert inside_small[0].tolist() == [False] * 2 + [True] * 10 + [False] * 3
    np.testing.assert_allclose(small[:, 2], m[:, 0].numpy(), atol=1e-6)  # u = -0.5 clamps to 0
    for j in range(3, 12):
        np.testing.assert_allclose(
            small[:, j], 0.5 * (m[:, j - 3] + m[:, j - 2]).numpy(), atol=1e-6
        )
    with pytest.raises(ValueError, match="input is"):
        g.place(torch.rand(5, 5))


def test_padding_geometry_when_the_crop_exceeds_the_image() -> None:
    pre = Preprocess((16, 16), resize=12)  # 10x10 -> 12x12 -> padded to 16x16 (2 px a side)
    g = pre.geometry((10, 10))
    assert g.box == pytest.approx((-2 * 10 / 12, -2 * 10 / 12, 14 * 10 / 12, 14 * 10 / 12))
    assert g.explained_fraction == pytest.approx(1.0) and not g.covers_whole_image
    view, geo = pre.prepare(Image.new("RGB", (10, 10), (255, 255, 255)))
    assert geo == g
    assert float(view[:, :2].max()) == 0.0 and float(view[:, 2:14, 2:14].min()) == 1.0


# --------------------------------------------------------------------------- other libraries, exactly


def _photos() -> list[Image.Image]:
    cat = Image.fromarray(skdata.chelsea())  # 451x300, landscape
    return [cat, cat.transpose(Image.Transpose.ROTATE_90), Image.fromarray(skdata.coffee())]


def test_torchvision_weights_transforms_pixel_for_pixel() -> None:
    import torchvision

    for weights in (
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,  # resize 232, crop 224, bilinear
        torchvision.models.EfficientNet_B0_Weights.DEFAULT,  # resize 256, crop 224, bicubic
    ):
        tf = weights.transforms()
        batch = load_images(_photos(), tf)
        ref = torch.stack([tf(im) for im in _photos()])
        assert torch.equal(batch.x, ref), weights
        assert batch.preprocess.resize == tf.resize_size[0]
    # the padding branch of CenterCrop: crop larger than the resized image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(200), T.CenterCrop(224), T.PILToTensor()])
    pre = Preprocess((224, 224), resize=200)
    for im in _photos():
        view, _ = pre.prepare(im)
        assert torch.equal((view * 255).round().to(torch.uint8), tf(im))


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("resnet18", "center"),
        ("vit_tiny_patch16_224", "squash"),
        pytest.param("vit_tiny_patch16_224", "center", marks=pytest.mark.slow),
        pytest.param("resnet18", "squash", marks=pytest.mark.slow),
    ],
)
def test_timm_eval_transform_pixel_for_pixel(name: str, mode: str) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    cfg["crop_mode"] = mode
    tf = create_transform(**cfg)
    batch = load_images(_photos(), cfg)
    assert torch.allclose(batch.x, torch.stack([tf(im) for im in _photos()]), atol=1e-6)
    assert all(g is not None for g in batch.geometry)


def test_load_images_keeps_originals_names_and_normalises(tmp_path: Path) -> None:
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cat.png")
    pre = Preprocess((32, 32), IMAGENET_MEAN, IMAGENET_STD, resize=40)
    batch = load_images([tmp_path / "cat.png", skdata.astronaut()], pre)
    assert batch.names == ["cat.png", "image 1"]
    assert [im.size for im in batch.originals] == [(451, 300), (512, 512)]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(batch.x, (batch.views - mean) / std)
    assert batch.geometry[0] == pre.geometry((300, 451))
    single = load_images(tmp_path / "cat.png", pre)
    assert len(single) == 1 and torch.equal(single.x, batch.x[:1])
    with pytest.raises(ValueError, match="2 names for 1 images"):
        load_images([skdata.coffee()], pre, names=["a", "b"])
    with pytest.raises(TypeError, match="cannot make a pre-processing"):
        as_preprocess(42)
