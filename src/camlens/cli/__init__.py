"""The ``camlens`` command line: one module per command in :mod:`camlens.cli.commands`.

``main`` builds the parser from the commands found there, runs the chosen one and applies the error
policy of :mod:`camlens.cli.errors`: exit 0, 2 with one line for a user error, 1 for a bug, 130 with
one line when interrupted. Only the standard library is imported until a command needs more, so
``camlens --help``, ``camlens methods`` and argument errors return without importing torch.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from camlens.cli.commands import Command, commands
from camlens.cli.common import PROG, add_general_args, show_warning
from camlens.cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USER,
    CLIError,
    is_user_error,
    one_line,
    with_input_options,
)

__all__ = ["CLIError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_command(sub: argparse._SubParsersAction, cmd: Command) -> None:
    p = sub.add_parser(
        cmd.name,
        help=cmd.help,
        description=textwrap.fill(cmd.description, 90),
        epilog=cmd.epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter
        if cmd.epilog
        else argparse.HelpFormatter,
    )
    cmd.configure(p)
    add_general_args(p)
    p.set_defaults(command_obj=cmd, parser=p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``camlens`` command, with a sub-parser per command."""
    from camlens import __version__

    parser = _Parser(
        prog=PROG,
        description="Class activation maps (Grad-CAM and its family) for PyTorch image models.",
        epilog="Start with `camlens demo`; `camlens COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    add_general_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in commands():
        _add_command(sub, cmd)
    return parser


def _interrupted() -> int:
    print(
        f"{PROG}: interrupted; files already complete were kept and no partial file was left behind",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand's parser, whose --help lists its options
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USER
    cmd: Command | None = getattr(args, "command_obj", None)
    if cmd is None:
        parser.print_help()
        return 0
    old_show = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        return int(cmd.run(args))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        if is_user_error(exc):
            message = one_line(exc)
            if hasattr(args, "size"):  # the command has the options that set the model's input
                message = with_input_options(message)
            print(f"{PROG} {cmd.name}: error: {message}", file=sys.stderr, flush=True)
            return EXIT_USER
        print(
            f"{PROG} {cmd.name}: internal error: {type(exc).__name__}: {one_line(exc)} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = old_show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``camlens`` command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user error (one line on stderr), 1 for an internal
        error, 130 when interrupted (one line on stderr).
    """
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return _interrupted()
