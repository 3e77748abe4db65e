"""Ablation-CAM and Score-CAM: camlens against pytorch-grad-cam, side by side in one run.

Both libraries explain the same torchvision ResNet (``--arch``, default ResNet-50; random weights, seed 0, eval mode) at ``layer4``
on the same 224x224 image(s), for class 281, on the CPU:

* Ablation-CAM: pytorch-grad-cam re-runs the *whole* network for every batch of ablated channels;
  camlens re-runs only the head after the layer (split with torch.fx). Same batch size for both.
* Score-CAM: both must run the whole network once per channel (2048 masked inputs per image); camlens
  batches them under inference mode. Same batch size for both.

Each contender runs once per image after a warm-up on a small model (Score-CAM at 2048 channels takes
minutes per image on 2 cores, so repeats are costly; ``--images`` sets how many images are timed). The
maps are compared too (Pearson correlation of the normalised maps), since a fast wrong answer is no
answer. Run::

    python bench/bench_family.py [--images 1] [--batch-size 32] [--threads N] [--skip-scorecam]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-scorecam", action="store_true")
    ap.add_argument("--only", choices=["ablation", "scorecam"], default=None)
    ap.add_argument(
        "--arch", default="resnet50", help="torchvision ResNet name (layer4 is explained)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)().eval()
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
        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[model.layer4])
        cam.batch_size = args.batch_size
        try:
            return torch.from_numpy(
                cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x))
            )
        finally:
            cam.activations_and_grads.release()

    # warm-up: one-time costs (fx tracing, allocator) on a tiny call of each
    small = torch.rand(1, 3, 64, 64)
    camlens.AblationCAM(model, layer="layer4", batch_size=args.batch_size)(small, target=target)

    methods = []
    if args.only in (None, "ablation"):
        methods.append(("Ablation-CAM", "AblationCAM"))
    if args.only in (None, "scorecam") and not args.skip_scorecam:
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

    print("| method | camlens s/image | pytorch-grad-cam s/image | speed-up | map correlation |")
    print("|---|---:|---:|---:|---:|")
    for label, a, b, r, c in rows:
        print(f"| {label} | {a:.2f} | {b:.2f} | {r:.1f}x | {c:.3f} |")
    print()
    goals = {"Ablation-CAM": 10.0, "Score-CAM": 1.0}
    for label, _a, _b, r, _c in rows:
        print(
            f"goal {label}: camlens at least {goals[label]:g}x pytorch-grad-cam's speed: "
            f"{'PASS' if r >= goals[label] else 'MISS'} ({r:.1f}x)"
        )


if __name__ == "__main__":
    main()
