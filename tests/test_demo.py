"""Tests for the bundled demo data generator and model (``camlens.demo``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from camlens.demo import CLASSES, DemoNet, load_model, make_dataset
from camlens.demo.model import WEIGHTS_PATH


@pytest.fixture(scope="module")
def small() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_dataset(200, seed=3)


@pytest.fixture(scope="module")
def model() -> DemoNet:
    return load_model()


def test_classes() -> None:
    assert isinstance(CLASSES, tuple)
    assert len(CLASSES) == len(set(CLASSES)) >= 5
    assert all(isinstance(name, str) and name for name in CLASSES)


def test_deterministic_and_seeded() -> None:
    a = make_dataset(12, seed=5)
    b = make_dataset(12, seed=5)
    c = make_dataset(12, seed=6)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[2], c[2])


def test_golden_checksum() -> None:
    # Pins the generator's output: the bundled weights were trained on exactly these pixels, and
    # the arithmetic is chosen to be bit-identical on every machine. Update only on purpose
    # (and retrain with scripts/train_demo.py).
    digest = hashlib.sha256()
    for tensor in make_dataset(4, seed=0):
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == "988473823f343e62024082b33fc7f8e717220bb1ae2a5462d486fcf018591d8e"


def test_global_rng_untouched() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    make_dataset(2, seed=1)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


@pytest.mark.parametrize("size", [32, 64, 96])
def test_shapes_dtypes_range(size: int) -> None:
    images, labels, masks = make_dataset(7, seed=1, size=size)
    assert images.shape == (7, 3, size, size) and images.dtype == torch.float32
    assert labels.shape == (7,) and labels.dtype == torch.int64
    assert masks.shape == (7, size, size) and masks.dtype == torch.bool
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.is_contiguous()
    assert ((labels >= 0) & (labels < len(CLASSES))).all()
    assert masks.flatten(1).any(1).all()


def test_masks_inside_image_and_not_touching_border(small: tuple[torch.Tensor, ...]) -> None:
    _, _, masks = small
    area = masks.flatten(1).sum(1).float() / masks[0].numel()
    assert (area > 0.005).all() and (area < 0.5).all()
    # The whole object lies inside the frame: nothing on the outermost pixel ring.
    border = (
        masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    )
    assert not border.any()


def test_object_differs_from_background(small: tuple[torch.Tensor, ...]) -> None:
    images, _, masks = small
    for img, mask in zip(images, masks, strict=True):
        inside = img[:, mask].mean(1)
        # Object colour vs the pixels in a band just around it.
        ring = (
            torch.nn.functional.max_pool2d(mask[None, None].float(), 7, 1, 3)[0, 0].bool() & ~mask
        )
        outside = img[:, ring].mean(1)
        assert (inside - outside).abs().max() > 0.1
        # The object is (nearly) flat-coloured; its pixels vary only by the pixel noise.
        assert img[:, mask].std(1).max() < 0.05


def test_labels_cover_all_classes(small: tuple[torch.Tensor, ...]) -> None:
    _, labels, _ = small
    counts = torch.bincount(labels, minlength=len(CLASSES))
    assert (counts > 0).all()
    assert counts.max() - counts.min() <= 1  # balanced


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"n": -3}, "n must be"),
        ({"n": 2.5}, "n must be"),
        ({"n": 2, "size": 31}, "size must be"),
        ({"n": 2, "size": 0}, "size must be"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset(**kwargs)  # type: ignore[arg-type]


def test_model_attributes(model: DemoNet) -> None:
    assert not model.training
    assert model.classes == CLASSES
    assert model.input_size == 96
    assert isinstance(model.features, torch.nn.Sequential)
    assert isinstance(model.pool, torch.nn.AdaptiveAvgPool2d)
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == len(CLASSES)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        fmap = model.features(torch.rand(1, 3, 96, 96))
    assert fmap.shape == (1, model.fc.in_features, 12, 12)


def test_gap_linear_head(model: DemoNet, small: tuple[torch.Tensor, ...]) -> None:
    x = small[0][:8]
    with torch.no_grad():
        direct = model(x)
        via_head = model.fc(model.pool(model.features(x)).flatten(1))
    torch.testing.assert_close(via_head, direct, rtol=0, atol=0)


def test_heldout_accuracy(model: DemoNet) -> None:
    images, labels, _ = make_dataset(300, seed=777)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95


def test_weights_file_small() -> None:
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 5_000_000


def test_load_model_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"scripts/train_demo\.py"):
        load_model(tmp_path / "nope.pt")


def test_load_model_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(RuntimeError, match=r"scripts/train_demo\.py"):
        load_model(bad)
