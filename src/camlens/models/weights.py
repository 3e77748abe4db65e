"""Weights: reading state-dict files, fitting them to a model, and downloads that fail clearly.

Every model source shares these. What ``weights=`` (``--weights``) means:

* ``None``: the source's default: the library's pretrained weights (downloaded on first use, then
  cached), the bundled demo weights, the weights inside a TorchScript file, or the model as a
  ``module:callable`` returns it;
* ``"none"`` (:data:`NO_WEIGHTS`): the architecture only, randomly initialised; nothing is
  downloaded (what ``camlens layers`` uses unless weights are given);
* a path: a local state dict (``torch.save(model.state_dict(), path)`` or ``.safetensors``).

torch is imported by the functions that need it.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "NO_WEIGHTS",
    "apply_state_dict",
    "download_error",
    "head_classes",
    "hub_offline_if_unreachable",
    "is_no_weights",
    "load_state_dict_file",
]

#: ``weights=NO_WEIGHTS`` builds the architecture with random weights and downloads nothing.
NO_WEIGHTS = "none"


def is_no_weights(weights: str | os.PathLike[str] | None) -> bool:
    """``weights`` asks for the architecture only (``"none"``, any case)."""
    return isinstance(weights, str) and weights.strip().lower() == NO_WEIGHTS


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save(model.state_dict(), path)`` (on the CPU).

    Checkpoints that wrap it (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix (``DataParallel``) is removed; ``.safetensors`` files are read with safetensors.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"weights file not found: {str(p)!r}; check the --weights path (or pass --weights none "
            "for random weights)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read weights from {str(p)!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "save them with torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(p)!r} holds a {type(obj).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    sizes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, sizes


def head_classes(model: nn.Module, sd: Mapping[str, Tensor]) -> int | None:
    """The number of classes of ``sd`` when it differs from ``model`` only in the classifier's rows.

    Fine-tuned weights with their own number of classes are recognised this way, so the model can be
    rebuilt with ``num_classes`` before they are loaded.
    """
    missing, unexpected, _ = _mismatch(model, sd)
    if missing or unexpected:
        return None
    own = model.state_dict()
    diff = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if not diff:
        return None
    rows = {int(sd[k].shape[0]) for k in diff}
    same_rest = all(tuple(sd[k].shape[1:]) == tuple(own[k].shape[1:]) for k in diff)
    return rows.pop() if len(rows) == 1 and same_rest and len(diff) <= 2 else None


def apply_state_dict(model: nn.Module, sd: Mapping[str, Tensor], what: str, path: str) -> None:
    """Load ``sd`` into ``model`` strictly, or raise a ValueError that says what does not fit.

    Args:
        model: the model.
        sd: the state dict.
        what: the model's description for the message (``"torchvision:resnet18"``).
        path: the file the weights came from, for the message.
    """
    missing, unexpected, sizes = _mismatch(model, sd)
    if missing or unexpected or sizes:
        parts = []
        if sizes:
            parts.append(f"{len(sizes)} shape mismatch(es), e.g. {sizes[0]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise ValueError(
            f"weights {path!r} do not fit {what}: {'; '.join(parts)}; pass weights saved from this "
            "architecture (or the --model they were trained with)"
        )
    try:
        model.load_state_dict(dict(sd))
    except RuntimeError as exc:
        raise ValueError(
            f"weights {path!r} do not fit {what}: {' '.join(str(exc).split())[:300]}"
        ) from exc


def download_error(spec: str, exc: Exception) -> ValueError:
    """The error for pretrained weights that could not be downloaded."""
    msg = " ".join(str(exc).split())[:200]
    return ValueError(
        f"could not get the pretrained weights of {spec} ({type(exc).__name__}: {msg}); they are downloaded "
        "on first use, which needs a network connection. Offline, pass a local state dict with "
        "--weights FILE (or --weights none for random weights)"
    )


def hub_offline_if_unreachable(host: str = "huggingface.co") -> None:
    """Switch the Hugging Face hub to offline mode when it cannot be reached (checked once, 3 s).

    Offline, ``huggingface_hub`` retries every request for about a minute and logs each attempt; in
    offline mode it uses its cache at once and fails at once when a file is not there.
    """
    if os.environ.get("HF_HUB_OFFLINE"):
        return
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
