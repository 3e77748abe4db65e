"""Turn a layer's output into ``(B, K, *spatial)``, the layout every map formula expects.

Convolutional layers already output ``(B, K, *spatial)`` and pass through unchanged. A ``reshape``
callable given by the user wins over everything; it receives the activation (and, separately, its
gradient) and the input, and must be a pure re-indexing (select, permute, reshape), so that applying it
to the gradient is exact.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["ReshapeFn", "to_spatial"]

ReshapeFn = Callable[[Tensor, Tensor], Tensor]


def to_spatial(
    t: Tensor,
    x: Tensor,
    *,
    name: str = "layer",
    model: nn.Module | None = None,
    reshape: ReshapeFn | None = None,
) -> Tensor:
    """A layer's output ``t`` for input ``x`` as ``(B, K, *spatial)`` with ``x``'s number of spatial axes.

    Raises:
        ValueError: the layout cannot be made spatial; the message says how to pass ``reshape=``.
    """
    if reshape is not None:
        out = reshape(t, x)
        if not isinstance(out, Tensor) or out.ndim != x.ndim or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"reshape= returned {got} for layer {name!r}; it must return (B, K, *spatial) with "
                f"{x.ndim - 2} spatial axes for an input of shape {tuple(x.shape)}"
            )
        return out
    if t.ndim == x.ndim and t.shape[0] == x.shape[0]:
        return t
    raise ValueError(
        f"layer {name!r} outputs shape {tuple(t.shape)}, which has no spatial axes matching the input "
        f"{tuple(x.shape)}; a CAM method needs a layer whose output is (B, K, *spatial), such as the last "
        "convolutional block, or pass reshape=lambda act, x: ... returning (B, K, *spatial)"
    )
