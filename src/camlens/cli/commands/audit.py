"""``camlens audit``: explain every image of a data set and find the classes decided for the wrong reason.

The work is :func:`camlens.audit.audit`; this module only reads the arguments. Errors follow the command
line's policy (:mod:`camlens.cli.errors`): a user error (a missing data set, an unknown model, method
or layer, labels that do not fit the model, results of another configuration in ``--out``) is one
line on stderr and exit 2. An interruption keeps every finished batch and says how to resume (exit
130). Only the standard library is imported until the command runs.
"""

from __future__ import annotations

import argparse
import sys

from camlens.cli.commands import Command
from camlens.cli.common import add_model_args, method_names, preprocess_overrides
from camlens.cli.errors import EXIT_INTERRUPTED, CLIError

DEFAULT_OUT = "camlens-audit"

_EPILOG = """\
data:
  A folder with one subfolder per class (labels from the folder names, matched
  to the model's class names, else in sorted order), or a CSV/Parquet manifest
  with a path column and optional label (index or name), mask (a mask image
  path) and box ("x0,y0,x1,y1" in image pixels) columns.

outputs (in --out):
  results.parquet/  one row per image and method: label, pred, score, the raw
                    map at the layer's resolution, its statistics, mask/box
                    metrics, error (a folder of Parquet shards; read it with
                    pandas.read_parquet or pyarrow.parquet.read_table)
  summary.json      per class: count, accuracy, mean map, groups, findings
  report.html       findings with examples, per-class maps, distributions

  Running the same command again resumes: finished images are kept.

examples:
  camlens audit photos/ --model torchvision:resnet50 --weights rn50.pth
  camlens audit manifest.csv --model timm:vit_small_patch16_224 \\
      --methods gradcam,layercam --engine ray --workers 4
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``camlens audit``."""
    p.add_argument(
        "data", metavar="DATA", help="a folder of class folders, or a CSV/Parquet manifest"
    )
    add_model_args(p)
    g = p.add_argument_group("maps")
    g.add_argument(
        "--methods",
        default="gradcam",
        metavar="NAMES",
        help="comma-separated methods, or all (default: gradcam; see `camlens methods`)",
    )
    g.add_argument("--layer", "-l", metavar="NAME", help="layer to explain (default: automatic)")
    g.add_argument(
        "--target",
        choices=("label", "pred"),
        help="explain the true class (default when the data set has labels) or the predicted one",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        "-o",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="output folder (default: %(default)s/)",
    )
    g.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="where to run (default: local)"
    )
    g.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    g.add_argument(
        "--workers",
        type=int,
        help="decode threads (local, default 2) or model actors (ray, default 1)",
    )
    g.add_argument(
        "--ray-address", metavar="ADDR", help="join this Ray cluster (default: start one)"
    )
    g.add_argument(
        "--force",
        "-f",
        action="store_true",
        help="discard results of another configuration in --out",
    )
    g.add_argument("--no-report", action="store_true", help="do not write report.html")
    g.add_argument(
        "--max-per-class",
        type=int,
        default=1000,
        help="maps per class and method used for grouping and findings (default: 1000)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the audit; 0 also when some images could not be read (they are counted in the last line)."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(
            "camlens audit: interrupted; finished batches are kept: run the same command again to "
            "resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """The audit on parsed arguments; errors go to the command line's policy (exit 2, 1).

    The arguments are checked before torch is imported (by the audit's modules), so a mistake in
    them is answered at once.
    """
    from camlens.models import parse_spec

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.workers is not None and args.workers < (1 if args.engine == "ray" else 0):
        raise CLIError(
            f"--workers must be at least {1 if args.engine == 'ray' else 0}, not {args.workers}"
        )
    if args.max_per_class < 10:
        raise CLIError(f"--max-per-class must be at least 10, not {args.max_per_class}")
    if not args.methods.replace(",", "").strip():
        raise CLIError("--methods names no method; e.g. --methods gradcam (see `camlens methods`)")
    methods = tuple(method_names([args.methods], "gradcam"))  # an unknown name fails here
    size, mean, std = preprocess_overrides(args)
    parse_spec(args.model)  # an unknown model spec too

    from camlens.audit.batch import ExplainConfig
    from camlens.audit.runner import audit

    quiet = bool(getattr(args, "quiet", False))
    config = ExplainConfig(
        model=args.model,
        weights=args.weights,
        methods=methods,
        layer=args.layer,
        target=args.target or "label",
        device=args.device,
        size=size,
        mean=mean,
        std=std,
    )

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    res = audit(
        args.data,
        args.out,
        config,
        engine=args.engine,
        batch_size=args.batch_size,
        workers=args.workers,
        ray_address=args.ray_address,
        force=args.force,
        progress=not quiet,
        report=not args.no_report,
        max_per_class=args.max_per_class,
        say=say,
    )
    for f in res.summary["findings"]:
        say(
            f"finding: {f['class']} ({f['method']}): {f['kind'].replace('_', ' ')}, {100 * (f['share'] or 0):.0f}% of its images"
        )
    rate = res.new / res.seconds if res.seconds > 0 else 0.0
    resumed = f", {res.skipped} resumed" if res.skipped else ""
    report = "" if args.no_report else f"; report: {res.out / 'report.html'}"
    print(
        f"audited {res.images} images with {', '.join(res.summary['methods'])} "
        f"({res.new} new in {res.seconds:.1f} s, {rate:.1f} images/s{resumed}): "
        f"{res.errors} unreadable, {len(res.summary['findings'])} finding(s){report}",
        flush=True,
    )
    return 0


COMMAND = Command(
    name="audit",
    help="explain every image of a data set and find the classes decided for the wrong reason",
    description="Explain every image of a data set with one or more methods, measure every map, "
    "group the maps of each class by strategy and report the classes whose maps show a shortcut: a "
    "cue at a fixed place, focus outside the object (with masks or boxes), or a split into distinct "
    "strategies.",
    configure=configure,
    run=run,
    order=45,
    epilog=_EPILOG,
)
