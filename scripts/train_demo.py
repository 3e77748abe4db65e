"""Train the bundled demo model and write ``src/camlens/demo/weights.pt``.

Held-out accuracy printed by the run that wrote the bundled weights:
``held-out accuracy (seed 12345, n=1000): 0.9990`` (per class: circle 0.994, all others 1.000),
after 12 epochs x 4,000 images, 740 s wall on 2 shared CPU cores (torch 2.13.0 CPU).

Usage::

    python scripts/train_demo.py    # about 5 min on an idle 2-core CPU, 10-13 min on a busy one

Every epoch trains on fresh images from :func:`camlens.demo.make_dataset` (no augmentation; the
generator never repeats an image), then the model is scored on a held-out set made with a
different seed. The main process trains with one torch thread while a second process generates
the next epoch's images, so both cores stay busy. Seeds, the thread count and
``torch.use_deterministic_algorithms(True)`` are fixed, so a rerun with the same arguments,
library versions and CPU type writes identical weights.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from camlens.demo import CLASSES, DemoNet, make_dataset  # noqa: E402
from camlens.demo.model import WEIGHTS_PATH  # noqa: E402

TRAIN_SEED_BASE = 1_000  # epoch k trains on make_dataset(..., seed=TRAIN_SEED_BASE + k)
HELDOUT_SEED = 12345
HELDOUT_N = 1000


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on images (N, 3, H, W) with labels (N,)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(images[start : start + batch])
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-epoch", type=int, default=4000, help="fresh images per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    start = time.perf_counter()
    model = DemoNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps_per_epoch = -(-args.per_epoch // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    held_x, held_y, _ = make_dataset(HELDOUT_N, seed=HELDOUT_SEED)

    # A second process generates the next epoch's images while this one trains.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = pool.submit(make_dataset, args.per_epoch, TRAIN_SEED_BASE)
        for epoch in range(args.epochs):
            images, labels, _ = pending.result()
            if epoch + 1 < args.epochs:
                pending = pool.submit(make_dataset, args.per_epoch, TRAIN_SEED_BASE + epoch + 1)
            images = images.contiguous(memory_format=torch.channels_last)
            model.train()
            total = 0.0
            for first in range(0, len(images), args.batch_size):
                x = images[first : first + args.batch_size]
                y = labels[first : first + args.batch_size]
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(x)
            acc = accuracy(model, held_x, held_y)
            print(
                f"epoch {epoch + 1}/{args.epochs}  loss {total / len(images):.4f}  "
                f"held-out acc {acc:.4f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    model = model.to(memory_format=torch.contiguous_format)
    acc = accuracy(model, held_x, held_y)
    state = {
        k: v.detach().to(torch.float32).contiguous()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    state.update({k: v for k, v in model.state_dict().items() if not v.is_floating_point()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    per_class = {
        name: accuracy(model, held_x[held_y == k], held_y[held_y == k])
        for k, name in enumerate(CLASSES)
    }
    print("per-class held-out acc: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()))
    print(
        f"held-out accuracy (seed {HELDOUT_SEED}, n={HELDOUT_N}): {acc:.4f}; "
        f"trained in {time.perf_counter() - start:.0f} s; wrote {args.out} "
        f"({args.out.stat().st_size / 1e6:.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
