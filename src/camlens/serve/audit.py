"""``camlens serve --audit DIR``: browse the findings of ``camlens audit`` in the web app.

The folder is read once, at start: ``summary.json`` (the findings, with their examples and group mean
maps) and, for each example, its stored map from ``results.parquet``. Requests choose a finding and an
example by number only; the image files are those the audit recorded, never a path from a request.
Example overlays show the stored map on the image as the model saw it, when the server also serves
the audit's model (its pre-processing is needed for that); otherwise the map is shown alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AuditBrowser"]


class AuditBrowser:
    """The findings of one audit folder, served under ``/api/audit``.

    Args:
        folder: the audit's ``--out`` folder (with ``summary.json``).
        preprocess: the audit's model's pre-processing, to draw examples as the model saw them
            (``None``: maps alone).

    Raises:
        ValueError: the folder holds no readable ``summary.json``.
    """

    def __init__(self, folder: str | Path, preprocess: Any = None) -> None:
        self.folder = Path(folder)
        path = self.folder / "summary.json"
        try:
            self.summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            findings = self.summary["findings"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"--audit {str(folder)!r} holds no readable summary.json; pass the --out folder of "
                "`camlens audit`"
            ) from e
        self.findings: list[dict[str, Any]] = list(findings)
        self.preprocess = preprocess
        from camlens.audit.report import _lookup_maps

        wanted = {(p, f["method"]) for f in self.findings for p in f.get("examples", [])}
        self._maps: dict[tuple[str, str], np.ndarray] = _lookup_maps(self.folder, wanted)
        self._png: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def model_spec(folder: str | Path) -> str | None:
        """The model spec an audit folder was made with (to match it with a served model)."""
        try:
            summary = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
            spec = summary.get("model", {}).get("spec")
            return str(spec) if spec else None
        except (OSError, ValueError, AttributeError):
            return None

    # ---- what the page asks for --------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        s = self.summary
        return {
            "images": s.get("images"),
            "errors": s.get("errors"),
            "methods": s.get("methods", []),
            "classes": sorted({str(f["class"]) for f in self.findings}),
            "kinds": sorted({str(f["kind"]) for f in self.findings}),
            "findings": len(self.findings),
            "model": s.get("model", {}),
        }

    def select(self, cls: str | None, kind: str | None) -> list[dict[str, Any]]:
        """Findings of a class and kind (``None`` or ``""``: any), with the URLs of their pictures."""
        out = []
        for i, f in enumerate(self.findings):
            if cls and str(f["class"]) != cls:
                continue
            if kind and str(f["kind"]) != kind:
                continue
            n = len(f.get("examples", []))
            out.append(
                {
                    "index": i,
                    "class": f["class"],
                    "kind": f["kind"],
                    "method": f.get("method"),
                    "share": f.get("share"),
                    "why": f.get("why", ""),
                    "evidence": f.get("evidence", {}),
                    "example_urls": [f"/api/audit/example/{i}/{j}" for j in range(n)],
                    "mean_map_url": f"/api/audit/mean/{i}" if f.get("mean_map") else None,
                }
            )
        return out

    def example_png(self, i: int, j: int) -> bytes | None:
        """PNG of example ``j`` of finding ``i``; ``None`` when there is no such example."""
        if not (0 <= i < len(self.findings)):
            return None
        f = self.findings[i]
        examples = f.get("examples", [])
        if not (0 <= j < len(examples)):
            return None
        with self._lock:
            cached = self._png.get((i, j))
        if cached is not None:
            return cached
        png = self._render_example(str(examples[j]), self._maps.get((examples[j], f["method"])))
        with self._lock:
            self._png[(i, j)] = png
        return png

    def mean_png(self, i: int) -> bytes | None:
        """PNG of the mean map of finding ``i``'s images."""
        if not (0 <= i < len(self.findings)) or not self.findings[i].get("mean_map"):
            return None
        from camlens import viz
        from camlens.audit.report import _up

        m = np.asarray(self.findings[i]["mean_map"], dtype=np.float32)
        return viz.to_png_bytes(viz.heatmap(_up(m, 160)))

    def _render_example(self, path: str, m: np.ndarray | None) -> bytes:
        from camlens import viz
        from camlens.audit.report import _up

        if m is None:
            return viz.to_png_bytes(viz.heatmap(np.zeros((16, 16), np.float32)))
        picture = None
        if self.preprocess is not None:
            try:
                import torch

                from camlens.images import read_image

                image = read_image(path)  # no warnings module: this runs in worker threads
                view, geometry = self.preprocess.prepare(image)
                h, w = view.shape[1:]
                peak = float(m.max())
                scaled = torch.from_numpy(m / peak if peak > 0 else m)[None, None]
                cam_map = torch.nn.functional.interpolate(
                    scaled, size=(h, w), mode="bilinear", align_corners=False
                )[0, 0].clamp(0, 1)
                if geometry is not None:
                    scale = min(1.0, 240 / max(image.size))
                    size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
                    picture = viz.overlay_on_original(
                        image.convert("RGB"), cam_map, geometry, size=size
                    )
                else:
                    picture = viz.overlay(view, cam_map)
            except Exception:  # the image moved or became unreadable since the audit
                picture = None
        if picture is None:
            picture = viz.heatmap(_up(m, 160))
        return viz.to_png_bytes(picture)

    # ---- the routes ---------------------------------------------------------------------------------
    def register(self, app: Any) -> None:
        """Add ``/api/audit/...`` to a FastAPI app."""
        from fastapi import HTTPException, Query
        from fastapi.responses import Response

        from camlens.serve.engine import ChoiceError

        browser = self

        @app.get("/api/audit/summary", tags=["audit"])
        async def audit_summary() -> dict[str, Any]:
            """The audit's numbers, and the classes and kinds its findings have."""
            return browser.overview()

        @app.get("/api/audit/findings", tags=["audit"])
        async def audit_findings(
            cls: str = Query("", alias="class"), kind: str = Query("")
        ) -> Mapping[str, Any]:
            """The findings, filtered by class and kind (empty: any)."""
            info = browser.overview()
            if cls and cls not in info["classes"]:
                raise ChoiceError("class", f"no finding names class {cls!r}", info["classes"])
            if kind and kind not in info["kinds"]:
                raise ChoiceError("kind", f"no finding is of kind {kind!r}", info["kinds"])
            return {"findings": browser.select(cls or None, kind or None)}

        # plain functions: FastAPI runs them on its thread pool (they read and draw images)
        @app.get("/api/audit/example/{i}/{j}", tags=["audit"], response_class=Response)
        def audit_example(i: int, j: int) -> Response:
            png = browser.example_png(i, j)
            if png is None:
                raise HTTPException(404, f"finding {i} has no example {j}")
            return Response(png, media_type="image/png")

        @app.get("/api/audit/mean/{i}", tags=["audit"], response_class=Response)
        def audit_mean(i: int) -> Response:
            png = browser.mean_png(i)
            if png is None:
                raise HTTPException(404, f"finding {i} has no mean map")
            return Response(png, media_type="image/png")
