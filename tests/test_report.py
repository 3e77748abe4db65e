"""The HTML report: structure, escaping, and a size that grows linearly and stays small.

Sizes are measured on reports made the way ``camlens explain --report`` makes them: each map is
drawn on a real photo (scikit-image's) at the thumbnail size and encoded as a JPEG thumbnail.
The layout in a browser is checked by ``tests/test_report_browser.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camlens.report import THUMB_PX, Cell, Column, Row, SummaryRow, Thumb, render, thumb

skdata = pytest.importorskip("skimage.data")

#: the budget of issue 10, per image and map at the default settings
BUDGET = 150_000


def _photos() -> list[np.ndarray]:
    grey = np.repeat(skdata.camera()[..., None], 3, axis=2)
    return [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), grey]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=8, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def explained() -> camlens.Explanation:
    photos = _photos()[:3]  # chelsea, coffee, astronaut
    pre = Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256)
    return camlens.explain(
        _Net().eval(),
        photos,
        method=["gradcam", "eigencam", "layercam"],
        target="top-2",
        preprocess=pre,
    )


def _report(ex: camlens.Explanation, n_images: int, methods: list[str], ranks: int) -> str:
    """What ``camlens explain --report`` writes for ``n_images`` images: the photos of ``ex`` in
    turn (the fourth is the first again, and so on)."""
    columns = [Column(f"{m}:{r}", m, group=m, rank=r) for m in methods for r in range(1, ranks + 1)]
    rows = []
    for k in range(n_images):
        i = k % len(ex)
        cells: list[Cell | None] = []
        for m in methods:
            for r in range(1, ranks + 1):
                leg = ex.legend(i, m, r)
                over = ex.overlay(i, m, r, legend=False, size=THUMB_PX)
                cells.append(
                    Cell(
                        thumb(over),
                        f"{leg.target} · {leg.score}",
                        tooltip=leg.title(),
                        href=f"out/{i}.{m}.{r}.png",
                    )
                )
        rows.append(
            Row(
                ex.batch.names[i],
                thumb(ex.batch.originals[i]),
                cells,
                "cat",
                0.5,
                note=ex.batch.geometry[i].describe(),
                href=f"photos/{i}.jpg",
            )
        )
    summary = [SummaryRow(m, "features", None, 1.0, "a method") for m in methods]
    return render("camlens report", columns, rows, summary, subtitle=["model"])


def test_size_per_image_and_map_is_small_and_linear(explained: camlens.Explanation) -> None:
    sizes = {}
    for n in (0, 3, 6):
        for methods, ranks in ((["gradcam"], 1), (["gradcam", "eigencam", "layercam"], 2)):
            html = _report(explained, n, methods, ranks)
            sizes[(n, len(methods) * ranks)] = len(html.encode())
    for (n, maps), size in sizes.items():
        if n:
            assert size / (n * maps) < BUDGET, (n, maps, size)
    # linear: the same three photos again cost what they cost the first time
    for maps in (1, 6):
        first = sizes[(3, maps)] - sizes[(0, maps)]
        second = sizes[(6, maps)] - sizes[(3, maps)]
        assert second == pytest.approx(first, rel=0.01), (maps, first, second)
    # and per map: six maps cost about six times one (plus the input's thumbnail)
    per_image_1 = (sizes[(6, 1)] - sizes[(0, 1)]) / 6
    per_image_6 = (sizes[(6, 6)] - sizes[(0, 6)]) / 6
    assert 3 < per_image_6 / per_image_1 < 7


def test_structure_groups_links_and_escaping(explained: camlens.Explanation) -> None:
    html = _report(explained, 2, ["gradcam", "eigencam"], 2)
    assert html.count('<section class="card"') == 2
    assert html.count('<div class="group">') == 2 * (1 + 2)  # the input, then one group per method
    assert html.count('class="figs"><figure>') == 2 * 3
    assert html.count("data:image/jpeg;base64,") == 2 * (1 + 4)
    assert 'href="out/0.gradcam.1.png"' in html and 'href="photos/1.jpg"' in html
    assert "linear-gradient(to right" in html and "normalised per image" in html
    assert "<script" not in html and "<link" not in html
    # a thumbnail is at most THUMB_PX on its longer side
    sizes = [tuple(map(int, m)) for m in re.findall(r'width="(\d+)" height="(\d+)"', html)]
    assert sizes and max(max(s) for s in sizes) == THUMB_PX
    evil = Row(
        "<b>x</b>.png", np.zeros((4, 4, 3), np.uint8), [Cell(np.zeros((4, 4, 3), np.uint8), "<i>")]
    )
    out = render("<t>", [Column("a", "a<b")], [evil], failures=[("<f>.png", "bad <data>")])
    assert "<b>x</b>" not in out and "&lt;b&gt;x&lt;/b&gt;.png" in out and "&lt;i&gt;" in out
    assert "Inputs that failed (1)" in out and "bad &lt;data&gt;" in out
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        render("x", [Column("a", "a"), Column("b", "b")], [evil])


def test_many_images_get_an_index_and_cards_size_to_their_maps() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    t = thumb(img)
    assert isinstance(t, Thumb) and (t.width, t.height) == (8, 8)
    one = render(
        "r", [Column("g", "g", group="g")], [Row(f"{i}.png", t, [Cell(t)]) for i in range(30)]
    )
    assert "<details><summary>Index</summary>" in one and one.count('href="#img-') == 30
    wide_cols = [
        Column(f"m{k}:{r}", f"m{k}", group=f"m{k}", rank=r) for k in range(12) for r in (1, 2, 3)
    ]
    wide = render("r", wide_cols, [Row("a.png", t, [Cell(t)] * 36)])
    card = lambda html: int(re.search(r"--card-w: (\d+)px", html).group(1))  # noqa: E731
    # one map per image: a narrow card (several per row); 36 maps: a card as wide as the page allows
    assert card(one) < 450 < card(wide)
