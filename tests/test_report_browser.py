"""The HTML report in a real browser: headless Chromium decodes every image and lays the page out.

Three reports are opened at a 1400x1000 window:

* the report of ``camlens demo`` (a few images and methods), with ``--screenshot``: the PNG must
  show the page with the colourful overlays in it;
* one method over 30 images: the cards must share rows (not one tall narrow column);
* 12 methods x top-3 over 2 images (36 maps per image): nothing may stick out to the right (no
  horizontal scrolling) and each card's method groups must wrap onto several lines.

A small script appended to a copy (whose images load eagerly) measures the layout after ``load``
(every image decoded) and writes it into a ``<pre id="result">``; ``--dump-dom``
returns the DOM, which is parsed here. Chromium comes from Debian's ``chromium`` package; without
it the tests are skipped with that reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from camlens import cli
from camlens.demo.model import WEIGHTS_PATH
from camlens.report import Cell, Column, Row, render, thumb

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
skdata = pytest.importorskip("skimage.data")

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason="chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        not WEIGHTS_PATH.is_file(),
        reason=f"the bundled demo weights {WEIGHTS_PATH} are not built yet",
    ),
]

PROBE = """
<script>
window.addEventListener("load", async () => {
  const imgs = Array.from(document.images);
  const decoded = Promise.all(imgs.map((im) => im.decode().catch(() => null)));
  await Promise.race([decoded, new Promise((done) => setTimeout(done, 5000))]);
  const cards = Array.from(document.querySelectorAll("section.card"));
  const tops = cards.map((c) => Math.round(c.getBoundingClientRect().top));
  const cardInfo = cards.map((c) => {
    const box = c.getBoundingClientRect();
    const groups = Array.from(c.querySelectorAll(".group"));
    const lines = new Set(groups.map((g) => Math.round(g.getBoundingClientRect().top)));
    const outside = groups.filter((g) => g.getBoundingClientRect().right > box.right + 1).length;
    return {lines: lines.size, outside: outside, width: Math.round(box.width)};
  });
  const pre = document.createElement("pre");
  pre.id = "result";
  pre.textContent = JSON.stringify({
    images: imgs.map((im) => [im.complete, im.naturalWidth, im.naturalHeight]),
    firstRow: tops.filter((t) => t === tops[0]).length,
    overflowX: document.documentElement.scrollWidth > window.innerWidth,
    cards: cardInfo,
    width: window.innerWidth,
    font: getComputedStyle(document.body).fontFamily,
  });
  document.body.appendChild(pre);
});
</script>
"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000",
    ]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run(
        base + args, capture_output=True, text=True, timeout=180, env=env, check=False
    )


def _measure(page: str, tmp: Path) -> dict[str, Any]:
    probe = tmp / "probe.html"
    # the report loads images lazily (as they scroll into view); here every one must decode
    eager = page.replace('loading="lazy"', 'loading="eager"')
    probe.write_text(eager.replace("</body>", PROBE + "</body>"))
    r = _chromium(["--dump-dom", probe.as_uri()], tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no result in the dumped DOM: {r.stdout[-1000:]}"
    return json.loads(html.unescape(m.group(1)))


def _photo_thumbs(n: int) -> list[Any]:
    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket()]
    return [thumb(photos[i % len(photos)]) for i in range(n)]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["demo", "--out", str(out), "--n", "3", "--method", "gradcam,eigencam,layercam", "-q"]
    assert cli.main(argv) == 0
    return out / "report.html"


def test_demo_report_images_decode(demo_report: Path, tmp_path: Path) -> None:
    text = demo_report.read_text()
    n_tags = len(re.findall(r"<img ", text))
    assert n_tags == 3 * 4  # input + 3 methods per image
    assert text.count('src="data:image/jpeg;base64,') == n_tags  # self-contained
    result = _measure(text, tmp_path)
    assert len(result["images"]) == n_tags
    for complete, nat_w, nat_h in result["images"]:
        assert complete and nat_w == 96 and nat_h == 96
    assert not result["overflowX"] and "system-ui" in result["font"]


@pytest.mark.slow
def test_screenshot_shows_the_images(demo_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", demo_report.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        rgb = np.asarray(im.convert("RGB")).astype(np.float64)
    assert rgb.std() > 20  # not blank
    # the jet overlays and the colour bar: many strongly coloured pixels (the page is grey on white)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 120).mean() > 0.02


def test_one_method_over_thirty_images_fills_rows(tmp_path: Path) -> None:
    thumbs = _photo_thumbs(30)
    rows = [
        Row(f"photo{i}.jpg", t, [Cell(t, "cat (281) · score 9.1")]) for i, t in enumerate(thumbs)
    ]
    page = render("r", [Column("gradcam", "gradcam", group="gradcam")], rows)
    result = _measure(page, tmp_path)
    assert all(ok and w > 0 for ok, w, _ in result["images"]) and len(result["images"]) == 60
    assert result["firstRow"] >= 3, result  # cards share rows
    assert not result["overflowX"]


def test_twelve_methods_top3_wrap_inside_the_page(tmp_path: Path) -> None:
    thumbs = _photo_thumbs(2)
    columns = [
        Column(f"m{k}:{r}", f"method{k}", group=f"method{k}", rank=r)
        for k in range(12)
        for r in (1, 2, 3)
    ]
    rows = [
        Row(f"photo{i}.jpg", t, [Cell(t, f"top-{1 + j % 3}") for j in range(36)])
        for i, t in enumerate(thumbs)
    ]
    result = _measure(render("r", columns, rows), tmp_path)
    assert len(result["images"]) == 2 * 37 and all(ok for ok, _, _ in result["images"])
    assert not result["overflowX"], result
    for card in result["cards"]:
        assert card["outside"] == 0 and card["lines"] >= 4, (
            card
        )  # 13 groups wrap onto several lines
        assert card["width"] <= result["width"]
