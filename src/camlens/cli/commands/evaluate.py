"""``camlens evaluate``: every method scored on the demo data set (pointing game, deletion, ...)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from camlens.cli.commands import Command
from camlens.cli.common import (
    add_model_args,
    load_model,
    method_names,
    positive_int,
    say,
    warn_random_weights,
)
from camlens.cli.errors import CLIError


def configure(p: argparse.ArgumentParser) -> None:
    """``--methods``, ``--n``, ``--seed``, ``--batch-size``, ``--out``, ``--force`` and the model."""
    add_model_args(p, preprocessing=False)
    p.add_argument(
        "--methods",
        default="all",
        metavar="NAMES",
        help="comma-separated methods or 'all' (default: all)",
    )
    p.add_argument(
        "--n", type=positive_int, default=500, help="number of images (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data set (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="images per batch (default: %(default)s)",
    )
    p.add_argument("--out", "-o", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--force", "-f", action="store_true", help="overwrite an existing --out file")


class _Bars:
    """One tqdm bar per stage of :func:`camlens.evaluate.run`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=total, desc=stage, file=sys.stderr, unit="img", leave=False
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    """Run :func:`camlens.evaluate.run` and print its table (and write JSON with ``--out``)."""
    from camlens import io

    names = method_names([args.methods], "all")
    out = Path(args.out) if args.out else None
    if out is not None:
        io.check_outputs([out], args.force)
    lm = load_model(args)
    warn_random_weights(lm)
    from camlens import evaluate
    from camlens.demo import CLASSES

    if lm.classes is not None and list(lm.classes) != list(CLASSES):
        raise CLIError(
            f"evaluate scores maps on the demo data set, whose classes are {', '.join(CLASSES)}; "
            f"{lm.spec} has {len(lm.classes)} other classes. Use --model demo (or weights trained "
            "on the demo classes)"
        )
    bars = _Bars(not getattr(args, "quiet", False) and sys.stderr.isatty())
    try:
        rep = evaluate.run(
            model=lm.model,
            methods=names,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=bars,
        )
    finally:
        bars.close()
    print(evaluate.main_table(rep))
    if out is not None:
        io.atomic_write_text(out, rep.to_json() + "\n")
        say(args, f"wrote {out}")
    return 0


COMMAND = Command(
    name="evaluate",
    help="score every method on the demo data set (pointing game, deletion, ...)",
    description="Score methods against the ground-truth masks of the demo data set: pointing game, "
    "energy pointing game, box accuracy, deletion and insertion AUC, average drop, time per image. "
    "The model must classify the demo classes (the default demo model, or weights trained on them).",
    configure=configure,
    run=run,
    order=50,
)
