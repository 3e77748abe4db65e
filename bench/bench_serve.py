"""camlens serve: the time of a request against the same call in process, and throughput under load.

Run from the repository root (CPU; about 2 minutes)::

    python bench/bench_serve.py [--requests 30] [--workers 2] [--clients 1,2,4] [--json out.json]

Set-up: torchvision's ResNet-18 (random weights, ``torch.manual_seed(0)``) with ImageNet
pre-processing (resize 256, centre crop 224), a 224x224 PNG of scikit-image's astronaut (or a random
image without scikit-image), ``methods=gradcam``, the top class.

* **Latency.** The server runs in its own process (``camlens.serve.create_app`` under uvicorn, on a
  free loopback port, ``--workers`` worker threads). This process times, interleaved, ``--requests``
  rounds of three calls:

  - ``method``: ``camlens.GradCAM(model)(x)`` on the already pre-processed input: the bare map;
  - ``in process``: ``Engine.explain`` on the decoded image, then ``json.dumps`` of its answer: every
    step of a request (pre-processing, map, overlay PNG, JSON) but the HTTP transport;
  - ``request``: ``POST /api/explain`` with the PNG, through httpx on loopback.

  The table gives each median and the ratio of ``request`` to the two others. Those medians come
  from two processes, and on a shared VM the same call varied by 2x between runs, so the goal (a
  request at most 1.2x the same call in process) is judged on a paired measure too: for every
  request, its time at the client against the time the server spent on that very call
  (``Server-Timing: explain``, measured around ``Engine.explain`` in the server's worker), which
  differ only by the HTTP transport, the upload parsing and the JSON encoding. The median of the
  per-request ratios is printed.
* **Throughput.** 1, 2 and 4 clients (threads of this process, each with its own connection) send
  ``--requests`` requests each, as fast as answers come; requests per second over the whole run.

Both processes use torch's default intra-op threads; with one worker the server runs one request at a
time, with two it overlaps two (camlens methods share one model safely across threads).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "tests" / "support"))
with contextlib.suppress(ImportError):
    import tv_cpu_shim  # noqa: F401  (before torchvision)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import camlens  # noqa: E402
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Preprocess  # noqa: E402


def build() -> LoadedModel:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    pre = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=256)
    return LoadedModel(net, "torchvision:resnet18", pre, classes=[f"c{i}" for i in range(1000)])


def image_png() -> bytes:
    try:
        from skimage import data

        arr = data.astronaut()
    except Exception:  # no scikit-image: a random image of the same size
        arr = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((224, 224), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def serve(port: int, workers: int) -> None:
    """The server process: the same model, under uvicorn on loopback."""
    import uvicorn

    from camlens.serve import Engine, create_app

    app = create_app(Engine({"resnet18": build()}), workers=workers, queue=64)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server process ended before it was ready")
        with contextlib.suppress(Exception):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--requests", type=int, default=30, help="timed rounds / requests per client")
    p.add_argument("--workers", type=int, default=2, help="the server's worker threads")
    p.add_argument("--clients", default="1,2,4", help="client counts for the throughput")
    p.add_argument("--json", type=Path, help="also write the numbers to this file")
    p.add_argument("--server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.server:
        serve(args.server, args.workers)
        return 0
    import httpx

    from camlens.serve import Engine
    from camlens.serve.uploads import decode_image

    clients = [int(c) for c in args.clients.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--server", str(port), "--workers", str(args.workers)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lm = build()
        engine = Engine({"resnet18": lm})
        choices = engine.choose({"methods": "gradcam"})
        png = image_png()
        view = lm.preprocess.view(Image.open(io.BytesIO(png)))
        x = lm.preprocess.normalize(view[None]).contiguous()
        cam = camlens.GradCAM(lm.model)
        wait_ready(url, proc)

        def method() -> None:
            cam(x)

        def in_process() -> None:
            json.dumps(engine.explain(decode_image(png, 40_000_000), choices))

        http = httpx.Client(timeout=120)

        paired: list[float] = []

        def request() -> None:
            t0 = time.perf_counter()
            r = http.post(
                url + "/api/explain",
                files={"file": ("a.png", png, "image/png")},
                data={"methods": "gradcam"},
            )
            total = time.perf_counter() - t0
            r.raise_for_status()
            timing = dict(x.strip().split(";dur=") for x in r.headers["server-timing"].split(","))
            paired.append(total / (float(timing["explain"]) / 1e3))

        calls = {"method": method, "in process": in_process, "request": request}
        times: dict[str, list[float]] = {k: [] for k in calls}
        for r in range(args.requests + 2):  # 2 warm-up rounds
            names = list(calls)
            for name in names[r % 3 :] + names[: r % 3]:
                t0 = time.perf_counter()
                calls[name]()
                if r >= 2:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        pair = statistics.median(paired[2:])  # after the warm-up rounds

        def client(n_requests: int) -> None:
            with httpx.Client(timeout=300) as h:
                for _ in range(n_requests):
                    r = h.post(
                        url + "/api/explain",
                        files={"file": ("a.png", png, "image/png")},
                        data={"methods": "gradcam"},
                    )
                    r.raise_for_status()

        rates = {}
        for n in clients:
            threads = [threading.Thread(target=client, args=(args.requests,)) for _ in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rates[n] = n * args.requests / (time.perf_counter() - t0)
        http.close()
    finally:
        proc.terminate()
        proc.wait(30)

    lines = [
        "# camlens serve: Grad-CAM on ResNet-18 at 224 px (random weights, CPU)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; server workers: "
        f"{args.workers}",
        "",
        "| call | median (ms) | request / this |",
        "|---|---:|---:|",
    ]
    for k in calls:
        lines.append(f"| {k} | {med[k] * 1e3:.1f} | {med['request'] / med[k]:.2f}x |")
    lines += [
        "",
        f"- {'PASS' if pair <= 1.2 else 'MISS'}: a request takes at most 1.2x the same call in "
        f"process, paired per request against the server's own time for it (measured {pair:.2f}x; "
        f"the medians of the two processes above give {med['request'] / med['in process']:.2f}x)",
        "",
        "| concurrent clients | requests / s |",
        "|---:|---:|",
    ]
    lines += [f"| {n} | {rates[n]:.2f} |" for n in clients]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "median_ms": {k: v * 1e3 for k, v in med.items()},
                    "samples_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
                    "requests_per_s": rates,
                    "paired_request_over_call": paired,
                    "workers": args.workers,
                    "threads": torch.get_num_threads(),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
