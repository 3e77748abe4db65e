"""``camlens audit``: engine throughput against plain Grad-CAM calls, peak memory, Ray against local.

Three measurements, each printed as a table (``--json FILE`` also writes them):

* ``throughput``: the local engine (decode threads, batches, statistics, Parquet shards) against plain
  batched ``camlens.GradCAM`` calls on the same images already decoded, resized and normalised in
  memory (the baseline does no I/O at all). Two models: a torchvision ResNet-18 (random weights, 224 px
  crops of 256 px JPEGs, ``layer4``) and the bundled demo model (96 px PNGs). Rounds alternate
  baseline and engine; the medians are reported. Goal: the engine reaches 0.8x the baseline's
  images/s.
* ``memory``: peak RSS (``VmHWM``) of a fresh process that runs the local engine, and of one that runs
  the whole audit (engine, analysis, report), on 1,000 and 5,000 demo images. Goal: flat.
* ``ray``: the Ray engine on a local cluster of 2 CPUs against the local engine, same images and
  model, wall time of the engine alone (the cluster's start is reported apart).

Run::

    python bench/bench_audit.py [--only throughput|memory|ray] [--n 256] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
sys.path.insert(0, str(SUPPORT))
# isort: off
import tv_cpu_shim  # noqa: F401,E402  (torchvision CPU import shim; a user's machine does not need it)

# isort: on

import camlens  # noqa: E402
from camlens.audit import ExplainConfig, Explainer, iter_items, open_source  # noqa: E402
from camlens.audit.engines import init_ray, run_local, run_ray  # noqa: E402
from camlens.audit.store import ResultStore  # noqa: E402


def _write_images(root: Path, n: int, size: int, fmt: str, seed: int = 0) -> None:
    """Demo images (generated at ``size`` px) as files in class folders."""
    from PIL import Image

    from camlens.demo import CLASSES, make_dataset

    done = 0
    chunk = 500
    while done < n:
        m = min(chunk, n - done)
        images, labels, _ = make_dataset(m, seed=seed + done, size=size)
        for i in range(m):
            folder = root / CLASSES[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            arr = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            path = folder / f"{done + i:06d}.{fmt}"
            Image.fromarray(arr).save(path, quality=90) if fmt == "jpg" else Image.fromarray(
                arr
            ).save(path)
        done += m


def _resnet18_weights(path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


# --------------------------------------------------------------------------- throughput


def throughput(tmp: Path, n: int, rounds: int, batch: int) -> list[dict[str, Any]]:
    out = []
    weights = tmp / "rn18.pt"
    _resnet18_weights(weights)
    setups = [
        ("resnet18 224px JPEG", "torchvision:resnet18", str(weights), "layer4", 256, "jpg"),
        ("demo 96px PNG", "demo", None, None, 96, "png"),
    ]
    for name, spec, w, layer, size, fmt in setups:
        data = tmp / f"data-{spec.replace(':', '-')}"
        _write_images(data, n, size, fmt)
        config = ExplainConfig(model=spec, weights=w, layer=layer, device="cpu")
        explainer = Explainer(config)
        pre = explainer.preprocess
        source = open_source(data, explainer.loaded.classes)
        items = list(iter_items(source))
        from camlens.audit import load_example

        views = torch.stack([torch.from_numpy(load_example(it, pre).view) for it in items])
        x_all = pre.normalize(views)
        labels = torch.tensor([it.label for it in items])
        cam = camlens.GradCAM(explainer.loaded.model, layer=layer)
        cam(x_all[:batch], target=labels[:batch])  # warm-up
        base, eng = [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                cam(x_all[s : s + batch], target=labels[s : s + batch])
            base.append(n / (time.perf_counter() - t0))
            store = ResultStore(tmp / f"out-{spec.replace(':', '-')}-{r}")
            t0 = time.perf_counter()
            run_local(explainer, iter_items(source), store, batch_size=batch, workers=2)
            eng.append(n / (time.perf_counter() - t0))
            print(
                f"  {name} round {r}: baseline {base[-1]:.1f} img/s, engine {eng[-1]:.1f} img/s",
                flush=True,
            )
        # where the time goes, one stage at a time on one thread
        from camlens.audit import collate

        t0 = time.perf_counter()
        exs = [load_example(it, pre) for it in items]
        t_decode = (time.perf_counter() - t0) / n
        t_write = 0.0
        store = ResultStore(tmp / f"stages-{spec.replace(':', '-')}")
        batches = [
            collate(exs[s : s + batch], (pre.size[0], pre.size[1])) for s in range(0, n, batch)
        ]
        for b in batches:
            table = explainer(b)
            t0 = time.perf_counter()
            store.write(table)
            t_write += time.perf_counter() - t0
        # the per-batch function against the Grad-CAM call alone, batch by batch and in alternating
        # order, so that a change of load hits both alike
        t_cam = t_explain = 0.0
        for r in range(2):
            for s, b in zip(range(0, n, batch), batches, strict=True):
                for first in (True, False) if r % 2 == 0 else (False, True):
                    t0 = time.perf_counter()
                    if first:
                        cam(x_all[s : s + batch], target=labels[s : s + batch])
                        t_cam += time.perf_counter() - t0
                    else:
                        explainer(b)
                        t_explain += time.perf_counter() - t0
        out.append(
            {
                "setup": name,
                "ms_per_image": {
                    "decode": round(1000 * t_decode, 2),
                    "gradcam": round(1000 * t_cam / (2 * n), 2),
                    "explain_with_statistics": round(1000 * t_explain / (2 * n), 2),
                    "write": round(1000 * t_write / n, 3),
                },
                "images": n,
                "batch": batch,
                "baseline_img_s": round(_median(base), 2),
                "engine_img_s": round(_median(eng), 2),
                "ratio": round(_median(eng) / _median(base), 3),
                "ratios": [round(e / b, 3) for e, b in zip(eng, base, strict=True)],
                "median_round_ratio": round(
                    _median([e / b for e, b in zip(eng, base, strict=True)]), 3
                ),
            }
        )
    return out


# --------------------------------------------------------------------------- memory


def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def _child_memory(data: str, out: str, mode: str) -> None:
    config = ExplainConfig(model="demo", device="cpu")
    if mode == "engine":
        explainer = Explainer(config)
        source = open_source(data, explainer.loaded.classes)
        run_local(explainer, iter_items(source), ResultStore(out), batch_size=32, workers=2)
    else:
        from camlens.audit import audit

        audit(data, out, config, batch_size=32)
    print(json.dumps({"vmhwm_kib": _vmhwm_kib()}))


def memory(tmp: Path, sizes: list[int]) -> list[dict[str, Any]]:
    biggest = max(sizes)
    data = tmp / "mem-data"
    _write_images(data, biggest, 96, "png")
    paths = sorted(str(p) for p in data.rglob("*.png"))
    rows = []
    for n in sizes:
        man = tmp / f"mem-{n}.csv"
        man.write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in paths[:n]))
        for mode in ("engine", "full"):
            env = {**os.environ, "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "_child-memory",
                    str(man),
                    str(tmp / f"mem-out-{n}-{mode}"),
                    mode,
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            kib = json.loads(r.stdout.strip().splitlines()[-1])["vmhwm_kib"]
            rows.append(
                {
                    "images": n,
                    "mode": mode,
                    "peak_rss_mib": round(kib / 1024, 1),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(f"  {n} images, {mode}: peak RSS {kib / 1024:.0f} MiB", flush=True)
    return rows


# --------------------------------------------------------------------------- ray


def ray_vs_local(tmp: Path, n: int, batch: int) -> list[dict[str, Any]]:
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [
            str(Path(camlens.__file__).resolve().parents[1]),
            str(SUPPORT),
            os.environ.get("PYTHONPATH", ""),
        ]
    )
    data = tmp / "ray-data"
    _write_images(data, n, 96, "png")
    config = ExplainConfig(model="demo", device="cpu")
    explainer = Explainer(config)
    source = open_source(data, explainer.loaded.classes)
    t0 = time.perf_counter()
    run_local(
        explainer, iter_items(source), ResultStore(tmp / "ray-local"), batch_size=batch, workers=2
    )
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    init_ray(num_cpus=2)
    t_init = time.perf_counter() - t0
    rows = []
    try:
        for run in ("first", "second"):
            stamps: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            run_ray(
                config,
                explainer.preprocess,
                iter_items(source),
                ResultStore(tmp / f"ray-ray-{run}"),
                batch_size=batch,
                workers=1,
                on_batch=lambda t, s=stamps: s.append((time.perf_counter(), t.num_rows)),
            )
            t_ray = time.perf_counter() - t0
            # steady state: from the first batch back to the last, without the pool's start
            steady = sum(k for _, k in stamps[1:]) / max(1e-9, stamps[-1][0] - stamps[0][0])
            rows.append(
                {
                    "images": n,
                    "run": run,
                    "local_s": round(t_local, 1),
                    "ray_s": round(t_ray, 1),
                    "ray_init_s": round(t_init, 1),
                    "ray_first_batch_s": round(stamps[0][0] - t0, 1),
                    "local_img_s": round(n / t_local, 1),
                    "ray_img_s": round(n / t_ray, 1),
                    "ray_steady_img_s": round(steady, 1),
                    "ratio": round(t_local / t_ray, 3),
                    "steady_ratio": round(steady / (n / t_local), 3),
                }
            )
            print(
                f"  {run} ray run: {t_ray:.1f} s (first batch after {stamps[0][0] - t0:.1f} s, then "
                f"{steady:.1f} img/s) vs local {t_local:.1f} s ({n / t_local:.1f} img/s)",
                flush=True,
            )
    finally:
        ray.shutdown()
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child-memory":
        _child_memory(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["throughput", "memory", "ray"])
    ap.add_argument("--n", type=int, default=256, help="images for throughput")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sizes", default="1000,5000", help="data set sizes for memory")
    ap.add_argument("--ray-n", type=int, default=512, help="images for ray")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings(
        "ignore"
    )  # random ResNet weights leave some maps empty; that is expected
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.only in (None, "throughput"):
            results["throughput"] = throughput(tmp, args.n, args.rounds, args.batch_size)
            print(
                "| setup | images/s, plain Grad-CAM in memory | images/s, audit local engine "
                "| ratio of medians | median of round ratios |"
            )
            print("|---|---:|---:|---:|---:|")
            for r in results["throughput"]:
                print(
                    f"| {r['setup']} | {r['baseline_img_s']} | {r['engine_img_s']} | "
                    f"{r['ratio']:.2f}x | {r['median_round_ratio']:.2f}x |"
                )
            print(
                "| setup (ms per image) | decode | Grad-CAM | explain + statistics + rows | write |"
            )
            print("|---|---:|---:|---:|---:|")
            for r in results["throughput"]:
                m = r["ms_per_image"]
                print(
                    f"| {r['setup']} | {m['decode']} | {m['gradcam']} | "
                    f"{m['explain_with_statistics']} | {m['write']} |"
                )
        if args.only in (None, "memory"):
            results["memory"] = memory(tmp, [int(s) for s in args.sizes.split(",")])
            print("| images | what runs | peak RSS (MiB) | seconds |")
            print("|---:|---|---:|---:|")
            for r in results["memory"]:
                print(f"| {r['images']} | {r['mode']} | {r['peak_rss_mib']} | {r['seconds']} |")
        if args.only in (None, "ray"):
            results["ray"] = ray_vs_local(tmp, args.ray_n, args.batch_size)
            print(
                "| images | ray run | local engine (s) | ray engine (s) | ray: first batch after (s) "
                "| local img/s | ray img/s after the first batch | ray.init (s) |"
            )
            print("|---:|---|---:|---:|---:|---:|---:|---:|")
            for r in results["ray"]:
                print(
                    f"| {r['images']} | {r['run']} | {r['local_s']} | {r['ray_s']} | "
                    f"{r['ray_first_batch_s']} | {r['local_img_s']} | {r['ray_steady_img_s']} | "
                    f"{r['ray_init_s']} |"
                )
    results["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
