"""What the web app can do, fixed at start: the models, their layers, the methods, and one explain call.

A request carries only an image and choices. Every choice is checked against these fixed lists
(:meth:`Engine.choose`), so no request can name a model spec, a file, a module or any code: the model
is one of the names the server was started with, the layer one of that model's candidate layers, the
method one of ``camlens.METHODS``, the target an index, a class name or ``top-K``.

Method objects are built once per (model, method, layer) and shared by every request: camlens methods
keep no per-call state and their hooks belong to the call (see :mod:`camlens.capture`), so concurrent
requests on one model each get their own maps.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camlens.capture import LayerInfo, candidate_layers, default_layer
from camlens.images import Geometry
from camlens.layers import probing
from camlens.methods import METHODS, BaseCAM, get_method
from camlens.models import LoadedModel
from camlens.pipeline import parse_target
from camlens.result import CAMResult
from camlens.serve import imaging
from camlens.targets import select_output

__all__ = ["ChoiceError", "Choices", "Engine", "Explained"]

#: Predictions listed per request.
TOP_PREDICTIONS = 5


class ChoiceError(ValueError):
    """A choice that is not among the valid ones: HTTP 422, naming the field and the valid choices."""

    def __init__(self, field: str, message: str, valid: list[Any] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.valid = valid or []


@dataclass(frozen=True)
class Choices:
    """One request's choices, checked."""

    model: str
    methods: tuple[str, ...]
    layer: str | None
    target: int | str | None
    counterfactual: bool


@dataclass(frozen=True)
class Explained:
    """The results of one request, before they are written as JSON or npz."""

    lm: LoadedModel
    image: Any
    view: torch.Tensor
    geometry: Geometry | None
    results: list[tuple[str, CAMResult]]
    logits: torch.Tensor | None


def _describe(cls: type) -> str:
    """The first line of a method's docstring, as plain text (also for methods registered at run time)."""
    from camlens._catalog import plain

    doc = (cls.__doc__ or "").strip()
    return plain(doc.splitlines()[0].strip()) if doc else ""


class _Entry:
    """A loaded model with its candidate layers and a cache of method objects."""

    def __init__(self, name: str, lm: LoadedModel) -> None:
        self.name = name
        self.lm = lm
        probe = lm.dummy_input()
        with probing(probe):  # a model that does not run on its input size: one ModelError
            self.layers: list[LayerInfo] = candidate_layers(lm.model, probe)
            self.default_layer = default_layer(lm.model, probe)
            with torch.no_grad():
                out = select_output(lm.model(probe), passthrough=True)
        self.num_classes = (
            int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
        )
        self._cams: dict[tuple[str, str | None], BaseCAM] = {}
        self._lock = threading.Lock()

    def cam(self, method: str, layer: str | None) -> BaseCAM:
        cls = METHODS[method]
        key = (method, layer if cls.takes_layer else None)
        with self._lock:
            cam = self._cams.get(key)
            if cam is None:
                cam = cls(self.lm.model, layer=key[1])
                self._cams[key] = cam
        return cam


class Engine:
    """The models a server was started with, and the one function that explains an upload.

    Args:
        models: name -> loaded model; the first is the default.
        max_overlay_side: the longest side of the overlay PNGs in answers (the original is scaled
            down to it, never up).
    """

    def __init__(self, models: Mapping[str, LoadedModel], *, max_overlay_side: int = 1600) -> None:
        if not models:
            raise ValueError("the server needs at least one model")
        self.entries = {name: _Entry(name, lm) for name, lm in models.items()}
        self.default_model = next(iter(self.entries))
        self.max_overlay_side = max_overlay_side

    # ---- what can be chosen ----------------------------------------------------------------------
    def models_info(self) -> list[dict[str, Any]]:
        out = []
        for e in self.entries.values():
            classes = e.lm.classes
            out.append(
                {
                    "name": e.name,
                    "default": e.name == self.default_model,
                    "classes": len(classes) if classes is not None else None,
                    "class_names": list(map(str, classes)) if classes is not None else None,
                    "input_size": list(e.lm.preprocess.size),
                    "preprocess": e.lm.preprocess.describe(),
                    "weights": e.lm.weights,
                    "default_layer": e.default_layer,
                }
            )
        return out

    def methods_info(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "aliases": list(cls.aliases),
                "description": _describe(cls),
                "uses_target": bool(cls.uses_target),
                "takes_layer": bool(cls.takes_layer),
                "model_kind": str(getattr(cls, "model_kind", "any")),
            }
            for name, cls in METHODS.items()
        ]

    def layers_info(self, model: str | None) -> dict[str, Any]:
        e = self._entry(model)
        return {
            "model": e.name,
            "default": e.default_layer,
            "layers": [{"name": i.name, "shape": list(i.shape), "kind": i.kind} for i in e.layers],
        }

    def _entry(self, model: str | None) -> _Entry:
        name = model if model else self.default_model
        if name not in self.entries:
            raise ChoiceError(
                "model",
                f"unknown model {name!r}; this server has {list(self.entries)}",
                list(self.entries),
            )
        return self.entries[name]

    # ---- checking a request -------------------------------------------------------------------------
    def choose(self, fields: Mapping[str, str]) -> Choices:
        """The checked choices of a request's form fields.

        Raises:
            ChoiceError: an unknown model, method, layer or class, or a malformed target.
        """
        e = self._entry(fields.get("model") or None)
        names: list[str] = []
        for item in (fields.get("methods") or "gradcam").split(","):
            if not item.strip():
                continue
            try:
                names.append(get_method(item).name)
            except ValueError:
                raise ChoiceError(
                    "methods", f"unknown method {item.strip()!r}", list(METHODS)
                ) from None
        names = list(dict.fromkeys(names))
        if not names:
            raise ChoiceError("methods", "no method chosen", list(METHODS))
        if len(names) > len(METHODS):
            raise ChoiceError("methods", "too many methods", list(METHODS))
        layer = (fields.get("layer") or "").strip() or None
        valid_layers = [i.name for i in e.layers]
        if layer is not None and layer not in valid_layers:
            raise ChoiceError(
                "layer",
                f"unknown layer {layer!r} for model {e.name!r} (GET /api/layers?model={e.name} lists "
                "them)",
                valid_layers,
            )
        lm = e.lm
        try:
            target = parse_target(fields.get("target") or None, lm.classes).spec
            if isinstance(target, int) and e.num_classes is not None and target >= e.num_classes:
                raise ValueError(
                    f"target {target} is out of range: the model has {e.num_classes} classes "
                    f"(use 0 to {e.num_classes - 1})"
                )
        except ValueError as err:
            valid: list[Any] = list(map(str, lm.classes)) if lm.classes is not None else []
            raise ChoiceError("target", str(err), valid) from None
        counterfactual = (fields.get("counterfactual") or "").strip().lower() in (
            "1",
            "true",
            "on",
            "yes",
        )
        if counterfactual:
            free = [n for n in names if not METHODS[n].uses_target]
            if free:
                raise ChoiceError(
                    "counterfactual",
                    f"{', '.join(free)} do(es) not use a target, so a counterfactual map has no "
                    "meaning; leave those methods out or switch counterfactual off",
                    [n for n in METHODS if METHODS[n].uses_target],
                )
        return Choices(e.name, tuple(names), layer, target, counterfactual)

    # ---- explaining --------------------------------------------------------------------------------
    def run(self, image: Any, choices: Choices) -> Explained:
        """The maps of a decoded PIL image: one result per method (and per class for top-K).

        Runs the model through the methods only: the predictions come from the first method's own
        forward (``CAMResult.logits``).
        """
        e = self.entries[choices.model]
        lm = e.lm
        view, geometry = imaging.prepare(lm.preprocess, image)
        # contiguous: a view made from an HWC array is channels-last in memory, which slows CPU convs
        x = lm.preprocess.normalize(view[None]).contiguous().to(lm.device)
        results: list[tuple[str, CAMResult]] = []
        for method in choices.methods:
            cam = e.cam(method, choices.layer)
            if isinstance(choices.target, str):
                out = cam.for_targets(x, choices.target, counterfactual=choices.counterfactual)
            else:
                out = [cam(x, target=choices.target, counterfactual=choices.counterfactual)]
            results += [(method, r) for r in out]
        logits = next((r.logits for _, r in results if r.logits is not None), None)
        return Explained(lm, image, view, geometry, results, logits)

    def explain(self, image: Any, choices: Choices) -> dict[str, Any]:
        """The JSON answer of ``POST /api/explain`` for a decoded PIL image."""
        from camlens.viz import Legend

        done = self.run(image, choices)
        lm = done.lm
        shrunk = imaging.shrink(image, done.geometry, self.max_overlay_side)  # once for all maps
        maps: list[dict[str, Any]] = []
        for method, res in done.results:
            cls = int(res.targets[0]) if res.targets is not None else None
            raw = res.raw[0].detach().float().cpu()
            target = f"{lm.class_name(cls)} ({cls})" if cls is not None else ""
            legend = Legend(
                method=res.method,
                layer=res.layer,
                target=target,
                score=f"score {float(res.scores[0]):.4g}",
            )
            png = imaging.overlay_png(
                shrunk, res.maps[0].detach().float().cpu(), done.view, done.geometry, legend
            )
            maps.append(
                {
                    "method": method,
                    "label": res.method,
                    "layer": res.layer,
                    "target": cls,
                    "class": lm.class_name(cls) if cls is not None else None,
                    "score": float(res.scores[0]),
                    "shape": list(raw.shape),
                    "raw": raw.tolist(),
                    "empty": bool(raw.max() <= 0),
                    "overlay": "data:image/png;base64," + base64.b64encode(png).decode(),
                }
            )
        return {
            "model": choices.model,
            "image": {"width": image.width, "height": image.height},
            "geometry": None if done.geometry is None else done.geometry.as_dict(),
            "predictions": self._predictions(lm, done.logits),
            "maps": maps,
        }

    def explain_npz(self, image: Any, choices: Choices) -> bytes:
        """The answer of ``POST /api/explain.npz``: the maps as arrays in one ``.npz`` file.

        Per map ``i`` (keys without the ``i_`` prefix when there is one map): ``map`` (normalised, at
        the model's input size), ``raw`` (the layer's resolution), ``score``, ``target`` (-1 when the
        target is not a class), ``label``, ``method``, ``layer``, and once ``box`` (where the model's
        input lies in the original image, ``x0, y0, x1, y1``; absent when unknown) and ``image_size``
        (``width, height``).
        """
        done = self.run(image, choices)
        arrays: dict[str, np.ndarray] = {
            "image_size": np.array([image.width, image.height], dtype=np.int64)
        }
        if done.geometry is not None:
            arrays["box"] = np.array(done.geometry.box, dtype=np.float64)
        one = len(done.results) == 1
        for i, (method, res) in enumerate(done.results):
            p = "" if one else f"{i}_"
            cls = int(res.targets[0]) if res.targets is not None else -1
            arrays[p + "map"] = res.maps[0].detach().float().cpu().numpy()
            arrays[p + "raw"] = res.raw[0].detach().float().cpu().numpy()
            arrays[p + "score"] = np.array(float(res.scores[0]), dtype=np.float32)
            arrays[p + "target"] = np.array(cls, dtype=np.int64)
            arrays[p + "label"] = np.array(done.lm.class_name(cls) if cls >= 0 else "")
            arrays[p + "method"] = np.array(method)
            arrays[p + "layer"] = np.array(res.layer)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @staticmethod
    def _predictions(lm: LoadedModel, logits: torch.Tensor | None) -> list[dict[str, Any]]:
        if logits is None or logits.ndim != 2:
            return []
        probs = logits[0].float().softmax(0)
        top = probs.topk(min(TOP_PREDICTIONS, probs.numel()))
        return [
            {"class": lm.class_name(int(i)), "index": int(i), "score": float(p)}
            for p, i in zip(top.values, top.indices, strict=True)
        ]
