"""The ``camlens`` command line.

Most commands run in this interpreter through :func:`camlens.cli.main` (the same code the console
script runs, without the seconds an interpreter needs to import torch). The tests marked ``slow``
start real processes: the installed console script, ``python -m camlens`` with torchvision, and a
run without network. ``tests/test_startup.py`` checks start-up (no torch for ``--help``) and Ctrl-C.

Models used: the bundled demo model; ``torchvision:resnet18`` with a state dict saved here from a
random initialisation; ``torchscript:FILE`` from a scripted small model; ``module:callable`` from a
small module file written here. Photos: scikit-image's ``chelsea`` and ``coffee``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import _catalog, cli, io, models
from camlens.demo import CLASSES, make_dataset
from camlens.demo.model import WEIGHTS_PATH

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
CONSOLE = Path(sys.executable).with_name("camlens")
skdata = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.skipif(
    not WEIGHTS_PATH.is_file(), reason=f"the bundled demo weights {WEIGHTS_PATH} are not built yet"
)


class ScriptNet(nn.Module):
    """A small classifier with its own forward (not a Sequential), to be scripted."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))


MODULE_FILE = """
import torch
from torch import nn


class Tiny(nn.Module):
    input_size = 40
    classes = ("cat", "dog", "fish")
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def build():
    return Tiny().eval()


def not_a_model():
    return 42
"""


# --------------------------------------------------------------------------- workspace and helpers


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, models and weights the commands use."""
    ws = tmp_path_factory.mktemp("cli")
    images, _, _ = make_dataset(4, seed=11)
    (ws / "imgs").mkdir()
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(ws / "imgs" / f"im{i}.{'jpg' if i == 1 else 'png'}")
    Image.fromarray(np.zeros((50, 70, 3), np.uint8) + 128).save(ws / "wide.png")
    (ws / "photos").mkdir()
    Image.fromarray(skdata.chelsea()).save(ws / "photos" / "chelsea.jpg", quality=92)
    Image.fromarray(skdata.coffee()).save(ws / "photos" / "coffee.png")
    (ws / "notimage.png").write_text("this is not an image\n")
    (ws / "empty").mkdir()
    (ws / "mymodels.py").write_text(MODULE_FILE)
    torch.jit.save(torch.jit.script(ScriptNet().eval()), str(ws / "net.pt"))
    import torchvision  # the shim is imported by conftest

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), ws / "rn18.pt")
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), ws / "rn18_5.pt")
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, ws / "wrong.pt")
    return ws


@pytest.fixture
def run(ws: Path, capsys: pytest.CaptureFixture[str]) -> Iterator:
    """``run(*argv) -> (code, stdout, stderr)`` of ``camlens.cli.main`` in the workspace."""

    def call(*argv: str) -> tuple[int, str, str]:
        cwd = os.getcwd()
        os.chdir(ws)
        try:
            code = cli.main(list(argv))
        finally:
            os.chdir(cwd)
        out, err = capsys.readouterr()
        return code, out, err

    yield call


def ok(result: tuple[int, str, str]) -> tuple[str, str]:
    code, out, err = result
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err, err
    return out, err


def user_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob(".*.tmp"))


# --------------------------------------------------------------------------- demo


def test_demo_report_overlays_and_summary(run, ws: Path) -> None:
    out, _ = ok(run("demo", "--out", "d1", "--n", "3", "--method", "gradcam,eigencam,ablationcam"))
    folder = ws / "d1"
    html = (folder / "report.html").read_text()
    for m in ("gradcam", "eigencam", "ablationcam"):
        assert m in out  # the summary table
        files = sorted(folder.glob(f"*.{m}.png"))
        assert len(files) == 3
        # each overlay carries its legend: the 96x96 map on a canvas at least 240 px wide, taller
        h, w, _ = png(files[0]).shape
        assert w == 240 and h > 96
        assert f'href="{files[0].name}"' in html  # the full overlay one click away
    assert len(list(folder.glob("*.input.png"))) == 3
    assert html.count("data:image/jpeg;base64,") == 3 * (3 + 1)  # self-contained thumbnails
    assert "<link" not in html and "<script" not in html
    assert "energy on object" in html.lower() and "normalised per image" in html
    assert "report: " in out and no_temp_files(folder)


def test_demo_guided_methods(run, ws: Path) -> None:
    _, err = ok(
        run("demo", "--out", "d2", "--n", "2", "--method", "guided-backprop,guided-gradcam")
    )
    assert "failed" not in err
    for m in ("guided-backprop", "guided-gradcam"):
        assert len(list((ws / "d2").glob(f"*.{m}.png"))) == 2


# --------------------------------------------------------------------------- explain: outputs


def test_explain_folder_two_methods_report_and_lines(run, ws: Path) -> None:
    out, err = ok(
        run(
            "explain",
            "imgs",
            "photos",
            "--method",
            "gradcam,eigencam",
            "--report",
            "r/report.html",
            "--out",
            "o1",
        )
    )
    for stem, size in [
        ("im0", (96, 96)),
        ("im1", (96, 96)),
        ("chelsea", (300, 451)),
        ("coffee", (400, 600)),
    ]:
        for m in ("gradcam", "eigencam"):
            h, w, _ = png(ws / "o1" / f"{stem}.{m}.png").shape
            assert w == max(size[1], 240) and h > size[0]  # the original's size plus the legend
    html = (ws / "r" / "report.html").read_text()
    assert html.count('<section class="card"') == 6
    assert html.count("data:image/jpeg;base64,") == 6 * 3
    assert 'href="../o1/chelsea.gradcam.png"' in html and 'href="../photos/chelsea.jpg"' in html
    assert "the model saw" in html  # the crop of the photos
    assert ">gradcam at features<" in html and ">eigencam at features<" in html  # method and layer
    lines = out.strip().splitlines()
    assert lines[-1] == "report: r/report.html"
    chelsea = next(ln for ln in lines if ln.startswith("chelsea.jpg: "))
    assert chelsea.endswith("-> o1/chelsea.gradcam.png, o1/chelsea.eigencam.png")
    assert "%)" in chelsea  # predicted class and probability
    assert len(lines) == 6 + 1
    # the demo model on photos: one line says so
    note = [ln for ln in err.splitlines() if "not demo images" in ln]
    assert (
        len(note) == 1 and "2 of 6 inputs" in note[0] and "--model torchvision:resnet50" in note[0]
    )


def test_explain_legend_and_overlay_size_options(run, ws: Path) -> None:
    photo = "photos/chelsea.jpg"
    ok(run("explain", photo, "--out", "o2", "--no-legend", "-q"))
    bare = png(ws / "o2" / "chelsea.gradcam.png")
    assert bare.shape == (300, 451, 3)
    ok(run("explain", photo, "--out", "o2", "--force", "-q"))
    with_legend = png(ws / "o2" / "chelsea.gradcam.png")
    np.testing.assert_array_equal(with_legend[:300], bare)  # the same overlay, a strip under it
    ok(
        run(
            "explain", photo, "--out", "o2", "--force", "-q", "--overlay-size", "200", "--no-legend"
        )
    )
    assert png(ws / "o2" / "chelsea.gradcam.png").shape == (133, 200, 3)
    ok(
        run(
            "explain",
            photo,
            "--out",
            "o2",
            "--force",
            "-q",
            "--overlay-size",
            "input",
            "--no-legend",
        )
    )
    assert png(ws / "o2" / "chelsea.gradcam.png").shape == (96, 96, 3)
    # outside the demo model's crop (it squashes the photo: no crop) nothing is grey here; with a
    # cropping model the outside is grey: see test_torchvision_with_local_weights_topk_npz


def test_explain_npz_holds_map_raw_score_class_and_geometry(run, ws: Path) -> None:
    ok(run("explain", "imgs/im0.png", "--target", "top-2", "--format", "both", "--out", "o3"))
    files = sorted(p.name for p in (ws / "o3").iterdir())
    assert len(files) == 4, files
    for rank in (1, 2):
        (npz,) = [
            f for f in files if f.startswith(f"im0.gradcam.top{rank}-") and f.endswith(".npz")
        ]
        d = np.load(ws / "o3" / npz)
        assert d["map"].shape == (96, 96) and d["map"].dtype == np.float32
        assert float(d["map"].min()) >= 0 and float(d["map"].max()) == 1.0
        assert d["raw"].shape == (12, 12)
        label = str(d["label"])
        assert label in CLASSES and npz == f"im0.gradcam.top{rank}-{label}.npz"
        assert CLASSES[int(d["target"])] == label
        assert str(d["method"]) == "gradcam" and str(d["layer"]) == "features"
        assert str(d["scale"]) == "per-image" and 0 < float(d["probability"]) < 1
        assert d["original_size"].tolist() == [96, 96] and d["box"].tolist() == [0, 0, 96, 96]
        # the map is the raw map upsampled and normalised, as the method computed it
        from camlens.maps import normalize, upsample

        ref = normalize(upsample(torch.from_numpy(d["raw"])[None], (96, 96)))[0]
        assert torch.allclose(torch.from_numpy(d["map"]), ref, atol=1e-5)
    top = [np.load(ws / "o3" / f)["score"] for f in files if f.endswith(".npz")]
    assert top[0] >= top[1]  # rank 1 has the higher score


def test_explain_shared_scale_across_the_run(run, ws: Path) -> None:
    ok(
        run(
            "explain",
            "imgs",
            "--out",
            "o4",
            "--format",
            "npz",
            "--shared-scale",
            "--batch-size",
            "2",
            "-q",
        )
    )
    data = [np.load(p) for p in sorted((ws / "o4").glob("*.npz"))]
    assert len(data) == 4
    ranges = {tuple(d["scale_range"].tolist()) for d in data}
    assert len(ranges) == 1 and all(str(d["scale"]) == "shared" for d in data)
    peaks = [float(d["map"].max()) for d in data]
    assert max(peaks) == pytest.approx(1.0, abs=1e-6) and min(peaks) < 1.0
    lo, hi = ranges.pop()
    from camlens.maps import upsample

    for d in data:
        up = upsample(torch.from_numpy(d["raw"])[None], (96, 96))[0]
        assert torch.allclose(
            torch.from_numpy(d["map"]), ((up - lo) / (hi - lo)).clamp(0, 1), atol=1e-5
        )


def test_explain_options_target_layer_size_alpha_colormap(run, ws: Path) -> None:
    ok(
        run(
            "explain",
            "imgs/im0.png",
            "--target",
            "2",
            "--layer",
            "features.3",
            "--size",
            "64",
            "--mean",
            "0",
            "--std",
            "1",
            "--alpha",
            "0.3",
            "--colormap",
            "viridis",
            "--batch-size",
            "1",
            "--device",
            "cpu",
            "--out",
            "o5",
            "--overlay-size",
            "input",
            "--no-legend",
        )
    )
    assert png(ws / "o5" / "im0.gradcam.png").shape == (64, 64, 3)


def test_explain_class_name_target_quiet(run, ws: Path) -> None:
    out, err = ok(
        run(
            "explain",
            "imgs/im0.png",
            "--target",
            "ring",
            "--method",
            "cam,layercam",
            "--out",
            "o6",
            "--quiet",
        )
    )
    assert out == "" and err == ""
    for m in ("cam", "layercam"):
        assert (ws / "o6" / f"im0.{m}.png").is_file()


def test_default_out_and_force_checked_before_work(run, ws: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / "imgs").mkdir(parents=True)
    for name in ("im0.png", "im1.jpg", "im2.png"):
        (work / "imgs" / name).write_bytes((ws / "imgs" / name).read_bytes())
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert cli.main(["explain", "imgs/im0.png", "-q"]) == 0
        assert (work / "camlens-out" / "im0.gradcam.png").is_file()
        assert cli.main(["explain", "imgs"]) == 2  # im0's output exists: nothing is done
        assert sorted(p.name for p in (work / "camlens-out").iterdir()) == ["im0.gradcam.png"]
        assert cli.main(["explain", "imgs/im0.png", "imgs/im1.jpg", "-q", "--force"]) == 0
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in (work / "camlens-out").iterdir()) == [
        "im0.gradcam.png",
        "im1.gradcam.png",
    ]


# --------------------------------------------------------------------------- explain: models


def test_torchvision_with_local_weights_topk_npz(run, ws: Path) -> None:
    out, _ = ok(
        run(
            "explain",
            "photos/chelsea.jpg",
            "--model",
            "torchvision:resnet18",
            "--weights",
            "rn18.pt",
            "--target",
            "top-2",
            "--out",
            "o7",
            "--format",
            "both",
        )
    )
    files = sorted(p.name for p in (ws / "o7").iterdir())
    assert len(files) == 4 and all(" " not in f for f in files)  # ImageNet names, file-name safe
    npz = np.load(ws / "o7" / next(f for f in files if f.endswith(".npz")))
    assert npz["map"].shape == (224, 224) and npz["raw"].shape == (7, 7)
    # resize the shorter side to 256 and crop 224: the box is the centre of the 451x300 photo
    box = npz["box"]
    # (451x300 -> 384x256: int(256 * 451 / 300) = 384 columns; the crop starts at top 16, left 80)
    expected = [80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256]
    assert box.tolist() == pytest.approx(expected)
    overlay = png(ws / "o7" / next(f for f in files if f.endswith(".png")))
    assert overlay.shape[1] == 451
    left = overlay[150, :60].astype(int)
    assert (np.abs(left[:, 0] - left[:, 1]) <= 1).all()  # outside the crop: grey
    assert "chelsea.jpg: " in out and ".{png,npz}" in out


@pytest.mark.slow
def test_finetuned_torchvision_head(run, ws: Path) -> None:
    argv = [
        "explain",
        "imgs/im0.png",
        "--model",
        "torchvision:resnet18",
        "--weights",
        "rn18_5.pt",
        "--size",
        "64",
        "--out",
        "o8",
        "-q",
    ]
    ok(run(*argv, "--target", "4"))
    user_error(run(*argv, "--target", "5", "--force"), "5", "out of range")


def test_torchscript_and_module_models(run, ws: Path) -> None:
    ok(
        run(
            "explain",
            "imgs/im0.png",
            "--model",
            "torchscript:net.pt",
            "--size",
            "32",
            "--out",
            "o9",
            "--overlay-size",
            "input",
            "--no-legend",
            "-q",
        )
    )
    assert png(ws / "o9" / "im0.gradcam.png").shape == (32, 32, 3)
    out, _ = ok(run("layers", "--model", "torchscript:net.pt", "--size", "32"))
    marked = [ln for ln in out.splitlines() if ln.startswith("* ")]
    assert len(marked) == 1 and marked[0].split()[1] == "body"
    assert "stem.0" in out and "(1, 16, 16, 16)" in out
    ok(
        run(
            "explain",
            "imgs/im0.png",
            "--model",
            "mymodels.py:build",
            "--out",
            "o10",
            "--target",
            "dog",
            "--overlay-size",
            "input",
            "--no-legend",
            "-q",
        )
    )
    assert png(ws / "o10" / "im0.gradcam.png").shape == (40, 40, 3)  # the model's input_size
    out, _ = ok(run("layers", "--model", "mymodels:build", "--all"))
    assert "fc" in out and "(1, 3)" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("* ")] == ["features"]


def test_weights_none_everywhere_downloads_nothing(
    run, ws: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out, _ = ok(run("layers", "--model", "torchvision:resnet50"))  # architecture only, by default
    assert "layer4 " in out and "(1, 2048, 7, 7)" in out
    assert "automatic choice (*): layer4" in out
    _, err = ok(
        run(
            "explain",
            "photos/coffee.png",
            "--model",
            "torchvision:resnet18",
            "--weights",
            "none",
            "--out",
            "o11",
            "-q",
        )
    )
    assert "random weights (--weights none)" in err
    ok(run("demo", "--weights", "None", "--n", "2", "--method", "gradcam", "--out", "d3", "-q"))
    assert not (tmp_path / "torch-home").exists()  # no download was even attempted


# --------------------------------------------------------------------------- other commands


def test_methods_lists_the_catalog(run) -> None:
    out, _ = ok(run("methods"))
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == _catalog.names()
    for ln, info in zip(lines, _catalog.CATALOG, strict=True):
        assert _catalog.plain(info.summary) in ln and all(a in ln for a in info.aliases)


def test_layers_demo_marks_automatic_choice(run) -> None:
    out, _ = ok(run("layers"))
    marked = [ln for ln in out.splitlines() if ln.startswith("* ")]
    assert len(marked) == 1 and marked[0].split()[1] == "features"
    assert "(1, 128, 12, 12)" in marked[0]
    assert "features.1.0" in out and "Conv2d" in out


def test_evaluate_writes_json(run, ws: Path) -> None:
    out, _ = ok(run("evaluate", "--n", "4", "--methods", "gradcam", "--out", "res.json", "-q"))
    assert "| gradcam |" in out and "Pointing game" in out
    data = json.loads((ws / "res.json").read_text())
    assert data["rows"][0]["name"] == "gradcam" and data["rows"][0]["pointing_game"] is not None
    assert data["settings"]["n"] == 4


def test_method_names_all_aliases_and_order() -> None:
    from camlens.cli.common import method_names

    assert method_names(["all"], "gradcam") == _catalog.names()
    assert method_names(["Grad-CAM,eigencam", "gradcam"], "x") == ["gradcam", "eigencam"]
    assert method_names(None, "gradcam") == ["gradcam"]
    with pytest.raises(cli.CLIError, match="did you mean gradcam"):
        method_names(["gradcum"], "gradcam")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["explain", "nope.png"], ("nope.png", "no such file")),
        (["explain", "demo", "imgs/im0.png"], ("no such file", "--model demo")),
        (["explain", "timm:resnet18", "imgs"], ("'timm:resnet18'", "--model timm:resnet18")),
        (["explain", "imgs", "notimage.png", "--out", "b1"], ("notimage.png", "not an image")),
        (
            ["explain", "imgs/im0.png", "--method", "gradcum"],
            ("gradcum", "gradcam", "camlens methods"),
        ),
        (
            ["explain", "imgs/im0.png", "--layer", "featurs.3", "--out", "b2"],
            ("featurs.3", "'features.3'"),
        ),
        (
            ["explain", "imgs/im0.png", "--model", "resnet18"],
            ("resnet18", "torchvision:NAME", "module:callable"),
        ),
        (["explain", "imgs/im0.png", "--target", "6"], ("6", "out of range", "0 to 5")),
        (
            ["explain", "imgs/im0.png", "--weights", "wrong.pt"],
            ("wrong.pt", "do not fit", "DemoNet"),
        ),
        (["explain", "empty"], ("empty", "no image")),
        (["explain", "imgs/im0.png", "--target", "top-x"], ("top-x", "top-K")),
        (["explain", "imgs/im0.png", "--target", "rinng"], ("rinng", "ring")),
        (["explain", "imgs/im0.png", "--target", "top-7"], ("top-7", "6 classes")),
        (["explain", "imgs/im0.png", "--size", "big"], ("big", "HxW")),
        (["explain", "imgs/im0.png", "--std", "0,1,1"], ("zero",)),
        (["explain", "imgs/im0.png", "--colormap", "jett"], ("jett", "jet")),
        (["explain", "imgs/im0.png", "--alpha", "2"], ("--alpha", "[0, 1]")),
        (["explain", "imgs/im0.png", "--batch-size", "0"], ("--batch-size", "at least 1")),
        (["explain", "imgs/im0.png", "--format", "npy"], ("--format", "npz")),
        (["explain", "imgs/im0.png", "--overlay-size", "big"], ("--overlay-size", "original")),
        (["explain", "imgs/im0.png", "imgs/im0.png", "--report", "imgs"], ("imgs", "directory")),
        (["explain", "imgs/im0.png", "--out", "wide.png"], ("wide.png", "folder")),
        (
            [
                "explain",
                "imgs/im0.png",
                "--model",
                "torchscript:net.pt",
                "--size",
                "32",
                "--target",
                "4",
                "--out",
                "b3",
            ],
            ("4", "out of range"),
        ),
        (["layers", "--model", "torchscript:rn18.pt"], ("rn18.pt", "not a TorchScript file")),
        (["layers", "--model", "torchscript:missing.pt"], ("missing.pt", "not found")),
        (["layers", "--model", "mymodels.py:not_a_model"], ("int", "nn.Module")),
        (["layers", "--model", "mymodels.py:buld"], ("buld", "build")),
        (["layers", "--model", "nomodule_xyz:build"], ("nomodule_xyz",)),
        (["layers", "--model", "torchvision:resnet19"], ("resnet19", "resnet18")),
        (
            ["layers", "--model", "torchvision:resnet18", "--weights", "wrong.pt"],
            ("wrong.pt", "do not fit", "torchvision:resnet18"),
        ),
        (
            ["layers", "--model", "torchvision:resnet18", "--weights", "missing.pt"],
            ("missing.pt", "not found"),
        ),
        (
            ["layers", "--model", "torchvision:resnet18", "--weights", "imgs/im0.png"],
            ("im0.png", "state_dict"),
        ),
        (
            ["layers", "--model", "camlens.audit.planted:honest_model", "--size", "3"],
            (
                "failed on an input of shape (1, 3, 3, 3)",
                "12 x 12",
                "; pass its input size with --size",
            ),
        ),
        (
            [
                "explain",
                "imgs/im0.png",
                "--model",
                "camlens.audit.planted:honest_model",
                "--size",
                "3",
                "--out",
                "b1",
            ],
            ("failed on an input of shape (1, 3, 3, 3)", "(--size, --mean and --std)"),
        ),
        (["evaluate", "--model", "mymodels.py:build", "--n", "2"], ("demo",)),
        (["evaluate", "--methods", "nope"], ("nope",)),
        (["demo", "--n", "0"], ("--n",)),
        (["explain", "x.png", "--metod", "gradcam"], ("--metod", "camlens explain --help")),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    run, ws: Path, argv: list[str], needles: tuple[str, ...]
) -> None:
    user_error(run(*argv), *needles)
    for folder in ("b1", "b2", "b3"):
        assert not (ws / folder).exists()  # checked before anything was written


def test_a_model_error_is_one_line_of_bounded_length() -> None:
    """The model's own message, however long and on however many lines, is one line cut at 200
    characters, followed by what to do."""
    from camlens.methods.base import ModelError, model_error

    x = torch.zeros(2, 3, 5, 7)
    long = RuntimeError("first line\n  " + "x" * 300)
    e = model_error(x, long, hint="pass its input size with --size")
    text = str(e)
    assert isinstance(e, ModelError) and "\n" not in text
    inner = text[text.index("(RuntimeError: ") + len("(RuntimeError: ") : text.index("); ")]
    assert len(inner) == 200 and inner == ("first line " + "x" * 300)[:200]
    assert text.startswith("the model failed on an input of shape (2, 3, 5, 7) (RuntimeError: ")
    assert text.endswith("); pass its input size with --size")
    assert str(model_error(x, ValueError("bad"))) == (
        "the model failed on an input of shape (2, 3, 5, 7) (ValueError: bad); check that the "
        "input has the channels, size and dtype the model expects"
    )


def test_decompression_bomb_exit_2_naming_the_limit(run, ws: Path) -> None:
    from pngfile import write_png

    write_png(ws / "bomb.png", 20000, 20000)
    line = user_error(
        run("explain", "bomb.png", "--out", "b4"),
        "bomb.png",
        "20000x20000",
        "89.5 million",
        "--max-pixels 400000000",
    )
    assert line.startswith("camlens explain: error:") and not (ws / "b4").exists()


def test_16_bit_image_is_explained_with_its_tones(run, ws: Path) -> None:
    grad = np.linspace(0, 65535, 96 * 96).reshape(96, 96).astype(np.uint16)
    Image.fromarray(grad).save(ws / "g16.png")
    ok(run("explain", "g16.png", "--alpha", "0", "--no-legend", "--out", "o12", "-q"))
    shown = png(ws / "o12" / "g16.gradcam.png")[..., 0]  # alpha 0: the image as loaded
    np.testing.assert_array_equal(shown, np.rint(grad / 257).astype(np.uint8))


def test_failure_late_in_a_folder_keeps_the_others(run, ws: Path) -> None:
    folder = ws / "late"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        (folder / name).write_bytes((ws / "imgs" / "im0.png").read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(ws / "noise.png")  # a demo-sized image: no "not a demo image" note
    (folder / "b.png").write_bytes((ws / "noise.png").read_bytes()[:3000])  # header fine, data cut
    code, out, err = run(
        "explain", "late", "--out", "o13", "--batch-size", "1", "--report", "o13/r.html"
    )
    line = user_error((code, out, err), "1 of 3 input(s) failed", "b.png", "truncated", "other 2")
    assert "o13/" in line
    assert sorted(p.name for p in (ws / "o13").iterdir()) == [
        "a.gradcam.png",
        "c.gradcam.png",
        "r.html",
    ]
    assert [ln.split(":")[0] for ln in out.splitlines()[:2]] == ["a.png", "c.png"]
    assert "Inputs that failed (1)" in (ws / "o13" / "r.html").read_text()


def test_interrupted_run_exits_130_with_complete_files_only(run, ws: Path, monkeypatch) -> None:
    from camlens import pipeline

    real = pipeline.explain_batch
    calls = {"n": 0}

    def interrupt_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "explain_batch", interrupt_second)
    code, out, err = run(
        "explain", "imgs", "--out", "o14", "--batch-size", "2", "--report", "o14/r.html"
    )
    assert code == 130 and out == ""
    assert err.strip().splitlines() == [
        "camlens: interrupted; files already complete were kept and no partial file was left behind"
    ]
    written = sorted(p.name for p in (ws / "o14").iterdir())
    assert written == ["im0.gradcam.png", "im1.gradcam.png"]  # the first batch, complete
    for name in written:
        assert png(ws / "o14" / name).shape[1] == 240
    assert no_temp_files(ws / "o14")


def test_debug_shows_traceback_and_internal_errors_exit_1(run, monkeypatch) -> None:
    code, _, err = run("explain", "definitely-missing.png", "--debug")
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("camlens explain: error:")
    import dataclasses

    from camlens.cli.commands import methods

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(methods, "COMMAND", dataclasses.replace(methods.COMMAND, run=boom))
    code, _, err = run("methods")
    assert code == 1 and "internal error: RuntimeError: a bug" in err and "please report" in err


def test_help_and_version(run) -> None:
    out, _ = ok(run("--help"))
    for name in ("demo", "explain", "methods", "layers", "evaluate"):
        assert name in out
    out, _ = ok(run("explain", "--help"))
    assert "--shared-scale" in out and "--format {png,npz,both}" in out and "npz" in out
    assert "torchvision:NAME" in out and "module:callable" in out  # model forms from the registry
    out, _ = ok(run("--version"))
    assert out.startswith("camlens ")


# --------------------------------------------------------------------------- in-process units


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old")

    def boom(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(dest, boom)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    io.atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"
    fresh = io.atomic_write_text(tmp_path / "new.html", "<p>")
    mask = os.umask(0)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_check_outputs_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.gradcam.top1-cat.png").write_bytes(b"x")
    with pytest.raises(io.OutputExistsError, match="--force"):
        io.check_outputs([], False, [tmp_path / "a.gradcam.top1-*.png"])
    io.check_outputs([], True, [tmp_path / "a.gradcam.top1-*.png"])
    with pytest.raises(ValueError, match="directory"):
        io.check_outputs([tmp_path], True)


def test_parse_spec_registry_and_preprocess() -> None:
    assert list(models.model_sources()) == [
        "demo",
        "torchvision",
        "timm",
        "hf",
        "torchscript",
        "module",
    ]
    assert models.parse_spec("demo") == ("demo", "")
    assert models.parse_spec("timm:vit_tiny_patch16_224") == ("timm", "vit_tiny_patch16_224")
    assert models.parse_spec("pkg.mod:build") == ("module", "pkg.mod:build")
    with pytest.raises(ValueError, match="names no model"):
        models.parse_spec("torchscript:")
    assert models.parse_size("224x320") == (224, 320)
    assert models.parse_mean_std("0.5", "mean") == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="zero"):
        models.parse_mean_std("0,1,1", "std")
    pre = models.Preprocess((4, 6), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize=4)
    img = Image.fromarray(np.full((8, 16, 3), 255, np.uint8))
    view = pre.view(img)
    assert view.shape == (3, 4, 6) and float(view.min()) == 1.0
    assert torch.allclose(pre.normalize(view[None]), torch.ones(1, 3, 4, 6))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_proxy_matches_eager(how: str) -> None:
    import camlens

    torch.manual_seed(0)
    net = ScriptNet().eval()
    x = torch.rand(2, 3, 20, 20)
    sm = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x[:1])
    proxy = models.script_to_hookable(sm, x[:1])
    assert isinstance(proxy, models.ScriptProxy)
    ref = camlens.GradCAM(net, layer="body")(x, target=1)
    got = camlens.GradCAM(proxy, layer="body")(x, target=1)
    assert torch.allclose(ref.raw, got.raw, atol=1e-6) and torch.allclose(
        ref.maps, got.maps, atol=1e-6
    )
    assert [n for n, _ in proxy.named_modules()] == [n for n, _ in net.named_modules()]


# --------------------------------------------------------------------------- real processes (slow)


def _process(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    console: bool = False,
    torchvision: bool = False,
) -> subprocess.CompletedProcess[str]:
    paths = [str(ROOT / "src"), *([str(SUPPORT)] if torchvision else [])]
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "COLUMNS": "100",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        **(env or {}),
    }
    argv = [str(CONSOLE)] if console else [sys.executable, "-m", "camlens"]
    return subprocess.run(
        argv + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
@pytest.mark.skipif(not CONSOLE.is_file(), reason="the camlens console script is not installed")
def test_console_script_demo_every_method(ws: Path) -> None:
    r = _process(["demo", "--out", "full-demo"], ws, console=True)
    assert r.returncode == 0, r.stderr
    folder = ws / "full-demo"
    html = (folder / "report.html").read_text()
    for m in _catalog.names():
        assert m in r.stdout
    from camlens import METHODS

    for m in _catalog.names():
        # every method runs on the demo CNN but those for transformers, whose rows say they failed
        expected = 6 if METHODS[m].model_kind == "any" else 0
        assert len(list(folder.glob(f"*.{m}.png"))) == expected, m
    assert html.count('<section class="card"') == 6 and no_temp_files(folder)


@pytest.mark.slow
def test_python_m_explain_with_torchvision_and_report(ws: Path) -> None:
    r = _process(
        [
            "explain",
            "photos",
            "--model",
            "torchvision:resnet18",
            "--weights",
            "rn18.pt",
            "--method",
            "gradcam,gradcam++",
            "--target",
            "top-2",
            "--out",
            "p1",
            "--report",
            "p1/report.html",
        ],
        ws,
        torchvision=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress bar when stderr is not a terminal, no warning
    assert len(list((ws / "p1").glob("*.png"))) == 2 * 2 * 2
    assert [ln.split(":")[0] for ln in r.stdout.splitlines()[:2]] == ["chelsea.jpg", "coffee.png"]


@pytest.mark.slow
def test_offline_pretrained_weights_fail_clearly(ws: Path, tmp_path: Path) -> None:
    offline = (
        {"TORCH_HOME": str(tmp_path / "th")}
        | {
            k: "http://127.0.0.1:9"
            for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")
        }
        | {"no_proxy": "", "NO_PROXY": ""}
    )
    r = _process(
        ["explain", "photos/chelsea.jpg", "--model", "torchvision:resnet18"],
        ws,
        offline,
        torchvision=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "network" in lines[0] and "--weights FILE" in lines[0]
    assert "--weights none" in lines[0]
