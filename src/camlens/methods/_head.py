"""Running only the part of a model after a layer, on activations a method has changed.

Ablation-CAM (channels zeroed) and Recipro-CAM (positions masked) score many variants of one layer's
output. The model before the layer does not need to run again: :func:`head_runner` splits the model
at the layer with ``torch.fx`` and returns a function that runs only the *head*.

Nothing derived from the model is trusted across calls: a split traced earlier (kept per model, layer
and module tree) is checked against the live model on every call. The head applied to the prefix's
values must give the model's own output for the call's batch. A head replaced since the trace, a flag
read in ``forward``, a forward hook or pre-hook that fx does not see would all break that. A split
that fails the check is traced again once; if it still fails, or fx cannot trace the model, a forward
hook substitutes the layer's output and the whole model runs on each batch of variants (the *hook*
path). ``ctx.details["split"]`` says which was used (``"fx"`` or ``"hook"``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from camlens._structure import structure_key
from camlens.capture import paused, substitute_output
from camlens.methods.base import MapContext, model_error, run_model

__all__ = ["SPLITS", "HeadRunner", "check_split", "head_runner", "reproduces"]

#: The values of a method's ``split=`` option.
SPLITS = ("auto", "fx", "hook")

#: ``run(rows, replaced) -> output``: the model's output when the layer outputs ``replaced``
#: ``(n, *layer_shape)`` instead of its own output. ``rows`` says which sample of the call's batch
#: each of the ``n`` rows belongs to: an int (all rows are variants of that sample) or an ``(n,)``
#: integer tensor.
HeadRunner = Callable[[int | Tensor, Tensor], Any]


def check_split(split: str) -> str:
    """Validate a ``split=`` option (``"auto"``, ``"fx"`` or ``"hook"``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'auto', 'fx' or 'hook', not {split!r}")
    return split


class _HeadSplit:
    """The model cut at a layer with torch.fx: ``prefix(x)`` computes everything the rest needs,
    ``head(*values)`` the rest (``values[0]`` is the layer's output)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        class _Tracer(torch.fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname == layer or super().is_leaf_module(m, qualname)

        tracer = _Tracer()
        graph = tracer.trace(model)
        nodes = list(graph.nodes)
        hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
        if len(hits) != 1:
            raise ValueError(f"layer {layer!r} is called {len(hits)} times in the traced graph")
        cut = hits[0]
        pre = set(nodes[: cut + 1])
        needed: list[torch.fx.Node] = [nodes[cut]]
        for n in nodes[cut + 1 :]:
            for inp in n.all_input_nodes:
                if inp in pre and inp not in needed and inp.op != "get_attr":
                    needed.append(inp)
        # prefix: the original graph up to the cut, returning the needed values
        prefix = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in nodes[: cut + 1]:
            env[n] = prefix.node_copy(n, lambda a: env[a])
        prefix.output(tuple(env[n] for n in needed))
        # head: placeholders for the needed values, then the rest of the graph
        head = torch.fx.Graph()
        env2: dict[torch.fx.Node, torch.fx.Node] = {}
        for j, n in enumerate(needed):
            env2[n] = head.placeholder(f"cut_{j}")
        for n in nodes[cut + 1 :]:
            for inp in n.all_input_nodes:
                if inp not in env2 and inp.op == "get_attr":
                    env2[inp] = head.node_copy(inp, lambda a: env2[a])
            env2[n] = head.node_copy(n, lambda a: env2[a])
        self.prefix = torch.fx.GraphModule(tracer.root, prefix)
        self.head = torch.fx.GraphModule(tracer.root, head)


# Traced splits, per model, under (layer, module tree). A split is only a candidate: every call checks
# it against the live model (_verified_fx) before using it.
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], _HeadSplit | Exception]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()


def _traced_split(model: nn.Module, layer: str, *, fresh: bool = False) -> _HeadSplit:
    """A torch.fx split of ``model`` at ``layer``, from the cache unless ``fresh``; raises if fx fails."""
    key = (layer, structure_key(model))
    with _CACHE_LOCK:
        known = None if fresh else _CACHE.get(model, {}).get(key)
    if known is None:
        try:
            known = _HeadSplit(model, layer)
        except Exception as e:  # fx cannot trace every model
            known = e
        with _CACHE_LOCK:
            per_model = _CACHE.setdefault(model, {})
            if len(per_model) > 16:
                per_model.clear()
            per_model[key] = known
    if isinstance(known, Exception):
        raise known
    return known


def head_runner(model: nn.Module, ctx: MapContext, split: str = "auto") -> HeadRunner:
    """How to run ``model`` after ``ctx.layer`` on replaced activations, decided once per call.

    The choice is kept in ``ctx.scratch`` (shared by the call's targets) and reported in
    ``ctx.details["split"]``.

    Args:
        model: the model being explained.
        ctx: the call's context (its input, layer, target scores and output are the check).
        split: ``"auto"`` (fx where it reproduces the model, else the hook), ``"fx"`` (a
            ``ValueError`` where it does not) or ``"hook"``.

    Returns:
        A :data:`HeadRunner`. Its forwards run with capture paused and under inference mode; a failure
        of the model is a :class:`~camlens.methods.base.ModelError`.
    """
    key = f"head-runner:{ctx.layer}:{split}"
    if key not in ctx.scratch:
        ctx.scratch[key] = _choose(model, ctx, check_split(split))
    runner, used = ctx.scratch[key]
    ctx.details["split"] = used
    return runner


def _choose(model: nn.Module, ctx: MapContext, split: str) -> tuple[HeadRunner, str]:
    if split != "hook":
        problem = "torch.fx could not trace the model"
        for fresh in (False, True):
            try:
                traced = _traced_split(model, ctx.layer, fresh=fresh)
            except Exception as e:
                problem = f"torch.fx could not split the model at {ctx.layer!r}: {e}"
                break
            runner = _verified_fx(traced, ctx)
            if runner is not None:
                return runner, "fx"
            problem = (
                f"torch.fx's split at {ctx.layer!r} does not reproduce the model's output (a "
                "forward hook, a pre-hook or a flag read in forward that the trace cannot see)"
            )
        if split == "fx":
            raise ValueError(f"{problem}; use split='hook' or split='auto'")
    return _hook_runner(model, ctx), "hook"


def _close(got: Tensor, want: Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(
        got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6
    )


def reproduces(out: Any, ctx: MapContext) -> bool:
    """Whether ``out``, computed from the call's input another way, is the model's own output.

    The target's score of every sample must match, and the whole selected output when it is a tensor
    (to float tolerance: ``rtol=1e-4``, ``atol=1e-5`` of the largest value).
    """
    try:
        got = ctx.row_scores(out, torch.arange(ctx.x.shape[0]))
    except Exception:
        return False
    if not _close(got, ctx.target.scores.detach().float().to(got.device)):
        return False
    if isinstance(ctx.output, Tensor):  # the whole output, not just this target's score
        from camlens.targets import select_output

        try:
            mine = select_output(out, ctx.selector, passthrough=False)
        except Exception:
            return False
        if not isinstance(mine, Tensor) or not _close(mine.float(), ctx.output.detach().float()):
            return False
    return True


def _rows_of(v: Tensor, rows: int | Tensor, n: int) -> Tensor:
    if isinstance(rows, int):
        return v[rows : rows + 1].expand(n, *v.shape[1:]).contiguous()
    return v[rows.to(v.device)]


def _verified_fx(traced: _HeadSplit, ctx: MapContext) -> HeadRunner | None:
    """A runner on ``traced``'s head if head(prefix(x)) equals the model's own output, else None."""
    x = ctx.x
    try:
        with paused(), torch.inference_mode():
            values = traced.prefix(x)
            out = traced.head(*values)
    except Exception:
        return None
    if not reproduces(out, ctx):
        return None
    batch = x.shape[0]

    def run(rows: int | Tensor, replaced: Tensor) -> Any:
        n = replaced.shape[0]
        rest = [
            _rows_of(v, rows, n) if isinstance(v, Tensor) and v.ndim and v.shape[0] == batch else v
            for v in values[1:]
        ]
        try:
            with paused(), torch.inference_mode():
                return traced.head(replaced, *rest)
        except Exception as e:
            raise model_error(replaced, e) from e

    return run


def _hook_runner(model: nn.Module, ctx: MapContext) -> HeadRunner:
    module = model.get_submodule(ctx.layer)
    x = ctx.x

    def run(rows: int | Tensor, replaced: Tensor) -> Any:
        # the substitution's own scope is the active one: no other capture records this forward
        with substitute_output(module, replaced), torch.inference_mode():
            return run_model(model, _rows_of(x, rows, replaced.shape[0]))

    return run
