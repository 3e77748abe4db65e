"""The FastAPI application of ``camlens serve``: a page and a JSON API over one :class:`Engine`.

Requests share the models: each explain call runs on a pool of ``workers`` threads, and at most
``workers + queue`` calls are admitted at once; beyond that the answer is 503 with ``Retry-After``,
before the upload is even read, so memory stays bounded under any load. Uploads are bounded and parsed
in memory (:mod:`camlens.serve.uploads`): no request writes a file.
"""

from __future__ import annotations

import asyncio
import io
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from camlens.methods import ModelError
from camlens.serve.engine import ChoiceError, Engine
from camlens.serve.uploads import (
    BadUpload,
    BodyLimit,
    TooLarge,
    decode_image,
    read_form,
    read_upload,
)

__all__ = ["Gate", "create_app"]

_STATIC = files("camlens.serve") / "static"
_FIELDS = ("model", "methods", "layer", "target", "counterfactual")


class Gate:
    """Admission control: at most ``capacity`` calls in the building, the rest are turned away.

    Also keeps the durations of recent calls, to tell a turned-away client when to come back.
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be >= 1 and queue >= 0")
        self.workers = workers
        self.capacity = workers + queue
        self.in_flight = 0
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=32)

    def try_enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.capacity:
                return False
            self.in_flight += 1
            return True

    def leave(self, seconds: float | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if seconds is not None:
                self._recent.append(seconds)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead, at the recent median call time."""
        with self._lock:
            typical = statistics.median(self._recent) if self._recent else 1.0
            waves = self.in_flight / self.workers
        return max(1, math.ceil(typical * waves))


def create_app(
    engine: Engine,
    *,
    workers: int = 1,
    queue: int = 8,
    max_upload_mb: float = 20,
    max_pixels: int = 40_000_000,
    audit: Any = None,
) -> FastAPI:
    """The web app over ``engine``.

    Args:
        engine: the models and methods, fixed for the server's life.
        workers: explain calls that run at the same time (threads sharing the models).
        queue: further calls that may wait for a worker; beyond ``workers + queue``: 503.
        max_upload_mb: the largest upload, in MB (413 beyond).
        max_pixels: the most pixels an uploaded image may have (413 beyond), checked before decoding.
        audit: an audit browser (see :mod:`camlens.serve.audit`) to serve under ``/api/audit``.
    """
    gate = Gate(workers, queue)
    pool: dict[str, ThreadPoolExecutor] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool["executor"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camlens")
        try:
            yield
        finally:
            pool.pop("executor").shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="camlens",
        summary="Class activation maps for the models this server was started with.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.gate = gate
    app.add_middleware(BodyLimit, max_upload_mb=max_upload_mb)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        # the page loads nothing from elsewhere: no CDN, no inline scripts
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(ChoiceError)
    async def _choice(_r: Request, e: ChoiceError) -> JSONResponse:
        return JSONResponse({"detail": str(e), "field": e.field, "valid": e.valid}, status_code=422)

    @app.exception_handler(BadUpload)
    async def _bad(_r: Request, e: BadUpload) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(TooLarge)
    async def _large(_r: Request, e: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(ValueError)
    async def _unfit(_r: Request, e: ValueError) -> JSONResponse:
        # a method refusing what it was given (LeGrad on a CNN, CAM on a head that is not
        # GAP + linear): the choice does not fit this model
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(ModelError)
    async def _model(_r: Request, e: ModelError) -> JSONResponse:
        return JSONResponse({"detail": f"the model failed on this image: {e}"}, status_code=500)

    # ---- the page -----------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(_STATIC / "index.html"), media_type="text/html")

    # ---- the API ------------------------------------------------------------------------------
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness, the models served and the load."""
        return {
            "status": "ok",
            "models": list(engine.entries),
            "in_flight": gate.in_flight,
            "capacity": gate.capacity,
        }

    @app.get("/api/models", tags=["choices"])
    async def models() -> dict[str, Any]:
        """The models this server was started with (the first is the default)."""
        return {"models": engine.models_info()}

    @app.get("/api/methods", tags=["choices"])
    async def methods() -> dict[str, Any]:
        """Every method, with whether it uses a target and a layer."""
        return {"methods": engine.methods_info()}

    @app.get("/api/layers", tags=["choices"])
    async def layers(model: str | None = Query(None, description="a model name")) -> dict[str, Any]:
        """The layers of a model that can be explained, and the default one."""
        return engine.layers_info(model)

    @app.get("/api/samples", tags=["choices"])
    async def samples() -> dict[str, Any]:
        """Bundled sample images (generated demo images), to try the app without an upload."""
        return {"samples": [{"name": n, "url": f"/api/samples/{n}"} for n in _samples()]}

    @app.get("/api/samples/{name}", tags=["choices"], response_class=Response)
    async def sample(name: str) -> Response:
        png = _samples().get(name)
        if png is None:
            raise HTTPException(404, f"no sample named {name!r}; GET /api/samples lists them")
        return Response(png, media_type="image/png")

    @app.post(
        "/api/explain",
        tags=["explain"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "model": {"type": "string", "description": "default: the first"},
                                "methods": {
                                    "type": "string",
                                    "description": "comma-separated, default gradcam",
                                },
                                "layer": {"type": "string", "description": "default: automatic"},
                                "target": {
                                    "type": "string",
                                    "description": "a class index, a class name or top-K; "
                                    "default: the top class",
                                },
                                "counterfactual": {"type": "boolean"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def explain(request: Request) -> Response:
        """Explain an uploaded image: predictions and one map per method (and per class for top-K).

        Each map has ``raw`` (the layer-resolution map, after the method's ReLU, as nested lists) and
        ``overlay`` (a PNG data URL of the map on the original image, scaled to the page's size).
        """
        return await answer(request, "json")

    @app.post("/api/explain.npz", tags=["explain"], response_class=Response)
    async def explain_npz(request: Request) -> Response:
        """The same request as ``/api/explain``, answered with the maps as arrays in an ``.npz``."""
        return await answer(request, "npz")

    async def answer(request: Request, kind: str) -> Response:
        if not gate.try_enter():  # before reading the upload: a busy server stays small
            return JSONResponse(
                {"detail": "the server is busy; try again shortly"},
                status_code=503,
                headers={"Retry-After": str(gate.retry_after())},
            )
        t0 = time.perf_counter()
        done = False
        try:
            form = await read_form(request.headers, request.stream())
            fields = {k: str(form.get(k) or "") for k in _FIELDS}
            choices = engine.choose(fields)
            data = await read_upload(form)
            loop = asyncio.get_running_loop()

            worked: list[float] = []

            def work() -> Any:
                w0 = time.perf_counter()
                image = decode_image(data, max_pixels)
                out = (
                    engine.explain_npz(image, choices)
                    if kind == "npz"
                    else engine.explain(image, choices)
                )
                worked.append(time.perf_counter() - w0)
                return out

            result = await loop.run_in_executor(pool["executor"], work)
            done = True
            # where the time went, for browsers' developer tools and benchmarks (milliseconds)
            timing = f"explain;dur={1e3 * worked[0]:.1f}, total;dur={1e3 * (time.perf_counter() - t0):.1f}"
            if kind == "npz":
                return Response(
                    result,
                    media_type="application/octet-stream",
                    headers={
                        "Content-Disposition": 'attachment; filename="camlens.npz"',
                        "Server-Timing": timing,
                    },
                )
            return JSONResponse(result, headers={"Server-Timing": timing})
        finally:
            gate.leave(time.perf_counter() - t0 if done else None)

    if audit is not None:
        audit.register(app)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("camlens")
    except Exception:
        return "unknown"


_SAMPLES: dict[str, bytes] = {}
_SAMPLES_LOCK = threading.Lock()


def _samples() -> dict[str, bytes]:
    """PNGs of a few demo images (one per class), made once."""
    with _SAMPLES_LOCK:
        if not _SAMPLES:
            from PIL import Image

            from camlens.demo import CLASSES, make_dataset

            images, labels, _ = make_dataset(24, seed=7)
            seen: set[int] = set()
            for img, y in zip(images, labels, strict=True):
                if int(y) in seen:
                    continue
                seen.add(int(y))
                arr = (img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                _SAMPLES[f"demo-{CLASSES[int(y)]}"] = buf.getvalue()
        return dict(_SAMPLES)
