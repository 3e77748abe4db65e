"""Ablation-CAM, Score-CAM, FullGrad and ShapleyCAM: camlens against pytorch-grad-cam, side by side.

Both libraries explain the same torchvision ResNet (``--arch``, default ResNet-50; random weights, seed
0, batch norms with random statistics and biases, eval mode) at ``layer4``
on the same 224x224 image(s), for class 281, on the CPU:

* Ablation-CAM: pytorch-grad-cam re-runs the *whole* network for every batch of ablated channels;
  camlens re-runs only the head after the layer (split with torch.fx). Same batch size for both.
* Score-CAM: both must run the whole network once per channel (2048 masked inputs per image); camlens
  batches them under inference mode. Same batch size for both.
* FullGrad (no layer): both run one forward and one backward from the input. pytorch-grad-cam
  computes every parameter's gradient, copies every bias layer's gradient to numpy and resizes each
  channel separately with cv2; camlens differentiates only the input and the bias layers' outputs and
  scales and upsamples each layer once, in torch.
* ShapleyCAM at ``layer4``, for the softmax probability of the image's top class (a target with
  curvature; class 281 with random weights can leave both maps empty):
  pytorch-grad-cam builds the double-backward graph of the whole network from the input; camlens
  differentiates twice only the head after the layer.

FullGrad and ShapleyCAM take about a second or less, so each is timed ``--repeats`` times, the two
libraries taking turns, and the medians are reported: wall time, and the process's CPU time. On a
machine shared with other jobs the CPU time is the steadier of the two (run with ``--threads 1``
there: idle OpenMP threads spin and bill CPU time while they wait for a core).

Each contender runs once per image after a warm-up on a small model (Score-CAM at 2048 channels takes
minutes per image on 2 cores, so repeats are costly; ``--images`` sets how many images are timed). The
maps are compared too (Pearson correlation of the normalised maps), since a fast wrong answer is no
answer. Run::

    python bench/bench_family.py [--images 1] [--batch-size 32] [--threads N] [--skip-scorecam]
        [--only ablation,scorecam,fullgrad,shapleycam] [--arch resnet18] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import camlens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
# isort: off
import tv_cpu_shim  # noqa: F401  (torchvision CPU import shim; a user's machine does not need it)
import torchvision

# isort: on


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def _time(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _time_cpu(fn, *args):  # type: ignore[no-untyped-def]
    """Wall time and the process's CPU time (all threads) of one call, and its result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-scorecam", action="store_true")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of ablation,scorecam,fullgrad,shapleycam (default: all)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of FullGrad and ShapleyCAM")
    ap.add_argument(
        "--arch", default="resnet50", help="torchvision ResNet name (layer4 is explained)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    known = ["ablation", "scorecam", "fullgrad", "shapleycam"]
    only = known if args.only is None else [o.strip() for o in args.only.split(",") if o.strip()]
    unknown = sorted(set(only) - set(known))
    if unknown:
        ap.error(f"unknown --only entries {unknown}; choose from {','.join(known)}")

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)().eval()
    with torch.no_grad():  # batch norms with random statistics: FullGrad's biases are not all zero
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    x = torch.rand(args.images, 3, 224, 224)
    target = 281
    print(
        f"# camlens {camlens.__version__} vs pytorch-grad-cam, {args.arch} (random weights) layer4, 224x224"
    )
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"{args.images} image(s), batch size {args.batch_size}\n"
    )
    rows = []

    def pgc_run(cls_name: str):  # type: ignore[no-untyped-def]
        layers = [] if cls_name == "FullGrad" else [model.layer4]
        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=layers)
        cam.batch_size = args.batch_size
        if cls_name == "ShapleyCAM":
            targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in top]
        else:
            targets = [ClassifierOutputTarget(target)] * len(x)
        try:
            return torch.from_numpy(cam(input_tensor=x, targets=targets))
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills every .grad

    with torch.no_grad():
        top = model(x).argmax(1)

    def softmax_target(out: torch.Tensor) -> torch.Tensor:
        return out.softmax(1).gather(1, top[:, None].to(out.device)).squeeze(1)

    # warm-up: one-time costs (fx tracing, allocator) on a tiny call of each
    small = torch.rand(1, 3, 64, 64)
    camlens.AblationCAM(model, layer="layer4", batch_size=args.batch_size)(small, target=target)

    methods = []
    if "ablation" in only:
        methods.append(("Ablation-CAM", "AblationCAM"))
    if "scorecam" in only and not args.skip_scorecam:
        methods.append(("Score-CAM", "ScoreCAM"))
    for label, cls_name in methods:
        ours_cam = getattr(camlens, cls_name)(model, layer="layer4", batch_size=args.batch_size)
        t_ours, ours = _time(lambda cam=ours_cam: cam(x, target=target).maps)
        t_pgc, theirs = _time(lambda name=cls_name: pgc_run(name))
        rows.append((label, t_ours / len(x), t_pgc / len(x), t_pgc / t_ours, _corr(ours, theirs)))
        print(
            f"  {label}: camlens {t_ours / len(x):.1f} s/image, pytorch-grad-cam {t_pgc / len(x):.1f} s/image",
            file=sys.stderr,
        )

    # FullGrad and ShapleyCAM: fast, so timed several times, the libraries taking turns
    cpu_rows: list[tuple[str, float, float, float]] = []
    quick = []
    if "fullgrad" in only:
        quick.append(("FullGrad", camlens.FullGrad(model), None, "FullGrad"))
    if "shapleycam" in only:
        quick.append(
            ("ShapleyCAM", camlens.ShapleyCAM(model, layer="layer4"), softmax_target, "ShapleyCAM")
        )
    for label, cam, tgt, cls_name in quick:
        with warnings.catch_warnings():  # the warm-up's map may be empty: no matter
            warnings.simplefilter("ignore")
            cam(small, target=tgt or target)
        ours_times, pgc_times, ours_cpu, pgc_cpu = [], [], [], []
        ours = theirs = None
        for _ in range(args.repeats):
            t, c, ours = _time_cpu(lambda cam=cam, tgt=tgt: cam(x, target=tgt or target).maps)
            ours_times.append(t)
            ours_cpu.append(c)
            t, c, theirs = _time_cpu(lambda name=cls_name: pgc_run(name))
            pgc_times.append(t)
            pgc_cpu.append(c)
            print(
                f"    {label}: camlens {ours_times[-1]:.3f} s ({ours_cpu[-1]:.3f} s CPU), "
                f"pytorch-grad-cam {t:.3f} s ({c:.3f} s CPU)",
                file=sys.stderr,
            )
        t_ours, t_pgc = statistics.median(ours_times), statistics.median(pgc_times)
        c_ours, c_pgc = statistics.median(ours_cpu), statistics.median(pgc_cpu)
        assert ours is not None and theirs is not None
        rows.append((label, t_ours / len(x), t_pgc / len(x), t_pgc / t_ours, _corr(ours, theirs)))
        cpu_rows.append((label, c_ours / len(x), c_pgc / len(x), c_pgc / c_ours))

    print("| method | camlens s/image | pytorch-grad-cam s/image | speed-up | map correlation |")
    print("|---|---:|---:|---:|---:|")
    for label, a, b, r, c in rows:
        print(f"| {label} | {a:.3f} | {b:.3f} | {r:.1f}x | {c:.3f} |")
    print()
    if cpu_rows:
        print(f"CPU time (medians of {args.repeats}):\n")
        print("| method | camlens CPU s/image | pytorch-grad-cam CPU s/image | ratio |")
        print("|---|---:|---:|---:|")
        for label, a, b, r in cpu_rows:
            print(f"| {label} | {a:.3f} | {b:.3f} | {r:.1f}x |")
        print()
    goals = {"Ablation-CAM": 10.0, "Score-CAM": 1.0, "FullGrad": 1.0, "ShapleyCAM": 1.0}
    for label, _a, _b, r, _c in rows:
        print(
            f"goal {label}: camlens at least {goals[label]:g}x pytorch-grad-cam's speed: "
            f"{'PASS' if r >= goals[label] else 'MISS'} ({r:.1f}x)"
        )


if __name__ == "__main__":
    main()
