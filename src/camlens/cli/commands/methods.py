"""``camlens methods``: one line per method (from the torch-free catalog, so it answers at once)."""

from __future__ import annotations

import argparse

from camlens.cli.commands import Command


def configure(p: argparse.ArgumentParser) -> None:
    """No arguments beyond the general ones."""


def run(args: argparse.Namespace) -> int:
    """Print ``name  description  (also: aliases)`` per method."""
    from camlens import _catalog

    width = max(len(m.name) for m in _catalog.CATALOG) + 2
    for m in _catalog.CATALOG:
        extra = f"  (also: {', '.join(m.aliases)})" if m.aliases else ""
        print(f"{m.name:<{width}}{_catalog.plain(m.summary)}{extra}")
    return 0


COMMAND = Command(
    name="methods",
    help="list the methods",
    description="List the available methods with their aliases.",
    configure=configure,
    run=run,
    order=30,
)
