"""Start-up and interruption: ``--help``, ``methods`` and argument errors answer without importing
torch; ``import camlens`` is lazy; the torch-free method table matches the registry; Ctrl-C exits
130 with one line and leaves only complete files.

The time itself is measured by ``bench/bench_startup.py`` (a test that asserts a time would fail on
a loaded machine); here the cause of slowness, importing torch, is checked directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens import _catalog

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The source tree on the path and nothing that imports torch at start-up (no tests/support)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "100"}


# --------------------------------------------------------------------------- the method table


def test_catalog_matches_the_registry() -> None:
    """Same names in the same order, same aliases, same first docstring lines."""
    assert _catalog.names() == list(camlens.METHODS)
    for info in _catalog.CATALOG:
        cls = camlens.METHODS[info.name]
        assert info.aliases == tuple(cls.aliases), info.name
        assert info.summary == (cls.__doc__ or "").strip().splitlines()[0].strip(), info.name
        for alias in (info.name, *info.aliases):
            assert _catalog.lookup(alias.upper()).name == camlens.get_method(alias).name
    with pytest.raises(ValueError, match="did you mean gradcam"):
        _catalog.lookup("gradcm")


# --------------------------------------------------------------------------- lazy package


def test_lazy_package_names() -> None:
    assert set(camlens.__all__) == set(camlens._EXPORTS)
    assert set(camlens.__all__) <= set(dir(camlens))
    for name in camlens.__all__:
        assert getattr(camlens, name) is not None, name
    assert camlens.GradCAM is camlens.METHODS["gradcam"]
    assert camlens.maps.normalize is not None and camlens.explain.__module__ == "camlens.pipeline"
    with pytest.raises(AttributeError, match="no attribute 'GradCam'"):
        camlens.GradCam  # noqa: B018


def test_imports_without_torch_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """``camlens --help``, ``methods`` and argument errors, run through ``main`` in one fresh
    interpreter, never import torch; ``import camlens`` alone does not either. (The colour-map
    check imports matplotlib, hence numpy.)"""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "img.gradcam.png").write_bytes(b"x")
    calls = [
        ["--help"],
        ["--version"],
        ["methods"],
        ["explain", "--help"],
        ["layers", "--help"],
        ["explain", "img.png", "--alpha", "3"],
        ["explain", "img.png", "--format", "npy"],
        ["explain", "img.png", "--batch-size", "0"],
        ["explain", "img.png", "--overlay-size", "huge"],
        ["explain", "missing.png"],
        ["explain", "img.png", "--method", "gradcum"],
        ["explain", "img.png", "--target", "top-x", "--out", "o2"],
        ["explain", "img.png", "--colormap", "jett", "--out", "o3"],
        ["explain", "img.png", "--model", "resnet18", "--out", "o4"],
        ["explain", "img.png", "--out", "out"],  # the output exists: refused before any work
        ["nonsense"],
        ["audit", "--help"],
        ["audit", "data", "--batch-size", "0", "--out", "a1"],
        ["audit", "data", "--methods", "gradcan", "--out", "a2"],
        ["audit", "data", "--methods", ",", "--out", "a3"],
        ["audit", "data", "--size", "huge", "--out", "a4"],
        ["audit", "data", "--model", "resnet18", "--out", "a5"],
        ["audit", "data", "--workers", "-1", "--out", "a6"],
    ]
    script = (
        "import json, sys\n"
        "import camlens\n"
        "after_import = 'torch' in sys.modules\n"
        "from camlens.cli import main\n"
        f"codes = [main(a) for a in {calls!r}]\n"
        "mods = {m: m in sys.modules for m in ('torch', 'numpy', 'torchvision')}\n"
        f"open({str(tmp_path / 'result.json')!r}, 'w').write(json.dumps("
        "{'codes': codes, 'mods': mods, 'after_import': after_import}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["codes"] == [0, 0, 0, 0, 0] + [2] * 11 + [0] + [2] * 6
    assert result["mods"] == {"torch": False, "numpy": True, "torchvision": False}
    assert result["after_import"] is False
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errors) == 17  # one line each
    assert any("jett" in ln and "did you mean jet" in ln for ln in errors)
    assert any("unknown model 'resnet18'" in ln for ln in errors)
    audit = [ln for ln in errors if ln.startswith("camlens audit: error: ")]
    assert len(audit) == 6
    for needle in ("--batch-size", "'gradcan'", "--methods names no method", "'huge'"):
        assert sum(needle in ln for ln in audit) == 1, needle
    assert sum("unknown model 'resnet18'" in ln for ln in audit) == 1
    assert not any((tmp_path / f"a{i}").exists() for i in range(1, 7))


# --------------------------------------------------------------------------- Ctrl-C


def _torch_loading(pid: int) -> bool:
    """Whether process ``pid`` has mapped torch's C++ library, i.e. is importing (or has imported)
    torch: a point reached the same way on an idle and on a loaded machine."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _interrupt(
    args: list[str], cwd: Path, when: float | Path | str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m camlens ARGS`` and send SIGINT after ``when`` seconds, once the file ``when``
    exists, or (``when="torch"``) once the process is importing torch."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "camlens", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    while True:
        if isinstance(when, float) and time.monotonic() - start >= when:
            break
        if isinstance(when, Path) and when.exists():
            break
        if when == "torch" and _torch_loading(proc.pid):
            break
        if proc.poll() is not None or time.monotonic() - start > 120:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


ONE_LINE = (
    "camlens: interrupted; files already complete were kept and no partial file was left behind"
)


@pytest.mark.slow
def test_ctrl_c_while_torch_imports(tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see when the process imports torch")
    r = _interrupt(["demo", "--out", "d"], tmp_path, "torch")
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == [ONE_LINE] and r.stdout == ""
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_ctrl_c_during_a_run_keeps_complete_files_only(tmp_path: Path) -> None:
    from camlens.demo import make_dataset

    images, _, _ = make_dataset(40, seed=2)
    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / f"im{i:02d}.png")
    first = tmp_path / "out" / "im00.scorecam.png"
    r = _interrupt(
        ["explain", "imgs", "--out", "out", "--method", "scorecam", "--batch-size", "1"],
        tmp_path,
        first,
    )
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ONE_LINE
    assert "Traceback" not in r.stderr
    written = sorted((tmp_path / "out").iterdir())
    assert 1 <= len(written) < 40 and not [p for p in written if p.suffix != ".png"]
    for p in written:  # every file is a complete PNG
        with Image.open(p) as im:
            im.load()
