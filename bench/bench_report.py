"""Size of ``camlens explain --report`` per image and map, as the numbers of images and maps grow.

    python bench/bench_report.py [--images 5 10 20] [--out /tmp/camlens-bench-report]

Runs the real command line (in this process) on scikit-image's photos (chelsea, coffee, astronaut,
rocket, camera, and their mirror images for more) with ``torchvision:resnet18 --weights none``
(random weights: the size of a JPEG thumbnail hardly depends on the map), for one map per image and
for three methods x top-2 (six maps per image), and prints the report's size in total and per image
and map. Issue 10's budget: under 150 KB per image and map at the default settings, growing about
linearly.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
# isort: off
import tv_cpu_shim  # noqa: F401  (torchvision CPU import shim; a user's machine does not need it)

# isort: on
from PIL import Image
from skimage import data

from camlens.cli import main as camlens_main


def _photos(folder: Path, n: int) -> None:
    grey = np.repeat(data.camera()[..., None], 3, axis=2)
    base = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), grey]
    folder.mkdir(parents=True)
    for i in range(n):
        img = base[i % len(base)]
        if (i // len(base)) % 2:
            img = np.ascontiguousarray(img[:, ::-1])
        Image.fromarray(img).save(folder / f"photo{i:03d}.jpg", quality=90)


def main() -> None:
    """Print one row per (images, maps per image): total bytes and bytes per image and map."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--out", type=Path, default=Path("/tmp/camlens-bench-report"))
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    settings = [("gradcam", None, 1), ("gradcam,layercam,eigencam", "top-2", 6)]
    print(f"{'images':>6}  {'maps/image':>10}  {'report KB':>10}  {'KB per image-map':>17}")
    for n in args.images:
        photos = args.out / f"photos{n}"
        _photos(photos, n)
        for methods, target, maps in settings:
            run = args.out / f"run{n}-{maps}"
            argv = [
                "explain",
                str(photos),
                "--model",
                "torchvision:resnet18",
                "--weights",
                "none",
                "--method",
                methods,
                "--out",
                str(run),
                "--report",
                str(run / "report.html"),
                "--overlay-size",
                "256",
                "-q",
            ]
            if target:
                argv += ["--target", target]
            if camlens_main(argv) != 0:
                raise SystemExit(f"camlens {' '.join(argv)} failed")
            size = (run / "report.html").stat().st_size
            print(f"{n:>6}  {maps:>10}  {size / 1000:>10.0f}  {size / 1000 / (n * maps):>17.1f}")


if __name__ == "__main__":
    main()
