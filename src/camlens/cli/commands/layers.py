"""``camlens layers``: a model's layers and output shapes, built without downloading weights."""

from __future__ import annotations

import argparse

from camlens.cli.commands import Command
from camlens.cli.common import add_model_args, load_model


def configure(p: argparse.ArgumentParser) -> None:
    """The model arguments and ``--all``."""
    add_model_args(p, weights_default="none: the architecture alone, nothing is downloaded")
    p.add_argument(
        "--all", action="store_true", help="list every module, not only those with a spatial output"
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per layer; ``*`` marks the layer used when ``--layer`` is not given."""
    from camlens.layers import describe_layers
    from camlens.models import NO_WEIGHTS

    lm = load_model(args, weights=NO_WEIGHTS)  # shapes do not depend on the weights
    x = lm.dummy_input()
    infos = describe_layers(lm.model, x)
    rows = [
        ("*" if i.automatic else " ", i.name, i.kind, str(i.shape), i.layout or "")
        for i in infos
        if args.all or i.layout is not None or i.automatic
    ]
    scope = (
        "every module" if args.all else "layers whose output reads as a map; --all for every module"
    )
    print(f"Layers of {lm.spec} on a zero input of shape {tuple(x.shape)} ({scope}):")
    if rows:
        w1, w2, w3 = (max(len(r[k]) for r in rows) for k in (1, 2, 3))
        for mark, name, kind, shape, layout in rows:
            print(f"{mark} {name:<{w1}}  {kind:<{w2}}  {shape:<{w3}}  {layout}".rstrip())
    auto = next((i.name for i in infos if i.automatic), None)
    if auto is not None:
        print(f"automatic choice (*): {auto}, used when --layer is not given")
    else:
        print("no layer's output reads as a map; pass --layer NAME (see --all)")
    return 0


COMMAND = Command(
    name="layers",
    help="list a model's layers with their output shapes",
    description="Build the model (without downloading weights unless --weights is given), run it once "
    "on a zero input of its input size and list its layers with their output shapes; '*' marks the "
    "layer chosen when --layer is not given.",
    configure=configure,
    run=run,
    order=40,
)
