"""The audit's report.html in headless Chromium: findings first, every image decodes, plots drawn.

Chromium comes from Debian's ``chromium`` package; without it the test is skipped with that reason.
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

from camlens.audit import ExplainConfig, audit, planted, render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="chromium is not installed (apt-get install chromium)"
)

PROBE = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const h2 = Array.from(document.querySelectorAll("h2")).map((h) => h.textContent);
  const pre = document.createElement("pre");
  pre.id = "result";
  pre.textContent = JSON.stringify({
    images: imgs.map((im) => [im.complete, im.naturalWidth, im.naturalHeight]),
    sections: h2,
    findings: Array.from(document.querySelectorAll("section.finding")).map(
      (s) => [s.dataset.class, s.dataset.kind, s.querySelectorAll("img").length]),
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
    tmp = tmp_path_factory.mktemp("audit-report")
    data = planted.make_planted(tmp / "data", n=60, seed=5)
    cfg = ExplainConfig(model="camlens.audit.planted:shortcut_model", device="cpu")
    audit(data.manifest, tmp / "out", cfg)
    return tmp / "out" / "report.html"


def test_the_report_shows_findings_first_and_every_image_decodes(
    report: Path, tmp_path: Path
) -> None:
    text = report.read_text()
    n_img = len(re.findall(r"<img ", text))
    assert n_img > 20 and text.count('src="data:image/png;base64,') == n_img  # self-contained
    assert "http://" not in text and "https://" not in text
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    r = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stdout[-1000:]
    result = json.loads(html.unescape(m.group(1)))
    assert len(result["images"]) == n_img
    assert all(c and w > 0 and h > 0 for c, w, h in result["images"])
    assert result["sections"][0] == "Findings"
    assert result["sections"][1:3] == ["Classes", "Distributions"]
    # each finding: the flagged maps' mean map and six example overlays
    assert result["findings"] == [["star", "fixed_position", 7], ["star", "off_object", 7]]


def test_the_screenshot_shows_overlays_and_plots(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1200,2600", report.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.float64)
    assert rgb.std() > 20
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 120).mean() > 0.02  # jet heat maps and overlays


def test_a_summary_without_findings_says_so() -> None:
    summary = {"images": 0, "errors": 0, "methods": [], "findings": [], "per_class": []}
    text = render_report(summary)
    assert "No class shows" in text and text.startswith("<!DOCTYPE html>")
