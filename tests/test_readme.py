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
from pathlib import Path

import pytest
import torch
from PIL import Image

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


@pytest.mark.slow
def test_the_readme_blocks_run_as_printed(readme_folder: Path) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README lost its Python blocks"
    ns: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
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
