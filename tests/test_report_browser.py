"""The HTML report in a real browser: headless Chromium decodes every embedded image.

The report of ``camlens demo`` (made in this process, a few images and methods) is opened twice:

* with a small script appended to a copy, which after ``load`` writes every image's natural size into
  a ``<pre id="result">``; ``--dump-dom`` then returns the DOM, which is parsed here;
* as it is, with ``--screenshot``; the PNG must show the page (not a blank or single-colour image) with
  the colourful overlays in it.

Chromium comes from Debian's ``chromium`` package (``apt-get install chromium``); without it the test is
skipped with that reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import cli
from camlens.demo.model import WEIGHTS_PATH

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"

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
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  imgs.forEach((im) => im.setAttribute("data-natural", im.naturalWidth + "x" + im.naturalHeight));
  const th = document.querySelector("table.maps thead th");
  const pre = document.createElement("pre");
  pre.id = "result";
  pre.textContent = JSON.stringify({
    images: imgs.map((im) => [im.complete, im.naturalWidth, im.naturalHeight, im.width]),
    sticky: th ? getComputedStyle(th).position : null,
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
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=5000",
    ]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run(
        base + args, capture_output=True, text=True, timeout=120, env=env, check=False
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = [
        "demo",
        "--out",
        str(out),
        "--n",
        "3",
        "--method",
        "gradcam,eigencam,guided-backprop",
        "--quiet",
    ]
    assert cli.main(argv) == 0
    return out / "report.html"


def test_every_image_decodes(report: Path, tmp_path: Path) -> None:
    text = report.read_text()
    n_tags = len(re.findall(r"<img ", text))
    assert n_tags == 3 * 4  # input + 3 methods per image
    assert text.count('src="data:image/png;base64,') == n_tags  # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    r = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no result in the dumped DOM: {r.stdout[-1000:]}"
    result = json.loads(html.unescape(m.group(1)))
    images = result["images"]
    assert len(images) == n_tags
    for complete, nat_w, nat_h, shown_w in images:
        assert complete and nat_w == 96 and nat_h == 96 and shown_w >= 96
    assert len(re.findall(r'data-natural="96x96"', r.stdout)) == n_tags
    assert result["sticky"] == "sticky"
    assert "system-ui" in result["font"]


def test_screenshot_shows_the_images(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1400,1000", report.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        rgb = np.asarray(im.convert("RGB")).astype(np.float64)
    assert rgb.std() > 20  # not blank
    # the jet overlays: many strongly coloured pixels (the page itself is grey on white)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 120).mean() > 0.02
