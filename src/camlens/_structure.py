"""A fingerprint of a model's module tree, for caches of what is derived from it."""

from __future__ import annotations

from torch import nn

__all__ = ["structure_key"]


def structure_key(model: nn.Module) -> tuple[tuple[str, int], ...]:
    """A key that changes when a submodule of ``model`` is added, removed or replaced.

    Caches of things derived from a model's structure (automatic layers, token layouts) are keyed on
    it, so they never outlive the structure they were derived from.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> k = structure_key(net)
        >>> net[0] = nn.Linear(2, 2)
        >>> structure_key(net) == k
        False
    """
    return tuple((name, id(m)) for name, m in model.named_modules())
