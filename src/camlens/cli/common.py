"""What several commands share: argument groups and types, messages, progress, model loading.

Only the standard library is imported here; every helper that needs torch, Pillow or tqdm imports
it inside.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from camlens.cli.errors import CLIError, one_line

if TYPE_CHECKING:
    from camlens.models import LoadedModel

__all__ = [
    "PROG",
    "add_general_args",
    "add_model_args",
    "check_colormap",
    "device",
    "load_model",
    "method_names",
    "positive_int",
    "preprocess_overrides",
    "progress",
    "say",
    "show_warning",
    "summary_of",
    "unit_float",
    "warn",
    "warn_random_weights",
]

PROG = "camlens"


# --------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {text}")
    return value


# --------------------------------------------------------------------------- argument groups


def add_general_args(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug`` (accepted before or after the command)."""
    g = p.add_argument_group("general")
    g.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bar, no summary lines",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def _spec_help() -> str:
    from camlens.models.registry import model_sources

    forms = "; ".join(f"{s.syntax}: {s.summary}" for s in model_sources().values())
    return f"the model (default: demo). {forms}"


def add_model_args(
    p: argparse.ArgumentParser,
    preprocessing: bool = True,
    weights_default: str = "",
    several: bool = False,
) -> None:
    """``--model``, ``--weights``, ``--device`` and (with ``preprocessing``) ``--size/--mean/--std``.

    With ``several``, ``--model`` may be repeated (a list, ``None`` when not given; the first is the
    default) and ``--weights``, ``--size``, ``--mean`` and ``--std`` apply to one model only.
    """
    g = p.add_argument_group("model" + (" (fixed at start)" if several else ""))
    if several:
        g.add_argument(
            "--model",
            "-m",
            action="append",
            metavar="SPEC",
            help=_spec_help() + " (repeat for several; the first is the default)",
        )
    else:
        g.add_argument("--model", "-m", default="demo", metavar="SPEC", help=_spec_help())
    one = "; one --model only" if several else ""
    g.add_argument(
        "--weights",
        "-w",
        metavar="FILE|none",
        help="a local state dict to load, or 'none' for random weights (nothing is downloaded)"
        + (f"; default: {weights_default}" if weights_default else "")
        + one,
    )
    g.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    if preprocessing:
        g.add_argument(
            "--size", metavar="N|HxW", help="input size (default: the model's own)" + one
        )
        g.add_argument(
            "--mean", metavar="M|R,G,B", help="normalisation mean (default: the model's own)" + one
        )
        g.add_argument(
            "--std", metavar="S|R,G,B", help="normalisation std (default: the model's own)" + one
        )


# --------------------------------------------------------------------------- messages


def say(args: argparse.Namespace, text: str) -> None:
    """Print a line on stdout unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def warn(text: str) -> None:
    """One ``camlens: warning: ...`` line on stderr (above an active progress bar)."""
    line = f"{PROG}: warning: {' '.join(text.split())}"
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is not None:
        tqdm_mod.tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the command line: one line, no source location."""
    warn(str(message))


@contextmanager
def progress(
    total: int, desc: str, enabled: bool, unit: str = "img"
) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr when enabled, stderr is a terminal and tqdm is installed (a bar in a log
    file or a pipe is noise); yields ``update(n)``."""
    bar = None
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(
                total=total, desc=desc, file=sys.stderr, unit=unit, leave=False, dynamic_ncols=True
            )
        except ImportError:
            bar = None
    try:
        yield (bar.update if bar is not None else (lambda n: None))
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- methods and models


def method_names(values: Sequence[str] | None, default: str) -> list[str]:
    """``--method`` values (repeatable, comma-separated, ``all``) -> registry names, in order.

    Uses the torch-free catalog, so an unknown name fails before torch is imported.
    """
    from camlens import _catalog

    items = [p.strip() for v in (values or [default]) for p in v.split(",") if p.strip()]
    if not items:
        raise CLIError("no method given; pass --method NAME (see `camlens methods`)")
    names: list[str] = []
    for item in items:
        if item.lower() == "all":
            names.extend(_catalog.names())
            continue
        try:
            names.append(_catalog.lookup(item).name)
        except ValueError as exc:
            raise CLIError(f"{one_line(exc)} (see `camlens methods`)") from exc
    return list(dict.fromkeys(names))


def check_colormap(name: str) -> None:
    """``--colormap``: a matplotlib colour map name (checked with matplotlib alone, not torch)."""
    import difflib

    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError('overlays need matplotlib: pip install "camlens[cli]"') from exc
    if name in matplotlib.colormaps:
        return
    close = difflib.get_close_matches(name, sorted(matplotlib.colormaps), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CLIError(
        f"--colormap {name!r} is not a matplotlib colour map{hint} (e.g. jet, turbo, viridis, inferno)"
    )


def summary_of(name: str) -> str:
    """A method's one-line description."""
    from camlens import _catalog

    return _catalog.plain(_catalog.lookup(name).summary)


def device(text: str) -> str:
    """``--device``: ``auto`` -> cuda if available, else cpu; checked (:func:`camlens.models.resolve_device`)."""
    from camlens.models import resolve_device

    try:
        return resolve_device(text)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def preprocess_overrides(
    args: argparse.Namespace,
) -> tuple[tuple[int, int] | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """``(size, mean, std)`` of ``--size/--mean/--std`` (``None`` where not given), without torch."""
    from camlens.models.preprocess import parse_mean_std, parse_size

    size = getattr(args, "size", None)
    mean = getattr(args, "mean", None)
    std = getattr(args, "std", None)
    return (
        parse_size(size) if size else None,
        parse_mean_std(mean, "mean") if mean else None,
        parse_mean_std(std, "std") if std else None,
    )


def load_model(
    args: argparse.Namespace, weights: str | None = None, spec: str | None = None
) -> LoadedModel:
    """The model of ``--model``/``--weights``/``--device`` and the ``--size/--mean/--std`` overrides.

    Args:
        args: the parsed arguments.
        weights: the weights when ``--weights`` is not given.
        spec: the model spec (default: ``--model``; one of them when ``--model`` is repeated).
    """
    from camlens.models import load_model as load
    from camlens.models import parse_spec

    spec = spec if spec is not None else args.model
    parse_spec(spec)  # an unknown spec fails before torch is imported (for --device)
    chosen = args.weights if args.weights is not None else weights
    dev = device(args.device)  # checked before the overrides
    size, mean, std = preprocess_overrides(args)
    return load(spec, chosen, device=dev, size=size, mean=mean, std=std)


def warn_random_weights(lm: LoadedModel) -> None:
    """One line when the model runs with random weights (``--weights none``)."""
    if lm.weights.startswith("random"):
        warn(
            f"{lm.spec} has random weights (--weights none): its maps show an untrained model; "
            "pass --weights FILE or leave --weights out for the pretrained ones"
        )
