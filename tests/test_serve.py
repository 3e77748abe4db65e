"""camlens serve: the JSON API against in-process calls, bad uploads, load, and the page in a browser."""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient
from PIL import Image

import camlens
from camlens.cli import build_parser, main
from camlens.cli.commands.serve import is_loopback
from camlens.cli.commands.serve import run as run_command
from camlens.images import IMAGE_FORMATS_TEXT
from camlens.models import LoadedModel, Preprocess, load_model
from camlens.serve import Engine, create_app

pytestmark = pytest.mark.filterwarnings("ignore:.*is all zero for samples")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model("demo", None, device="cpu")


@pytest.fixture(scope="module")
def cropper() -> LoadedModel:
    """A classifier whose pre-processing crops: resize the shorter side to 40, centre-crop 32x32."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    pre = Preprocess(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=40)
    return LoadedModel(net, "test:cropper", pre, classes=["ant", "bee", "cat", "dog"])


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photograph (scikit-image's chelsea, 300x451), as PNG."""
    skimage_data = pytest.importorskip("skimage.data")
    return png_bytes(skimage_data.chelsea())


@pytest.fixture(scope="module")
def client(demo: LoadedModel, cropper: LoadedModel) -> Iterator[TestClient]:
    app = create_app(Engine({"demo": demo, "cropper": cropper}), workers=2)
    with TestClient(app) as c:
        yield c


def sample_png(client: TestClient) -> bytes:
    url = client.get("/api/samples").json()["samples"][0]["url"]
    return client.get(url).content


def post(client: TestClient, data: bytes, **fields: str) -> Any:
    return client.post("/api/explain", files={"file": ("x.png", data, "image/png")}, data=fields)


# ---- choices ----------------------------------------------------------------------------------------


def test_choices_come_from_fixed_lists(client: TestClient, demo: LoadedModel) -> None:
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["demo", "cropper"] and models[0]["default"]
    assert models[0]["class_names"] == list(demo.classes) and models[0]["input_size"] == [96, 96]
    methods = client.get("/api/methods").json()["methods"]
    assert [m["name"] for m in methods] == list(camlens.METHODS)
    layers = client.get("/api/layers", params={"model": "demo"}).json()
    names = [entry["name"] for entry in layers["layers"]]
    assert layers["default"] == "features" and "features" in names
    assert all(len(entry["shape"]) == 4 for entry in layers["layers"])
    r = client.get("/api/layers", params={"model": "torchvision:resnet50"})
    assert r.status_code == 422 and r.json()["valid"] == ["demo", "cropper"]
    assert client.get("/healthz").json()["status"] == "ok"


# ---- answers equal in-process calls -------------------------------------------------------------


def assert_answer_is_the_in_process_call(
    answer: dict[str, Any], lm: LoadedModel, image: Any
) -> torch.Tensor:
    """The answer's predictions and maps equal the library's on ``image``; returns the top-5."""
    x = lm.preprocess.normalize(lm.preprocess.view(image)[None])
    top = lm.model(x).detach().softmax(1)[0].topk(5)
    assert [p["index"] for p in answer["predictions"]] == top.indices.tolist()
    np.testing.assert_allclose([p["score"] for p in answer["predictions"]], top.values, rtol=1e-5)
    assert answer["maps"]
    for m in answer["maps"]:
        ref = camlens.get_method(m["method"])(lm.model)(x, target=m["target"])
        np.testing.assert_allclose(np.array(m["raw"]), ref.raw[0].numpy(), rtol=1e-5, atol=1e-6)
        assert m["shape"] == list(ref.raw.shape[1:]) and m["layer"] == ref.layer
        assert m["score"] == pytest.approx(float(ref.scores[0]), rel=1e-5)
    return top.indices


def test_maps_equal_the_in_process_call(client: TestClient, demo: LoadedModel) -> None:
    data = sample_png(client)
    r = post(client, data, methods="gradcam,scorecam,guided-backprop", target="top-2")
    assert r.status_code == 200, r.text
    answer = r.json()
    top = assert_answer_is_the_in_process_call(answer, demo, Image.open(io.BytesIO(data)))
    assert [(m["method"], m["target"]) for m in answer["maps"]] == [
        (m, int(c)) for m in ("gradcam", "scorecam", "guided-backprop") for c in top[:2]
    ]
    for m in answer["maps"]:
        assert m["class"] == demo.classes[m["target"]]
        png = Image.open(io.BytesIO(__import__("base64").b64decode(m["overlay"].split(",")[1])))
        assert png.size[0] == 240 and png.size[1] > 96  # the 96 px image on a legend's width


def test_a_16_bit_image_has_the_tones_the_library_reads(
    client: TestClient, demo: LoadedModel
) -> None:
    # mid-grey 16-bit tones; Pillow's own convert("RGB") clips them all to white
    grad = np.linspace(16384, 49151, 96 * 96).reshape(96, 96).astype(np.uint16)
    data = png_bytes(grad)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I;16" and (np.asarray(im.convert("RGB")) == 255).all()
    image = camlens.load_image(data)
    np.testing.assert_array_equal(np.asarray(image)[..., 1], np.rint(grad / 257).astype(np.uint8))
    r = post(client, data, methods="gradcam,scorecam", target="top-2")
    assert r.status_code == 200, r.text
    assert_answer_is_the_in_process_call(r.json(), demo, image)
    # the answer differs from the one for the white image the tones would be clipped to
    white = post(client, png_bytes(np.full((96, 96), 255, np.uint8)), methods="gradcam").json()
    assert white["predictions"][0]["score"] != pytest.approx(
        r.json()["predictions"][0]["score"], rel=1e-3
    )


def test_a_cropping_model_maps_onto_the_original_photo(
    client: TestClient, cropper: LoadedModel, photo: bytes
) -> None:
    answer = post(client, photo, model="cropper", target="cat").json()
    # chelsea is 451x300: the shorter side goes to 40 px, the central 32x32 is seen
    assert answer["image"] == {"width": 451, "height": 300}
    scale = 300 / 40
    rw = round(451 * 40 / 300)
    left = (rw - 32) // 2 * (451 / rw)
    x0, y0, x1, y1 = answer["geometry"]["box"]
    assert answer["geometry"]["original_size"] == [300, 451]
    assert answer["geometry"]["input_size"] == [32, 32]
    assert (y0, y1) == pytest.approx((4 * scale, 36 * scale))
    assert x0 == pytest.approx(left) and x1 - x0 == pytest.approx(32 * 451 / rw)
    (m,) = answer["maps"]
    assert m["target"] == 2 and m["class"] == "cat"
    original = Image.open(io.BytesIO(photo))
    view, geo = cropper.preprocess.prepare(original)
    ref = camlens.GradCAM(cropper.model)(cropper.preprocess.normalize(view[None]), target=2)
    np.testing.assert_allclose(np.array(m["raw"]), ref.raw[0].numpy(), rtol=1e-5, atol=1e-6)
    overlay = np.asarray(
        Image.open(io.BytesIO(__import__("base64").b64decode(m["overlay"].split(",")[1])))
    )
    # the full-size photo with the map in the box (the legend strip follows under it)
    from camlens import viz

    expected = np.asarray(viz.overlay_on_original(original, ref.maps[0], geo)).astype(int)
    assert overlay.shape[1] == 451 and overlay.shape[0] > 300
    assert np.abs(overlay[:300].astype(int) - expected).max() <= 1
    rgb = np.asarray(original.convert("RGB")).astype(float)
    # outside the box the photo is greyed out; inside, the heat map is blended in
    assert np.abs(overlay[:300, :5].std(axis=2)).max() < 2  # grey: no colour left
    inside = overlay[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2].astype(float)
    assert np.abs(inside - rgb[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]).mean() > 10


def test_the_maps_of_a_large_photo_share_one_shrunk_copy(
    cropper: LoadedModel, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camlens import viz

    engine = Engine({"cropper": cropper}, max_overlay_side=300)
    image = camlens.load_image(photo)
    choices = engine.choose({"methods": "gradcam,layercam", "target": "top-2"})
    shrinks: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def counted(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        if tuple(size) == (300, 200):  # 451x300 scaled to a longest side of 300
            shrinks.append(self.size)
        return resize(self, size, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Image.Image, "resize", counted)
        answer = engine.explain(image, choices)
    assert len(answer["maps"]) == 4 and shrinks == [(451, 300)]  # once, not once per map
    done = engine.run(image, choices)
    assert done.geometry is not None
    for m, (_, res) in zip(answer["maps"], done.results, strict=True):
        png = __import__("base64").b64decode(m["overlay"].split(",")[1])
        got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[:200].astype(int)
        # what drawing each map on the full-resolution photo gives, pixel for pixel
        full = viz.overlay_on_original(image, res.maps[0], done.geometry, size=(200, 300))
        assert got.shape == (200, 300, 3)
        assert np.abs(got - np.asarray(full).astype(int)).max() == 0


def test_npz_answer_holds_the_maps_and_geometry(client: TestClient, demo: LoadedModel) -> None:
    data = sample_png(client)
    r = client.post(
        "/api/explain.npz",
        files={"file": ("x.png", data, "image/png")},
        data={"methods": "gradcam", "target": "2"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    z = np.load(io.BytesIO(r.content))
    view = demo.preprocess.view(Image.open(io.BytesIO(data)))
    ref = camlens.GradCAM(demo.model)(demo.preprocess.normalize(view[None]), target=2)
    np.testing.assert_allclose(z["raw"], ref.raw[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z["map"], ref.maps[0].numpy(), rtol=1e-5, atol=1e-6)
    assert int(z["target"]) == 2 and str(z["label"]) == demo.classes[2]
    assert z["box"].tolist() == [0, 0, 96, 96] and z["image_size"].tolist() == [96, 96]
    assert z.files == [
        "image_size",
        "box",
        "map",
        "raw",
        "score",
        "target",
        "label",
        "method",
        "layer",
    ]


# ---- bad input --------------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The process's temporary folder, empty: nothing a request does may write there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.fixture
def eps_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pillow's EPS plugin (which runs Ghostscript on the data), recording every call it gets."""
    from PIL import EpsImagePlugin

    assert EpsImagePlugin.EpsImageFile.format == "EPS"
    factory, accept = Image.OPEN["EPS"]
    calls: list[str] = []

    def spy_accept(prefix: bytes) -> Any:
        calls.append("accept")
        return accept(prefix) if accept else True

    def spy_factory(*args: Any) -> Any:
        calls.append("open")
        return factory(*args)

    monkeypatch.setitem(Image.OPEN, "EPS", (spy_factory, spy_accept))
    with Image.open(io.BytesIO(EPS)) as im:  # the spy sees what Pillow's default open does
        assert im.format == "EPS" and calls == ["accept", "open"]
    calls.clear()
    return calls


def test_each_bad_input_gets_its_status_and_the_server_stays_healthy(
    demo: LoadedModel, private_tmp: Path, eps_spy: list[str]
) -> None:
    app = create_app(Engine({"demo": demo}), max_upload_mb=1, max_pixels=1_000_000)
    good = png_bytes((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8))
    noisy = png_bytes((np.random.default_rng(1).random((700, 700, 3)) * 255).astype(np.uint8))
    assert len(noisy) > 2**20  # over the 1 MB limit, and spooled to disk by a default parser
    huge = io.BytesIO()
    Image.new("L", (1200, 1000)).save(huge, format="PNG")  # small file, 1.2 Mpx
    with TestClient(app) as c:
        cases = [
            (post(c, b"GIF89a not really"), 400, "not an image"),
            (post(c, EPS), 400, f"{IMAGE_FORMATS_TEXT} image"),
            (post(c, good[: len(good) // 2]), 400, "truncated"),
            (post(c, noisy), 413, "limit of 1 MB"),
            (post(c, huge.getvalue()), 413, "1,200,000 pixels"),
            (post(c, good, methods="gradcam,nope"), 422, "unknown method 'nope'"),
            (post(c, good, layer="features.99"), 422, "unknown layer"),
            (post(c, good, target="zebra"), 422, "not a class index"),
            (post(c, good, target="7"), 422, "out of range"),
            (post(c, good, model="timm:vit_base_patch16_224"), 422, "unknown model"),
            (post(c, good, methods="eigencam", counterfactual="true"), 422, "counterfactual"),
            (post(c, good, methods="legrad"), 422, "transformer"),
            (post(c, good, methods="cam", layer="features.2"), 422, "GradCAM"),
            (c.post("/api/explain", data={"methods": "gradcam"}), 400, "multipart"),
            (c.post("/api/explain", files={"other": ("x.png", good)}), 400, "field 'file'"),
        ]
        for r, status, text in cases:
            assert r.status_code == status, (status, r.text)
            assert text in r.json()["detail"], r.json()
        assert "not an image" in cases[1][0].json()["detail"]
        assert eps_spy == []  # the EPS upload never reached Pillow's EPS plugin
        assert c.post("/api/explain", files={"file": ("x.png", good)}).status_code == 200
        assert c.get("/healthz").json() == {
            "status": "ok",
            "models": ["demo"],
            "in_flight": 0,
            "capacity": 9,
        }
    assert list(private_tmp.iterdir()) == []


def test_a_full_server_answers_503_with_retry_after(demo: LoadedModel) -> None:
    class Blocking(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = demo.model
            self.block = False
            self.entered = threading.Event()
            self.release = threading.Event()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.block:
                self.entered.set()
                assert self.release.wait(20)
            return self.net(x)

    blocking = Blocking()
    lm = LoadedModel(blocking, "blocking", demo.preprocess, classes=demo.classes)
    engine = Engine({"blocking": lm})  # probes the layers now, while the model still passes
    blocking.block = True
    app = create_app(engine, workers=1, queue=0)
    good = png_bytes(np.zeros((96, 96, 3), np.uint8))
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(1) as ex:
        blocking.entered.clear()
        first = ex.submit(post, c, good, layer="net.features")
        assert blocking.entered.wait(20)
        second = post(c, good, layer="net.features")
        assert second.status_code == 503 and int(second.headers["Retry-After"]) >= 1
        blocking.release.set()
        assert first.result(30).status_code == 200
        assert post(c, good, layer="net.features").status_code == 200


# ---- a real server under load ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live(demo: LoadedModel, audited: Path) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread of this process, with an audit."""
    import uvicorn

    from camlens.serve.audit import AuditBrowser

    port = free_port()
    browser = AuditBrowser(audited, demo.preprocess)
    app = create_app(Engine({"demo": demo}), workers=2, queue=64, audit=browser)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_eight_concurrent_clients_each_get_their_own_maps(live: str, demo: LoadedModel) -> None:
    import httpx

    rng = np.random.default_rng(3)
    from camlens.demo import make_dataset

    images, _, _ = make_dataset(6, seed=11)
    uploads = [
        png_bytes((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images
    ]
    refs = {}
    for i, data in enumerate(uploads):
        view = demo.preprocess.view(Image.open(io.BytesIO(data)))
        x = demo.preprocess.normalize(view[None])
        for t in range(len(demo.classes)):
            refs[i, t] = camlens.GradCAM(demo.model)(x, target=t).raw[0].numpy()
    jobs = [(int(rng.integers(6)), int(rng.integers(len(demo.classes)))) for _ in range(50)]

    def call(job: tuple[int, int]) -> tuple[int, float]:
        i, t = job
        with httpx.Client(timeout=60) as h:
            r = h.post(
                f"{live}/api/explain",
                files={"file": ("x.png", uploads[i], "image/png")},
                data={"methods": "gradcam", "target": str(t)},
            )
        if r.status_code != 200:
            return r.status_code, float("inf")
        raw = np.array(r.json()["maps"][0]["raw"])
        return 200, float(np.abs(raw - refs[i, t]).max())

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        outcomes = list(ex.map(call, jobs))
    assert [s for s, _ in outcomes] == [200] * 50
    assert max(err for _, err in outcomes) < 1e-5
    with httpx.Client() as h:
        assert h.get(f"{live}/healthz").json()["in_flight"] == 0


# ---- the command ------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


PROBE_MODEL = """
from torch import nn


def build():  # a head sized for 8x8 inputs: the model fails on any other size
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)).eval()
"""


def test_the_command_checks_its_arguments_and_warns_off_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    (tmp_path / "probe_model.py").write_text(PROBE_MODEL)
    eight = f"{tmp_path / 'probe_model.py'}:build"
    for argv, text in [
        (["--workers", "0"], "--workers"),
        (["--port", "70000"], "--port"),
        (["--model", "demo", "--model", "demo"], "given twice"),
        (["--model", "demo", "--model", "x:y", "--weights", "w.pt"], "one --model"),
        (["--model", "demo", "--model", "x:y", "--size", "8"], "one --model"),
        (["--model", "nosuch:thing"], "nosuch"),
        (["--model", "demo", "--size", "0x8"], "size"),
        # the model does not run on its probe input (224x224): one line, saying to pass --size
        (
            ["--model", eight, "--device", "cpu"],
            "the model failed on an input of shape (1, 3, 224, 224) (RuntimeError: mat1 and "
            "mat2 shapes cannot be multiplied (1x200704 and 256x2)); pass its input size with --size",
        ),
    ]:
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err, err
    started: dict[str, Any] = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    assert run_command(parse("--host", "0.0.0.0", "--port", "8123", "--workers", "2")) == 0
    assert started["host"] == "0.0.0.0" and started["port"] == 8123
    assert "not on loopback only" in capsys.readouterr().err
    with TestClient(started["app"]) as c:
        assert c.get("/api/models").json()["models"][0]["name"] == "demo"
    # --size, --mean and --std reach the served model: at 8x8 it runs
    assert (
        run_command(parse("--model", eight, "--size", "8", "--mean", "0.5", "--std", "0.25")) == 0
    )
    with TestClient(started["app"]) as c:
        (info,) = c.get("/api/models").json()["models"]
        assert info["name"] == eight and info["input_size"] == [8, 8] and info["classes"] is None
        assert c.get("/api/layers").json()["default"] == "1"
        data = png_bytes(np.full((8, 8, 3), 191, np.uint8))
        answer = post(c, data).json()
    lm = started["app"].state.engine.entries[eight].lm
    assert lm.preprocess.mean == (0.5, 0.5, 0.5) and lm.preprocess.std == (0.25, 0.25, 0.25)
    x = torch.full((1, 3, 8, 8), (191 / 255 - 0.5) / 0.25)
    top = lm.model(x).detach().softmax(1)[0].topk(2)
    assert [p["index"] for p in answer["predictions"]] == top.indices.tolist()
    np.testing.assert_allclose([p["score"] for p in answer["predictions"]], top.values, rtol=1e-5)


# ---- the page in a real browser --------------------------------------------------------------------


def _chrome() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1300,1400",
    ):
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.mark.slow
def test_the_page_in_a_browser(live: str, tmp_path: Path, demo: LoadedModel) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from camlens.demo import make_dataset

    images, labels, _ = make_dataset(1, seed=5)
    path = tmp_path / "shape.png"
    path.write_bytes(png_bytes((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    driver = _chrome()
    try:
        driver.get(live + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#methods input")) > 5)
        driver.find_element(By.CSS_SELECTOR, "#methods input[value='scorecam']").click()
        driver.find_element(By.ID, "file").send_keys(str(path))

        def cards() -> list[Any]:
            return driver.find_elements(By.CSS_SELECTOR, "#maps .card")

        wait.until(lambda d: len(cards()) == 2 and "map(s)" in d.find_element(By.ID, "status").text)
        assert [c.get_attribute("data-method") for c in cards()] == ["gradcam", "scorecam"]
        predicted = demo.classes[int(labels[0])]
        first = driver.find_element(By.CSS_SELECTOR, "#predictions li").text
        assert first.startswith(predicted), first
        titles = [c.find_element(By.TAG_NAME, "h3").text for c in cards()]
        assert all(t.endswith(predicted) for t in titles), titles
        pixels = driver.execute_script(
            "return [...document.querySelectorAll('#maps canvas')].map(c => c.toDataURL())"
        )
        # another layer: the maps change, and say which layer they show
        Select(driver.find_element(By.ID, "layer")).select_by_value("features.1")
        wait.until(
            lambda d: all("layer features.1 " in c.text for c in cards()) and len(cards()) == 2
        )
        after = driver.execute_script(
            "return [...document.querySelectorAll('#maps canvas')].map(c => c.toDataURL())"
        )
        assert after != pixels
        # another target, by class name: both maps explain it
        other = next(c for c in demo.classes if c != predicted)
        box = driver.find_element(By.ID, "target")
        box.send_keys(other)
        driver.execute_script(
            "document.getElementById('target').dispatchEvent(new Event('change'))"
        )
        wait.until(
            lambda d: (
                len(cards()) == 2
                and all(c.find_element(By.TAG_NAME, "h3").text.endswith(other) for c in cards())
            )
        )
        assert "0" in cards()[0].find_element(By.CLASS_NAME, "colorbar").text
        # the audit's findings, with the mean map and the examples
        finding = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#findings .finding"))[0]
        assert finding.find_element(By.TAG_NAME, "h3").text.startswith("star: fixed position")
        wait.until(
            lambda d: all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                for i in finding.find_elements(By.TAG_NAME, "img")
            )
        )
        assert len(finding.find_elements(By.TAG_NAME, "img")) >= 4
        driver.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("CAMLENS_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["CAMLENS_SCREENSHOT"])
    finally:
        driver.quit()


# ---- browsing an audit --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit of the planted shortcut (stars carry a corner mark) with its findings."""
    pytest.importorskip("pyarrow")
    from camlens.audit import ExplainConfig, audit, planted

    root = tmp_path_factory.mktemp("audit")
    data = planted.make_planted(root / "data", n=60, seed=1)
    config = ExplainConfig(model="camlens.audit.planted:shortcut_model", device="cpu")
    audit(data.images, root / "out", config, report=False)
    return root / "out"


def test_an_audit_is_browsed_by_finding_and_example_number(
    audited: Path, demo: LoadedModel
) -> None:
    from camlens.serve.audit import AuditBrowser

    assert AuditBrowser.model_spec(audited) == "camlens.audit.planted:shortcut_model"
    browser = AuditBrowser(audited, demo.preprocess)  # the planted models see as the demo does
    with TestClient(create_app(Engine({"demo": demo}), audit=browser)) as c:
        info = c.get("/api/audit/summary").json()
        assert info["images"] == 60 and info["classes"] == ["star"]
        assert info["kinds"] == ["fixed_position"]
        found = c.get("/api/audit/findings", params={"class": "star"}).json()["findings"]
        assert [(f["class"], f["kind"]) for f in found] == [("star", "fixed_position")]
        assert "fixed place" in found[0]["why"] and len(found[0]["example_urls"]) >= 3
        r = c.get(found[0]["example_urls"][0])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        example = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(float)
        # the stored map peaks at the mark in the top-left corner: the overlay is hottest there
        red = example[..., 0] - example[..., 2]
        peak = np.unravel_index(red.argmax(), red.shape)
        assert peak[0] < example.shape[0] / 3 and peak[1] < example.shape[1] / 3
        assert c.get(found[0]["mean_map_url"]).status_code == 200
        assert c.get("/api/audit/example/0/99").status_code == 404
        assert c.get("/api/audit/example/7/0").status_code == 404
        r = c.get("/api/audit/findings", params={"class": "../../etc"})
        assert r.status_code == 422 and r.json()["valid"] == ["star"]
    with pytest.raises(ValueError, match=r"summary\.json"):
        AuditBrowser(audited.parent / "nowhere")
