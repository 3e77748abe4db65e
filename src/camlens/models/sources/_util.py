"""Helpers the source modules share."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from typing import Any


def close_names(name: str, names: Sequence[str]) -> str:
    """``" Closest names: a, b."`` or ``""``."""
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f" Closest names: {', '.join(close)}." if close else ""


def import_optional(name: str, spec_kind: str) -> Any:
    """Import an optional library, with an error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"--model {spec_kind}:NAME needs {name}: pip install {name} ({exc})"
        ) from exc
    except Exception as exc:  # a broken install (e.g. a torchvision built for another torch)
        raise ImportError(
            f"could not import {name} ({type(exc).__name__}: {exc}); is it built for this torch version?"
        ) from exc
