"""The command line's error policy: what is a user error, how it is printed, which exit status.

* 0: success.
* 2: a user error (bad input, an unknown name, a file that exists, weights that do not fit): one
  line on stderr that says what is wrong and what to do; ``--debug`` adds the traceback.
* 1: an internal error (a bug): one line asking for a report.
* 130: interrupted (Ctrl-C): one line; files are written atomically, so none is left half-written.

Nothing here imports torch: the model error class is looked up only if camlens's methods were
imported (a model error cannot happen before that).
"""

from __future__ import annotations

import sys

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USER",
    "CLIError",
    "PartialFailure",
    "is_user_error",
    "one_line",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130


class CLIError(ValueError):
    """A user error detected by the command line itself (printed as one line, exit status 2)."""


class PartialFailure(CLIError):
    """Some inputs failed while the others were explained and written (exit status 2)."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a ``KeyError``'s quotes removed)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text or type(exc).__name__


def with_input_options(message: str) -> str:
    """A model error's generic advice made concrete for a command with ``--size/--mean/--std``."""
    base = sys.modules.get("camlens.methods.base")
    generic = getattr(base, "MODEL_HINT", None)
    if generic and message.endswith(generic):
        return message[: -len(generic)] + INPUT_OPTIONS_HINT
    return message


#: The advice for a model that fails on its input, where the command sets it.
INPUT_OPTIONS_HINT = "check the input size and normalisation (--size, --mean and --std)"


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (exit 2) rather than a bug (exit 1)."""
    kinds: list[type[BaseException]] = [
        CLIError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
        LookupError,
    ]
    base = sys.modules.get("camlens.methods.base")
    model_error = getattr(base, "ModelError", None)
    if isinstance(model_error, type):
        kinds.append(model_error)
    return isinstance(exc, tuple(kinds))
