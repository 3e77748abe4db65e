"""The model sources behind ``--model SPEC``: one module per source, found by looking.

Every module in :mod:`camlens.models.sources` whose name does not start with ``_`` defines
``SOURCE = ModelSource(...)``; :func:`model_sources` imports them and orders them by ``order``. Adding a
source is adding one file there. Source modules import their libraries (and torch) inside ``load``,
so listing the sources (for ``--help``) costs no more than importing a few small modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from camlens.models.preprocess import Preprocess

__all__ = ["Built", "ModelSource", "model_sources", "parse_spec", "spec_help"]


@dataclass
class Built:
    """What a source's ``load`` returns.

    Attributes:
        model: the ``nn.Module`` (its mode and device are set by :func:`camlens.models.load_model`).
        preprocess: how images become its input.
        classes: class names by index, if known.
        weights: a description of the weights used (``"bundled"``, a path, ``"random (--weights none)"``).
    """

    model: nn.Module
    preprocess: Preprocess
    classes: list[str] | None
    weights: str


@dataclass(frozen=True)
class ModelSource:
    """One kind of ``--model`` spec.

    Attributes:
        kind: the prefix before the colon (``"torchvision"``), or the whole spec for a bare source.
        syntax: how the spec is written, for help texts (``"torchvision:NAME"``).
        summary: one line on what it loads, for help texts.
        load: ``load(name, weights, device) -> Built``; ``name`` is the text after ``kind:`` (the whole
            spec for the catch-all source); ``weights`` follows :mod:`camlens.models.weights`.
        order: position in listings.
        bare: the spec is the kind alone (``"demo"``).
        catch_all: takes every ``a:b`` spec no other source claims (``module:callable``).
    """

    kind: str
    syntax: str
    summary: str
    load: Callable[[str, str | None, torch.device], Built]
    order: int = 100
    bare: bool = False
    catch_all: bool = False


_SOURCES: dict[str, ModelSource] | None = None


def model_sources() -> dict[str, ModelSource]:
    """Every source by kind, in listing order (imported once)."""
    global _SOURCES
    if _SOURCES is None:
        pkg = importlib.import_module("camlens.models.sources")
        found: list[ModelSource] = []
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            src = getattr(module, "SOURCE", None)
            if not isinstance(src, ModelSource):
                raise TypeError(f"{module.__name__} defines no SOURCE = ModelSource(...)")
            found.append(src)
        _SOURCES = {s.kind: s for s in sorted(found, key=lambda s: (s.order, s.kind))}
    return _SOURCES


def spec_help() -> str:
    """``"demo, torchvision:NAME, ... or module:callable"``: the spec forms, for messages."""
    forms = [s.syntax for s in model_sources().values()]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, name)``.

    Raises:
        ValueError: a spec of no known form.
    """
    from pathlib import Path

    spec = spec.strip()
    known = model_sources()
    for src in known.values():
        if src.bare and spec == src.kind:
            return src.kind, ""
    kind, sep, name = spec.partition(":")
    prefixed = known.get(kind) if sep else None
    if prefixed is not None and not prefixed.bare and not prefixed.catch_all:
        if not name:
            raise ValueError(f"model spec {spec!r} names no model; e.g. {prefixed.syntax}")
        return kind, name
    catch_all = next((s for s in known.values() if s.catch_all), None)
    if sep and name and kind and catch_all is not None:
        return catch_all.kind, spec
    hint = ""
    if Path(spec).is_file():
        hint = f" (for a TorchScript file use torchscript:{spec}; for a state dict use --weights)"
    raise ValueError(f"unknown model {spec!r}{hint}; use {spec_help()}")
