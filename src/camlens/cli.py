"""The ``camlens`` command line: ``demo``, ``explain``, ``methods``, ``layers`` and ``evaluate``.

Every user error (a missing file, an unknown method, layer or model, a class out of range, weights that
do not fit, an output that exists) ends the run with exit status 2 and one line on stderr that says what
is wrong and what to do; ``--debug`` adds the traceback. Nothing is written before every check that can
be made up front has passed, and every file is written under a temporary name and renamed into place.

Only the standard library is imported at start-up; torch, Pillow, matplotlib, tqdm and the model
libraries are imported by the commands that need them.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import torch

    from camlens.methods import BaseCAM
    from camlens.models import LoadedModel
    from camlens.result import CAMResult

__all__ = ["CLIError", "build_parser", "main"]

PROG = "camlens"
DEFAULT_EXPLAIN_OUT = "camlens-out"
DEFAULT_DEMO_OUT = "camlens-demo"


class CLIError(Exception):
    """A user error detected by the command line itself (printed as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# --------------------------------------------------------------------------- parser

_SPEC_HELP = (
    "the model: demo (the bundled demo model, default), torchvision:NAME, timm:NAME, hf:NAME "
    "(a Hugging Face id or folder), torchscript:FILE, or module:callable (an importable module or a "
    ".py file, and a function returning an nn.Module)"
)

_EXPLAIN_EPILOG = """\
outputs:
  One file per image and method in --out (default: camlens-out/), named
  <stem>.<method>.png (an overlay of the map on the image as the model sees it,
  i.e. resized and cropped), or <stem>.<method>.npy (the map as float32 in [0, 1],
  (H, W), or (C, H, W) for methods whose maps have the input's channels).
  With --target top-K there is one file per class rank:
  <stem>.<method>.top<R>-<class>.png. Existing files are not overwritten
  without --force; this is checked before anything is computed.

pre-processing:
  torchvision and timm models use their weights' own transforms, hf models
  their image processor, the demo model its own size. Other models use their
  input_size / mean / std attributes if present, else 224x224 and the
  ImageNet mean and std. --size, --mean and --std override all of these.

weights:
  torchvision, timm and hf pretrained weights are downloaded by those
  libraries on first use (cached). Offline, pass a local state dict
  (torch.save(model.state_dict(), FILE)) with --weights FILE.

examples:
  camlens explain photo.jpg
  camlens explain imgs/ --model torchvision:resnet50 --weights rn50.pth \\
      --method gradcam,gradcam++ --target top-3 --report report.html
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bar, no summary",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def _model_args(p: argparse.ArgumentParser, preprocessing: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default="demo", metavar="SPEC", help=_SPEC_HELP)
    g.add_argument(
        "--weights", "-w", metavar="FILE", help="a local state dict to load into the model"
    )
    g.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    if preprocessing:
        g.add_argument("--size", metavar="N|HxW", help="input size (default: the model's own)")
        g.add_argument(
            "--mean", metavar="M|R,G,B", help="normalisation mean (default: the model's own)"
        )
        g.add_argument(
            "--std", metavar="S|R,G,B", help="normalisation std (default: the model's own)"
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``camlens`` command."""
    try:
        from importlib.metadata import version

        __version__ = version("camlens")
    except Exception:  # not installed (run from a source tree)
        __version__ = "unknown"
    parser = _Parser(
        prog=PROG,
        description="Class activation maps (Grad-CAM and its family) for PyTorch image models.",
        epilog="Start with `camlens demo`; `camlens COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="explain sample images with every method and write an HTML report",
        description="Generate sample images of the bundled demo data set, explain them with every method "
        "(the predicted class), and write the overlays and a self-contained report.html that shows each "
        "map with the predicted and true class and how much of the map falls on the true object.",
    )
    demo.add_argument(
        "--out",
        "-o",
        default=DEFAULT_DEMO_OUT,
        metavar="DIR",
        help="output folder (default: %(default)s/)",
    )
    demo.add_argument("--n", type=int, default=6, help="number of images (default: %(default)s)")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the sample images (default: %(default)s)"
    )
    demo.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="methods to run (repeatable or comma-separated; default: all)",
    )
    demo.add_argument(
        "--weights", "-w", metavar="FILE", help="demo model weights (default: the bundled ones)"
    )
    demo.add_argument(
        "--device", default="auto", help="cpu, cuda, ... (default: cuda if available)"
    )
    demo.add_argument("--force", "-f", action="store_true", help="overwrite existing outputs")
    _common(demo)
    demo.set_defaults(func=cmd_demo, parser=demo)

    ex = sub.add_parser(
        "explain",
        help="write a class activation map overlay for each image and method",
        description="Explain images (files or folders) with one or more methods.",
        epilog=_EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    _model_args(ex)
    g = ex.add_argument_group("maps")
    g.add_argument(
        "--layer",
        "-l",
        metavar="NAME",
        help="layer to explain (default: the last spatial layer; see `camlens layers`)",
    )
    g.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="method (repeatable or comma-separated; 'all' for every one; default: gradcam; see `camlens methods`)",
    )
    g.add_argument(
        "--target",
        "-t",
        metavar="C|top-K",
        help="class to explain: an index or a class name, or top-K for one map per class rank (default: the top class)",
    )
    g.add_argument(
        "--batch-size", type=int, default=8, help="images per batch (default: %(default)s)"
    )
    g = ex.add_argument_group("output")
    g.add_argument(
        "--out",
        "-o",
        default=DEFAULT_EXPLAIN_OUT,
        metavar="DIR",
        help="output folder (default: %(default)s/)",
    )
    g.add_argument(
        "--format",
        choices=("png", "npy"),
        default="png",
        help="overlay image or map array (default: png)",
    )
    g.add_argument("--report", metavar="FILE", help="also write a self-contained HTML report")
    g.add_argument(
        "--colormap", default="jet", help="matplotlib colour map of the overlays (default: jet)"
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the heat map in the overlay (default: 0.5)",
    )
    g.add_argument("--force", "-f", action="store_true", help="overwrite existing outputs")
    _common(ex)
    ex.set_defaults(func=cmd_explain, parser=ex)

    me = sub.add_parser(
        "methods", help="list the methods", description="List the available methods."
    )
    _common(me)
    me.set_defaults(func=cmd_methods, parser=me)

    la = sub.add_parser(
        "layers",
        help="list a model's layers with their output shapes",
        description="Run the model once on a zero input of its input size and list its layers with their "
        "output shapes; '*' marks the layer chosen when --layer is not given.",
    )
    _model_args(la)
    la.add_argument(
        "--all", action="store_true", help="list every module, not only those with a spatial output"
    )
    _common(la)
    la.set_defaults(func=cmd_layers, parser=la)

    ev = sub.add_parser(
        "evaluate",
        help="score every method on the demo data set (pointing game, deletion, ...)",
        description="Score methods against the ground-truth masks of the demo data set: pointing game, "
        "energy pointing game, box accuracy, deletion and insertion AUC, average drop, time per image. "
        "The model must classify the demo classes (the default demo model, or weights trained on them).",
    )
    _model_args(ev, preprocessing=False)
    ev.add_argument(
        "--methods",
        default="all",
        metavar="NAMES",
        help="comma-separated methods or 'all' (default: all)",
    )
    ev.add_argument("--n", type=int, default=500, help="number of images (default: %(default)s)")
    ev.add_argument(
        "--seed", type=int, default=0, help="seed of the data set (default: %(default)s)"
    )
    ev.add_argument(
        "--batch-size", type=int, default=32, help="images per batch (default: %(default)s)"
    )
    ev.add_argument("--out", "-o", metavar="FILE", help="also write the results as JSON to FILE")
    ev.add_argument("--force", "-f", action="store_true", help="overwrite an existing --out file")
    _common(ev)
    ev.set_defaults(func=cmd_evaluate, parser=ev)
    return parser


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text or type(exc).__name__


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = f"{PROG}: warning: {' '.join(str(message).split())}"
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is not None:  # print above an active progress bar, not through it
        tqdm_mod.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


@contextmanager
def _progress(
    total: int, desc: str, enabled: bool, unit: str = "img"
) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr (when enabled and tqdm is installed); yields ``update(n)``."""
    bar = None
    if enabled:
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


def _device(text: str) -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise CLIError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(
            f"--device {text!r}: CUDA is not available on this machine; use --device cpu"
        )
    return str(dev)


def _method_names(values: Sequence[str] | None, default: str) -> list[str]:
    from camlens.methods import METHODS, get_method

    items = [p.strip() for v in (values or [default]) for p in v.split(",") if p.strip()]
    if not items:
        raise CLIError("no method given; pass --method NAME (see `camlens methods`)")
    names: list[str] = []
    for item in items:
        if item.lower() == "all":
            names.extend(METHODS)
            continue
        try:
            names.append(get_method(item).name)
        except ValueError as exc:
            raise CLIError(f"{_one_line(exc)} (see `camlens methods`)") from exc
    return list(dict.fromkeys(names))


def _build_method(name: str, model: Any, layer: str | None) -> BaseCAM:
    from camlens.methods import METHODS

    cls = METHODS[name]
    if getattr(cls, "takes_layer", True):
        return cls(model, layer=layer)
    return cls(model)


def _description(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.split(",")[0].strip().lower()).strip("-")
    return s[:40] or "class"


def _preprocess_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from camlens.models import parse_mean_std, parse_size

    return {
        "size": parse_size(args.size) if getattr(args, "size", None) else None,
        "mean": parse_mean_std(args.mean, "mean") if getattr(args, "mean", None) else None,
        "std": parse_mean_std(args.std, "std") if getattr(args, "std", None) else None,
    }


def _load(args: argparse.Namespace, spec: str | None = None) -> LoadedModel:
    from camlens.models import load_model

    return load_model(
        spec or args.model,
        args.weights,
        device=_device(args.device),
        **_preprocess_overrides(args),
    )


def _logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    import torch

    from camlens.methods import ModelError
    from camlens.targets import select_output

    try:
        with torch.no_grad():
            return select_output(model(x)).float()
    except ValueError:
        raise
    except Exception as exc:
        raise ModelError(
            f"the model failed on an input of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{_one_line(exc)[:200]}); check --size, --mean and --std"
        ) from exc


def _render_map(view: torch.Tensor, cam_map: torch.Tensor, colormap: str, alpha: float) -> Any:
    """An overlay of a ``(H, W)`` map on the image the model saw."""
    from camlens import viz

    return viz.overlay(view, cam_map, colormap=colormap, alpha=alpha)


def _save_png(path: Path, image: Any) -> None:
    from camlens import viz
    from camlens.io import atomic_write_bytes

    atomic_write_bytes(path, viz.to_png_bytes(image))


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    from camlens.io import atomic_write

    atomic_write(path, lambda f: np.save(f, np.asarray(array, dtype=np.float32)))


@dataclass
class _Target:
    """A parsed ``--target``: ``None`` (top class), a class index, or ``top-K``."""

    index: int | None = None
    top_k: int | None = None

    @property
    def spec(self) -> int | str | None:
        return f"top-{self.top_k}" if self.top_k is not None else self.index


def _parse_target(text: str | None, lm: LoadedModel) -> _Target:
    if text is None:
        return _Target()
    t = text.strip()
    m = re.fullmatch(r"top-?(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if k < 1:
            raise CLIError(f"--target {text!r}: K must be at least 1")
        if lm.classes is not None and k > len(lm.classes):
            raise CLIError(
                f"--target {text!r}: the model has only {len(lm.classes)} classes (use top-1 to top-{len(lm.classes)})"
            )
        return _Target(top_k=k)
    try:
        idx = int(t)
    except ValueError:
        found = lm.class_index(t)
        if found is None:
            hint = ""
            if lm.classes is not None:
                import difflib

                close = difflib.get_close_matches(t, [str(c) for c in lm.classes], n=3, cutoff=0.5)
                hint = f"; closest class names: {', '.join(close)}" if close else ""
            raise CLIError(
                f"--target {text!r} is not a class index, a class name of the model or top-K{hint}"
            ) from None
        return _Target(index=found)
    if lm.classes is not None and not 0 <= idx < len(lm.classes):
        raise CLIError(
            f"--target {idx} is out of range: the model has {len(lm.classes)} classes (use 0 to {len(lm.classes) - 1})"
        )
    if idx < 0:
        raise CLIError(f"--target {idx} is negative; class indices start at 0")
    return _Target(index=idx)


def _run_method(
    cam: BaseCAM, x: torch.Tensor, target: _Target, logits: torch.Tensor
) -> list[CAMResult]:
    """One result per class rank (``top-K``) or a single result."""
    if target.top_k is None:
        return [cam(x, target=target.index)]
    return cam.for_targets(x, f"top-{target.top_k}")


# --------------------------------------------------------------------------- methods


def cmd_methods(args: argparse.Namespace) -> int:
    """``camlens methods``: one line per method."""
    from camlens.methods import METHODS

    width = max((len(n) for n in METHODS), default=8) + 2
    for name, cls in METHODS.items():
        aliases = [a for a in getattr(cls, "aliases", ()) if a != name]
        extra = f"  (also: {', '.join(aliases)})" if aliases else ""
        print(f"{name:<{width}}{_description(cls)}{extra}")
    return 0


# --------------------------------------------------------------------------- layers


def _layer_shapes(model: Any, x: torch.Tensor) -> dict[str, tuple[int, ...] | str]:
    import torch

    from camlens.methods import ModelError

    shapes: dict[str, tuple[int, ...] | str] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            t = out if isinstance(out, torch.Tensor) else None
            if (
                t is None
                and isinstance(out, tuple | list)
                and out
                and isinstance(out[0], torch.Tensor)
            ):
                t = out[0]
            shapes[name] = tuple(t.shape) if t is not None else type(out).__name__

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise ModelError(
            f"the model failed on a zero input of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{_one_line(exc)[:200]}); pass its input size with --size"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return shapes


def _layout(shape: tuple[int, ...] | str, x: torch.Tensor, model: Any, name: str) -> str | None:
    """How a layer's output reads as a map (``spatial``, ``channels_last``, ``tokens``), or ``None``."""
    if not isinstance(shape, tuple):
        return None
    try:
        from camlens.reshape import infer_layout
    except ImportError:  # pragma: no cover - an older camlens without layouts
        spatial = len(shape) == x.ndim and math.prod(shape[2:]) > 1
        return "spatial" if spatial else None
    try:
        layout = infer_layout(shape, tuple(x.shape), model=model, name=name)
    except Exception:
        return None
    kind = str(layout.kind)
    positions = (
        shape[1:-1] if kind == "channels_last" else shape[2:] if kind == "spatial" else shape[1:2]
    )
    return kind if math.prod(positions) > 1 else None


def cmd_layers(args: argparse.Namespace) -> int:
    """``camlens layers``: the model's layers with output shapes; ``*`` marks the automatic choice."""
    from camlens import capture

    lm = _load(args)
    x = lm.dummy_input()
    shapes = _layer_shapes(lm.model, x)
    find = getattr(capture, "find_default_layer", capture.find_last_spatial_layer)
    try:
        auto: str | None = find(lm.model, x)
    except ValueError:
        auto = None
    rows = []
    for name, module in lm.model.named_modules():
        if name not in shapes:
            continue
        shape = shapes[name]
        layout = _layout(shape, x, lm.model, name)
        if layout is None and not args.all and name != auto:
            continue
        kind = getattr(module, "original_name", None) or type(module).__name__
        rows.append(("*" if name == auto else " ", name, str(kind), str(shape), layout or ""))
    scope = (
        "every module" if args.all else "layers whose output reads as a map; --all for every module"
    )
    print(f"Layers of {lm.spec} on a zero input of shape {tuple(x.shape)} ({scope}):")
    if rows:
        w1 = max(len(r[1]) for r in rows)
        w2 = max(len(r[2]) for r in rows)
        w3 = max(len(r[3]) for r in rows)
        for mark, name, kind, shape, layout in rows:
            print(f"{mark} {name:<{w1}}  {kind:<{w2}}  {shape:<{w3}}  {layout}".rstrip())
    if auto is not None:
        print(f"automatic choice (*): {auto}, used when --layer is not given")
    else:
        print("no layer's output reads as a map; pass --layer NAME (see --all)")
    return 0


# --------------------------------------------------------------------------- explain


def _plan_explain(
    images: list[Path], names: list[str], target: _Target, out: Path, fmt: str
) -> tuple[dict[Path, str], list[Path], list[Path]]:
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise CLIError(
                f"two inputs would write the same outputs ({stems[p.stem]} and {p}, stem {p.stem!r}); "
                "rename one or explain them in separate runs with different --out"
            )
        stems[p.stem] = p
    files: list[Path] = []
    patterns: list[Path] = []
    for p in images:
        for m in names:
            if target.top_k is None:
                files.append(out / f"{p.stem}.{m}.{fmt}")
            else:
                patterns += [
                    out / f"{p.stem}.{m}.top{r}-*.{fmt}" for r in range(1, target.top_k + 1)
                ]
    return {p: p.stem for p in images}, files, patterns


def cmd_explain(args: argparse.Namespace) -> int:
    """``camlens explain``: one overlay (or map array) per image and method."""
    import torch

    from camlens import io, viz
    from camlens.report import Cell, Column, Row, SummaryRow, render

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, not {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1], not {args.alpha}")
    viz._get_cmap(args.colormap)  # an unknown colour map fails here, before any work
    names = _method_names(args.method, "gradcam")
    images = io.find_images(args.paths)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file, not a folder; choose a folder")
    report = Path(args.report) if args.report else None
    for p in images:
        io.probe_image(p)
    lm = _load(args)
    target = _parse_target(args.target, lm)
    stems, files, patterns = _plan_explain(images, names, target, out, args.format)
    io.check_outputs([*files, *([report] if report else [])], args.force, patterns)
    cams = {m: _build_method(m, lm.model, args.layer) for m in names}

    quiet = getattr(args, "quiet", False)
    ranks = list(range(1, (target.top_k or 1) + 1))
    columns = [
        Column(
            f"{m}:{r}", m if target.top_k is None else f"{m} · top-{r}", _description(type(cams[m]))
        )
        for m in names
        for r in ranks
    ]
    rows: list[Row] = []
    seconds = dict.fromkeys(names, 0.0)
    layers: dict[str, str] = {}
    written = 0
    with _progress(len(images), "explain", enabled=not quiet and len(images) > 1) as update:
        for start in range(0, len(images), args.batch_size):
            batch = images[start : start + args.batch_size]
            views = torch.stack([lm.preprocess.view(io.load_image(p)) for p in batch])
            x = lm.preprocess.normalize(views).to(lm.device)
            logits = _logits(lm.model, x)
            # every method of the batch first: a method that fails writes nothing of the batch
            results: dict[str, list[CAMResult]] = {}
            for m in names:
                t0 = time.perf_counter()
                results[m] = _run_method(cams[m], x, target, logits)
                seconds[m] += time.perf_counter() - t0
                layers[m] = results[m][0].layer
            cells: list[list[Cell | None]] = [[] for _ in batch]
            for m in names:
                for rank, res in zip(ranks, results[m], strict=True):
                    maps = res.maps.detach().float().cpu()
                    for i, p in enumerate(batch):
                        cls = int(res.targets[i]) if res.targets is not None else None
                        what = lm.class_name(cls) if cls is not None else "map"
                        suffix = f".top{rank}-{_slug(what)}" if target.top_k is not None else ""
                        path = out / f"{stems[p]}.{m}{suffix}.{args.format}"
                        overlay = None
                        if args.format == "png" or report is not None:
                            overlay = _render_map(views[i], maps[i], args.colormap, args.alpha)
                        if args.format == "npy":
                            _save_npy(path, maps[i].numpy())
                        else:
                            _save_png(path, overlay)
                        written += 1
                        if report is not None:
                            tip = f"{m} on {p.name}: {what}"
                            cells[i].append(Cell(overlay, caption=f"explains {what}", tooltip=tip))
            if report is not None:
                probs = logits.softmax(1).cpu() if logits.ndim == 2 else None
                for i, p in enumerate(batch):
                    pred = prob = None
                    if probs is not None:
                        k = int(probs[i].argmax())
                        pred, prob = lm.class_name(k), float(probs[i, k])
                    rows.append(Row(p.name, views[i], cells[i], predicted=pred, probability=prob))
            update(len(batch))

    if report is not None:
        from camlens.methods import METHODS

        summary = [
            SummaryRow(
                m,
                layers.get(m, ""),
                None,
                1000 * seconds[m] / len(images),
                _description(METHODS[m]),
            )
            for m in names
        ]
        h, w = lm.preprocess.size
        html = render(
            "camlens report",
            columns,
            rows,
            summary,
            subtitle=[
                f"Model {lm.spec} (weights: {lm.weights}) on {lm.device}; input {h}x{w}: {lm.preprocess.describe()}.",
                "Maps explain "
                + ("the top class" if target.spec is None else f"target {target.spec}")
                + ".",
            ],
            notes=[
                "Overlays show each map blended on the image as the model sees it (resized and cropped)."
            ],
        )
        io.atomic_write_text(report, html)
    _say(
        args, f"wrote {written} file(s) to {out}/" + (f" and the report {report}" if report else "")
    )
    return 0


# --------------------------------------------------------------------------- demo


def _demo_maps(
    names: list[str], model: Any, x: torch.Tensor, masks: torch.Tensor, quiet: bool
) -> dict[str, dict[str, Any]]:
    """Run each method on the demo batch: its maps, time, layer and energy on the object per image.

    A method that fails is recorded with its error (and a warning) instead of ending the demo.
    """
    from camlens.maps import upsample
    from camlens.report import energy_inside

    per_method: dict[str, dict[str, Any]] = {}
    with _progress(len(names), "methods", enabled=not quiet, unit="method") as update:
        for m in names:
            try:
                cam = _build_method(m, model, None)
                t0 = time.perf_counter()
                res = cam(x)
                dt = time.perf_counter() - t0
                scored = res.maps.detach().float().cpu()
                if scored.shape[-2:] != masks.shape[-2:]:
                    scored = upsample(scored, masks.shape[-2:])
                per_method[m] = {
                    "maps": res.maps.detach().float().cpu(),
                    "seconds": dt,
                    "layer": res.layer,
                    "energy": [energy_inside(scored[i], masks[i]) for i in range(len(masks))],
                }
            except Exception as exc:  # one method that cannot run must not sink the demo
                msg = f"{type(exc).__name__}: {_one_line(exc)}"
                warnings.warn(f"{m} failed on the demo model: {msg}", stacklevel=1)
                per_method[m] = {"error": _one_line(exc)}
            update(1)
    return per_method


def cmd_demo(args: argparse.Namespace) -> int:
    """``camlens demo``: every method on sample images of the demo data set, with an HTML report."""
    import torch

    from camlens import io
    from camlens.demo import CLASSES, make_dataset
    from camlens.report import Cell, Column, Row, SummaryRow, render

    if args.n < 1:
        raise CLIError(f"--n must be at least 1, not {args.n}")
    names = _method_names(args.method, "all")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file, not a folder; choose a folder")
    images, labels, masks = make_dataset(args.n, args.seed)
    samples = [f"{i:02d}_{CLASSES[int(y)]}" for i, y in enumerate(labels)]
    report = out / "report.html"
    planned = [report] + [out / f"{s}.{m}.png" for s in samples for m in ["input", *names]]
    io.check_outputs(planned, args.force)

    from camlens.models import load_model

    lm = load_model("demo", args.weights, device=_device(args.device))
    x = lm.preprocess.normalize(images).to(lm.device)
    if tuple(x.shape[2:]) != lm.preprocess.size:
        x = torch.nn.functional.interpolate(
            x, size=lm.preprocess.size, mode="bilinear", align_corners=False
        )
    probs = _logits(lm.model, x).softmax(1).cpu()
    preds = probs.argmax(1)

    quiet = getattr(args, "quiet", False)
    per_method = _demo_maps(names, lm.model, x, masks, quiet)

    from camlens.methods import METHODS

    cells: list[list[Cell | None]] = [[] for _ in samples]
    for m in names:
        info = per_method[m]
        for i, s in enumerate(samples):
            if "error" in info:
                cells[i].append(None)
                continue
            img = _render_map(images[i], info["maps"][i], "jet", 0.5)
            _save_png(out / f"{s}.{m}.png", img)
            e = info["energy"][i]
            tip = f"{m} on sample {i}: " + (
                f"{100 * e:.0f}% of the map on the {CLASSES[int(labels[i])]}"
                if math.isfinite(e)
                else "empty map"
            )
            cells[i].append(Cell(img, energy=e, tooltip=tip))
    rows = []
    for i, s in enumerate(samples):
        _save_png(out / f"{s}.input.png", images[i])
        rows.append(
            Row(
                f"#{i}",
                images[i],
                cells[i],
                predicted=CLASSES[int(preds[i])],
                probability=float(probs[i, preds[i]]),
                true=CLASSES[int(labels[i])],
            )
        )
    summary = []
    for m in names:
        info = per_method[m]
        if "error" in info:
            summary.append(SummaryRow(m, "", None, None, f"failed: {info['error']}"))
            continue
        vals = [e for e in info["energy"] if math.isfinite(e)]
        mean = sum(vals) / len(vals) if vals else None
        summary.append(
            SummaryRow(
                m,
                info["layer"],
                mean,
                1000 * info["seconds"] / len(samples),
                _description(METHODS[m]),
            )
        )
    area = float(masks.float().mean())
    acc = float((preds == labels).float().mean())
    h, w = images.shape[2:]
    html = render(
        "camlens demo",
        [Column(m, m, _description(METHODS[m])) for m in names],
        rows,
        summary,
        subtitle=[
            f"{len(samples)} synthetic images (camlens.demo.make_dataset(n={args.n}, seed={args.seed}), {h}x{w}); "
            f"the demo model (weights: {lm.weights}; accuracy on these: {100 * acc:.0f}%) on {lm.device}.",
            "Each map explains the predicted class. The bar under a map is its energy on the object: "
            "sum(map x mask) / sum(map) over the true object's mask; a map that ignores the image scores "
            f"about the object's area, {100 * area:.0f}% here.",
        ],
        notes=[
            "Input-space methods (guided backprop, Guided Grad-CAM) are shown and scored as one value per "
            "pixel: the largest absolute attribution over the image's channels.",
            "Time per image: the method's wall time on the whole batch divided by its size, after one "
            "warm-up forward pass.",
            f"Files: {out}/NN_class.METHOD.png for every map, NN_class.input.png for the inputs.",
        ],
    )
    io.atomic_write_text(report, html)

    if not quiet:
        width = max(len(m) for m in names) + 2
        print(f"{'method':<{width}}{'energy on object':>18}{'ms / image':>12}")
        for srow in summary:
            energy_text = f"{srow.mean_energy:.3f}" if srow.mean_energy is not None else "–"
            ms = f"{srow.ms_per_image:.1f}" if srow.ms_per_image is not None else "failed"
            print(f"{srow.title:<{width}}{energy_text:>18}{ms:>12}")
        print(f"report: {report}")
    return 0


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``camlens evaluate``: :func:`camlens.evaluate.run` on the demo data set."""
    from camlens import evaluate, io
    from camlens.demo import CLASSES

    if args.n < 1:
        raise CLIError(f"--n must be at least 1, not {args.n}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, not {args.batch_size}")
    names = _method_names([args.methods], "all")
    out = Path(args.out) if args.out else None
    if out is not None:
        io.check_outputs([out], args.force)
    lm = _load(args)
    if lm.classes is not None and list(lm.classes) != list(CLASSES):
        raise CLIError(
            f"evaluate scores maps on the demo data set, whose classes are {', '.join(CLASSES)}; "
            f"{lm.spec} has {len(lm.classes)} other classes. Use --model demo (or weights trained on the demo classes)"
        )
    quiet = getattr(args, "quiet", False)
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=total, desc=stage, file=sys.stderr, unit="img", leave=False
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    try:
        rep = evaluate.run(
            model=lm.model,
            methods=names,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(evaluate.main_table(rep))
    if out is not None:
        io.atomic_write_text(out, rep.to_json() + "\n")
        _say(args, f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- main


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        CLIError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
        LookupError,
    ]
    try:
        from camlens.methods import ModelError

        errors.append(ModelError)
    except Exception:  # pragma: no cover - camlens itself failed to import
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``camlens`` command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user error (one line on stderr), 1 for an internal error,
        130 when interrupted.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, whose --help lists its options
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False)
    old_show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; no partial file was left behind", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
        except Exception as exc:
            if debug:
                traceback.print_exc()
            if isinstance(exc, _user_errors()):
                print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
                return 2
            print(
                f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(run again with --debug for the traceback, and please report it)",
                file=sys.stderr,
            )
            return 1
    finally:
        warnings.showwarning = old_show
