"""Score-CAM against pytorch-grad-cam, and Recipro-CAM against one inference, side by side in one run.

**Score-CAM** (``--only scorecam``): a torchvision ResNet-18 (random weights, seed 0, eval mode) at
``layer4`` (512 channels) on 224x224 images, class 281, on the CPU, the same batch size for both
libraries. Each round runs every contender once, in turn (interleaved, so that the load of a shared
machine falls on all of them alike); the table gives the median over the rounds. Contenders:

* camlens ``ScoreCAM`` (default: masked inputs of all samples batched together, inference mode,
  capture paused, constant masks skipped, and an inference-optimised copy of the model: batch norms
  folded, oneDNN layouts, checked against the model on each call). Its first call, which builds that
  copy, is timed apart;
* camlens ``ScoreCAM(optimize=False)``: the model itself, channels-last inputs;
* pytorch-grad-cam ``ScoreCAM`` (``batch_size`` set as its docs say).

The maps must agree, through the one stated conversion. pytorch-grad-cam's weights are
``softmax_k(y^c(X * H_k))``; camlens's are the paper's ``w_k = y^c(X * H_k) - y^c(0)``. The softmax
ignores the ``- y^c(0)`` shift, so ``softmax(w_camlens) = w_pgc`` exactly when both score the same masked
inputs. Both libraries' masked scores are recorded, and the table reports the largest difference
between them, and between pytorch-grad-cam's map and ``normalize(ReLU(sum_k softmax(w_camlens)_k A^k))``.
pytorch-grad-cam builds its masks with ``nn.UpsamplingBilinear2d`` (``align_corners=True``), camlens
with ``align_corners=False`` (as when an image is resized). For identical masks, pytorch-grad-cam's
upsampler is replaced in these runs by the same interpolation with ``align_corners=False``. The
replacement costs the same, and the ``--stock-pgc`` flag leaves it out.

**Recipro-CAM** (``--only reciprocam``): ResNet-50 at ``layer4`` (7x7) on 224x224 images, against
plain inference of the same batch (``torch.no_grad``) and camlens Grad-CAM; median of interleaved
rounds after a warm-up of each. Goal: at most 3x one inference. Run::

    python bench/bench_perturbation.py [--only scorecam|reciprocam] [--rounds 3] [--images 1]
        [--batch-size 32] [--threads N] [--stock-pgc]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import camlens
from camlens import maps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
# isort: off
import tv_cpu_shim  # noqa: F401  (torchvision CPU import shim; a user's machine does not need it)
import torchvision

# isort: on


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _AlignedUpsample(torch.nn.Module):
    """pytorch-grad-cam's mask upsampler with camlens's interpolation (``align_corners=False``)."""

    def __init__(self, size: Any) -> None:
        super().__init__()
        self.size = size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=self.size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def _pgc_recording(aligned: bool) -> Iterator[list[torch.Tensor]]:
    """Record the channel scores pytorch-grad-cam feeds its softmax (and align its masks)."""
    seen: list[torch.Tensor] = []
    softmax_cls, upsample_cls = torch.nn.Softmax, torch.nn.UpsamplingBilinear2d

    class RecordingSoftmax(softmax_cls):  # type: ignore[misc,valid-type]
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t.detach().clone())
            return super().forward(t)

    torch.nn.Softmax = RecordingSoftmax  # type: ignore[misc]
    if aligned:
        torch.nn.UpsamplingBilinear2d = _AlignedUpsample  # type: ignore[misc,assignment]
    try:
        yield seen
    finally:
        torch.nn.Softmax = softmax_cls  # type: ignore[misc]
        torch.nn.UpsamplingBilinear2d = upsample_cls  # type: ignore[misc]


@contextlib.contextmanager
def _camlens_recording() -> Iterator[list[torch.Tensor]]:
    """Record camlens's masked scores (the input of maps.scorecam_weights)."""
    seen: list[torch.Tensor] = []
    original = maps.scorecam_weights

    def recording(masked: torch.Tensor, base: Any = 0.0) -> torch.Tensor:
        seen.append(masked.detach().clone())
        return original(masked, base)

    maps.scorecam_weights = recording  # type: ignore[assignment]
    try:
        yield seen
    finally:
        maps.scorecam_weights = original


def bench_scorecam(args: argparse.Namespace) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.rand(args.images, 3, 224, 224)
    target = 281

    def ours(optimize: bool) -> torch.Tensor:
        cam = camlens.ScoreCAM(model, layer="layer4", batch_size=args.batch_size, optimize=optimize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an all-zero map of a random net is not the point here
            res = cam(x, target=target)
        return res.maps

    def pgc() -> torch.Tensor:
        cam = pytorch_grad_cam.ScoreCAM(model=model, target_layers=[model.layer4])
        cam.batch_size = args.batch_size
        try:
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x))
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(out)

    first, _ = _timed(lambda: ours(True))  # builds the optimised copy
    print(f"  camlens first call (builds the optimised copy): {first:.1f} s", file=sys.stderr)
    times: dict[str, list[float]] = {"camlens": [], "camlens optimize=False": [], "pgc": []}
    for r in range(args.rounds):
        t, _ = _timed(lambda: ours(True))
        times["camlens"].append(t)
        t, _ = _timed(lambda: ours(False))
        times["camlens optimize=False"].append(t)
        with _pgc_recording(aligned=not args.stock_pgc) as pgc_scores:
            t, pgc_map = _timed(pgc)
        times["pgc"].append(t)
        print(
            f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
            file=sys.stderr,
        )
    # the maps, through the conversion: one more camlens call, recording its masked scores
    with _camlens_recording() as ours_scores:
        ours(True)
    with camlens.LayerCapture([("layer4", model.layer4)], grad=False) as cap, torch.no_grad():
        model(x)
    acts = cap.activations["layer4"].float()
    y_pgc = torch.cat(pgc_scores).reshape(len(x), -1)
    y_ours = ours_scores[0]
    y_ours = y_ours.mean(0) if y_ours.ndim == 3 else y_ours  # (steps, B, K): one step here
    score_diff = float((y_pgc - y_ours).abs().max() / y_pgc.abs().max())
    converted = maps.normalize(
        maps.upsample(maps.weighted_sum(acts, y_ours.softmax(dim=1)).clamp(min=0), (224, 224))
    )
    map_diff = float((converted - pgc_map).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n### Score-CAM, ResNet-18 `layer4` (512 channels), {len(x)} image(s) 224x224, batch size "
        f"{args.batch_size}, median of {args.rounds} interleaved rounds\n"
    )
    print("| contender | s / image | pytorch-grad-cam time / this |")
    print("|---|---:|---:|")
    for k in times:
        label = "pytorch-grad-cam `ScoreCAM`" if k == "pgc" else f"camlens `ScoreCAM` ({k})"
        print(f"| {label} | {med[k] / len(x):.2f} | {med['pgc'] / med[k]:.2f}x |")
    print(
        f"\ncamlens first call (builds the optimised copy, then runs): {first / len(x):.2f} s / image"
    )
    print(
        f"masked scores, camlens vs pytorch-grad-cam: max |diff| / max |score| = {score_diff:.1e}; "
        f"maps (pytorch-grad-cam's vs camlens's weights through its softmax): max |diff| = {map_diff:.1e}"
        + (" (stock upsampler: masks differ)" if args.stock_pgc else "")
    )
    ratio = med["pgc"] / med["camlens"]
    print(
        f"goal: camlens at least 1.5x faster than pytorch-grad-cam: "
        f"{'PASS' if ratio >= 1.5 else 'MISS'} ({ratio:.2f}x)"
    )


def bench_reciprocam(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.images, 3, 224, 224)

    def inference() -> None:
        with torch.no_grad():
            model(x)

    recipro = camlens.ReciproCAM(model, layer="layer4")
    gradcam = camlens.GradCAM(model, layer="layer4")
    runs: dict[str, Callable[[], Any]] = {
        "inference": inference,
        "reciprocam": lambda: recipro(x, target=281),
        "gradcam": lambda: gradcam(x, target=281),
    }
    for fn in runs.values():  # warm-up (fx trace of the head split, allocator)
        fn()
    split = recipro(x, target=281).details["split"]
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            times[k].append(_timed(fn)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n### Recipro-CAM, ResNet-50 `layer4` (7x7 positions, head split: {split}), {len(x)} image(s) "
        f"224x224, median of {args.rounds} interleaved rounds\n"
    )
    print("| contender | ms / call | time / inference |")
    print("|---|---:|---:|")
    for k, label in [
        ("inference", "plain inference (`no_grad`)"),
        ("reciprocam", "camlens `ReciproCAM`"),
        ("gradcam", "camlens `GradCAM`"),
    ]:
        print(f"| {label} | {1000 * med[k]:.0f} | {med[k] / med['inference']:.2f}x |")
    ratio = med["reciprocam"] / med["inference"]
    print(
        f"\ngoal: Recipro-CAM at most 3x one inference: {'PASS' if ratio <= 3 else 'MISS'} ({ratio:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", choices=["scorecam", "reciprocam"], default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--stock-pgc", action="store_true", help="keep pytorch-grad-cam's upsampler")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# camlens {camlens.__version__}: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} threads"
    )
    if args.only in (None, "reciprocam"):
        bench_reciprocam(args)
    if args.only in (None, "scorecam"):
        bench_scorecam(args)


if __name__ == "__main__":
    main()
