"""``module:callable``: a function (or an ``nn.Module``) from an importable module or a ``.py`` file."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.models.registry import Built, ModelSource

if TYPE_CHECKING:
    import torch


def _import(mod_name: str, spec: str) -> Any:
    from camlens.models.registry import spec_help

    if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise FileNotFoundError(f"no such Python file: {mod_name!r} (from --model {spec})")
        uniq = f"camlens_user_{abs(hash(str(path.resolve())))}"
        ispec = importlib.util.spec_from_file_location(uniq, path)
        if ispec is None or ispec.loader is None:
            raise ValueError(f"cannot import {mod_name!r} as a Python module")
        module = importlib.util.module_from_spec(ispec)
        sys.modules[uniq] = module
        ispec.loader.exec_module(module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working folder import
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and mod_name.startswith(exc.name):
            raise ValueError(
                f"unknown model {spec!r}: no module named {mod_name!r}; use {spec_help()} "
                "(module:callable needs the module on PYTHONPATH or a path to a .py file)"
            ) from exc
        raise


def load(name: str, weights: str | None, device: torch.device) -> Built:
    """Call ``callable()`` (or take the module instance); then load ``weights`` if a path is given."""
    from torch import nn

    from camlens.models.preprocess import from_attributes
    from camlens.models.registry import spec_help
    from camlens.models.sources._util import close_names
    from camlens.models.weights import apply_state_dict, is_no_weights, load_state_dict_file

    spec = name
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise ValueError(f"model spec {spec!r} is not understood; use {spec_help()}")
    module = _import(mod_name, spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise ValueError(
                f"module {mod_name!r} has no attribute {attr!r}.{close_names(attr, public)}"
            )
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{spec} returned a {type(model).__name__}, not a torch.nn.Module; return the model"
        )
    desc = "as returned"
    if weights is not None and not is_no_weights(weights):
        apply_state_dict(model, load_state_dict_file(weights), spec, weights)
        desc = weights
    pre, classes = from_attributes(model, f"{spec} attributes")
    return Built(model, pre, classes, desc)


SOURCE = ModelSource(
    kind="module",
    syntax="module:callable",
    summary="callable() from an importable module or a .py file, returning an nn.Module",
    load=load,
    order=90,
    catch_all=True,
)
