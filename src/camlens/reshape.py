"""Turn a layer's output into ``(B, K, *spatial)``, the layout every map formula expects.

camlens recognises three layouts by themselves, for an input ``x`` of shape ``(B, C_in, *S)``:

* **channels first** ``(B, K, *s)`` (convolutional layers): passed through unchanged.
* **channels last** ``(B, *s, K)`` (torchvision and timm Swin stages and norms, ConvNeXt internals):
  permuted to ``(B, K, *s)``. A 4-D or 5-D output is read as channels last only when its middle axes
  ``s`` form a grid of the input (``s_i <= S_i`` and the last two share one stride ``S/s`` up to
  rounding) and its trailing axes do not; when both readings fit, the layer's own modules decide (a
  ``LayerNorm``/``Linear`` acting on the last axis and no convolution or batch norm with ``K``
  channels means channels last). A CNN output ``(B, K, h, w)`` is never read as channels last.
  3-D outputs of 1-D inputs are read as channels last only on that structural evidence.
* **tokens** ``(B, N, K)`` of a 2-D input (vision transformers): ``N = P + gh * gw`` where ``P``
  prefix tokens (class, distillation, register tokens) come first and the patch tokens follow in
  row-major order (the layout of torchvision, timm and Hugging Face ViTs). The grid is found, in
  this order:

  1. from the patch embedding: the first ``Conv2d`` taking the input's channels with
     ``stride == kernel_size`` (``conv_proj``, ``patch_embed.proj``,
     ``embeddings.patch_embeddings.projection``), or else a ``patch_size`` attribute / config entry.
     The grid is the convolution's output size (floor, or ceil for padded patches); it is used when
     ``0 <= N - gh * gw <= 16`` or ``N - gh * gw`` equals timm's ``num_prefix_tokens``. More tokens
     than that are not a grid camlens guesses (``reshape=`` is needed); fewer mean a deeper,
     downsampled stage, for which:
  2. from the shapes alone (deeper stages of hierarchical models such as Hugging Face Swin, or
     patch embeddings that are not convolutions): the smallest ``P`` in ``0..16`` (timm's
     ``num_prefix_tokens`` first) for which ``N - P`` factors into a grid ``gh x gw`` that tiles the
     input with one integer stride (``H = s * gh``, ``W = s * gw``); failing that, the smallest ``P``
     whose grid matches the input's aspect up to rounding (one stride ``s`` with
     ``gh = floor(H / s)``, ``gw = floor(W / s)``, or both ``ceil``).

  The prefix tokens are dropped and the patch tokens reshaped to ``(B, K, gh, gw)``. Tokens of 3-D
  inputs (video) are inferred from a ``Conv3d`` patch embedding only; tokens ``(B, N, K)`` of 1-D
  inputs are told from ``(B, K, L)`` by the layer's structure (as for channels last) and use the
  ``Conv1d`` patch embedding or ``num_prefix_tokens`` for their prefix.

  When neither finds a grid, :func:`to_spatial` raises a ``ValueError`` that says so and shows how
  to pass ``reshape=``.

A ``reshape`` callable given by the user wins over everything; it receives the activation (and,
separately, its gradient) and the input, and must be a pure re-indexing (select, permute, reshape), so
that applying it to the gradient is exact. The inferred layout depends only on shapes and the model's
structure, so the activation and its gradient are always laid out the same way; it is cached per
model, layer, shape and module tree (:func:`camlens._structure.structure_key`), so replacing a
submodule never leaves a stale layout behind.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 3, 32, 48)                     # a 2x3 grid of 16-pixel patches
    >>> tokens = torch.arange(2 * 7 * 4.0).reshape(2, 7, 4)  # 1 class token + 6 patch tokens
    >>> infer_layout(tokens.shape, x.shape)
    Layout(kind='tokens', prefix=1, grid=(2, 3), source='shape')
    >>> spatial = to_spatial(tokens, x)
    >>> spatial.shape
    torch.Size([2, 4, 2, 3])
    >>> bool((spatial[0, :, 0, 1] == tokens[0, 2]).all())   # row 0, column 1 is patch token 1
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, prod
from typing import Literal

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from camlens._structure import structure_key

__all__ = ["MAX_PREFIX_TOKENS", "Layout", "ReshapeFn", "infer_layout", "to_spatial"]

ReshapeFn = Callable[[Tensor, Tensor], Tensor]

#: The most prefix tokens (class + distillation + registers) camlens assumes when it infers a grid.
MAX_PREFIX_TOKENS = 16

_RESHAPE_EXAMPLE = (
    "reshape=lambda act, x: act[:, 1:].reshape(act.shape[0], 14, 14, -1).permute(0, 3, 1, 2)"
)


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto ``(B, K, *spatial)``.

    Attributes:
        kind: ``"spatial"`` (already ``(B, K, *s)``), ``"channels_last"`` (``(B, *s, K)``) or
            ``"tokens"`` (``(B, prefix + prod(grid), K)``).
        prefix: number of leading tokens that are not patches (class, distillation, registers).
        grid: the spatial grid of the patch tokens (``()`` for the other kinds).
        source: how a token grid was found: ``"patch size (16, 16)"``, ``"shape"``, ``"structure"``.
    """

    kind: Literal["spatial", "channels_last", "tokens"]
    prefix: int = 0
    grid: tuple[int, ...] = ()
    source: str = ""

    def apply(self, t: Tensor) -> Tensor:
        """Re-index ``t`` (an activation or its gradient) into ``(B, K, *spatial)``.

        Example:
            >>> import torch
            >>> Layout("channels_last").apply(torch.zeros(2, 4, 5, 7)).shape
            torch.Size([2, 7, 4, 5])
        """
        if self.kind == "spatial":
            return t
        if self.kind == "channels_last":
            return t.permute(0, t.ndim - 1, *range(1, t.ndim - 1))
        patches = t[:, self.prefix :]
        nd = len(self.grid)
        return patches.reshape(t.shape[0], *self.grid, t.shape[-1]).permute(
            0, nd + 1, *range(1, nd + 1)
        )


# ---- what the model's structure says ---------------------------------------------------------------


@dataclass(frozen=True)
class _ModelInfo:
    patch_convs: tuple[_ConvNd, ...]
    patch_sizes: tuple[tuple[int, ...], ...]
    prefix_hint: int | None


_INFO: weakref.WeakKeyDictionary[nn.Module, tuple[object, _ModelInfo]] = weakref.WeakKeyDictionary()
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], Layout]] = (
    weakref.WeakKeyDictionary()
)


def _as_tuple(v: object) -> tuple[int, ...] | None:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return (v,)
    if isinstance(v, tuple | list) and v and all(isinstance(i, int) and i > 0 for i in v):
        return tuple(v)
    return None


def _model_info(model: nn.Module) -> _ModelInfo:
    key = structure_key(model)
    known = _INFO.get(model)
    if known is not None and known[0] == key:
        return known[1]
    convs: list[_ConvNd] = []
    sizes: list[tuple[int, ...]] = []
    hint: int | None = None
    for m in model.modules():
        if (
            isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            and m.stride == m.kernel_size
            and max(m.kernel_size) > 1
            and m.groups == 1
        ):
            convs.append(m)
        for owner in (m, getattr(m, "config", None)):
            ps = _as_tuple(getattr(owner, "patch_size", None))
            if ps is not None and ps not in sizes:
                sizes.append(ps)
        n = getattr(m, "num_prefix_tokens", None)
        if hint is None and isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            hint = n
    info = _ModelInfo(tuple(convs), tuple(sizes), hint)
    _INFO[model] = (key, info)
    return info


def _structure(
    module: nn.Module | None, shape: tuple[int, ...]
) -> Literal["channels_first", "channels_last"] | None:
    """Which axis the layer's own modules treat as channels, when they say so unambiguously."""
    if module is None:
        return None
    first = last = False
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            first |= m.out_channels == shape[1]
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            first |= m.num_features == shape[1]
        elif isinstance(m, nn.GroupNorm):
            first |= m.num_channels == shape[1]
        elif isinstance(m, nn.LayerNorm):
            last |= tuple(m.normalized_shape) == (shape[-1],)
        elif isinstance(m, nn.Linear):
            last |= m.out_features == shape[-1]
    if first != last:
        return "channels_first" if first else "channels_last"
    return None


# ---- grids -------------------------------------------------------------------------------------------


def _share_stride(g: tuple[int, int], s: tuple[int, int]) -> bool:
    """Whether some stride ``r`` gives ``g_i = floor(s_i / r)`` for both axes (or ``ceil`` for both)."""
    (gh, gw), (sh, sw) = g, s
    # floor(S / r) = g  <=>  S / (g + 1) < r <= S / g
    lo = max(Fraction(sh, gh + 1), Fraction(sw, gw + 1))
    if lo < min(Fraction(sh, gh), Fraction(sw, gw)):
        return True
    # ceil(S / r) = g  <=>  S / g <= r < S / (g - 1)
    lo = max(Fraction(sh, gh), Fraction(sw, gw))
    hi_h = Fraction(sh, gh - 1) if gh > 1 else None
    hi_w = Fraction(sw, gw - 1) if gw > 1 else None
    his = [h for h in (hi_h, hi_w) if h is not None]
    return not his or lo < min(his)


def _is_grid(g: tuple[int, ...], s: tuple[int, ...]) -> bool:
    """``g`` is a downsampled grid of the input's spatial size ``s``."""
    if len(g) != len(s) or any(gi < 1 or gi > si for gi, si in zip(g, s, strict=True)):
        return False
    return len(g) < 2 or _share_stride((g[-2], g[-1]), (s[-2], s[-1]))


def _conv_grids(conv: _ConvNd, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The conv's output size for ``spatial`` (and the ceil variant, for patch embeddings that pad)."""
    k, st, d = conv.kernel_size, conv.stride, conv.dilation
    pad = conv.padding
    pads = (0,) * len(spatial) if isinstance(pad, str) else tuple(pad)
    floor_g = tuple(
        (s + 2 * p - di * (ki - 1) - 1) // si + 1
        for s, p, di, ki, si in zip(spatial, pads, d, k, st, strict=True)
    )
    ceil_g = tuple(ceil(s / si) for s, si in zip(spatial, st, strict=True))
    return [floor_g] if floor_g == ceil_g else [floor_g, ceil_g]


def _patch_grids(
    model: nn.Module | None, x_shape: tuple[int, ...]
) -> list[tuple[tuple[int, ...], str]]:
    if model is None:
        return []
    info = _model_info(model)
    spatial = x_shape[2:]
    out: list[tuple[tuple[int, ...], str]] = []
    for conv in info.patch_convs:
        if conv.in_channels == x_shape[1] and len(conv.kernel_size) == len(spatial):
            source = f"patch size {tuple(conv.kernel_size)}"
            out += [(g, source) for g in _conv_grids(conv, spatial)]
            break
    if not out:
        for ps in info.patch_sizes:
            p = ps * len(spatial) if len(ps) == 1 else ps
            if len(p) == len(spatial):
                grids = {
                    tuple(s // pi for s, pi in zip(spatial, p, strict=True)),
                    tuple(ceil(s / pi) for s, pi in zip(spatial, p, strict=True)),
                }
                out += [(g, f"patch size {p}") for g in sorted(grids)]
                break
    return out


def _token_layout(n: int, x_shape: tuple[int, ...], model: nn.Module | None) -> Layout | None:
    """Prefix and grid of ``n`` tokens for an input of shape ``x_shape``, or ``None``."""
    spatial = tuple(x_shape[2:])
    hint = _model_info(model).prefix_hint if model is not None else None
    patch = _patch_grids(model, x_shape)
    for grid, source in patch:
        prefix = n - prod(grid)
        if prod(grid) > 0 and (0 <= prefix <= MAX_PREFIX_TOKENS or prefix == hint):
            return Layout("tokens", prefix, grid, source)
    if patch and n > min(prod(g) for g, _ in patch):
        return None  # more tokens than patches and prefix tokens: not a grid camlens can guess
    if len(spatial) == 1:
        prefix = hint if hint is not None and hint < n else 0
        return Layout("tokens", prefix, (n - prefix,), "structure")
    if len(spatial) != 2:
        return None
    prefixes = ([hint] if hint is not None else []) + list(range(MAX_PREFIX_TOKENS + 1))
    sh, sw = spatial
    # First grids that tile the input exactly (one integer stride for both axes: ViTs need inputs
    # divisible by the patch size), then grids that match up to rounding (padded hierarchical stages).
    for accept in (_tiles, _is_grid):
        for prefix in prefixes:
            m = n - prefix
            if m < 1:
                break
            grids = [
                (gh, m // gh)
                for gh in range(1, m + 1)
                if m % gh == 0 and accept((gh, m // gh), spatial)
            ]
            if not grids:
                continue
            # several factorisations fit only tiny grids of very oblong inputs: take the closest aspect
            grids.sort(key=lambda g: abs(g[0] * sw - g[1] * sh))
            if len(grids) > 1 and abs(grids[0][0] * sw - grids[0][1] * sh) == abs(
                grids[1][0] * sw - grids[1][1] * sh
            ):
                return None
            return Layout("tokens", prefix, grids[0], "shape")
    return None


def _tiles(g: tuple[int, ...], s: tuple[int, ...]) -> bool:
    """``g`` tiles ``s`` exactly with one integer stride."""
    return (
        all(si % gi == 0 for gi, si in zip(g, s, strict=True))
        and len({si // gi for gi, si in zip(g, s, strict=True)}) == 1
    )


# ---- public ------------------------------------------------------------------------------------------


def _no_spatial(name: str, t_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"layer {name!r} outputs shape {t_shape}, which has no spatial axes matching the input "
        f"{x_shape}; a CAM method needs a layer whose output is (B, K, *spatial), (B, *spatial, K) or "
        "(B, tokens, K), such as the last convolutional block or a transformer block's norm, or pass "
        "reshape=lambda act, x: ... returning (B, K, *spatial)"
    )


def _no_grid(name: str, t_shape: tuple[int, ...], x_shape: tuple[int, ...], why: str) -> ValueError:
    return ValueError(
        f"camlens could not infer the token grid of layer {name!r}: it outputs {t_shape} for an input "
        f"of {x_shape}, and {why}. Pass reshape= a callable (activation, input) -> (B, C, H, W) that "
        f"drops the prefix tokens and lays the patch tokens out on their grid, e.g. for one class token "
        f"and a 14 x 14 grid: {_RESHAPE_EXAMPLE}"
    )


def infer_layout(
    t_shape: tuple[int, ...],
    x_shape: tuple[int, ...],
    *,
    model: nn.Module | None = None,
    name: str = "layer",
    module: nn.Module | None = None,
) -> Layout:
    """The layout of a layer's output of shape ``t_shape`` for an input of shape ``x_shape``.

    The rules are in the module docstring. ``model`` supplies the patch size and
    ``num_prefix_tokens``; ``module`` (the layer itself, found from ``name`` in ``model`` when not
    given) settles whether an ambiguous 4-D output is channels first or last.

    Raises:
        ValueError: the output has no spatial reading (e.g. ``(B, num_classes)``), or its tokens fit no
            grid; the message shows how to pass ``reshape=``.

    Example:
        >>> infer_layout((2, 7, 7, 768), (2, 3, 224, 224))      # a Swin stage
        Layout(kind='channels_last', prefix=0, grid=(), source='')
        >>> infer_layout((2, 768, 7, 7), (2, 3, 224, 224))      # a CNN stage
        Layout(kind='spatial', prefix=0, grid=(), source='')
    """
    t_shape, x_shape = tuple(t_shape), tuple(x_shape)
    if module is None and model is not None:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
    spatial = x_shape[2:]
    if len(t_shape) < 3 or t_shape[0] != x_shape[0]:
        raise _no_spatial(name, t_shape, x_shape)
    if len(t_shape) == len(x_shape):
        struct = _structure(module, t_shape)
        if len(spatial) == 1:
            if struct == "channels_last":
                tokens = _token_layout(t_shape[1], x_shape, model)
                return tokens if tokens is not None and tokens.prefix else Layout("channels_last")
            return Layout("spatial")
        first_ok = _is_grid(t_shape[2:], spatial)
        last_ok = _is_grid(t_shape[1:-1], spatial)
        if last_ok and (struct == "channels_last" or (struct is None and not first_ok)):
            return Layout("channels_last")
        return Layout("spatial")
    if len(t_shape) == 3 and len(spatial) >= 2:
        tokens = _token_layout(t_shape[1], x_shape, model)
        if tokens is None:
            patch = _patch_grids(model, x_shape)
            if patch:
                grid = patch[0][0]
                why = (
                    f"the model's {patch[0][1]} gives a {' x '.join(map(str, grid))} grid, which leaves "
                    f"{t_shape[1] - prod(grid)} other tokens (more than the {MAX_PREFIX_TOKENS} class, "
                    "distillation and register tokens camlens assumes)"
                )
            elif len(spatial) == 2:
                why = (
                    f"{t_shape[1]} tokens are no grid with the input's aspect after at most "
                    f"{MAX_PREFIX_TOKENS} prefix tokens"
                )
            else:
                why = "token grids of 3-D inputs are inferred only from a Conv3d patch embedding"
            raise _no_grid(name, t_shape, x_shape, why)
        return tokens
    raise _no_spatial(name, t_shape, x_shape)


def to_spatial(
    t: Tensor,
    x: Tensor,
    *,
    name: str = "layer",
    model: nn.Module | None = None,
    reshape: ReshapeFn | None = None,
) -> Tensor:
    """A layer's output ``t`` for input ``x`` as ``(B, K, *spatial)`` with ``x``'s number of spatial axes.

    Args:
        t: the layer's output or its gradient: ``(B, K, *s)``, ``(B, *s, K)`` or ``(B, N, K)`` tokens.
        x: the model's input ``(B, C, *S)``.
        name: the layer's dotted name in ``model`` (for the structural checks and messages).
        model: the model, whose patch embedding and ``num_prefix_tokens`` give the token grid.
        reshape: a user callable ``(t, x) -> (B, K, *spatial)`` that replaces the inference.

    Raises:
        ValueError: the layout cannot be made spatial; the message says how to pass ``reshape=``.
    """
    if reshape is not None:
        out = reshape(t, x)
        if not isinstance(out, Tensor) or out.ndim != x.ndim or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"reshape= returned {got} for layer {name!r}; it must return (B, K, *spatial) with "
                f"{x.ndim - 2} spatial axes for an input of shape {tuple(x.shape)}, e.g. "
                f"{_RESHAPE_EXAMPLE}"
            )
        return out
    key = (name, tuple(t.shape), tuple(x.shape), structure_key(model) if model is not None else ())
    cache = _CACHE.setdefault(model, {}) if model is not None else {}
    if len(cache) > 256:  # shapes or structures seen over a long time: forget the old ones
        cache.clear()
    layout = cache.get(key)
    if layout is None:
        layout = infer_layout(tuple(t.shape), tuple(x.shape), model=model, name=name)
        cache[key] = layout
    return layout.apply(t)
