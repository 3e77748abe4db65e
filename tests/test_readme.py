"""Every Python block of the README runs, as printed.

The blocks run in order in one namespace, in a folder holding ``cat.jpg`` and ``coffee.jpg``
(scikit-image's ``chelsea`` and ``coffee``). The README's ResNet-50 is torchvision's, with
``weights="DEFAULT"``; no weights can be downloaded here, so a local stand-in takes the downloaded
file's place: a randomly initialised ResNet-50 saved under the name torchvision's download would
have, in a ``TORCH_HOME`` made for the test. torchvision (and camlens's ``torchvision:resnet50``
spec) then find it in the cache and download nothing. The maps are those of random weights; what
is checked is that the code runs and does what the README says (sizes, files, the comments' values).
Twenty-odd passes of a ResNet-50 take a while on a CPU, so the test is marked slow (it runs in
``scripts/test.sh``, not in a plain ``pytest``); ``tests/test_display.py`` covers the same calls on
a small model in the default run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import camlens

ROOT = Path(__file__).resolve().parents[1]
skdata = pytest.importorskip("skimage.data")


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.fixture
def readme_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import torchvision

    weights = torchvision.models.ResNet50_Weights.DEFAULT
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), checkpoints / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(skdata.chelsea()).save(work / "cat.jpg", quality=95)
    Image.fromarray(skdata.coffee()).save(work / "coffee.jpg", quality=95)
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def registry_restored() -> Iterator[None]:
    """The README registers an example method; it must not stay registered for later tests."""
    from camlens.methods import registry

    methods, aliases = dict(registry.METHODS), dict(registry._ALIASES)
    yield
    registry.METHODS.clear()
    registry.METHODS.update(methods)
    registry._ALIASES.clear()
    registry._ALIASES.update(aliases)


@pytest.mark.slow
def test_the_readme_blocks_run_as_printed(readme_folder: Path, registry_restored: None) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README lost its Python blocks"
    ns: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    # the example of adding a method: registered, and it runs like every method
    my_cam = camlens.get_method("mycam")
    assert my_cam.name == "my-cam" and my_cam is camlens.METHODS["my-cam"]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    got = my_cam(net, layer="1")(x, target=1)
    with torch.enable_grad():
        acts = net[:2](x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net[2:](acts)[:, 1].sum(), acts)
    w = g.mean((2, 3)).abs()
    expected = (w[:, :, None, None] * acts.detach()).sum(1).clamp(min=0)
    torch.testing.assert_close(got.raw, expected, rtol=1e-5, atol=1e-6)
    # the quick start: maps at the input's size, raw at layer4's, overlays on the full photos
    res, batch, overlays = ns["res"], ns["batch"], ns["overlays"]
    assert tuple(res.maps.shape) == (2, 224, 224) and tuple(res.raw.shape) == (2, 7, 7)
    assert res.targets.tolist() == [281, 281]
    assert overlays[0].size[0] == 451 and overlays[0].size[1] > 300  # the photo plus its legend
    with Image.open(readme_folder / "cat.gradcam.png") as im:
        assert im.size == overlays[0].size
    # the values the README's comments state
    assert batch.geometry[0].describe() == "the model saw 290x290 px of the 451x300 original (62%)"
    # the one-call comparison: three methods, two class ranks, files written
    ex = ns["ex"]
    assert ex.methods == ["gradcam", "layercam", "eigencam"] and len(ex.results["layercam"]) == 2
    with Image.open(readme_folder / "coffee.layercam.top2.png") as im:
        assert im.size[0] == 600
    assert (readme_folder / "comparison.html").read_text().count("<img ") == 2 * (1 + 6)
    assert os.environ["TORCH_HOME"].endswith("torch-home")
    # the audit example: the planted shortcut is found, and the stored table alone finds it again
    audited = ns["outcome"].summary["findings"]
    assert [(f["class"], f["kind"]) for f in audited] == [("star", "fixed_position")]
    assert [(f["class"], f["kind"]) for f in ns["summary"]["findings"]] == [
        ("star", "fixed_position")
    ]
