"""The commands: one module each, found by looking.

Every module here whose name does not start with ``_`` defines ``COMMAND = Command(...)``; the
command line lists them by ``order``. Adding a command is adding one file. Command modules import
only the standard library at module level (torch and friends inside ``run``), so that ``--help``,
``methods`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "commands"]


@dataclass(frozen=True)
class Command:
    """One ``camlens`` command.

    Attributes:
        name: the command's name (``"explain"``).
        help: one line for ``camlens --help``.
        description: the paragraph at the top of ``camlens NAME --help``.
        configure: adds the command's arguments to its parser.
        run: runs it on the parsed arguments; returns the exit status.
        order: position in ``camlens --help``.
        epilog: text after the options in ``camlens NAME --help`` (kept as written).
    """

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    order: int = 100
    epilog: str = ""


def commands() -> list[Command]:
    """Every command, in ``--help`` order."""
    found: list[Command] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cmd = getattr(module, "COMMAND", None)
        if not isinstance(cmd, Command):
            raise TypeError(f"{module.__name__} defines no COMMAND = Command(...)")
        found.append(cmd)
    return sorted(found, key=lambda c: (c.order, c.name))
