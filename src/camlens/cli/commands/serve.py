"""``camlens serve``: the local web app and JSON API of :mod:`camlens.serve` (the ``serve`` extra).

The models are loaded once, at start, from the specs on the command line; a request can choose among
them by name only. The server binds to 127.0.0.1 unless ``--host`` says otherwise, and warns when it
does not listen on loopback only. Only the standard library is imported until the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from camlens.cli.commands import Command
from camlens.cli.common import add_model_args
from camlens.cli.errors import CLIError


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``camlens serve``."""
    add_model_args(p, several=True)
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-upload-mb", type=float, default=20, help="largest upload in MB (default 20)"
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="most pixels an uploaded image may have (default 40000000)",
    )
    g.add_argument(
        "--workers", type=int, default=1, help="explain calls running at once (default 1)"
    )
    g.add_argument(
        "--queue",
        type=int,
        default=8,
        help="calls that may wait for a worker; more get 503 with Retry-After (default 8)",
    )
    p.add_argument("--audit", metavar="DIR", help="also browse the findings of `camlens audit`")


def _check(args: argparse.Namespace) -> None:
    if args.workers < 1 or args.queue < 0:
        raise CLIError("--workers must be at least 1 and --queue at least 0")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port {args.port} is not a port; use 1 to 65535")
    if args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise CLIError("--max-upload-mb and --max-pixels must be positive")
    specs = args.model or ["demo"]
    if args.weights and len(specs) > 1:
        raise CLIError("--weights loads into one model; serve one --model with it")
    if len(specs) > 1 and (args.size or args.mean or args.std):
        raise CLIError(
            "--size, --mean and --std set one model's input; serve one --model with them"
        )
    if len(set(specs)) != len(specs):
        raise CLIError("a --model is given twice")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted."""
    _check(args)
    from camlens.models import parse_spec

    for spec in args.model or ["demo"]:
        parse_spec(spec)  # an unknown spec fails before torch is imported
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(
            "camlens serve needs the serve extra: pip install 'camlens[serve]'"
        ) from e
    from PIL import Image

    from camlens.cli.common import load_model
    from camlens.serve import Engine, create_app

    if not is_loopback(args.host):
        print(
            f"camlens serve: warning: listening on {args.host}, not on loopback only: anyone who can "
            "reach this machine can use the server (there is no authentication)",
            file=sys.stderr,
        )
    specs = args.model or ["demo"]
    models = {spec: load_model(args, spec=spec) for spec in specs}
    audit = None
    if args.audit:
        from camlens.serve.audit import AuditBrowser

        # the audit's model, if served too, shows the examples as the model saw them
        spec = AuditBrowser.model_spec(args.audit)
        audit = AuditBrowser(args.audit, models[spec].preprocess if spec in models else None)
    # Pillow's own bomb limit must neither refuse nor warn about what --max-pixels allows (the
    # server checks first; warnings cannot be silenced safely in its worker threads)
    if Image.MAX_IMAGE_PIXELS is not None and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    app = create_app(
        Engine(models),
        workers=args.workers,
        queue=args.queue,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        audit=audit,
    )
    print(f"camlens serve: http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMAND = Command(
    name="serve",
    help="a local web app and JSON API to explore maps",
    description="Start a local web app and JSON API to explore a model's maps. The models are "
    "loaded once, at start; requests choose among them by name.",
    configure=configure,
    run=run,
    order=60,
    epilog=(
        "The page: http://HOST:PORT/ ; the API: POST /api/explain (multipart: file, model,\n"
        "methods, layer, target, counterfactual), GET /api/models, /api/methods,\n"
        "/api/layers?model=NAME, /healthz; its OpenAPI page: http://HOST:PORT/docs.\n\n"
        "examples:\n"
        "  camlens serve\n"
        "  camlens serve --model torchvision:resnet50 --weights rn50.pth --workers 2\n"
        "  curl -F file=@photo.jpg -F methods=gradcam,scorecam http://127.0.0.1:8000/api/explain\n"
    ),
)
