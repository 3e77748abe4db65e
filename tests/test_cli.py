"""The ``camlens`` command line through its real entry points, in subprocesses.

Every command runs as ``python -m camlens ...`` (and the installed ``camlens`` console script once) in a
fresh interpreter, as a user would run it. Starting an interpreter that imports torch costs seconds, so
the commands of this file are started together, a few at a time, by one module-scoped fixture
(:func:`runs`); each test then checks the results of its own commands. Commands that depend on each
other (a second run that must refuse to overwrite the first run's outputs) run in sequence inside one
job.

Models used: the bundled demo model; ``torchvision:resnet18`` with a state dict saved here from a random
initialisation (the child's ``PYTHONPATH`` holds ``tests/support``, whose ``sitecustomize`` imports the
torchvision CPU shim); ``torchscript:FILE`` from a scripted small model; ``module:callable`` from a small
module file written here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import cli, io, models
from camlens.demo import CLASSES, make_dataset
from camlens.demo.model import WEIGHTS_PATH

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
CONSOLE = Path(sys.executable).with_name("camlens")

pytestmark = pytest.mark.skipif(
    not WEIGHTS_PATH.is_file(), reason=f"the bundled demo weights {WEIGHTS_PATH} are not built yet"
)


# --------------------------------------------------------------------------- models written for the tests


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


# --------------------------------------------------------------------------- running commands


@dataclass
class Cmd:
    """One command line: the arguments after ``camlens``, extra environment, working directory.

    ``torchvision`` puts ``tests/support`` on the child's ``PYTHONPATH`` (its ``sitecustomize`` imports
    the torchvision CPU shim, which imports torchvision: seconds, so only where torchvision is used).
    """

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    console: bool = False  # run the installed console script instead of python -m camlens
    torchvision: bool = False


def _run(cmd: Cmd, ws: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"COLUMNS": "100", "PYTHONWARNINGS": "ignore::DeprecationWarning"})
    if cmd.torchvision:
        env["PYTHONPATH"] = str(SUPPORT)
    env.update(cmd.env)
    argv = [str(CONSOLE)] if cmd.console else [sys.executable, "-m", "camlens"]
    return subprocess.run(
        argv + cmd.args,
        cwd=cmd.cwd or ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _job(cmds: Sequence[Cmd], ws: Path) -> list[subprocess.CompletedProcess[str]]:
    return [_run(c, ws) for c in cmds]


def _workspace(ws: Path) -> None:
    """Images, models and weights the commands use."""
    images, _, _ = make_dataset(4, seed=11)
    (ws / "imgs").mkdir()
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ext = "jpg" if i == 1 else "png"
        Image.fromarray(arr).save(ws / "imgs" / f"im{i}.{ext}")
    Image.fromarray(np.zeros((50, 70, 3), np.uint8) + 128).save(ws / "wide.png")
    (ws / "notimage.png").write_text("this is not an image\n")
    (ws / "empty").mkdir()
    (ws / "mymodels.py").write_text(MODULE_FILE)
    torch.jit.save(torch.jit.script(ScriptNet().eval()), str(ws / "net.pt"))

    import torchvision  # the shim is imported by conftest

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), ws / "rn18.pt")
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), ws / "rn18_5.pt")
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, ws / "wrong.pt")


def _commands(ws: Path) -> dict[str, list[Cmd]]:
    im0 = str(ws / "imgs" / "im0.png")
    offline = {
        "TORCH_HOME": str(ws / "torch-home"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    return {
        # ---- successes
        "demo": [Cmd(["demo"], console=True, cwd=ws)],
        "explain_folder_report": [
            Cmd(
                [
                    "explain",
                    "imgs",
                    "wide.png",
                    "--method",
                    "gradcam,eigencam",
                    "--report",
                    "r/report.html",
                    "--out",
                    "o1",
                ]
            )
        ],
        "explain_topk_npy": [
            Cmd(
                [
                    "explain",
                    im0,
                    "--method",
                    "gradcam",
                    "--method",
                    "guided-backprop",
                    "--target",
                    "top-2",
                    "--format",
                    "npy",
                    "--out",
                    "o2",
                ]
            )
        ],
        "explain_options": [
            Cmd(
                [
                    "explain",
                    im0,
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
                    "o3",
                ]
            )
        ],
        "explain_classname_quiet": [
            Cmd(
                [
                    "explain",
                    im0,
                    "--target",
                    "ring",
                    "--method",
                    "cam,layercam",
                    "--out",
                    "o4",
                    "--quiet",
                ]
            )
        ],
        # default --out (camlens-out/), then a run that must refuse to overwrite, then --force
        "default_and_force": [
            Cmd(["explain", im0]),
            Cmd(["explain", "imgs"]),
            Cmd(["explain", "imgs/im0.png", "imgs/im1.jpg", "-q", "--force"]),
        ],
        "torchvision": [
            Cmd(
                [
                    "explain",
                    im0,
                    "--model",
                    "torchvision:resnet18",
                    "--weights",
                    "rn18.pt",
                    "--target",
                    "top-2",
                    "--size",
                    "96",
                    "--out",
                    "o6",
                ],
                torchvision=True,
            )
        ],
        "torchscript": [
            Cmd(["explain", im0, "--model", "torchscript:net.pt", "--size", "32", "--out", "o8"]),
            Cmd(["layers", "--model", "torchscript:net.pt", "--size", "32"]),
        ],
        "module_file": [
            Cmd(["explain", im0, "--model", "mymodels.py:build", "--out", "o9", "--target", "dog"])
        ],
        "module_import": [Cmd(["layers", "--model", "mymodels:build", "--all"])],
        "methods": [Cmd(["methods"])],
        "layers_demo": [Cmd(["layers"])],
        "evaluate": [Cmd(["evaluate", "--n", "4", "--methods", "gradcam", "--out", "res.json"])],
        # ---- bad input: exit 2, one line, no traceback
        "bad_missing": [Cmd(["explain", "nope.png", "--out", "b1"])],
        "bad_notimage": [Cmd(["explain", "imgs", "notimage.png", "--out", "b2"])],
        "bad_method": [Cmd(["explain", im0, "--method", "gradcum", "--out", "b4"])],
        "bad_layer": [Cmd(["explain", im0, "--layer", "featurs.3", "--out", "b5"])],
        "bad_model": [Cmd(["explain", im0, "--model", "resnet18", "--out", "b6"])],
        "bad_class": [Cmd(["explain", im0, "--target", "6", "--out", "b7"])],
        "bad_weights": [Cmd(["explain", im0, "--weights", "wrong.pt", "--out", "b9"])],
        "bad_offline": [
            Cmd(["layers", "--model", "torchvision:resnet18"], env=offline, torchvision=True)
        ],
    }


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[subprocess.CompletedProcess[str]]]]:
    ws = tmp_path_factory.mktemp("cli")
    _workspace(ws)
    cmds = _commands(ws)
    order = sorted(cmds, key=lambda k: k != "demo")  # the longest first
    with ThreadPoolExecutor(max_workers=max(3, (os.cpu_count() or 2) + 1)) as pool:
        futures = {name: pool.submit(_job, cmds[name], ws) for name in order}
        return ws, {name: f.result() for name, f in futures.items()}


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr


def _user_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def _png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- successes


def test_demo_console_script(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["demo"]
    _ok(r)
    out = ws / "camlens-demo"
    html = (out / "report.html").read_text()
    from camlens.methods import METHODS

    cnn = [m for m, cls in METHODS.items() if cls.model_kind == "any"]
    for m in METHODS:
        assert m in r.stdout  # the summary table
        # a transformer method cannot explain the demo CNN: its row says it failed, no images
        assert len(list(out.glob(f"*.{m}.png"))) == (6 if m in cnn else 0)
    assert len(list(out.glob("*.input.png"))) == 6
    assert "report: " in r.stdout
    # self-contained: every image inline, nothing fetched
    assert html.count('<img src="data:image/png;base64,') == 6 * (len(cnn) + 1)
    assert "<link" not in html and "<script" not in html
    for c in CLASSES:
        if f"_{c}." in " ".join(p.name for p in out.iterdir()):
            assert f"true {c}" in html
    assert "on object" in html and "predicted" in html and "ms / image" in html
    assert not list(out.glob(".*.tmp"))


def test_explain_folder_two_methods_report_and_progress(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["explain_folder_report"]
    _ok(r)
    for stem in ("im0", "im1", "im2", "im3", "wide"):
        for m in ("gradcam", "eigencam"):
            assert _png(ws / "o1" / f"{stem}.{m}.png").shape == (96, 96, 3)
    html = (ws / "r" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5 * 3
    assert "im1.jpg" in html and "predicted" in html
    assert "explain" in r.stderr and "5/5" in r.stderr  # tqdm on stderr


def test_explain_topk_npy_and_channel_maps(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["explain_topk_npy"]
    _ok(r)
    files = sorted(p.name for p in (ws / "o2").iterdir())
    assert len(files) == 4, files
    for m in ("gradcam", "guided-backprop"):
        for rank in (1, 2):
            (hit,) = [f for f in files if f.startswith(f"im0.{m}.top{rank}-")]
            cls = hit.split(f".top{rank}-")[1].removesuffix(".npy")
            assert cls in CLASSES
            arr = np.load(ws / "o2" / hit)
            assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
            assert arr.shape == (96, 96)  # every method's map is one value per pixel
    top1 = [f.split(".top1-")[1] for f in files if ".gradcam.top1-" in f]
    top2 = [f.split(".top2-")[1] for f in files if ".gradcam.top2-" in f]
    assert top1 != top2


def test_explain_target_layer_size_alpha_colormap(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["explain_options"]
    _ok(r)
    assert _png(ws / "o3" / "im0.gradcam.png").shape == (64, 64, 3)


def test_explain_class_name_target_quiet(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["explain_classname_quiet"]
    _ok(r)
    assert (
        r.stdout == "" and "explain" not in r.stderr
    )  # --quiet: no summary, no bar (warnings stay)
    for m in ("cam", "layercam"):
        assert _png(ws / "o4" / f"im0.{m}.png").shape == (96, 96, 3)


def test_method_names_all_aliases_and_order() -> None:
    from camlens.methods import METHODS

    assert cli._method_names(["all"], "gradcam") == list(METHODS)
    assert cli._method_names(["Grad-CAM,eigencam", "gradcam"], "x") == ["gradcam", "eigencam"]
    assert cli._method_names(None, "gradcam") == ["gradcam"]
    with pytest.raises(cli.CLIError, match="camlens methods"):
        cli._method_names(["nope"], "gradcam")


def test_default_out_and_force_checked_before_work(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    first, second, third = res["default_and_force"]
    _ok(first)
    assert _png(ws / "camlens-out" / "im0.gradcam.png").shape == (96, 96, 3)
    assert "wrote 1 file" in first.stdout
    assert first.stderr == ""  # a single image: no progress bar
    line = _user_error(second, "im0.gradcam.png", "--force")
    assert "already exists" in line
    _ok(third)
    assert third.stdout == "" and third.stderr == ""  # --quiet: no summary, no progress bar
    # the refused run did no work: im2 and im3 (not in the --force run) were never written
    assert sorted(p.name for p in (ws / "camlens-out").iterdir()) == [
        "im0.gradcam.png",
        "im1.gradcam.png",
    ]


def test_torchvision_with_local_weights_topk(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["torchvision"]
    _ok(r)
    files = sorted(p.name for p in (ws / "o6").iterdir())
    assert (
        len(files) == 2
        and files[0].startswith("im0.gradcam.top1-")
        and files[1].startswith("im0.gradcam.top2-")
    )
    # ImageNet class names from the weights' metadata, made file-name safe
    assert all(" " not in f for f in files)


def test_torchscript_model(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    explain, layers = res["torchscript"]
    _ok(explain)
    assert _png(ws / "o8" / "im0.gradcam.png").shape == (32, 32, 3)
    _ok(layers)
    marked = [ln for ln in layers.stdout.splitlines() if ln.startswith("* ")]
    assert len(marked) == 1 and marked[0].split()[1] == "body"
    assert "stem.0" in layers.stdout and "(1, 16, 16, 16)" in layers.stdout


def test_module_callable_file_and_import(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["module_file"]
    _ok(r)
    assert _png(ws / "o9" / "im0.gradcam.png").shape == (40, 40, 3)  # the model's input_size
    (r,) = res["module_import"]
    _ok(r)
    assert "fc" in r.stdout and "(1, 3)" in r.stdout  # --all lists non-spatial modules too
    assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("* ")] == ["features"]


def test_methods_lists_every_method(runs: tuple[Path, dict]) -> None:
    _, res = runs
    (r,) = res["methods"]
    _ok(r)
    from camlens.methods import METHODS

    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(METHODS)
    for ln, cls in zip(lines, METHODS.values(), strict=True):
        assert (cls.__doc__ or "").strip().splitlines()[0].strip() in ln


def test_layers_demo_marks_automatic_choice(runs: tuple[Path, dict]) -> None:
    _, res = runs
    (r,) = res["layers_demo"]
    _ok(r)
    marked = [ln for ln in r.stdout.splitlines() if ln.startswith("* ")]
    assert len(marked) == 1
    assert marked[0].split()[1] == "features"
    assert "(1, 128, 12, 12)" in marked[0]
    assert "features.1.0" in r.stdout and "Conv2d" in r.stdout
    assert "automatic choice (*): features" in r.stdout


def test_evaluate_writes_json(runs: tuple[Path, dict]) -> None:
    ws, res = runs
    (r,) = res["evaluate"]
    _ok(r)
    assert "| gradcam |" in r.stdout and "Pointing game" in r.stdout
    data = json.loads((ws / "res.json").read_text())
    assert data["rows"][0]["name"] == "gradcam" and data["rows"][0]["pointing_game"] is not None
    assert data["settings"]["n"] == 4


# --------------------------------------------------------------------------- bad input


def test_bad_missing_path(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_missing"][0], "nope.png", "no such file")


def test_bad_not_an_image(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_notimage"][0], "notimage.png", "not an image")
    assert not (runs[0] / "b2").exists()  # checked before the other images were explained


def test_bad_unknown_method(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_method"][0], "gradcum", "gradcam", "camlens methods")


def test_bad_unknown_layer(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_layer"][0], "featurs.3", "'features.3'", "camlens layers")
    assert not (runs[0] / "b5").exists()


def test_bad_unknown_model(runs: tuple[Path, dict]) -> None:
    line = _user_error(runs[1]["bad_model"][0], "resnet18", "torchvision:NAME")
    assert "module:callable" in line


def test_bad_class_out_of_range(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_class"][0], "6", "out of range", "0 to 5")


def test_bad_weights_do_not_fit(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_weights"][0], "wrong.pt", "do not fit", "DemoNet")


def test_bad_offline_without_weights(runs: tuple[Path, dict]) -> None:
    _user_error(runs[1]["bad_offline"][0], "torchvision:resnet18", "network", "--weights FILE")


# --------------------------------------------------------------------------- in-process: more bad input
# The same ``main`` as above, called in this interpreter (no start-up cost) for the rarer errors.


@pytest.fixture(scope="module")
def ws(runs: tuple[Path, dict]) -> Path:
    return runs[0]


def _main_error(
    capsys: pytest.CaptureFixture[str], ws: Path, argv: list[str], *needles: str
) -> str:
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        code = cli.main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["explain", "empty"], ("empty", "no image")),
        (["explain", "imgs/im0.png", "--target", "top-x"], ("top-x", "top-K")),
        (["explain", "imgs/im0.png", "--target", "rinng"], ("rinng", "ring")),
        (["explain", "imgs/im0.png", "--target", "top-7"], ("top-7", "6 classes")),
        (["explain", "imgs/im0.png", "--size", "big"], ("big", "HxW")),
        (["explain", "imgs/im0.png", "--std", "0,1,1"], ("zero",)),
        (["explain", "imgs/im0.png", "--colormap", "jett"], ("jett", "jet")),
        (["explain", "imgs/im0.png", "--alpha", "2"], ("alpha",)),
        (
            ["explain", "imgs/im0.png", "imgs/im0.png", "--out", "x", "--report", "imgs"],
            ("imgs", "directory"),
        ),
        (["explain", "imgs/im0.png", "--out", "wide.png"], ("wide.png", "folder")),
        # class names unknown (a TorchScript model): checked at the model's output, before any write
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
                "b8",
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
        (["evaluate", "--model", "mymodels.py:build", "--n", "2"], ("demo",)),
        (["evaluate", "--methods", "nope"], ("nope",)),
        (["demo", "--n", "0"], ("--n",)),
    ],
)
def test_bad_input_in_process(
    capsys: pytest.CaptureFixture[str], ws: Path, argv: list[str], needles: tuple[str, ...]
) -> None:
    _main_error(capsys, ws, argv, *needles)
    assert not (ws / "b8").exists()


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "x.png", "--metod", "gradcam"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metod" in err and "camlens explain --help" in err


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "definitely-missing.png", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("camlens explain: error:")


def test_finetuned_torchvision_head_in_process(
    capsys: pytest.CaptureFixture[str], ws: Path
) -> None:
    """A state dict with another number of classes rebuilds the classifier (class names then unknown)."""
    argv = [
        "explain",
        str(ws / "imgs" / "im0.png"),
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(ws / "rn18_5.pt"),
    ]
    argv += ["--size", "64", "--out", str(ws / "o7"), "--target", "4", "-q"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert _png(ws / "o7" / "im0.gradcam.png").shape == (64, 64, 3)
    _main_error(capsys, ws, [*argv[:-3], "--target", "5", "--force"], "5", "out of range")


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


def test_parse_spec_and_preprocess() -> None:
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


def test_main_in_process_returns_two_on_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "definitely-missing.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "definitely-missing.png" in err
