"""Start-up time of the command line, against the interpreter's own.

    python bench/bench_startup.py [--repeats 15]

Runs each command line ``--repeats`` times in a fresh interpreter (after one warm-up run each, so
the files are in the page cache) and prints the median wall time and its ratio to ``python -c
pass``. The source tree's ``src`` is put first on ``PYTHONPATH`` (and nothing else, so that no
``sitecustomize`` imports torch), so the numbers are those of this checkout.

Goal (issue 10): ``camlens --help``, ``camlens methods`` and an argument error under 0.3 s where
``python -c pass`` takes 0.03 s, i.e. about 10x the bare interpreter; importing torch alone takes
seconds, which is why the command line imports it only when a command needs a model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("camlens --help", ["-m", "camlens", "--help"]),
    ("camlens methods", ["-m", "camlens", "methods"]),
    (
        "camlens explain x.png --alpha 3 (argument error)",
        ["-m", "camlens", "explain", "x.png", "--alpha", "3"],
    ),
    ("camlens explain missing.png (user error)", ["-m", "camlens", "explain", "missing.png"]),
    ("python -c 'import torch' (for scale)", ["-c", "import torch"]),
]


def _time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - t0


def main() -> None:
    """Print one row per command: median seconds and the ratio to ``python -c pass``."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    medians: dict[str, float] = {}
    for name, argv in CASES:
        _time(argv, env)  # warm-up
        repeats = max(3, args.repeats // 3) if "torch" in name else args.repeats
        medians[name] = statistics.median(_time(argv, env) for _ in range(repeats))
    base = medians["python -c pass"]
    width = max(len(n) for n in medians)
    print(f"{'command':<{width}}  {'median s':>9}  {'x python -c pass':>17}")
    for name, t in medians.items():
        print(f"{name:<{width}}  {t:9.3f}  {t / base:16.1f}x")


if __name__ == "__main__":
    main()
