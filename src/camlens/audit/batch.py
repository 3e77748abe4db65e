"""The per-batch function: explain a loaded batch with every method and measure every map.

:class:`Explainer` is the one piece of work both engines share. The local engine calls it in its model
thread; the Ray engine uses the class itself as the ``map_batches`` actor (the model loads once, in
``__init__``). It takes the dict of numpy arrays that :func:`camlens.audit.example.collate` makes and
returns a :class:`pyarrow.Table` with :data:`SCHEMA`, one row per image and method, so both engines
write the very same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from camlens.audit.stats import content_peak, map_statistics, object_statistics
from camlens.models import resolve_device

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["STAT_COLUMNS", "ExplainConfig", "Explainer", "schema"]

#: Float columns of per-map statistics, in table order.
STAT_COLUMNS: tuple[str, ...] = (
    "peak_y",
    "peak_x",
    "centroid_y",
    "centroid_x",
    "entropy",
    "border",
    "peak",
    "content_y",
    "content_x",
    "hit",
    "energy_in",
    "object_area",
    "object_y",
    "object_x",
)
#: Maps of input-space methods (guided backpropagation) are stored average-pooled to at most this side.
INPUT_MAP_SIDE = 32


def schema() -> pa.Schema:
    """The columns of ``results.parquet``, one row per image and method.

    ``map`` is the raw map at the layer's resolution (after the method's ReLU, before upsampling and
    normalisation), flattened in raster order, float32; ``map_shape`` is ``[h, w]`` (``[0, 0]`` for a
    failed image). ``label``, ``pred`` and ``target`` are class indices (``-1``: unknown or failed);
    ``score`` is the explained class's pre-softmax score. The statistics are described in
    :mod:`camlens.audit.stats`; ``hit`` to ``object_x`` are ``NaN`` without a mask or box. ``error`` is
    ``""`` unless the image could not be read.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.int32()),
            ("pred", pa.int32()),
            ("target", pa.int32()),
            ("score", pa.float32()),
            ("method", pa.string()),
            ("layer", pa.string()),
            ("map", pa.list_(pa.float32())),
            ("map_shape", pa.list_(pa.int32())),
            *[(c, pa.float32()) for c in STAT_COLUMNS],
            ("error", pa.string()),
        ]
    )


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain and how; plain values, so that it pickles to Ray workers.

    Attributes:
        model: a model spec (see :mod:`camlens.models`).
        weights: a local state dict, or ``None``.
        methods: method names (``camlens.METHODS`` keys).
        layer: the layer to explain, ``None`` for the method's automatic choice.
        target: ``"label"`` (the true class; the prediction where a label is unknown) or ``"pred"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
        size: ``(H, W)`` input size overriding the model's own, or ``None``.
        mean: normalisation mean overriding the model's own, or ``None``.
        std: normalisation std overriding the model's own, or ``None``.
    """

    model: str = "demo"
    weights: str | None = None
    methods: tuple[str, ...] = ("gradcam",)
    layer: str | None = None
    target: str = "label"
    device: str = "auto"
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a run to resume another one's results (the device may differ)."""
        return {
            "model": self.model,
            "weights": self.weights,
            "methods": list(self.methods),
            "layer": self.layer,
            "target": self.target,
            "size": list(self.size) if self.size else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


def _as_layer_map(raw: Tensor) -> Tensor:
    """``(B, h, w)`` non-negative map of a result's ``raw``; the input-resolution maps of input-space
    methods (guided backprop) are average-pooled to at most :data:`INPUT_MAP_SIDE` a side."""
    r = raw.detach().float()
    if r.ndim == 3:
        h, w = r.shape[-2:]
        if max(h, w) > INPUT_MAP_SIDE:
            scale = INPUT_MAP_SIDE / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            r = torch.nn.functional.adaptive_avg_pool2d(r[:, None], size)[:, 0]
    if r.ndim != 3:
        raise ValueError(
            f"the audit needs 2-D maps; the method gave raw maps of shape {tuple(raw.shape)}"
        )
    return r.clamp(min=0)


class Explainer:
    """The per-batch function: model and methods loaded once, then called once per batch.

    Args:
        config: what to explain (:class:`ExplainConfig`).
        loaded: an already loaded :class:`~camlens.models.LoadedModel` to use instead of loading
            ``config.model`` (the local engine loads it once for the reader and the explainer).

    Raises:
        ValueError: an unknown method or layer, a model that cannot be loaded (from
            :func:`camlens.models.load_model`).
    """

    def __init__(self, config: ExplainConfig, loaded: Any = None) -> None:
        from camlens.models import load_model

        self.config = config
        if loaded is None:
            loaded = load_model(
                config.model,
                config.weights,
                device=resolve_device(config.device),
                size=config.size,
                mean=config.mean,
                std=config.std,
            )
        self.loaded = loaded
        self.preprocess = loaded.preprocess
        self.device = loaded.device
        from camlens.pipeline import build_method

        self.cams = {
            m: build_method(m, loaded.model, config.layer, **config.options) for m in config.methods
        }
        h, w = self.preprocess.size
        self.tolerance = 15.0 * min(h, w) / 224.0

    # ---- helpers ---------------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        from camlens.methods.base import run_model
        from camlens.targets import select_output

        with torch.no_grad():
            out = select_output(run_model(self.loaded.model, x))
        if not (isinstance(out, Tensor) and out.ndim == 2):
            raise ValueError(
                "the audit explains classifiers: the model's output must be (B, num_classes) logits"
            )
        return out.float()

    def _explain(self, name: str, x: Tensor, target: Any) -> tuple[Any, Tensor | None]:
        """The method's result and the logits of its own forward (``CAMResult.logits``)."""
        res = self.cams[name](x, target=target)
        logits = res.logits
        ok = isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == x.shape[0]
        return res, logits.float() if ok else None

    # ---- the per-batch function -----------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        """Explain one collated batch.

        Args:
            batch: ``path`` (B,), ``label`` (B,), ``view`` (B, 3, H, W) in ``[0, 1]``, ``mask``
                (B, H, W), ``has_mask`` (B,), ``error`` (B,) as made by
                :func:`camlens.audit.example.collate`.

        Returns:
            A table with :func:`schema`, ``B * len(methods)`` rows: for each method, the batch's rows in
            order. Images that failed to load get rows with ``error`` set and no map.
        """
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        b = len(paths)
        labels = np.asarray(batch["label"], dtype=np.int64).reshape(b)
        errors = [str(e) if e is not None else "" for e in batch["error"]]
        ok = np.array([not e for e in errors], dtype=bool)
        idx = np.flatnonzero(ok)
        n = len(idx)
        cols: dict[str, list[Any]] = {k: [] for k in schema().names}
        per_method: dict[str, dict[str, Any]] = {}
        if n:
            views = torch.from_numpy(np.ascontiguousarray(batch["view"][idx], dtype=np.float32))
            x = self.preprocess.normalize(views).to(self.device)
            masks = torch.from_numpy(np.asarray(batch["mask"][idx], dtype=bool))
            valid = torch.from_numpy(np.asarray(batch["has_mask"][idx], dtype=bool))
            content = content_peak(views.to(self.device)).cpu().numpy()
            lab = torch.from_numpy(labels[idx])
            known = lab >= 0
            target: Any = None
            logits: Tensor | None = None
            if self.config.target == "label" and bool(known.all()):
                target = lab.to(self.device)
            elif self.config.target == "label" and bool(known.any()):
                logits = self._forward(x)
                target = torch.where(
                    known.to(logits.device), lab.to(logits.device), logits.argmax(1)
                )
            h, w = self.preprocess.size
            for name in self.config.methods:
                res, seen = self._explain(name, x, target)
                if logits is None:
                    logits = seen if seen is not None else self._forward(x)
                raw = _as_layer_map(res.raw)
                st = map_statistics(raw, (h, w))
                obj = object_statistics(raw, masks.to(raw.device), valid, self.tolerance)
                tg = (
                    res.targets.detach().cpu().numpy()
                    if res.targets is not None
                    else (target.cpu().numpy() if isinstance(target, Tensor) else None)
                )
                per_method[name] = {
                    "raw": raw.cpu().numpy().astype(np.float32),
                    "layer": res.layer,
                    "scores": res.scores.detach().float().cpu().numpy(),
                    "targets": tg,
                    "stats": {k: v.cpu().numpy() for k, v in {**st, **obj}.items()},
                }
            if logits is None:  # no method ran (an empty method list is refused earlier)
                logits = self._forward(x)
            pred = logits.argmax(1).cpu().numpy()
        pos = {int(i): j for j, i in enumerate(idx)}
        values: list[np.ndarray] = []
        for name in self.config.methods:
            info = per_method.get(name)
            for i in range(b):
                cols["path"].append(paths[i])
                cols["label"].append(int(labels[i]))
                cols["method"].append(name)
                cols["error"].append(errors[i])
                j = pos.get(i)
                if info is None or j is None:
                    cols["pred"].append(-1)
                    cols["target"].append(-1)
                    cols["score"].append(float("nan"))
                    cols["layer"].append("")  # no map, whatever the rest of the batch had
                    cols["map_shape"].append([0, 0])
                    values.append(np.zeros(0, dtype=np.float32))
                    for c in STAT_COLUMNS:
                        cols[c].append(float("nan"))
                    continue
                raw_j = info["raw"][j]
                cols["pred"].append(int(pred[j]))
                tg = info["targets"]
                cols["target"].append(int(tg[j]) if tg is not None else int(pred[j]))
                cols["score"].append(float(info["scores"][j]))
                cols["layer"].append(info["layer"])
                cols["map_shape"].append([int(raw_j.shape[0]), int(raw_j.shape[1])])
                values.append(raw_j.reshape(-1))
                for c in STAT_COLUMNS:
                    if c == "content_y":
                        cols[c].append(float(content[j, 0]))
                    elif c == "content_x":
                        cols[c].append(float(content[j, 1]))
                    else:
                        cols[c].append(float(info["stats"][c][j]))
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        flat = np.concatenate(values) if values else np.zeros(0, dtype=np.float32)
        maps = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))
        sch = schema()
        arrays = [maps if f.name == "map" else pa.array(cols[f.name], type=f.type) for f in sch]
        return pa.Table.from_arrays(arrays, schema=sch)
